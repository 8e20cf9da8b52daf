"""Your own data end to end (docs/own_data.md): tasks read from JSONL and Parquet files train, validate, keep their
best checkpoint, export, evaluate, ablate and embed through the launchers, with no Debian corpus anywhere (every
launcher's corpus directories point at empty folders, so a read of the corpus would fail)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest

from postembed_jax.data import config as data_config_lib
from postembed_jax.data import sources
from postembed_jax.evaluation import evaluators
from postembed_jax.evaluation import examples as eval_examples
from postembed_jax.evaluation.baselines import TfidfEmbedder

REPO = Path(__file__).resolve().parents[1]
OWN = REPO / "tests" / "fixtures" / "own_data"
PAIRS, TOPICS, QUERIES = OWN / "pairs.jsonl", OWN / "topics.jsonl", OWN / "queries_{split}.jsonl"
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
# Short runs of the tiny model: tens of seconds each on a 2-core CPU, mostly start-up and compilation.
TINY_TRAIN = (
  "--config.total_steps=6",
  "--config.data.batch_size=8",
  "--config.data.max_length=32",
  "--config.data.bucket_lengths=(32,)",
  "--config.optim.warmup_steps=1",
  "--config.log_every_steps=1",
  "--config.eval.every_steps=2",
  "--config.checkpoint.every_steps=2",
  "--config.checkpoint.keep=1",
  "--config.embed_dim=16",
)


def _run(*args, timeout=600):
  result = subprocess.run(
    [sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def no_corpus(tmp_path_factory) -> tuple[str, ...]:
  """Empty corpus directories: any read of the Debian corpus would fail."""
  empty = tmp_path_factory.mktemp("no_corpus")
  return f"--config.data.data_dir={empty / 'tfds'}", f"--config.data.index_dir={empty / 'indexes'}"


@pytest.fixture(scope="module")
def pairs_parquet(tmp_path_factory) -> Path:
  """The pair fixture as Parquet (pyarrow from the JSONL rows)."""
  import pyarrow as pa

  path = tmp_path_factory.mktemp("parquet") / "pairs.parquet"
  rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
  pq.write_table(pa.Table.from_pylist(rows), path)
  return path


def _files_config(files: str, tasks: str) -> ml_collections.ConfigDict:
  config = data_config_lib.default_data_config()
  config.source, config.files, config.tasks = "files", files, tasks
  config.data_dir = config.index_dir = "/nonexistent/no_corpus"
  return config


def test_parquet_and_jsonl_give_the_same_tasks(pairs_parquet):
  from_jsonl, from_parquet = sources.file_task("a", str(PAIRS)), sources.file_task("a", str(pairs_parquet))
  assert from_jsonl.kind == from_parquet.kind == "pair"
  sizes = {}
  for split in sources.SPLITS:
    assert from_jsonl.records(split) == from_parquet.records(split)
    sizes[split] = len(from_jsonl.records(split))
  # One file, split by a hash of the left text: every row once, about 80/10/10.
  assert sum(sizes.values()) == 180 and sizes["train"] > 120 and sizes["validation"] > 0 and sizes["test"] > 0


def test_split_files_are_used_as_given():
  task = sources.file_task("queries", str(QUERIES))
  assert [len(task.records(s)) for s in sources.SPLITS] == [48, 12, 12]
  train_left = {r["left"] for r in task.records("train")}
  assert "resting meat after grilling" in {r["left"] for r in task.records("validation")} - train_left


def test_a_pair_file_retrieves_each_left_text_against_its_splits_right_texts():
  rows = sources.file_task("queries", str(QUERIES)).records("test")
  queries, docs, relevant = sources.file_task("queries", str(QUERIES)).retrieval(rows)
  assert len(queries) == 6 and docs == sorted({r["right"] for r in rows})
  positive = {r["left"]: r["right"] for r in rows if r["label"] == 1}
  assert [[docs[i] for i in hits] for hits in relevant] == [[positive[q]] for q in queries]
  # Two lefts sharing a right, a right labelled 1 with one left and 0 with another, a left equal to its right.
  task = sources.FileTask("t", "unused", "pair", False)
  records = [
    {"left": "q1", "right": "d1", "label": 1.0},
    {"left": "q2", "right": "d1", "label": 1.0},
    {"left": "q2", "right": "d2", "label": 0.0},
    {"left": "q3", "right": "d2", "label": 1.0},
    {"left": "d3", "right": "d3", "label": 1.0},
  ]
  assert task.retrieval(records) == (["q1", "q2", "q3"], ["d1", "d2", "d3"], [[0], [0], [1]])


def test_evaluation_reads_the_files_only():
  config = _files_config(f"pairs={PAIRS},topics={TOPICS},queries={QUERIES}", "pairs,topics,queries")
  assert eval_examples.configured_tasks(config, kind="pair") == ["pairs", "queries"]
  assert eval_examples.configured_tasks(config, kind="classification") == ["topics"]
  assert eval_examples.held_out_tasks(config) == []
  # Naming no label task falls back to the files' label tasks, never to the corpus's.
  assert eval_examples.configured_tasks(_files_config(f"p={PAIRS},t={TOPICS}", "p"), kind="classification") == ["t"]
  texts = eval_examples.corpus_texts("train", config)
  train = [r for n in ("pairs", "topics", "queries") for r in eval_examples.file_tasks(config)[n].records("train")]
  assert set(texts) == {r[k] for r in train for k in ("left", "right", "text") if k in r}
  assert "queries" not in " ".join(texts) and "resting meat after grilling" not in texts  # a validation query


def test_every_task_kind_gets_its_metrics():
  config = _files_config(f"pairs={PAIRS},topics={TOPICS},queries={QUERIES}", "pairs,topics,queries")
  embedder = TfidfEmbedder(eval_examples.corpus_texts("train", config))  # fitted on the files' training texts
  names = "pair_auc,hard_negatives,retrieval,classification,zero_shot"
  metrics = evaluators.evaluate(
    embedder, names, split="test", data_config=config, settings=evaluators.EvalSettings(bootstrap_resamples=20)
  )
  keys = {k for k in metrics if "/ci95_" not in k}
  pair = {"pair_auc", "triplet_accuracy", "recall@1", "recall@10", "mrr", "ndcg@10"}
  assert keys == {f"{t}/{m}" for t in ("pairs", "queries") for m in pair} | {
    "topics/linear_macro_f1",
    "topics/linear_map",
  }  # no hard negatives of a file's own negatives, no zero-shot task, nothing of the corpus
  assert all(0.0 <= v <= 1.0 for v in metrics.values())
  # Shared words find a query's post: far above chance (a random ranking of 12 or 27 documents: recall@1 0.08 or 0.04).
  assert metrics["queries/pair_auc"] > 0.6 and metrics["queries/mrr"] > 0.5 and metrics["pairs/recall@1"] > 0.15


def test_the_best_metric_fits_the_task_set():
  from postembed_jax.train import config as training
  from postembed_jax.train.loop import best_metric

  config = training.training_config("search")
  assert best_metric(config) == "val/mean_pair_auc"
  config.data = _files_config(f"topics={TOPICS}", "topics")
  config.eval.evaluators = "classification"
  assert best_metric(config) == "val/mean_linear_map"
  config.eval.evaluators = ""
  assert best_metric(config) is None
  config.checkpoint.best_metric = "val/topics/linear_map"
  with pytest.raises(ValueError, match="config.eval.evaluators is empty"):
    best_metric(config)


def test_a_multi_label_file_task_trains_with_a_sigmoid_head():
  from postembed_jax.train import config as training
  from postembed_jax.train import state

  config = training.training_config("topics")
  config.data = _files_config(f"topics={TOPICS},pairs={PAIRS}", "topics,pairs")
  infos = state.task_infos(config, {"topics": ["a", "b", "c"]}, ["topics", "pairs"])
  assert (infos["topics"].loss, infos["topics"].num_classes, infos["pairs"].loss) == ("sigmoid", 3, "bce")
  config.task_losses.topics = "softmax"
  with pytest.raises(ValueError, match="does not fit a multi-label task"):
    state.task_infos(config, {"topics": ["a", "b", "c"]}, ["topics"])


def _val_records(workdir: Path) -> dict[int, dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r for r in map(json.loads, lines) if any(k.startswith("val/") for k in r)}


@pytest.mark.slow
def test_train_best_checkpoint_export_evaluate_embed(tmp_path, tiny_model_dir, no_corpus, pairs_parquet):
  files = f"--config.data.files=pairs={pairs_parquet},topics={TOPICS},queries={QUERIES}"
  data = ("--config.data.source=files", files, "--config.data.tasks=pairs,topics,queries", *no_corpus)
  workdir = tmp_path / "run"
  _run(
    "launch/train.py",
    "--config=configs/mtl.py:quick",
    f"--workdir={workdir}",
    f"--config.model={tiny_model_dir}",
    *data,
    *TINY_TRAIN,
    "--config.data.task_mixing=all_tasks_per_step",  # every task in every step: the label task trains too
    "--config.eval.evaluators=pair_auc,retrieval,classification",
  )
  val = _val_records(workdir)
  assert sorted(val) == [0, 2, 4, 6]
  for key in ("pairs/pair_auc", "queries/recall@1", "queries/mrr", "topics/linear_map", "mean_pair_auc"):
    assert all(0.0 <= r[f"val/{key}"] <= 1.0 for r in val.values()), key
  losses = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["train/topics/loss"]) for r in losses if "train/topics/loss" in r)
  assert sum("train/topics/loss" in r for r in losses) == 6
  # The best evaluation after the start (ties to the later step) is exported and its checkpoint kept.
  best = max((s for s in val if s > 0), key=lambda s: (val[s]["val/mean_pair_auc"], s))
  meta = json.loads((workdir / "export" / "postembed.json").read_text())
  assert meta["step"] == best and meta["validation"]["val/mean_pair_auc"] == val[best]["val/mean_pair_auc"]
  assert {int(p.name) for p in (workdir / "checkpoints").iterdir()} == {best, 6}
  for name in ("model.safetensors", "tokenizer.json", "modules.json", "2_Dense"):
    assert (workdir / "export" / name).exists(), name

  out = tmp_path / "evaluate"
  _run(
    "launch/evaluate.py",
    "--config=configs/evaluate.py:quick",
    f"--config.model={workdir},tfidf",
    f"--config.output_dir={out}",
    *data,
    "--config.max_length=32",
    "--config.evaluation.bootstrap_resamples=50",
  )
  rows = {r["model"]: r for r in json.loads((out / "results.json").read_text())}
  ours, tfidf = rows[str(workdir)]["metrics"], rows["tfidf"]["metrics"]
  assert rows[str(workdir)]["dim"] == 16 and rows[str(workdir)]["split"] == "test"
  expected = {f"{t}/{m}" for t in ("pairs", "queries") for m in ("pair_auc", "triplet_accuracy", "recall@1", "mrr")}
  expected |= {"topics/linear_map", "topics/linear_macro_f1"}
  for metrics in (ours, tfidf):
    assert expected <= set(metrics) and {k.split("/")[0] for k in metrics} == {"pairs", "queries", "topics"}
    for key in expected:
      assert 0.0 <= metrics[f"{key}/ci95_low"] <= metrics[key] <= metrics[f"{key}/ci95_high"] <= 1.0, key
  assert tfidf["pairs/pair_auc"] > 0.6 and tfidf["queries/mrr"] > 0.5  # fitted on the files' training texts

  posts, emb = tmp_path / "posts.jsonl", tmp_path / "emb.parquet"
  texts = [json.loads(line)["text"] for line in TOPICS.read_text().splitlines()]
  posts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
  _run(
    "launch/embed.py",
    "--config=configs/embed.py",
    f"--config.model={workdir / 'export'}",
    f"--config.input={posts}",
    f"--config.output={emb}",
  )
  table = pq.read_table(emb)
  assert table.num_rows == len(texts) == 60
  assert table.column("id").to_pylist() == [f"p{i}" for i in range(60)]
  vectors = np.array(table.column("embedding").to_pylist())
  assert vectors.shape == (60, 16)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_without_evaluators_the_last_checkpoint_is_exported(tmp_path, tiny_model_dir, no_corpus):
  workdir = tmp_path / "run"
  args = (
    "launch/train.py",
    "--config=configs/mtl.py:quick",
    f"--workdir={workdir}",
    f"--config.model={tiny_model_dir}",
    "--config.data.source=files",
    f"--config.data.files=mytask={PAIRS}",
    "--config.data.tasks=mytask",
    *no_corpus,
    *TINY_TRAIN,
    "--config.eval.evaluators=",
  )
  result = _run(*args)
  assert "No validation metric ranks checkpoints" in result.stdout
  assert json.loads((workdir / "export" / "postembed.json").read_text())["step"] == 6
  assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["6"]
  stopping = subprocess.run(
    [sys.executable, *args, "--config.early_stopping.patience=2", f"--workdir={tmp_path / 'stop'}"],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert stopping.returncode != 0 and "early_stopping.patience > 0 needs a validation metric" in stopping.stderr


@pytest.mark.slow
def test_ablate_on_own_files(tmp_path, tiny_model_dir, no_corpus):
  train = [a.replace("--config.", "--config.train.", 1) for a in (*TINY_TRAIN, *no_corpus)]
  _run(
    "launch/ablate.py",
    "--config=configs/ablation.py:quick",
    f"--config.workdir={tmp_path}",
    "--config.tasks=pairs,queries",
    "--config.train.data.source=files",
    f"--config.train.data.files=pairs={PAIRS},queries={QUERIES}",
    "--config.seeds=0",
    f"--config.train.model={tiny_model_dir}",
    *[a for a in train if "total_steps" not in a],
    "--config.train.total_steps=4",
    "--config.affinity_every_steps=0",
    "--config.evaluators=pair_auc,retrieval",
    "--config.evaluation.max_examples=100",
  )
  rows = [line.split(",") for line in (tmp_path / "results.csv").read_text().splitlines()]
  header, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
  assert header[:8] == ["regime", "focus", "variant", "lr", "seed", "task", "metric", "value"]
  found = {(r["variant"], r["task"], r["metric"]) for r in rows}
  for variant, tasks in (("mtl", ("pairs", "queries")), ("stl-pairs", ("pairs",)), ("stl-queries", ("queries",))):
    for task in tasks:
      for metric in ("pair_auc", "triplet_accuracy", "recall@1", "mrr"):
        assert (variant, task, metric) in found, (variant, task, metric)
  assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
  record = json.loads((tmp_path / "full" / "mtl" / "lr_0.0001" / "seed_0" / "train.json").read_text())
  assert record["selection_metric"] == "val/mean_pair_auc" and 0.0 <= record["selection_value"] <= 1.0
  assert "| full | pair_auc | 2 |" in (tmp_path / "report.md").read_text()
