"""Embedder shape policy (which (rows, length) shapes exist, so compilation stays bounded), packing, several
devices and host/device overlap, each against the plain one-device path on real texts."""

import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from postembed_jax.data import tokenize
from postembed_jax.models import hf_io
from postembed_jax.models.embedder import DEFAULT_BUCKETS, Embedder, data_mesh

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5


def test_bucket_lengths_end_at_max_length():
  assert tokenize.bucket_list(128, DEFAULT_BUCKETS) == (16, 32, 48, 64, 80, 96, 112, 128)
  assert tokenize.bucket_list(100, DEFAULT_BUCKETS) == (16, 32, 48, 64, 80, 96, 100)


def test_warm_up_compiles_every_shape_a_batch_can_take():
  shapes = []
  fake = types.SimpleNamespace(
    buckets=(16, 32),
    batch_size=64,
    _batch_buckets=(8, 32, 64),
    tokenizer=types.SimpleNamespace(pad_token_id=0),
    embed_token_ids=lambda ids: shapes.append((len(ids), len(ids[0]))),
  )
  Embedder.warm_up(fake, 6)
  assert shapes == [(8, 16), (8, 32)]
  shapes.clear()
  Embedder.warm_up(fake, 33)
  assert shapes == [(n, length) for length in (16, 32) for n in (8, 32, 64)]


@pytest.fixture(scope="module")
def packed_embedder():
  model, tokenizer, _ = hf_io.load_pretrained("all-MiniLM-L6-v2")
  return Embedder(model, tokenizer, max_length=128, pack=True)


def _padded_positions(embedder, token_ids):
  return sum(batch.ids.size for batch in embedder._batches(token_ids)) - sum(map(len, token_ids))


@pytest.mark.slow
def test_packing_keeps_embeddings_and_cuts_padding(
  default_embedder, packed_embedder, parity_texts, debian_posts, post_vectors
):
  """The default model on real texts (parity set and the Debian fixture's 419 posts): packed rows give every post
  the embedding it has alone, and far fewer padded positions go through the model."""
  np.testing.assert_allclose(packed_embedder.embed(parity_texts), default_embedder.embed(parity_texts), atol=ATOL)
  np.testing.assert_allclose(packed_embedder.embed(debian_posts[0]), post_vectors, atol=ATOL, rtol=0)
  token_ids = default_embedder.tokenize(debian_posts[0])
  plain, packed = (_padded_positions(e, token_ids) for e in (default_embedder, packed_embedder))
  assert packed < 0.5 * plain, (packed, plain)


def test_posts_longer_than_pack_length_go_unpacked(tiny_model_dir, parity_texts):
  plain = Embedder.from_pretrained(tiny_model_dir, max_length=128, batch_size=16)
  model, tokenizer, _ = hf_io.load_pretrained(tiny_model_dir)
  packed = Embedder(model, tokenizer, max_length=128, batch_size=16, pack=True, pack_length=32)
  batches = list(packed._batches(packed.tokenize(parity_texts)))
  kinds = {(b.slots is None, b.ids.shape[1]) for b in batches}
  assert (False, 32) in kinds and (True, 128) in kinds, kinds  # packed rows of 32 and long posts alone
  assert sorted(np.concatenate([b.positions for b in batches]).tolist()) == list(range(len(parity_texts)))
  np.testing.assert_allclose(packed.embed(parity_texts), plain.embed(parity_texts), atol=ATOL, rtol=0)


def test_next_batch_is_dispatched_before_the_last_is_read(tiny_model_dir, parity_texts):
  embedder = Embedder.from_pretrained(tiny_model_dir, max_length=64, batch_size=8)
  events = []
  dispatch, read = embedder._dispatch, embedder._read
  embedder._dispatch = lambda batch: (events.append("dispatch"), dispatch(batch))[1]
  embedder._read = lambda batch, out: (events.append("read"), read(batch, out))[1]
  vectors = embedder.embed(parity_texts)
  assert events == ["dispatch"] + ["dispatch", "read"] * 7 + ["read"]  # 64 texts, 8 batches
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_stream_reads_the_next_chunk_in_the_background(tiny_model_dir, parity_texts):
  embedder = Embedder.from_pretrained(tiny_model_dir, max_length=64, batch_size=8)
  readers = []

  def records():
    for i, text in enumerate(parity_texts):
      readers.append(threading.current_thread())
      yield i, text

  stream = embedder.embed_stream(records(), chunk_size=24)
  ids, first = next(stream)
  assert ids == list(range(24)) and len(readers) <= 48  # the chunk embedded and at most the next one
  chunks = [(ids, first), *stream]
  assert [len(c[0]) for c in chunks] == [24, 24, 16]
  assert threading.main_thread() not in readers
  np.testing.assert_allclose(np.concatenate([c[1] for c in chunks]), embedder.embed(parity_texts), atol=1e-6)


def test_data_mesh_refuses_more_devices_than_there_are():
  with pytest.raises(ValueError, match=f"mesh_data={jax.local_device_count() + 1}: this host has"):
    data_mesh(jax.local_device_count() + 1)


@pytest.mark.slow
def test_eight_devices_give_the_one_device_embeddings(tiny_model_dir):
  """Rows sharded over 8 fake CPU devices (a fresh process: the device count is fixed when JAX starts), unpacked
  and packed, against one device of the same process."""
  script = textwrap.dedent(f"""
    import json
    import jax
    import numpy as np
    from postembed_jax.models.embedder import Embedder, data_mesh

    assert jax.device_count() == 8
    texts = json.load(open("tests/fixtures/parity_texts.json"))
    load = lambda **kw: Embedder.from_pretrained("{tiny_model_dir}", max_length=64, batch_size=12, **kw)
    one, mesh = load(), data_mesh(-1)
    eight, packed = load(mesh=mesh), load(mesh=mesh, pack=True)
    assert eight._batch_buckets == (8, 16), eight._batch_buckets  # rows: multiples of the data axis
    batch = next(eight._batches(eight.tokenize(texts)))
    out = eight._dispatch(batch)
    assert len(out.sharding.device_set) == 8 and out.addressable_shards[0].data.shape[0] == len(batch.ids) // 8
    reference = one.embed(texts)
    np.testing.assert_allclose(eight.embed(texts), reference, atol={ATOL}, rtol=0)
    np.testing.assert_allclose(packed.embed(texts), reference, atol={ATOL}, rtol=0)
    print("OK", dict(mesh.shape))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK {'data': 8}" in result.stdout
