"""One evaluation suite for any model, into one table: what `launch/evaluate.py` and the notebooks call.

A model is a name of a baseline (``tfidf``, ``random_projection``), a packaged model's short name, an HF
directory, our export, a training workdir (its ``export/``), any of the last four reduced by PCA fitted on training
posts (``pca50:all-MiniLM-L6-v2``) or truncated to their first dimensions (``dim32:workdirs/mtl``, for Matryoshka
exports), or the sentence-transformers multi-task fine-tune of a base model (``st_mtl:all-MiniLM-L6-v2``, trained
once into the output directory; see ``st_peer``). Results are kept per model in ``results.json`` in the output
directory and the whole table is rewritten each time, so models evaluated by separate commands (say, the baselines
once, each new export later) end up side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from postembed_jax.data.lists import as_list
from postembed_jax.evaluation import baselines, evaluators, examples, st_peer
from postembed_jax.models.embedder import Embedder

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


def model_names(value: str | Sequence[str]) -> list[str]:
  names = [n for n in as_list(value) if n]
  if not names:
    raise ValueError("config.model names no model; give a name, a directory, or a comma-separated list.")
  return names


def load_embedder(name_or_dir: str, config, **tower) -> evaluators.TextEmbedder:
  """A baseline fitted on the training split, or our Embedder for a model name / directory / workdir (``tower``
  overrides its pooling / normalize / embed_dim)."""
  if name_or_dir in baselines.BASELINES:
    corpus = examples.corpus_texts("train", config.data, limit=config.baseline_fit_texts)
    return baselines.BASELINES[name_or_dir](corpus, config)
  pca = baselines.parse_pca_name(name_or_dir)
  if pca is not None:
    dim, base = pca
    corpus = examples.corpus_texts("train", config.data, limit=config.pca_fit_texts)
    # PCA of the pooled output before normalisation: what training's projection_init="pca" starts from.
    unnormalised = {} if base in baselines.BASELINES else {"normalize": False}
    return baselines.PcaEmbedder(load_embedder(base, config, **unnormalised), corpus, dim=dim, name=name_or_dir)
  truncated = baselines.parse_dim_name(name_or_dir)
  if truncated is not None:
    dim, base = truncated
    return baselines.TruncatedEmbedder(load_embedder(base, config), dim=dim, name=name_or_dir)
  peer = st_peer.parse_peer_name(name_or_dir)
  if peer is not None:
    return st_peer.load_peer(peer, config)
  path = Path(name_or_dir).expanduser()
  if (path / "export").is_dir():  # a training workdir
    path = path / "export"
  return Embedder.from_pretrained(
    str(path) if path.is_dir() else name_or_dir, max_length=config.max_length, batch_size=config.batch_size, **tower
  )


def evaluate_model(name_or_dir: str, config) -> dict:
  """``{"model", "dim", "seconds", "split", "metrics"}`` for one model on the configured suite."""
  start = time.perf_counter()
  embedder = load_embedder(name_or_dir, config)
  metrics = evaluators.evaluate(
    embedder,
    config.evaluators,
    split=config.split,
    data_config=config.data,
    settings=evaluators.EvalSettings.from_config(config.evaluation),
  )
  return {
    "model": name_or_dir,
    "dim": int(embedder.dim),
    "split": config.split,
    "seconds": round(time.perf_counter() - start, 1),
    "metrics": metrics,
  }


def _cell(metrics: dict[str, float], key: str) -> str:
  if key not in metrics:
    return ""
  low, high = metrics.get(f"{key}/ci95_low"), metrics.get(f"{key}/ci95_high")
  return f"{metrics[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def markdown_table(rows: Sequence[dict]) -> str:
  """Metrics down, models across; each cell ``value [95% CI]`` where the split had intervals."""
  keys = sorted(
    {k for r in rows for k in r["metrics"] if "/ci95_" not in k},
    key=lambda k: (k.split("/")[0] in examples.held_out_tasks(), k),
  )
  header = "| metric | " + " | ".join(f"`{r['model']}`" for r in rows) + " |"
  lines = [header, "|" + "---|" * (len(rows) + 1), "| dimensions | " + " | ".join(str(r["dim"]) for r in rows) + " |"]
  lines += [f"| {k} | " + " | ".join(_cell(r["metrics"], k) for r in rows) + " |" for k in keys]
  return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str) -> None:
  partial = path.with_name(path.name + ".partial")
  partial.write_text(text)
  partial.replace(path)


def run_suite(config) -> list[dict]:
  """Evaluates every model in ``config.model``, merges into ``config.output_dir``'s table, prints and returns it."""
  evaluators.check_names(config.evaluators)
  out_dir = Path(config.output_dir).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  results_file = out_dir / RESULTS_JSON
  table = {r["model"]: r for r in json.loads(results_file.read_text())} if results_file.exists() else {}
  for name in model_names(config.model):
    row = evaluate_model(name, config)
    table[name] = row
    print(f"{name}: {row['dim']}-d, {row['seconds']} s")
    _write_atomically(results_file, json.dumps(list(table.values()), indent=2))  # a killed suite keeps its models
  rows = list(table.values())
  markdown = markdown_table(rows)
  (out_dir / RESULTS_MARKDOWN).write_text(markdown)
  print(markdown)
  print(f"Saved {results_file} and {out_dir / RESULTS_MARKDOWN}.")
  return rows
