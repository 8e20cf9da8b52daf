"""Serving fixtures: the Debian fixture corpus as posts, embedded once per session with the shared model, and the
service config (configs/serve.py:tiny) pointed at a temporary directory."""

from pathlib import Path

import pytest

from postembed_jax import config_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve_config(tmp_path):
  """configs/serve.py:tiny with its files in tmp_path, plus overrides."""

  def make(**overrides):
    config = config_overrides.load_config(str(REPO / "configs/serve.py:tiny"))
    config.db_path = str(tmp_path / "posts.sqlite3")
    config.index_path = str(tmp_path / "posts.usearch")
    config.update(overrides)
    return config

  return make


@pytest.fixture
def store(tmp_path, request):
  """An empty store bound to a model of the test module's DIM dimensions."""
  from postembed_jax.serving.store import PostStore

  s = PostStore(tmp_path / "posts.sqlite3")
  s.bind_model("m", request.module.DIM)
  yield s
  s.close()


@pytest.fixture(scope="session")
def matryoshka_export(tiny_model_dir, tmp_path_factory):
  """A real export of the tiny model (hf_io.export_model, as training's export writes it) at widths 8, 16, 32."""
  from postembed_jax.models import hf_io

  model, tokenizer, settings = hf_io.load_pretrained(tiny_model_dir)
  out = tmp_path_factory.mktemp("matryoshka") / "export"
  return str(hf_io.export_model(model, tokenizer, settings, out, metadata={"matryoshka_widths": [8, 16, 32]}))


@pytest.fixture
def nats_server(tmp_path):
  """A real nats-server with JetStream (fsync before every ack) on a free loopback port, its files in tmp_path."""
  from postembed_jax.serving.nats_server import NatsServer

  with NatsServer(tmp_path / "nats") as server:
    yield server
