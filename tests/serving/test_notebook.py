"""colabs/retrieval.ipynb runs headless, top to bottom, on the Debian fixture with tiny settings."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "debian"


@pytest.mark.slow
def test_retrieval_notebook_executes(tmp_path, monkeypatch):
  for name, value in dict(
    POSTEMBED_MAX_LENGTH="64",
    POSTEMBED_SPLIT="train",
    POSTEMBED_SAMPLE="200",
    POSTEMBED_MEMBERS="8",
    POSTEMBED_DEBIAN_INDEX_DIR=str(FIXTURE_DIR),
    POSTEMBED_DEBIAN_DATA_DIR=str(tmp_path / "tfds"),
  ).items():
    monkeypatch.setenv(name, value)
  notebook = nbformat.read(REPO / "colabs" / "retrieval.ipynb", as_version=4)
  NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources=dict(metadata=dict(path=str(REPO / "colabs")))
  ).execute()
  text = "\n".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
  assert "200 posts indexed" in text
  assert "held-out posts in the top 10" in text
  assert "max_clusters=5" in text and "recall" in text
  assert any("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
