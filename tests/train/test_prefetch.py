"""The prefetch thread: batches in order, the iterator state of the last batch handed out (not of the thread's
position), the producer's errors raised in the consumer, and a clean stop."""

import threading

import numpy as np
import pytest

from postembed_jax.data import mixture
from postembed_jax.models import hf_io
from postembed_jax.train.prefetch import Prefetcher


class Counting:
  """An iterator with JSON state, as the data side's: batch k is {"k": k}; fails at batch ``fail_at``."""

  def __init__(self, fail_at: int | None = None):
    self.position, self.fail_at = 0, fail_at

  def __iter__(self):
    return self

  def __next__(self):
    if self.position == self.fail_at:
      raise ValueError(f"config.data.files: bad record at batch {self.position}")
    self.position += 1
    return {"k": self.position - 1}

  def get_state(self):
    return {"position": self.position}


@pytest.fixture(scope="module")
def train_iter(tiny_model_dir, fixture_data_config):
  config = fixture_data_config.copy_and_resolve_references()
  config.update(tasks="search,storyline", batch_size=4, max_length=32, bucket_lengths=(16, 32))
  return lambda: mixture.make_train_iterator(config, hf_io.load_tokenizer(tiny_model_dir), seed=0)


def test_the_saved_state_is_the_consumed_batchs_and_resumes_exactly(train_iter):
  it = train_iter()
  with Prefetcher(it, size=2) as batches:
    consumed = [next(batches) for _ in range(3)]
    state = batches.get_state()
    ahead = it.get_state()  # the thread's position: up to two batches further
    following = next(batches)
  assert state["step"] == 3 and ahead["step"] >= 3
  resumed = train_iter()
  resumed.set_state(state)
  again = next(resumed)
  assert again["task"] == following["task"]
  for key in ("left_ids", "right_ids", "label"):
    np.testing.assert_array_equal(again[key], following[key])
  reference = train_iter()
  for got in consumed:  # the same batches, in the same order, as the iterator on its own
    np.testing.assert_array_equal(got["left_ids"], next(reference)["left_ids"])


def test_transform_runs_in_the_thread_and_count_ends_the_stream():
  threads = []

  def transform(batch):
    threads.append(threading.current_thread().name)
    return dict(batch, doubled=2 * batch["k"])

  with Prefetcher(Counting(), transform=transform, size=1, count=4) as batches:
    got = list(batches)
    assert batches.get_state() == {"position": 4}
  assert [b["doubled"] for b in got] == [0, 2, 4, 6]
  assert set(threads) == {"prefetch"}
  with pytest.raises(StopIteration):
    next(batches)


def test_an_error_in_the_thread_is_raised_where_its_batch_was_due():
  with Prefetcher(Counting(fail_at=2)) as batches:
    assert [next(batches)["k"] for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="bad record at batch 2"):
      next(batches)
    assert batches.get_state() == {"position": 2}  # the last good batch's
    with pytest.raises(ValueError, match="bad record"):  # and again on the next call
      next(batches)


def test_close_stops_a_thread_blocked_on_a_full_queue():
  batches = Prefetcher(Counting(), size=1)
  assert next(batches)["k"] == 0
  batches.close()
  assert not batches._thread.is_alive()
  with pytest.raises(StopIteration):  # closed: the batches made ahead are dropped
    next(batches)
  with pytest.raises(ValueError, match="at least one batch"):
    Prefetcher(Counting(), size=0)
