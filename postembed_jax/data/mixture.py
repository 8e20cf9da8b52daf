"""Training batches (grain): task examples -> tokenised, length-bucketed batches mixed across tasks by a
sampling strategy, deterministic and resumable.

Why this shape:
  * Single-task batches by default: in-batch negatives only make sense among
    examples of one task. ``mixed=True`` mixes pair tasks inside a batch.
  * Length bucketing: each task's example stream is cut into windows of
    ``shuffle_window`` global batches, sorted by length inside the window
    (pairs: bucket of the left text, then length of the right text) and
    padded by the rule of data/tokenize.py, so padding is small and jit sees
    few shapes.
  * Every batch is a pure function of (seed, task, position), so the iterator
    state is a few counters (JSON), and a restored iterator continues with
    exactly the batches it would have produced.
  * Task sampling (T5 / mT5 / XLM-R style): uniform; examples-proportional
    with cap K; temperature p_i ~ min(n_i, K)^(1/T); explicit weights.
  * Multi-host: the GLOBAL batch of every step (its task, its rows and their
    order) depends only on (seed, config), never on process_count; host h of H
    yields rows [h*B/H, (h+1)*B/H) of it, padded to the bucket of its own
    longest row. The trainer pads all hosts to the longest host, and since the
    bucket of the longest row is the largest of the hosts' buckets, the
    assembled global batch equals the one-process batch. The iterator state is
    host-independent, so a checkpoint moves between host counts.
  * Tokenisation is lazy (data/tokenize.py): nothing is tokenised at start-up;
    each distinct text is tokenised once, when a batch that needs it is made.
    Choosing a window's batches needs a length for every example of the window
    on every host:
      - ``length_key='tokens'`` (default): exact token counts. Each host
        tokenises the global window it is in (not only its rows), i.e. the
        same texts as a one-process run, so the cost per host does not shrink
        with H; padding is as small as exact lengths allow.
      - ``length_key='bytes'``: UTF-8 byte length as a host-independent proxy;
        each host tokenises only its own rows, at the price of more padding.
        For many hosts with slow CPUs.
    docs/data.md has the measured padding and tokenisation costs of both.
    Every host still reads all records and builds every example (negatives and
    partners are drawn over the whole task), kept as arrays of text ids.

One module, over 400 lines: the streams, per-task batches, both mixtures and the iterator share the window, host
and state logic, and apart they would only pass private helpers back and forth.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from postembed_jax.data import config as config_lib
from postembed_jax.data import examples as examples_lib
from postembed_jax.data.tokenize import Vocab, bucket_list

_BLOCK = 1024  # task choices drawn per RNG call
ALL_TASKS = "all"  # the "task" of an all_tasks_per_step batch


@dataclasses.dataclass
class _TaskData:
  """One task's examples (all of them, on every host) as arrays of text ids."""

  name: str
  kind: str
  multi_label: bool
  num_labels: int
  a: np.ndarray  # left text id (pair) or text id (classification)
  b: np.ndarray  # right text id (pair)
  label: np.ndarray  # float32 (pair), int32 (class) or object lists (multi)

  def __len__(self):
    return len(self.a)

  def examples(self, idx: np.ndarray, texts: Sequence[str]) -> list[dict[str, Any]]:
    """The examples at `idx`, equal to the dicts task_examples gave for them."""
    if self.kind == "pair":
      return [
        {"left": texts[a], "right": texts[b], "label": float(y)}
        for a, b, y in zip(self.a[idx].tolist(), self.b[idx].tolist(), self.label[idx].tolist())
      ]
    if self.multi_label:
      return [{"text": texts[a], "labels": list(y)} for a, y in zip(self.a[idx].tolist(), self.label[idx])]
    return [{"text": texts[a], "label": int(y)} for a, y in zip(self.a[idx].tolist(), self.label[idx].tolist())]


def _task_data(name, task, examples, vocab, label_count):
  if task.kind == "pair":
    a = np.array([vocab.index[e["left"]] for e in examples], dtype=np.int64)
    b = np.array([vocab.index[e["right"]] for e in examples], dtype=np.int64)
    label = np.array([e["label"] for e in examples], dtype=np.float32)
  else:
    a = np.array([vocab.index[e["text"]] for e in examples], dtype=np.int64)
    b = np.zeros_like(a)
    multi = "labels" in examples[0]
    label = (
      np.array([e["label"] for e in examples], dtype=np.int32)
      if not multi
      else np.array([tuple(e["labels"]) for e in examples] + [()], dtype=object)[:-1]
    )
  return _TaskData(
    name=name, kind=task.kind, multi_label=task.kind != "pair" and multi, num_labels=label_count, a=a, b=b, label=label
  )


class _Stream:
  """An endless, reshuffled-every-epoch stream of one task's example indices."""

  def __init__(self, n: int, seed: int, task_index: int):
    self.n, self.seed, self.task_index = n, seed, task_index
    self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      rng = np.random.default_rng([self.seed, self.task_index, epoch, 1])
      self._perms[epoch] = rng.permutation(self.n)
      if len(self._perms) > 4:
        self._perms.popitem(last=False)
    return self._perms[epoch]

  def take(self, start: int, count: int) -> np.ndarray:
    pos = np.arange(start, start + count, dtype=np.int64)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(pos // self.n):
      sel = pos // self.n == epoch
      out[sel] = self._perm(int(epoch))[pos[sel] % self.n]
    return out


@dataclasses.dataclass(frozen=True)
class _Host:
  """Which rows of each global batch of ``size`` rows this host yields."""

  size: int  # global batch size
  index: int = 0
  count: int = 1

  @property
  def rows(self) -> slice:
    per_host = self.size // self.count
    return slice(self.index * per_host, (self.index + 1) * per_host)


def _window_order(keys: np.ndarray, rows: int, window: int, rng) -> list[np.ndarray]:
  """Sorts a window of examples by length and cuts it into (global) batches of
  `rows`, returned in random order."""
  order = np.argsort(keys, kind="stable")
  batches = [order[i * rows : (i + 1) * rows] for i in range(window)]
  return [batches[i] for i in rng.permutation(window)]


def _make_batch(data: _TaskData, idx: np.ndarray, vocab: Vocab, buckets: Sequence[int]) -> dict[str, Any]:
  a = data.a[idx]
  if data.kind == "pair":
    left_ids, left_mask = vocab.pad(a, buckets)
    right_ids, right_mask = vocab.pad(data.b[idx], buckets)
    return {
      "task": data.name,
      "left_ids": left_ids,
      "left_mask": left_mask,
      "right_ids": right_ids,
      "right_mask": right_mask,
      "label": data.label[idx],
    }
  ids, mask = vocab.pad(a, buckets)
  out = {"task": data.name, "ids": ids, "mask": mask}
  if data.multi_label:
    labels = np.zeros((len(idx), data.num_labels), dtype=np.float32)
    for row, ls in enumerate(data.label[idx]):
      labels[row, list(ls)] = 1.0
    out["labels"] = labels
  else:
    out["label"] = data.label[idx]
  return out


def _length_key(data: _TaskData, vocab: Vocab, idx: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
  """Text length; pairs: bucket of the left text, then length of the right one,
  so both sides change little inside a batch (pads less than exact left, then
  right length; see docs/data.md)."""
  key = vocab.sort_lengths(data.a[idx])
  if data.kind == "pair":
    key = np.searchsorted(np.array(buckets), key) * (1 << 32) + vocab.sort_lengths(data.b[idx])
  return key


def _mixed_key(data: _TaskData, vocab: Vocab, idx: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
  """Coarse key (bucket of the longer side) so that equal keys keep their
  random order and batches really mix tasks."""
  longest = np.maximum(vocab.sort_lengths(data.a[idx]), vocab.sort_lengths(data.b[idx]))
  return np.searchsorted(np.array(buckets), longest)


class TaskBatches(grain.MapDataset):
  """Random-access, endless batches of one task: global batch k is a pure
  function of (seed, task, k); this host's batch k is its rows of it."""

  def __init__(
    self,
    data: _TaskData,
    vocab: Vocab,
    *,
    rows: int,
    window: int,
    buckets: Sequence[int],
    seed: int,
    task_index: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    super().__init__()
    self.data, self.vocab, self.rows, self.window = data, vocab, rows, window
    self.buckets, self.seed, self.task_index = buckets, seed, task_index
    self.host = _Host(rows, process_index, process_count)
    self._stream = _Stream(len(data), seed, task_index)
    self._cached: tuple[int, list[np.ndarray]] | None = None

  def __len__(self) -> int:
    return sys.maxsize

  def _batches_of_window(self, w: int) -> list[np.ndarray]:
    if self._cached is None or self._cached[0] != w:
      idx = self._stream.take(w * self.window * self.rows, self.window * self.rows)
      rng = np.random.default_rng([self.seed, self.task_index, w, 2])
      keys = _length_key(self.data, self.vocab, idx, self.buckets)
      order = _window_order(keys, self.rows, self.window, rng)
      self._cached = (w, [idx[o] for o in order])
    return self._cached[1]

  def global_indices(self, k: int) -> np.ndarray:
    """Example indices of global batch k, in row order."""
    return self._batches_of_window(k // self.window)[k % self.window]

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    return _make_batch(self.data, self.global_indices(k)[self.host.rows], self.vocab, self.buckets)

  def __str__(self):
    return f"TaskBatches({self.data.name})"


class _SingleTaskMixture(grain.IterDataset):
  """Each step draws one task with the sampling probabilities and emits its
  next batch."""

  def __init__(self, batches: dict[str, TaskBatches], probs: dict[str, float], seed: int):
    super().__init__()
    self.batches, self.probs, self.seed = batches, probs, seed

  def __iter__(self):
    return _SingleTaskIterator(self)


class _SingleTaskIterator(grain.DatasetIterator):
  def __init__(self, ds: _SingleTaskMixture):
    super().__init__()
    self._ds = ds
    self._names = list(ds.batches)
    self._p = np.array([ds.probs[n] for n in self._names])
    self._step = 0
    self._counters = {n: 0 for n in self._names}
    self._block: tuple[int, np.ndarray] | None = None

  def task_at(self, step: int) -> str:
    b = step // _BLOCK
    if self._block is None or self._block[0] != b:
      rng = np.random.default_rng([self._ds.seed, b, 3])
      self._block = (b, rng.choice(len(self._names), size=_BLOCK, p=self._p))
    return self._names[int(self._block[1][step % _BLOCK])]

  def __next__(self):
    name = self.task_at(self._step)
    batch = self._ds.batches[name][self._counters[name]]
    self._counters[name] += 1
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, "counters": dict(self._counters)}

  def _read_state(self, state: dict[str, Any]) -> tuple[int, dict[str, int]]:
    if sorted(state["counters"]) != sorted(self._names):
      raise ValueError(f"State is for tasks {sorted(state['counters'])}, this iterator has {sorted(self._names)}")
    return int(state["step"]), {n: int(state["counters"][n]) for n in self._names}

  def set_state(self, state: dict[str, Any]) -> None:
    self._step, self._counters = self._read_state(state)

  def plan(self, count: int, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Task and examples of the `count` global batches from `state` on; the iterator's own state is untouched."""
    step, counters = self._read_state(state)
    out = []
    for s in range(step, step + count):
      name = self.task_at(s)
      batches = self._ds.batches[name]
      idx = batches.global_indices(counters[name])
      counters[name] += 1
      out.append({"task": name, "examples": batches.data.examples(idx, batches.vocab.texts)})
    return out


class _AllTasksMixture(grain.IterDataset):
  """Each step emits the next batch of every task: ``{"task": "all", "batches": {name: batch}}``, the paper's
  multi-task step (every task present, one update)."""

  def __init__(self, batches: dict[str, TaskBatches]):
    super().__init__()
    self.batches = batches

  def __iter__(self):
    return _AllTasksIterator(self)


class _AllTasksIterator(grain.DatasetIterator):
  def __init__(self, ds: _AllTasksMixture):
    super().__init__()
    self._ds = ds
    self._names = list(ds.batches)
    self._step = 0

  def __next__(self):
    batches = {name: self._ds.batches[name][self._step] for name in self._names}
    self._step += 1
    return {"task": ALL_TASKS, "batches": batches}

  def get_state(self) -> dict[str, Any]:
    # The single-task iterator's layout: every task's counter is the step.
    return {"step": self._step, "counters": {n: self._step for n in self._names}}

  def set_state(self, state: dict[str, Any]) -> None:
    if sorted(state["counters"]) != sorted(self._names):
      raise ValueError(f"State is for tasks {sorted(state['counters'])}, this iterator has {sorted(self._names)}")
    self._step = int(state["step"])

  def plan(self, count: int, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per task and step, steps in order, tasks in config order within a step."""
    out = []
    for k in range(int(state["step"]), int(state["step"]) + count):
      for name in self._names:
        batches = self._ds.batches[name]
        out.append(
          {"task": name, "step": k, "examples": batches.data.examples(batches.global_indices(k), batches.vocab.texts)}
        )
    return out


class _MixedMixture(grain.IterDataset):
  """Mixed batches of pair tasks: each example's task is drawn with the
  sampling probabilities; windows of examples are length-sorted into global
  batches, of which this host yields its rows."""

  def __init__(
    self,
    datas: dict[str, _TaskData],
    probs: dict[str, float],
    vocab: Vocab,
    *,
    rows: int,
    window: int,
    buckets: Sequence[int],
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    super().__init__()
    self.datas, self.probs, self.vocab = datas, probs, vocab
    self.rows, self.window, self.buckets, self.seed = rows, window, buckets, seed
    self.host = _Host(rows, process_index, process_count)
    self.streams = {n: _Stream(len(d), seed, i) for i, (n, d) in enumerate(datas.items())}

  def __iter__(self):
    return _MixedIterator(self)


class _MixedIterator(grain.DatasetIterator):
  def __init__(self, ds: _MixedMixture):
    super().__init__()
    self._ds = ds
    self._names = list(ds.datas)
    self._p = np.array([ds.probs[n] for n in self._names])
    self._window, self._slot = 0, 0
    self._offsets = {n: 0 for n in self._names}  # stream positions at window start
    self._cached = None

  def _window_batches(self):
    if self._cached is None or self._cached[0] != self._window:
      ds, size = self._ds, self._ds.window * self._ds.rows
      rng = np.random.default_rng([ds.seed, self._window, 4])
      choice = rng.choice(len(self._names), size=size, p=self._p)
      task_id = np.empty(size, dtype=np.int32)
      ex = np.empty(size, dtype=np.int64)
      key = np.empty(size, dtype=np.int64)
      ends = {}
      for t, name in enumerate(self._names):
        sel = np.flatnonzero(choice == t)
        idx = ds.streams[name].take(self._offsets[name], len(sel))
        ends[name] = self._offsets[name] + len(sel)
        task_id[sel], ex[sel] = t, idx
        key[sel] = _mixed_key(ds.datas[name], ds.vocab, idx, ds.buckets)
      order = _window_order(key, ds.rows, ds.window, rng)
      self._cached = (self._window, [(task_id[o], ex[o]) for o in order], ends)
    return self._cached

  def __next__(self):
    _, batches, ends = self._window_batches()
    ds = self._ds
    task_id, ex = (x[ds.host.rows] for x in batches[self._slot])
    datas = [ds.datas[self._names[t]] for t in task_id.tolist()]
    a = np.array([d.a[i] for d, i in zip(datas, ex)], dtype=np.int64)
    b = np.array([d.b[i] for d, i in zip(datas, ex)], dtype=np.int64)
    label = np.array([d.label[i] for d, i in zip(datas, ex)], dtype=np.float32)
    left_ids, left_mask = ds.vocab.pad(a, ds.buckets)
    right_ids, right_mask = ds.vocab.pad(b, ds.buckets)
    self._slot += 1
    if self._slot == ds.window:
      self._window, self._slot, self._offsets = self._window + 1, 0, dict(ends)
    return {
      "task": "mixed",
      "task_id": task_id.astype(np.int32),
      "left_ids": left_ids,
      "left_mask": left_mask,
      "right_ids": right_ids,
      "right_mask": right_mask,
      "label": label,
    }

  def get_state(self) -> dict[str, Any]:
    return {"window": self._window, "slot": self._slot, "offsets": dict(self._offsets)}

  def set_state(self, state: dict[str, Any]) -> None:
    if sorted(state["offsets"]) != sorted(self._names):
      raise ValueError(f"State is for tasks {sorted(state['offsets'])}, this iterator has {sorted(self._names)}")
    self._window, self._slot = int(state["window"]), int(state["slot"])
    self._offsets = {n: int(state["offsets"][n]) for n in self._names}


class TrainIterator:
  """The training iterator: batches plus JSON-serialisable get_state/set_state.

  Attributes: task_names (order of ``task_id`` in mixed batches),
  probabilities, label_names (classification tasks).
  The state does not depend on the host, so it can be saved by one host and
  restored on any number of hosts.
  """

  def __init__(self, dataset: grain.IterDataset, *, task_names, probabilities, label_names):
    self._it = iter(dataset)
    self.task_names = list(task_names)
    self.probabilities = probabilities
    self.label_names = label_names

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return self._it.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._it.set_state(state)

  def batch_plan(self, count: int, state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """What the next `count` GLOBAL batches from `state` (default: the current state) hold, without consuming
    the iterator: ``[{"task": name, "examples": [example dicts in row order, as task_examples gives them]}]``.

    Batches carry token ids only; this gives their texts, e.g. to feed another trainer the same examples.
    Single-task batches only (mixed=False); with all_tasks_per_step, one entry per task and step (with its "step").
    """
    if not isinstance(self._it, (_SingleTaskIterator, _AllTasksIterator)):
      raise ValueError("batch_plan needs single-task batches; this iterator mixes tasks (mixed=True)")
    return self._it.plan(count, self.get_state() if state is None else state)


def make_train_iterator(
  data_config, tokenizer, *, seed: int, process_index: int = 0, process_count: int = 1
) -> TrainIterator:
  """Endless training batches of the configured tasks (see module docstring).

  Pair batch: task, left_ids, left_mask, right_ids, right_mask (int32 [B, L]),
  label float32 [B]. Classification: task, ids, mask, label int32 [B] or
  labels float32 [B, C]. Mixed: task == 'mixed' plus task_id int32 [B]. all_tasks_per_step: task == 'all' and
  batches, one single-task batch per task (in config order), each of batch_size rows.
  B = batch_size // process_count: rows [process_index * B, (process_index + 1) * B)
  of the global batch, which is the same for any process_count.
  """
  config = data_config
  tasks = config_lib.resolve_training_tasks(config, process_index=process_index, process_count=process_count)
  examples = {n: examples_lib.task_examples(t, "train", config, seed=seed) for n, t in tasks.items()}
  empty = [n for n, e in examples.items() if not e]
  if empty:
    raise ValueError(f"Tasks {empty} have no training examples")
  names = {n: examples_lib.label_names(t, config) for n, t in tasks.items()}
  texts = [v for ex in examples.values() for e in ex for k, v in e.items() if k in ("left", "right", "text")]
  vocab = Vocab(tokenizer, texts, int(config.max_length), length_key=config.get("length_key", "tokens"))
  datas = {n: _task_data(n, tasks[n], examples[n], vocab, len(names[n] or ())) for n in examples}
  probs = config_lib.task_probabilities(config, {n: len(d) for n, d in datas.items()})
  buckets = bucket_list(config.max_length, config.bucket_lengths)
  window = max(1, int(config.shuffle_window))
  hosts = dict(process_index=process_index, process_count=process_count)
  if config.mixed:
    ds = _MixedMixture(datas, probs, vocab, rows=config.batch_size, window=window, buckets=buckets, seed=seed, **hosts)
  else:
    per_task = {
      n: TaskBatches(d, vocab, rows=config.batch_size, window=window, buckets=buckets, seed=seed, task_index=i, **hosts)
      for i, (n, d) in enumerate(datas.items())
    }
    if config.get("task_mixing", config_lib.TASK_MIXING[0]) == "all_tasks_per_step":
      ds = _AllTasksMixture(per_task)
    else:
      ds = _SingleTaskMixture(per_task, probs, seed)
  return TrainIterator(
    ds, task_names=list(datas), probabilities=probs, label_names={n: v for n, v in names.items() if v is not None}
  )
