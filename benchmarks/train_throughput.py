"""Training pairs/s of the library's trainer against the PyTorch fine-tuning loop a user would write, on the same
real Debian pairs, in one run.

  python -m benchmarks.train_throughput [--rounds 3] [--steps 4] [--control 1] [--config configs/mtl.py]

Ours: ``postembed_jax.train.setup.build(config)``, the trainer the training loop runs (pretrained
all-MiniLM-L6-v2 -> 50-d, AdamW with warm-up, clipping, BCE on scale * cos + bias, dropout on), fed by its own
iterator (length-bucketed single-task batches of the tasks of configs/mtl.py, batch 32, max length 128; one task
per step, a random projection start, BCE on every task at weight 1 whatever the config says:
``TORCH_LOOP_SETTINGS``).

Reference: transformers' AutoModel of the same checkpoint + mean pooling + Linear(384, 50) + normalise, the same
loss, AdamW with the same learning rates, weight decay, schedule and clip norm, dropout on (``model.train()``).
It trains on exactly the examples our timed steps train on (``TrainIterator.batch_plan``: same tasks in the same
step order, same batch size), each task's examples served by a shuffled ``DataLoader`` whose ``collate_fn``
tokenises the usual way (``tokenizer(..., padding=True, truncation=True, max_length=128)``: padded to the longest
text of the batch, no length sorting). The two alternate in rounds, so machine load hits both alike.

Counted: pairs per second of wall time, data (batch assembly / tokenisation) plus compute. JAX compile time and
the torch warm-up are excluded from the throughput and reported. Our pipeline tokenises each text once, a window of
``shuffle_window`` batches of a task at a time; every timed step is charged its share of that window cost
(measured), so the comparison is the steady state of a long run. A control re-runs torch on our very batches
(same tensors, same shapes) to separate padding from kernel speed, and an estimate gives the padding of a
DataLoader shuffling each task's whole training set.

Both run in one process under ``host_malloc.keep_freed_memory()``, which a training launcher sets as well;
``POSTEMBED_MALLOC=default`` runs both under glibc's malloc settings instead (results named ``*_glibc_malloc``).
The page faults and system CPU time of the timed steps are recorded for each side. One untimed pass of the
same rounds comes first (``--heap_passes``): it grows the shared heap to what both sides' buffers need, so the timed
steps meet the heap a long run's steps meet.

Writes benchmarks/results/train_throughput.{json,md} (train_throughput_packed.* with ``--pack_pairs=1``). The
reference loop is benchmarks/torch_reference.py; this file is the harness, and it stays one module past the
~400-line rule because its remaining parts (the interleaved timed rounds, the tokenisation accounting, the
same-batches control and the profile that splits the ratio into padding and kernel speed) all fill and read the
one result dict of a run, so none stands on its own.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.torch_reference import TorchTrainer, calibrate_threads
from postembed_jax import config_overrides, host_malloc
from postembed_jax.data import tokenize
from postembed_jax.train import config as train_config
from postembed_jax.train import setup
from postembed_jax.train import step as step_lib

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5
# Set over the config's own (configs/mtl.py's main job trains every task in every step from a PCA start): the
# torch loop a user writes trains one task per step from that task's DataLoader, and the batch plan that feeds it
# our examples is per task and step; the projection's start does not change what a step costs, and fitting the PCA
# would add minutes of start-up. The torch loop's loss is BCE on cosine for every task, so ours is too (the main job
# trains the text-to-text tasks with InfoNCE), with every task's loss weighted 1 as in the torch loop.
TORCH_LOOP_SETTINGS = {
  "data.task_mixing": "one_task_per_step",
  "projection_init": "random",
  **{f"task_losses.{t}": "bce" for t in train_config.PAIR_TASKS},
  **{f"loss_weights.{t}": 1.0 for t in train_config.PAIR_TASKS},
}


def load_config(spec: str = "configs/mtl.py"):
  """A training config from a config file, ``path[:arg]`` as launch/train.py takes it, relative to the repo, with
  ``TORCH_LOOP_SETTINGS`` set over it."""
  config = config_overrides.load_config(str(REPO / spec))
  config.update_from_flattened_dict(TORCH_LOOP_SETTINGS)
  return config


def step_arrays(config, batch: dict[str, Any]) -> dict[str, Any]:
  """The arrays the step computes on (one device): the batch's, or its packed rows with ``config.pack_pairs``."""
  return tokenize.pack_pair_batch(batch) if config.get("pack_pairs", False) else batch


def compile_key(config, batch: dict[str, Any]) -> tuple:
  """What a compiled step is specialised to: its step key and the shapes of the arrays it computes on."""
  arrays = step_arrays(config, batch)
  return (step_lib.step_key(batch),) + tuple(v.shape for _, v in sorted(arrays.items()) if isinstance(v, np.ndarray))


def computed_positions(config, batch: dict[str, Any]) -> int:
  """Token positions the step computes, padding included."""
  arrays = step_arrays(config, batch)
  if "packed_ids" in arrays:
    return int(arrays["packed_ids"].size)
  return int(arrays["left_ids"].size + arrays["right_ids"].size)


def check_plan(plan: list[dict[str, Any]], batches: list[dict[str, Any]], tokenizer, max_length: int) -> None:
  """Fails unless tokenising the planned texts gives exactly the ids (and labels) of the pipeline's batches."""
  for p, b in zip(plan, batches, strict=True):
    assert p["task"] == b["task"], (p["task"], b["task"])
    np.testing.assert_array_equal([e["label"] for e in p["examples"]], b["label"])
    for side in ("left", "right"):
      encoded = tokenizer([e[side] for e in p["examples"]], truncation=True, max_length=max_length)["input_ids"]
      for row, ids in enumerate(encoded):
        mask = b[f"{side}_mask"][row]
        assert int(mask.sum()) == len(ids) and list(b[f"{side}_ids"][row, : len(ids)]) == ids, (
          f"{b['task']} {side} row {row}: the planned text does not tokenise to the batch's ids"
        )


def _cache_entries(cache_dir) -> int:
  """Executables in JAX's persistent cache (a warm-up that writes one per shape compiled them all cold)."""
  if not cache_dir or not Path(cache_dir).is_dir():
    return 0
  return sum(1 for p in Path(cache_dir).iterdir() if not p.name.endswith("-atime"))


@dataclasses.dataclass
class StepLog:
  """One timed step of one side."""

  task: str
  data_s: float
  compute_s: float
  pairs: int
  real_tokens: int
  padded_tokens: int


def _log(task, data_s, compute_s, label, left_mask, right_mask, positions: int | None = None) -> StepLog:
  """``positions``: what the step computed, when not the masks' size (packed rows)."""
  left_mask, right_mask = np.asarray(left_mask), np.asarray(right_mask)
  positions = int(left_mask.size + right_mask.size) if positions is None else positions
  return StepLog(task, data_s, compute_s, len(label), int(left_mask.sum() + right_mask.sum()), positions)


def _summary(logs: list[StepLog]) -> dict[str, Any]:
  data, compute = sum(l.data_s for l in logs), sum(l.compute_s for l in logs)
  pairs, real, padded = sum(l.pairs for l in logs), sum(l.real_tokens for l in logs), sum(l.padded_tokens for l in logs)
  return {
    "steps": len(logs),
    "pairs": pairs,
    "seconds": data + compute,
    "pairs_per_s": pairs / max(data + compute, 1e-12),
    "data_ms_per_step": 1e3 * data / len(logs),
    "compute_ms_per_step": 1e3 * compute / len(logs),
    "real_tokens": real,
    "padded_tokens": padded,
    "padding_fraction": 1 - real / padded,
    "mean_real_length": real / (2 * pairs),
    "mean_padded_length": padded / (2 * pairs),
    "compute_us_per_padded_token": 1e6 * compute / padded,
  }


def full_shuffle_padding(config, tasks: list[str], reference: TorchTrainer, *, samples: int = 10) -> dict[str, float]:
  """Padding of ``samples`` random batches per timed step from the step's whole task, as a DataLoader shuffling
  each task's training set gives them: the timed torch batches are drawn from the timed examples alone, a pool of
  a few of our length-sorted batches per task, so they pad less than a user's loop would."""
  from postembed_jax.data import config as data_config_lib
  from postembed_jax.data import examples as examples_lib

  pools = {
    name: examples_lib.task_examples(task, "train", config.data, seed=config.seed)
    for name, task in data_config_lib.resolve_tasks(config.data).items()
    if name in tasks
  }
  rng = np.random.default_rng([config.seed, 11])
  real = padded = 0
  for task in tasks:
    for _ in range(samples):
      rows = [pools[task][i] for i in rng.choice(len(pools[task]), reference.batch_size, replace=False)]
      for side in ("left", "right"):
        lengths = [
          len(x)
          for x in reference.tokenizer([r[side] for r in rows], truncation=True, max_length=reference.max_length)[
            "input_ids"
          ]
        ]
        real, padded = real + sum(lengths), padded + max(lengths) * len(lengths)
  texts = 2 * reference.batch_size * len(tasks) * samples
  return {
    "batches": len(tasks) * samples,
    "padding_fraction": 1 - real / padded,
    "mean_real_length": real / texts,
    "mean_padded_length": padded / texts,
  }


def run_benchmark(
  config,
  *,
  rounds: int,
  steps: int,
  control: int = 1,
  torch_threads: int = 0,
  torch_warmup: int = 1,
  heap_passes: int = 1,
  log=print,
) -> dict[str, Any]:
  """Interleaved rounds of ``steps`` steps of ours, then of torch on the same examples, after ``heap_passes``
  untimed passes of the same rounds; returns the result dict."""
  import jax
  import torch

  total = rounds * steps
  start = time.perf_counter()
  ours = setup.build(config)
  jax.block_until_ready(ours.state)
  build_s = time.perf_counter() - start
  log(f"ours: trainer built in {build_s:.1f} s; tasks {ours.task_names}")
  reference = TorchTrainer(ours.model_dir, config, ours.task_names, threads=torch_threads)
  log(f"torch: loaded in {reference.load_s:.1f} s, attention {reference.attention}")

  # The batches the timed steps will see (pulling them once tokenises and caches their texts, so each timed step
  # is charged its share of the tokenisation below), then their plan, checked against them.
  it = ours.train_iter
  start_state = it.get_state()
  batches, pull_s = [], []
  for _ in range(total):
    t0 = time.perf_counter()
    batches.append(next(it))
    pull_s.append(time.perf_counter() - t0)
  plan = it.batch_plan(total, start_state)
  check_plan(plan, batches, reference.tokenizer, config.data.max_length)
  window = max(1, int(config.data.shuffle_window))
  # A task's first batch of a window tokenises the whole window (window * batch_size pairs).
  first_of_window, seen = [], set()
  counters = dict(start_state["counters"])
  for b in batches:
    key = (b["task"], counters[b["task"]] // window)
    first_of_window.append(key not in seen)
    seen.add(key)
    counters[b["task"]] += 1
  typical_pull = float(np.median([s for s, f in zip(pull_s, first_of_window) if not f] or [0.0]))
  window_tokenise_s = sum(max(s - typical_pull, 0.0) for s, f in zip(pull_s, first_of_window) if f)
  tokenise_share_s = window_tokenise_s / (len(seen) * window)
  log(
    f"pipeline: {len(seen)} task windows tokenised in {window_tokenise_s:.2f} s "
    f"-> {1e3 * tokenise_share_s:.1f} ms charged per step"
  )

  # Warm-up: compile every (task, shapes) the timed steps use; torch runs a few steps on planned examples.
  cache_dir = jax.config.jax_compilation_cache_dir
  cache_before = _cache_entries(cache_dir)
  shapes: dict[tuple, float] = {}
  for b in batches:
    key = compile_key(config, b)
    if key not in shapes:
      t0 = time.perf_counter()
      ours.train_step(b)
      shapes[key] = time.perf_counter() - t0
      log(f"  compiled {key} in {shapes[key]:.1f} s")
  cache_added = _cache_entries(cache_dir) - cache_before if cache_dir else None
  t0 = time.perf_counter()
  thread_step_s = calibrate_threads(
    reference,
    plan[0],
    [torch_threads] if torch_threads else sorted({1, reference.default_threads}),
    warmup=torch_warmup,
  )
  torch.set_num_threads(min(thread_step_s, key=thread_step_s.get))
  torch_warmup_s = time.perf_counter() - t0
  log(f"torch: step seconds by thread count {thread_step_s}; using {torch.get_num_threads()}")

  # Timed rounds, after ``heap_passes`` untimed passes over the same schedule: both sides share one heap, and
  # the first pass grows it while torch's and our buffers interleave (tens of thousands of page faults a step on our
  # side). A long run meets its shapes again and again; this is its steady state.
  warmup_kernel_time: dict[str, _KernelTime] = {}  # of the last untimed pass; none with heap_passes=0
  for timed in [False] * heap_passes + [True]:
    it.set_state(start_state)
    loaders = reference.loaders(plan)
    logs: dict[str, list[StepLog]] = {"postembed_jax": [], "torch": [], "torch_same_batches": []}
    control_ours: list[StepLog] = []
    compute_by_shape: dict[tuple, list[float]] = collections.defaultdict(list)
    round_ratios = []
    kernel_time = {"postembed_jax": _KernelTime(), "torch": _KernelTime()}  # page faults and system time of steps
    for r in range(rounds):
      span = range(r * steps, (r + 1) * steps)
      ours_logs, ref_logs = [], []
      for s in span:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        with kernel_time["postembed_jax"]:
          ours.train_step(batch)
        t2 = time.perf_counter()
        assert batch["task"] == batches[s]["task"] and batch["left_ids"].shape == batches[s]["left_ids"].shape
        ours_logs.append(
          _log(
            batch["task"],
            t1 - t0 + tokenise_share_s,
            t2 - t1,
            batch["label"],
            batch["left_mask"],
            batch["right_mask"],
            computed_positions(config, batch),
          )
        )
        compute_by_shape[compile_key(config, batch)].append(t2 - t1)
      for s in span:
        task = batches[s]["task"]
        t0 = time.perf_counter()
        tb = next(loaders[task])
        t1 = time.perf_counter()
        with kernel_time["torch"]:
          reference.train_step(task, tb)
        ref_logs.append(_log(task, t1 - t0, time.perf_counter() - t1, tb["label"], tb["left_mask"], tb["right_mask"]))
      for s in list(span)[:control]:  # torch on our very tensors: same shapes, so only the kernels differ
        b = batches[s]
        t0 = time.perf_counter()
        reference.train_step(b["task"], reference.from_numpy(b))
        logs["torch_same_batches"].append(
          _log(b["task"], 0.0, time.perf_counter() - t0, b["label"], b["left_mask"], b["right_mask"])
        )
        control_ours.append(ours_logs[s - span.start])
      logs["postembed_jax"] += ours_logs
      logs["torch"] += ref_logs
      ratio = _summary(ours_logs)["pairs_per_s"] / _summary(ref_logs)["pairs_per_s"]
      round_ratios.append(ratio)
      log(
        f"{'round' if timed else 'untimed heap pass, round'} {r + 1}/{rounds}: ours "
        f"{_summary(ours_logs)['pairs_per_s']:.2f} pairs/s, torch {_summary(ref_logs)['pairs_per_s']:.2f} pairs/s, "
        f"ratio {ratio:.2f}x"
      )
    if not timed:
      warmup_kernel_time = kernel_time

  full_shuffle = full_shuffle_padding(config, [b["task"] for b in batches], reference)
  # Compile time: first call of each shape minus what that shape's step costs once compiled.
  compile_s = sum(max(first - float(np.median(compute_by_shape[k])), 0.0) for k, first in shapes.items())

  summaries = {k: _summary(v) for k, v in logs.items() if v}
  ours_s, ref_s = summaries["postembed_jax"], summaries["torch"]
  result = {
    "machine": common.machine(),
    "versions": {
      "torch": torch.__version__,
      "transformers": __import__("transformers").__version__,
      "jax": jax.__version__,
    },
    "torch_threads": torch.get_num_threads(),
    "torch_attention": reference.attention,
    "model": str(config.model),
    "tasks": ours.task_names,
    "config_overrides": TORCH_LOOP_SETTINGS,
    "batch_size": int(config.data.batch_size),
    "pack_pairs": bool(config.get("pack_pairs", False)),
    "cpu_devices": int(config.get("cpu_devices", 0)),
    "devices": jax.device_count(),
    "max_length": int(config.data.max_length),
    "bucket_lengths": list(config.data.bucket_lengths),
    "shuffle_window": window,
    "rounds": rounds,
    "steps_per_round": steps,
    "control_steps_per_round": control,
    "postembed_jax": ours_s,
    "torch": ref_s,
    "speedup": ours_s["pairs_per_s"] / ref_s["pairs_per_s"],
    "speedup_per_round": round_ratios,
    "target": TARGET,
    "warmup": {
      "jax_compile_s": compile_s,
      "jax_first_calls_s": sum(shapes.values()),
      "jax_compiled_shapes": len(shapes),
      "jax_compilation_cache_dir": cache_dir,
      "jax_cache_entries_written": cache_added,
      "torch_warmup_s": torch_warmup_s,
      "torch_warmup_steps": len(thread_step_s) * (torch_warmup + 1),
      "torch_step_s_by_threads": {str(k): v for k, v in thread_step_s.items()},
    },
    "startup": {"jax_trainer_s": build_s, "torch_model_s": reference.load_s},
    "host_malloc_kept": host_malloc.kept(),
    "heap_passes": heap_passes,
    "kernel_time_per_step": {k: v.per_step(total) for k, v in kernel_time.items()},
    "kernel_time_per_step_untimed_pass": {k: v.per_step(total) for k, v in warmup_kernel_time.items()},
    "pipeline_tokenisation": {
      "windows": len(seen),
      "seconds": window_tokenise_s,
      "charged_ms_per_step": 1e3 * tokenise_share_s,
    },
    "torch_full_shuffle_estimate": full_shuffle,
    "same_pairs": {
      "real_tokens_equal": ours_s["real_tokens"] == ref_s["real_tokens"],
      "pairs_checked_against_pipeline_ids": True,
    },
  }
  if logs["torch_same_batches"]:
    same, ours_ctl = summaries["torch_same_batches"], _summary(control_ours)
    result["control_same_batches"] = {
      "steps": same["steps"],
      "torch_compute_ms_per_step": same["compute_ms_per_step"],
      "postembed_jax_compute_ms_per_step": ours_ctl["compute_ms_per_step"],
      "kernel_speedup": same["compute_ms_per_step"] / ours_ctl["compute_ms_per_step"],
    }
  result["profile"] = profile(result)
  return result


class _KernelTime:
  """Minor page faults, system and user CPU seconds and wall seconds of the code run inside ``with``, summed over
  its uses: what the process spends in the kernel mapping memory (see postembed_jax/host_malloc.py), and how many
  cores it kept busy."""

  def __init__(self):
    self.faults, self.system_s, self.user_s, self.wall_s = 0, 0.0, 0.0, 0.0

  def __enter__(self):
    self._start = resource.getrusage(resource.RUSAGE_SELF)
    self._wall = time.perf_counter()

  def __exit__(self, *exc):
    end = resource.getrusage(resource.RUSAGE_SELF)
    self.wall_s += time.perf_counter() - self._wall
    self.faults += end.ru_minflt - self._start.ru_minflt
    self.system_s += end.ru_stime - self._start.ru_stime
    self.user_s += end.ru_utime - self._start.ru_utime

  def per_step(self, steps: int) -> dict[str, float]:
    return {
      "minor_faults": self.faults / steps,
      "system_s": self.system_s / steps,
      "cpu_s": (self.user_s + self.system_s) / steps,
      "cores_busy": (self.user_s + self.system_s) / max(self.wall_s, 1e-9),
    }


def profile(result: dict[str, Any]) -> dict[str, float]:
  """Splits the speed-up into data, padding and kernel factors (step time = data + compute, compute ~ padded
  positions x time per position)."""
  o, t, f = result["postembed_jax"], result["torch"], result["torch_full_shuffle_estimate"]
  out = {
    "padded_token_ratio": t["padded_tokens"] / o["padded_tokens"],
    "full_shuffle_padded_token_ratio": (f["mean_padded_length"] / f["mean_real_length"])
    / (o["mean_padded_length"] / o["mean_real_length"]),
    "compute_per_padded_token_ratio": t["compute_us_per_padded_token"] / o["compute_us_per_padded_token"],
    "compute_speedup": t["compute_ms_per_step"] / o["compute_ms_per_step"],
    "data_share_ours": o["data_ms_per_step"] / (o["data_ms_per_step"] + o["compute_ms_per_step"]),
    "data_share_torch": t["data_ms_per_step"] / (t["data_ms_per_step"] + t["compute_ms_per_step"]),
  }
  if "control_same_batches" in result:
    out["kernel_speedup_same_batches"] = result["control_same_batches"]["kernel_speedup"]
  return out


def _profile_text(result: dict[str, Any]) -> list[str]:
  p, o, t, f = result["profile"], result["postembed_jax"], result["torch"], result["torch_full_shuffle_estimate"]
  speedup, target = result["speedup"], result["target"]
  lines = [
    "## Profile",
    "",
    f"Per step: ours {o['data_ms_per_step']:.0f} ms data (batch assembly + "
    f"{result['pipeline_tokenisation']['charged_ms_per_step']:.0f} ms tokenisation share) + "
    f"{o['compute_ms_per_step']:.0f} ms compute; torch {t['data_ms_per_step']:.0f} ms data (tokenisation in "
    f"the DataLoader) + {t['compute_ms_per_step']:.0f} ms compute. Data is {100 * p['data_share_ours']:.1f}% "
    f"of our step and {100 * p['data_share_torch']:.1f}% of torch's.",
    "",
    f"Padding: both sides train on the same {o['real_tokens']} real tokens; ours pads them to "
    f"{o['padded_tokens']} positions ({100 * o['padding_fraction']:.1f}% padding), torch to {t['padded_tokens']} "
    f"({100 * t['padding_fraction']:.1f}%): {p['padded_token_ratio']:.2f}x as many positions. A DataLoader "
    f"shuffling each task's whole training set (estimated from {f['batches']} random batches) pads "
    f"{100 * f['padding_fraction']:.1f}%, {p['full_shuffle_padded_token_ratio']:.2f}x our positions per real "
    f"token; the timed torch batches come from the timed examples only, so they pad less.",
    "",
    f"Compute: torch takes {p['compute_speedup']:.2f}x our compute time per step, "
    f"{p['compute_per_padded_token_ratio']:.2f}x ours per padded position.",
  ]
  if "kernel_speedup_same_batches" in p:
    c, k = result["control_same_batches"], p["kernel_speedup_same_batches"]
    lines[-1] += (
      f" On our very batches ({c['steps']} steps) torch computes in {c['torch_compute_ms_per_step']:.0f}"
      f" ms against our {c['postembed_jax_compute_ms_per_step']:.0f} ms: XLA's compute is {k:.2f}x "
      f"torch's speed, so everything but the kernels accounts for {speedup / k:.2f}x of the "
      f"{speedup:.2f}x."
    )
  verdict = "met" if speedup >= target else "missed"
  lines += [
    "",
    f"Target {target}x: {verdict} ({speedup:.2f}x). Against a whole-task shuffle the target needs our "
    f"compute per position at {target / p['full_shuffle_padded_token_ratio']:.2f}x torch's speed.",
  ]
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mtl.py", help="training config (its tasks and optimizer)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=4, help="steps of each side per round")
  parser.add_argument(
    "--control", type=int, default=1, help="per round, torch steps on our very batches (kernel-speed control); 0: none"
  )
  parser.add_argument("--pack_pairs", type=int, default=0, help="1: config.pack_pairs (texts packed into rows)")
  parser.add_argument(
    "--heap_passes", type=int, default=1, help="untimed passes of the rounds first (the shared heap grown); 0: none"
  )
  parser.add_argument(
    "--cpu_devices",
    type=int,
    default=None,
    help="config.cpu_devices (0: JAX's one, -1: one per core); default: the training config's; results of an "
    "explicit count are named *_cpu_devices_N, N the devices it ran on",
  )
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument(
    "--torch_threads", type=int, default=0, help="0: the faster of 1 and torch's default, measured at the start"
  )
  parser.add_argument(
    "--compilation_cache_dir",
    default=None,
    help="JAX's persistent compilation cache; default: the training config's (as a training run "
    "uses it); '' turns it off, so that every compile is cold",
  )
  args = parser.parse_args(argv)

  host_malloc.keep_freed_memory()  # as launching.run does for a training run; for torch's loop as well
  config = load_config(args.config)
  if args.compilation_cache_dir is not None:
    config.compilation_cache_dir = args.compilation_cache_dir
  config.data.batch_size = args.batch_size
  config.data.max_length = args.max_length
  config.pack_pairs = bool(args.pack_pairs)
  if args.cpu_devices is not None:
    config.cpu_devices = args.cpu_devices
  start = time.perf_counter()
  result = run_benchmark(
    config,
    rounds=args.rounds,
    steps=args.steps,
    control=args.control,
    torch_threads=args.torch_threads,
    heap_passes=args.heap_passes,
  )
  result["command"] = "python -m benchmarks.train_throughput " + " ".join(
    f"--{k}={v}" for k, v in vars(args).items() if v is not None
  )
  result["wall_s"] = time.perf_counter() - start
  name = "train_throughput" + ("_packed" if config.pack_pairs else "")
  name += f"_cpu_devices_{result['devices']}" if args.cpu_devices is not None else ""
  write(result, common.malloc_name(name, result["host_malloc_kept"]))


def write(result: dict[str, Any], name: str = "train_throughput") -> None:
  o, t, w = result["postembed_jax"], result["torch"], result["warmup"]
  rows = [
    ("postembed_jax (library trainer + grain pipeline)", f"{o['pairs_per_s']:.2f} pairs/s"),
    ("PyTorch loop (transformers, DataLoader)", f"{t['pairs_per_s']:.2f} pairs/s"),
    (
      f"speed-up (target {result['target']}x)",
      f"{result['speedup']:.2f}x (per round: {', '.join(f'{r:.2f}' for r in result['speedup_per_round'])})",
    ),
    ("ours: pairs packed into shared rows (config.pack_pairs)", "yes" if result.get("pack_pairs") else "no"),
    (
      "ours: devices of the data mesh (config.cpu_devices)",
      f"{result.get('devices', 1)} ({result.get('cpu_devices', 0)})",
    ),
    ("timed steps per side", f"{o['steps']} x {result['batch_size']} pairs, {result['rounds']} interleaved rounds"),
    ("padding fraction ours / torch", f"{o['padding_fraction']:.3f} / {t['padding_fraction']:.3f}"),
    ("mean padded length ours / torch", f"{o['mean_padded_length']:.1f} / {t['mean_padded_length']:.1f}"),
    ("mean real length (both)", f"{o['mean_real_length']:.1f} / {t['mean_real_length']:.1f}"),
    (
      "padding of a whole-task DataLoader shuffle (estimate)",
      f"{result['torch_full_shuffle_estimate']['padding_fraction']:.3f}",
    ),
    ("step ms ours: data + compute", f"{o['data_ms_per_step']:.0f} + {o['compute_ms_per_step']:.0f}"),
    ("step ms torch: data + compute", f"{t['data_ms_per_step']:.0f} + {t['compute_ms_per_step']:.0f}"),
    (
      "JAX compile (excluded)",
      f"{w['jax_compile_s']:.1f} s for {w['jax_compiled_shapes']} shapes "
      f"(first calls {w['jax_first_calls_s']:.1f} s); persistent cache "
      f"{w['jax_compilation_cache_dir'] or 'off'}, "
      f"{w['jax_cache_entries_written']} new entries",
    ),
    (
      "torch warm-up + thread choice (excluded)",
      f"{w['torch_warmup_s']:.1f} s for {w['torch_warmup_steps']} steps; step s by threads "
      f"{ {int(k): round(v, 2) for k, v in w['torch_step_s_by_threads'].items()} }",
    ),
    (
      "start-up: JAX trainer (data + model) / torch model",
      f"{result['startup']['jax_trainer_s']:.1f} / {result['startup']['torch_model_s']:.1f} s",
    ),
    ("torch threads, attention", f"{result['torch_threads']}, {result['torch_attention']}"),
    common.malloc_row(result["host_malloc_kept"]),
    (
      "per step, ours / torch: minor page faults, system CPU s",
      " / ".join(f"{k['minor_faults']:.0f}, {k['system_s']:.2f}" for k in result["kernel_time_per_step"].values()),
    ),
    (
      "per step, ours / torch: CPU s (user + system), cores kept busy",
      " / ".join(
        f"{k['cpu_s']:.2f}, {k['cores_busy']:.2f}" if "cpu_s" in k else "not recorded"
        for k in result["kernel_time_per_step"].values()
      ),
    ),
    (
      "the same in the untimed heap pass before (--heap_passes)",
      " / ".join(
        f"{k['minor_faults']:.0f}, {k['system_s']:.2f}"
        for k in result.get("kernel_time_per_step_untimed_pass", {}).values()
      )
      or "no such pass",
    ),
    (
      "config overrides (over --config)",
      ", ".join(f"{k}={v}" for k, v in result.get("config_overrides", {}).items()) or "none",
    ),
    (
      "machine",
      f"{result['machine']['processor']}, {result['machine']['cpus']} CPUs, JAX {result['machine']['jax_backend']}",
    ),
  ]
  if "wall_s" in result:
    rows.append(("benchmark wall time", f"{result['wall_s']:.0f} s"))
  common.write_result(name, result, rows)
  md = common.RESULTS / f"{name}.md"
  md.write_text(md.read_text() + "\n" + "\n".join(_profile_text(result)) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
