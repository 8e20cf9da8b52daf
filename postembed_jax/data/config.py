"""The data config: its fields and defaults, the checks that stop a bad one at start-up with the valid names,
and the task sampling probabilities it asks for."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from postembed_jax.data import debian, sources
from postembed_jax.data import tasks as tasks_lib
from postembed_jax.data.lists import as_list

SAMPLING = ("uniform", "proportional", "temperature", "weights")
LENGTH_KEYS = ("tokens", "bytes")
# one_task_per_step: each step draws one task (probabilities from `sampling`); all_tasks_per_step: each step holds
# one single-task batch of every task (the paper's multi-task step), and `sampling` weights the task losses.
TASK_MIXING = ("one_task_per_step", "all_tasks_per_step")


def default_data_config() -> ml_collections.ConfigDict:
  """All data settings with defaults; see docs/data.md for each field."""
  return ml_collections.ConfigDict(
    {
      "source": "debian",  # 'debian' or 'files' (only the tasks in `files`)
      # Corpus location. None: ~/.cache/postembed_jax/...; mirror None: apt sources.
      "data_dir": ml_collections.config_dict.placeholder(str),
      "cache_dir": ml_collections.config_dict.placeholder(str),
      "mirror": ml_collections.config_dict.placeholder(str),
      "index_dir": ml_collections.config_dict.placeholder(str),  # e.g. the test fixture
      "release": debian.DEFAULT_RELEASE,
      "component": "main",
      "arch": "amd64",
      "corpus_languages": ",".join(debian.DEFAULT_LANGUAGES),
      "languages": ",".join(tasks_lib.TRAIN_LANGUAGES),  # translation training
      "heldout_languages": ",".join(tasks_lib.HELDOUT_LANGUAGES),  # zs_translation
      "heldout_facets": ",".join(tasks_lib.HELDOUT_FACETS),  # zs_hashtag
      "tasks": ",".join(tasks_lib.PAIR_TASKS),  # every trainable pair task
      "files": ml_collections.config_dict.placeholder(str),  # "name=path,..." user data
      "search_query": "synopsis",  # 'synopsis', 'name' or 'both'
      "sampling": "temperature",
      "cap_k": 2**16,
      "temperature": 2.0,
      "weights": ml_collections.config_dict.placeholder(str),  # "task=w,..." for 'weights'
      "task_mixing": "one_task_per_step",  # or 'all_tasks_per_step' (see TASK_MIXING)
      "mixed": False,
      "batch_size": 32,  # global; each host gets batch_size / process_count
      "max_length": 128,
      "bucket_lengths": (32, 64, 96, 128),
      "shuffle_window": 50,  # batches sorted by length together
      "length_key": "tokens",  # sort windows by 'tokens' (exact) or 'bytes' (each host tokenises only its rows)
      "neg_ratio": 1.0,
      "hard_negatives": False,
      "max_examples_per_task": 0,  # 0 = no cap
      "task_fractions": ml_collections.config_dict.placeholder(str),  # "search=0.05": 5% of its examples; "=128": 128
    }
  )


def resolve_tasks(config, names=None, *, training: bool = True) -> dict[str, Any]:
  """Task objects for the names in config.tasks (or `names`), validated.

  Fails with the list of valid names on an unknown task, language, sampling
  strategy or weight; zero-shot tasks are refused for training.
  """
  file_tasks = sources.parse_files(config.get("files"))
  clash = set(file_tasks) & set(tasks_lib.TASKS)
  if clash:
    raise ValueError(f"User file tasks {sorted(clash)} clash with built-in task names")
  if config.source not in ("debian", "files"):
    raise ValueError(f"Unknown source {config.source!r}; valid: ['debian', 'files']")
  valid = sorted(file_tasks) + ([] if config.source == "files" else sorted(tasks_lib.TASKS))
  names = as_list(config.tasks if names is None else names)
  if not names:
    raise ValueError(f"No tasks configured; valid tasks: {valid}")
  out = {}
  for name in names:
    if name not in valid:
      raise ValueError(f"Unknown task {name!r}; valid tasks: {valid}")
    task = file_tasks[name] if name in file_tasks else tasks_lib.get_task(name, config)
    if training and task.zero_shot:
      trainable = sorted(file_tasks) + ([] if config.source == "files" else sorted(tasks_lib.TRAINABLE_TASKS))
      raise ValueError(f"Task {name!r} is held out for zero-shot evaluation; trainable tasks: {trainable}")
    out[name] = task
  if any(n in tasks_lib.TASKS for n in out):
    _check_languages(config)
  return out


def _check_languages(config) -> None:
  corpus = as_list(config.corpus_languages)
  for field in ("languages", "heldout_languages"):
    unknown = [l for l in as_list(config.get(field)) if l not in corpus]
    if unknown:
      raise ValueError(f"Unknown language(s) {unknown} in {field}; valid languages (corpus_languages): {corpus}")
  both = set(as_list(config.languages)) & set(as_list(config.heldout_languages))
  if both:
    raise ValueError(f"Languages {sorted(both)} are both trained on and held out")
  facets_bad = [f for f in as_list(config.heldout_facets) if not f or "::" in f]
  if facets_bad:
    raise ValueError(f'heldout_facets must be facet names like "works-with", got {facets_bad}')


def resolve_training_tasks(config, *, process_index: int = 0, process_count: int = 1) -> dict[str, Any]:
  """resolve_tasks for a training run, after the checks of its batching and sampling settings."""
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if config.sampling not in SAMPLING:
    raise ValueError(f"Unknown sampling {config.sampling!r}; valid: {list(SAMPLING)}")
  length_key = config.get("length_key", "tokens")
  if length_key not in LENGTH_KEYS:
    raise ValueError(f"Unknown length_key {length_key!r}; valid: {list(LENGTH_KEYS)}")
  mixing = config.get("task_mixing", TASK_MIXING[0])
  if mixing not in TASK_MIXING:
    raise ValueError(f"Unknown task_mixing {mixing!r}; valid: {list(TASK_MIXING)}")
  if config.mixed and mixing == "all_tasks_per_step":
    raise ValueError(
      "mixed=True (tasks mixed inside a batch) and task_mixing='all_tasks_per_step' (one batch of "
      "every task per step) exclude each other; set one of them."
    )
  tasks = resolve_tasks(config)
  fractions = [item.partition("=")[0].strip() for item in as_list(config.get("task_fractions"))]
  if any(name not in tasks for name in fractions):
    raise ValueError(
      f"task_fractions names {[n for n in fractions if n not in tasks]}, which are not among the "
      f"configured tasks {list(tasks)}"
    )
  if config.mixed and any(t.kind != "pair" for t in tasks.values()):
    raise ValueError(
      f"mixed=True mixes pair tasks only; classification tasks: {[n for n, t in tasks.items() if t.kind != 'pair']}"
    )
  return tasks


def task_probabilities(config, counts: dict[str, int]) -> dict[str, float]:
  """Sampling probability of each task from its (global) example count."""
  names = list(counts)
  n = np.array([counts[k] for k in names], dtype=np.float64)
  capped = np.minimum(n, float(config.cap_k))
  if config.sampling == "uniform":
    p = np.ones_like(n)
  elif config.sampling == "proportional":
    p = capped
  elif config.sampling == "temperature":
    if config.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {config.temperature}")
    p = capped ** (1.0 / config.temperature)
  elif config.sampling == "weights":
    weights = _parse_weights(config.weights)
    missing = [k for k in names if k not in weights]
    extra = [k for k in weights if k not in counts]
    if missing or extra:
      raise ValueError(f"weights must name exactly the tasks {names}; missing {missing}, unknown {extra}")
    p = np.array([weights[k] for k in names], dtype=np.float64)
  else:
    raise ValueError(f"Unknown sampling {config.sampling!r}; valid: {list(SAMPLING)}")
  if (p < 0).any() or p.sum() <= 0:
    raise ValueError(f"Task sampling weights must be >= 0 with a positive sum, got {p}")
  return dict(zip(names, (p / p.sum()).tolist()))


def _parse_weights(value) -> dict[str, float]:
  if value is None:
    raise ValueError('sampling="weights" needs config.weights like "interest=2,search=1"')
  if hasattr(value, "items"):
    return {k: float(v) for k, v in value.items()}
  out = {}
  for item in as_list(value):
    name, sep, w = item.partition("=")
    if not sep:
      raise ValueError(f'weights entry {item!r} must look like "task=weight"')
    out[name.strip()] = float(w)
  return out
