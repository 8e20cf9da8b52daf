"""The notebooks in colabs/ run headless, top to bottom, with tiny settings."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "debian"


def _execute(name: str, cwd: Path = REPO) -> tuple[str, list[dict]]:
  notebook = nbformat.read(REPO / "colabs" / name, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources=dict(metadata=dict(path=str(cwd)))).execute()
  outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
  text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/markdown", "") for o in outputs)
  return text, outputs


def _set_env(monkeypatch, **values: str) -> None:
  """The notebooks read their tiny settings from POSTEMBED_* environment variables."""
  for name, value in values.items():
    monkeypatch.setenv(name, value)


def _has_image(outputs: list[dict]) -> bool:
  return any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_quickstart_trains_embeds_and_plots(tmp_path, monkeypatch):
  _set_env(
    monkeypatch,
    POSTEMBED_WORKDIR=str(tmp_path / "run"),
    POSTEMBED_TASKS="search",
    POSTEMBED_STEPS="2",
    POSTEMBED_SAMPLE="120",
    POSTEMBED_SPLIT="train",
    POSTEMBED_DEBIAN_INDEX_DIR=str(FIXTURE_DIR),
    POSTEMBED_DEBIAN_DATA_DIR=str(tmp_path / "tfds"),
  )
  text, outputs = _execute("quickstart.ipynb")
  assert "2 steps of batch 16 on tasks search" in text
  assert "120 posts from train -> embeddings (120, 50), float32" in text
  assert "query: play music files from the command line" in text
  assert "fine-tuned (50-d)" in text and "base (384-d)" in text and "search/pair_auc" in text
  assert (tmp_path / "run" / "export" / "postembed.json").exists()
  assert _has_image(outputs)


def _synthetic_ablation(root: Path) -> None:
  lines = ["variant,seed,task,metric,value,train_seconds"]
  for seed in range(3):
    for task, mtl, stl in (("search", 0.95, 0.93), ("interest", 0.80, 0.81)):
      lines.append(f"mtl,{seed},{task},pair_auc,{mtl + 0.001 * seed},10")
      lines.append(f"stl-{task},{seed},{task},pair_auc,{stl + 0.002 * seed},5")
    workdir = root / "mtl" / f"seed_{seed}"
    workdir.mkdir(parents=True)
    record = {"step": 10, "affinity": [[0.01, 0.02], [0.03, 0.01]], "affinity_labels": ["search", "interest"]}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
  (root / "results.csv").write_text("\n".join(lines) + "\n")


def test_ablation_report_shows_tables_and_plots(tmp_path, monkeypatch):
  _synthetic_ablation(tmp_path)
  monkeypatch.setenv("POSTEMBED_ABLATION_DIR", str(tmp_path))
  text, outputs = _execute("ablation_report.ipynb")
  assert "12 results of 9 runs" in text
  assert "| search | 0.9510 [" in text and "+2.04% *" in text  # (0.951 - 0.932) / 0.932, significant
  assert "significant positive transfer on 1 of 2 tasks" in text
  assert "mean over 3 logged steps" in text
  assert "| stl-interest | 2 |  | 0.8140 |" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


@pytest.mark.slow
def test_retrieval_notebook_indexes_clusters_and_plots(tmp_path, monkeypatch):
  _set_env(
    monkeypatch,
    POSTEMBED_MAX_LENGTH="64",
    POSTEMBED_SPLIT="train",
    POSTEMBED_SAMPLE="200",
    POSTEMBED_MEMBERS="8",
    POSTEMBED_DEBIAN_INDEX_DIR=str(FIXTURE_DIR),
    POSTEMBED_DEBIAN_DATA_DIR=str(tmp_path / "tfds"),
  )
  text, outputs = _execute("retrieval.ipynb", cwd=REPO / "colabs")
  assert "200 posts indexed" in text
  assert "held-out posts in the top 10" in text
  assert "max_clusters=5" in text and "recall" in text
  assert _has_image(outputs)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "ablation_report.ipynb", "retrieval.ipynb"])
def test_every_notebook_opens_with_an_install_cell_that_is_a_no_op_here(name, monkeypatch):
  """The first code cell installs from a clone (or clones first) where the package is missing, as on Colab; where it
  imports (an installed clone, these tests) it runs nothing, and a markdown cell before it says how."""
  notebook = nbformat.read(REPO / "colabs" / name, as_version=4)
  first = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
  install = notebook.cells[first].source
  assert 'find_spec("postembed_jax")' in install and '"git", "clone"' in install and '"-e"' in install
  assert any("On Colab" in c.source and "pip install -e" in c.source for c in notebook.cells[:first])
  assert "pip install postembed_jax" not in "\n".join(c.source for c in notebook.cells)  # no index has it

  def no_subprocess(*args, **kwargs):
    raise AssertionError(f"the install cell ran {args}")

  monkeypatch.setattr("subprocess.run", no_subprocess)
  exec(compile(install, f"{name}[{first}]", "exec"), {})
