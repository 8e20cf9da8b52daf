import json
import os
import subprocess
import sys

import ml_collections
import numpy as np

from postembed_jax.evaluation import suite

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _config(fixture_data_config, output_dir, model):
  sys.path.insert(0, REPO)
  from configs import evaluate as evaluate_config

  config = evaluate_config.get_config("quick")
  config.data = fixture_data_config
  config.data.tasks = "interest,search,section"
  config.evaluators = "pair_auc,classification"
  config.evaluation.bootstrap_resamples = 50
  config.output_dir = str(output_dir)
  config.model = model
  return config


def test_models_evaluated_separately_share_one_table(fixture_data_config, tmp_path):
  suite.run_suite(_config(fixture_data_config, tmp_path, "tfidf"))
  rows = suite.run_suite(_config(fixture_data_config, tmp_path, "random_projection"))
  assert [r["model"] for r in rows] == ["tfidf", "random_projection"]
  assert rows[1]["dim"] == 50
  saved = json.loads((tmp_path / suite.RESULTS_JSON).read_text())
  assert saved == rows
  markdown = (tmp_path / suite.RESULTS_MARKDOWN).read_text()
  assert "| metric | `tfidf` | `random_projection` |" in markdown
  search = next(line for line in markdown.splitlines() if line.startswith("| search/pair_auc |"))
  value, interval = rows[0]["metrics"]["search/pair_auc"], rows[0]["metrics"]["search/pair_auc/ci95_low"]
  assert f"{value:.3f} [{interval:.3f}," in search


def test_a_pca_name_reduces_the_named_model(fixture_data_config, tmp_path, tiny_model_dir):
  config = _config(fixture_data_config, tmp_path, f"pca8:{tiny_model_dir}")
  config.pca_fit_texts = 200
  embedder = suite.load_embedder(config.model, config)
  vectors = embedder.embed(["a text", "another text"])
  assert embedder.dim == 8 and vectors.shape == (2, 8)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  assert embedder.base.dim == 32  # the tiny model's own width


def test_markdown_table_leaves_missing_metrics_blank_and_puts_held_out_tasks_last():
  rows = [
    {"model": "a", "dim": 2, "metrics": {"x/pair_auc": 0.5, "relation/pair_auc": 0.7}},
    {"model": "b", "dim": 3, "metrics": {"y/pair_auc": 0.25}},
  ]
  table = suite.markdown_table(rows)
  assert "| x/pair_auc | 0.500 |  |" in table and "| y/pair_auc |  | 0.250 |" in table
  assert table.index("y/pair_auc") < table.index("relation/pair_auc")


def test_a_workdir_resolves_to_its_export(tmp_path, monkeypatch):
  (tmp_path / "export").mkdir()
  seen = {}
  monkeypatch.setattr(
    suite.Embedder, "from_pretrained", classmethod(lambda cls, path, **kw: seen.setdefault("path", path))
  )
  suite.load_embedder(str(tmp_path), ml_collections.ConfigDict({"max_length": 64, "batch_size": 8}))
  assert seen["path"] == str(tmp_path / "export")


def test_launcher_prints_and_saves_the_table(fixture_data_config, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "launch/evaluate.py",
      "--config",
      "configs/evaluate.py:quick",
      "--config.model=tfidf",
      "--config.evaluators=pair_auc",
      "--config.data.tasks=search",
      f"--config.output_dir={tmp_path}",
      f"--config.data.index_dir={fixture_data_config.index_dir}",
      f"--config.data.data_dir={fixture_data_config.data_dir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| search/pair_auc |" in result.stdout
  assert (tmp_path / "results.md").exists() and (tmp_path / "results.json").exists()


def test_launcher_rejects_unknown_evaluator_listing_valid_ones(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "launch/evaluate.py",
      "--config",
      "configs/evaluate.py",
      "--config.evaluators=pair_acu",
      f"--config.output_dir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert (
    "Unknown evaluator(s) ['pair_acu']; valid evaluators: ['classification', 'hard_negatives', 'pair_auc'"
    in result.stderr
  )
