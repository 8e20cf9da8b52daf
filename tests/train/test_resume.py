"""Resuming: a workdir whose checkpoint is another run's (other tasks, model or embedding width) fails with one
line naming the difference, and a resumed run's metrics log holds each step once (metrics.jsonl cut back to the
restored step, TensorBoard told to purge the later events)."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from conftest import FAST
from tensorboard.backend.event_processing import event_accumulator

from postembed_jax.launching import EXIT_USER_ERROR
from postembed_jax.train import checkpoint
from postembed_jax.train.metrics_writer import MetricsWriter, read_metrics

RUN = {"seed": 0, "model": "", "tasks": ["search", "storyline"], "embed_dim": 16}


def _state(width: int, heads=("search", "storyline")):
  return {
    "params": {
      "tower": {"projection": {"kernel": jnp.zeros((4, width))}},
      "heads": {t: {"bias": jnp.zeros(())} for t in heads},
    },
    "step": jnp.int32(3),
  }


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.fixture
def saved(tmp_path):
  """A workdir with one checkpoint (step 3) of RUN's tasks, model and width; returns (manager, model dir)."""
  model = tmp_path / "model"
  model.mkdir()
  options = ml_collections.ConfigDict({"every_steps": 1, "keep": 1, "async_save": False})
  manager = checkpoint.make_manager(tmp_path / "run", options, best_metric=None)
  run = dict(RUN, model=str(model))
  checkpoint.save(manager, 3, _state(16), {"position": 3}, run, force=True)
  return manager, model


def test_this_runs_checkpoint_resumes(saved, tmp_path):
  manager, _ = saved
  spelled_otherwise = str(tmp_path / "run" / ".." / "model")  # one directory, two spellings
  checkpoint.check_resumable(manager, 3, _abstract(_state(16)), dict(RUN, model=spelled_otherwise))


def test_other_tasks_model_and_width_are_named(saved, tmp_path):
  manager, model = saved
  other = dict(RUN, tasks=["search", "interest"], model=str(tmp_path), embed_dim=8)
  with pytest.raises(checkpoint.ResumeMismatch) as caught:
    checkpoint.check_resumable(manager, 3, _abstract(_state(8, ("search", "interest"))), other)
  assert str(caught.value) == (
    f"Cannot resume from {tmp_path}/run/checkpoints/3, another run's checkpoint: "
    "its tasks ['search', 'storyline'], this run's ['search', 'interest'] (config.data.tasks); "
    f"its model {str(model)!r}, this run's {str(tmp_path)!r} (config.model); "
    "its embedding width 16, this run's 8 (config.embed_dim). "
    "Use a new --workdir for this run, or resume with the settings the checkpoint was trained with."
  )


def test_without_recorded_fields_the_shapes_are_compared(saved, tmp_path):
  """A checkpoint written before the width was recorded (or a difference the metadata does not hold)."""
  manager, model = saved
  with pytest.raises(checkpoint.ResumeMismatch) as caught:
    checkpoint.check_resumable(manager, 3, _abstract(_state(8, ("search",))), {"model": str(model)})
  message = str(caught.value)
  assert (
    "another run's checkpoint: it has params/heads/storyline/bias, this run has not; "
    "its params/tower/projection/kernel has shape (4, 16), this run's (4, 8). Use a new --workdir" in message
  ), message


def test_resuming_another_runs_workdir_fails_in_one_line(train_cmd, baseline, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  shutil.copytree(baseline[0] / "checkpoints", workdir / "checkpoints")
  shutil.copy(baseline[0] / "config.json", workdir / "config.json")
  result = train_cmd(workdir, *FAST, "--config.data.tasks=search,interest", "--config.export=False")
  assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"train.py: error: Cannot resume from {workdir}/checkpoints/20, another run's checkpoint: ")
  assert "its tasks ['search', 'storyline'], this run's ['search', 'interest'] (config.data.tasks)" in last
  assert last.endswith("Use a new --workdir for this run, or resume with the settings the checkpoint was trained with.")
  # The failed attempt left the workdir's record of its run alone.
  assert (workdir / "config.json").read_text() == (baseline[0] / "config.json").read_text()


def test_a_resumed_run_logs_each_step_once(tmp_path):
  first = MetricsWriter(tmp_path)
  for step in range(1, 8):
    first.write(step, {"train/loss": float(step)})
  first.close()
  with open(tmp_path / "metrics.jsonl", "a") as log:
    log.write('{"step": 8, "train/lo')  # the line the killed attempt was writing
  # The checkpoint it resumes from is step 5: steps 6 and 7 are trained again.
  resumed = MetricsWriter(tmp_path, keep_through=5)
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
  resumed.write(6, {"train/loss": 60.0})
  resumed.close()
  assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [(s, s) for s in range(1, 6)] + [(6, 60)]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]  # no temporary file left
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()  # reads both attempts' event files; the first attempt's steps 6 and 7 are purged
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, s) for s in range(1, 6)] + [(6, 60)]

  # A fresh start (no checkpoint to resume) keeps nothing of an earlier attempt.
  MetricsWriter(tmp_path, keep_through=-1).close()
  assert read_metrics(tmp_path) == []
