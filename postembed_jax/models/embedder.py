"""Texts -> embeddings with as little padding as possible: the one inference path for batch jobs, eval and serving.

Texts are tokenised, sorted by length, grouped into batches and padded to the next of a few bucket lengths (and
three batch sizes), so XLA compiles a handful of shapes and little compute goes to padding. With ``pack=True``
short posts share rows instead (block-diagonal attention, positions restarting per post), which removes most of
the remaining padding. With a ``mesh`` every batch is split over its ``data`` axis and the weights are
replicated. Batches are dispatched ahead of reading their results (JAX dispatch is asynchronous), and
``embed_stream`` reads and tokenises the next chunk in a background thread, so host and device work overlap.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from postembed_jax.data import tokenize
from postembed_jax.models import hf_io

# Inference lengths; padding follows data/tokenize.py, the rule training batches use.
DEFAULT_BUCKETS = (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# Packed rows are at most this long (rounded up to a bucket); longer posts are embedded unpacked. Attention costs
# about 4*L*h flops per token against 24*h^2 for the dense layers, so rows of 128 add at most 128 / (6*384) = 6%
# per token at width 384 (less for wider models) while removing the padding of every bucket.
PACK_LENGTH = 128
DATA_AXIS = "data"


def data_mesh(num_devices: int = -1) -> Mesh:
  """A one-axis ``data`` mesh over the first ``num_devices`` local devices (-1: all of them)."""
  devices = jax.local_devices()
  if num_devices == -1:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"mesh_data={num_devices}: this host has {len(devices)} devices (-1 uses all of them).")
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


@dataclasses.dataclass
class _Batch:
  """One device call: ``positions`` are the posts it embeds (indices into the token id lists), in output order;
  for packed rows ``slots`` are each post's (row, segment - 1)."""

  positions: np.ndarray
  ids: np.ndarray
  mask: np.ndarray
  slots: tuple[np.ndarray, np.ndarray] | None = None


class Embedder:
  """A frozen tower plus its tokenizer; ``embed`` keeps input order, ``embed_stream`` bounds memory."""

  def __init__(
    self,
    model: nnx.Module,
    tokenizer,
    *,
    max_length: int = 256,
    batch_size: int = 64,
    name: str = "model",
    mesh: Mesh | None = None,
    pack: bool = False,
    pack_length: int = PACK_LENGTH,
  ):
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.batch_size = batch_size
    self.name = name
    self.dim = model.output_dim
    self.buckets = tokenize.bucket_list(max_length, DEFAULT_BUCKETS)
    self.mesh = mesh
    if mesh is not None and DATA_AXIS not in mesh.shape:
      raise ValueError(f"The embedder's mesh needs a {DATA_AXIS!r} axis; it has {tuple(mesh.shape)}.")
    self._row_sharding = NamedSharding(mesh, P(DATA_AXIS)) if mesh is not None else None
    shards = mesh.shape[DATA_AXIS] if mesh is not None else 1
    # Three row counts: a partial batch pads to 1/8, 1/2 or all of batch_size, each a multiple of the data axis.
    # Every (rows, length) pair is a compilation, so fewer buckets compile faster; 1/8 keeps a lone near-line post
    # cheap.
    self._batch_buckets = tuple(sorted({-(-max(1, batch_size // d) // shards) * shards for d in (8, 2, 1)}))
    self.pack = pack
    self.pack_length = tokenize.bucket_for(min(pack_length, max_length), self.buckets)
    self.max_segments = tokenize.segments_per_row(self.pack_length)
    graphdef, state = nnx.split(model)
    self.set_params(state)

    @jax.jit
    def forward(state, ids, mask):
      return nnx.merge(graphdef, state)(ids, mask, deterministic=True)

    @jax.jit
    def forward_packed(state, ids, segments):
      return nnx.merge(graphdef, state).embed_segments(ids, segments, max_segments=self.max_segments)

    self._forward = forward
    self._forward_packed = forward_packed

  @classmethod
  def from_pretrained(
    cls,
    name_or_dir: str | Path,
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
    pack: bool = False,
    **tower,
  ) -> Embedder:
    """``tower`` overrides pooling / normalize / embed_dim (see hf_io.load_pretrained)."""
    model, tokenizer, settings = hf_io.load_pretrained(name_or_dir, dtype=dtype, **tower)
    return cls(
      model,
      tokenizer,
      max_length=max_length or settings.max_length,
      batch_size=batch_size,
      name=str(name_or_dir),
      mesh=mesh,
      pack=pack,
    )

  def set_params(self, state: nnx.State) -> None:
    """Swap in new weights of the same tower (e.g. mid-training validation) without recompiling; with a mesh they
    are replicated on every device of it."""
    self._state = state if self.mesh is None else jax.device_put(state, NamedSharding(self.mesh, P()))

  def warm_up(self, max_rows: int | None = None) -> None:
    """Compiles every (rows, length) shape a batch of up to ``max_rows`` texts can take, so no caller waits on
    XLA later (the near-line worker calls this before serving)."""
    max_rows = min(max_rows or self.batch_size, self.batch_size)
    needed = self._batch_buckets[: bisect.bisect_left(self._batch_buckets, max_rows) + 1]
    for length in self.buckets:
      for rows in needed:
        self.embed_token_ids([[self.tokenizer.pad_token_id] * length] * rows)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)[
      "input_ids"
    ]

  def count_truncated(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> int:
    """How many of ``texts`` ``tokenize`` cut at max_length: those that fill it and have a token more when
    allowed one (only texts that reach max_length are tokenized again)."""
    full = [text for text, ids in zip(texts, token_ids) if len(ids) >= self.max_length]
    if not full:
      return 0
    longer = self.tokenizer(full, truncation=True, max_length=self.max_length + 1, add_special_tokens=True)
    return sum(len(ids) > self.max_length for ids in longer["input_ids"])

  def embed_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Embeds one batch (<= batch_size rows) of token id lists, unpacked."""
    batch = self._padded(token_ids, np.arange(len(token_ids)))
    return self._read(batch, self._dispatch(batch))

  def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    out = np.zeros((len(texts), self.dim), np.float32)
    for positions, vectors in self._embed_sorted(self.tokenize(texts), progress=progress):
      out[positions] = vectors
    return out

  def _rows_for(self, n: int) -> int:
    return self._batch_buckets[bisect.bisect_left(self._batch_buckets, n)]

  def _padded(self, token_ids: Sequence[Sequence[int]], positions: np.ndarray) -> _Batch:
    """One row per post of ``positions``, padded by the shared bucket rule."""
    members = [token_ids[i] for i in positions]
    ids, mask = tokenize.pad(members, self.buckets, self.tokenizer.pad_token_id, rows=self._rows_for(len(members)))
    return _Batch(positions, ids, mask)

  def _packed(self, token_ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], length: int) -> _Batch:
    """``rows`` (lists of post indices) packed into rows of ``length`` tokens."""
    ids, segments = tokenize.pad_packed(token_ids, rows, length, self.tokenizer.pad_token_id, self._rows_for(len(rows)))
    positions = np.asarray([i for members in rows for i in members], np.int64)
    return _Batch(positions, ids, segments, tokenize.row_slots(rows))

  def _batches(self, token_ids: list[list[int]]) -> Iterator[_Batch]:
    """Sorted, bucketed batches; with ``pack``, posts up to ``pack_length`` tokens packed into rows as long as
    the longest of them needs (so packing never lengthens the attention of a batch of short posts)."""
    lengths = np.asarray([len(t) for t in token_ids], np.int64)
    order = np.argsort(lengths, kind="stable")
    if self.pack:
      short = order[lengths[order] <= self.pack_length]
      order = order[lengths[order] > self.pack_length]
      if len(short):
        length = tokenize.bucket_for(int(lengths[short[-1]]), self.buckets)
        rows = [[int(short[i]) for i in row] for row in tokenize.pack_rows(lengths[short], length, self.max_segments)]
        for start in range(0, len(rows), self.batch_size):
          yield self._packed(token_ids, rows[start : start + self.batch_size], length)
    for start in range(0, len(order), self.batch_size):
      yield self._padded(token_ids, order[start : start + self.batch_size])

  def _dispatch(self, batch: _Batch) -> jax.Array:
    """Starts the device work for ``batch`` and returns without waiting for it."""
    ids, mask = batch.ids, batch.mask
    if self._row_sharding is not None:
      ids, mask = jax.device_put((ids, mask), self._row_sharding)
    forward = self._forward if batch.slots is None else self._forward_packed
    return forward(self._state, ids, mask)

  @staticmethod
  def _read(batch: _Batch, out: jax.Array) -> np.ndarray:
    """The vectors of ``batch``'s posts, in its ``positions`` order (waits for the device)."""
    out = np.asarray(out, np.float32)
    return out[: len(batch.positions)] if batch.slots is None else out[batch.slots]

  def _embed_sorted(
    self, token_ids: list[list[int]], *, progress: bool = False, bar: tqdm | None = None
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, vectors) per batch. Batch k+1 is padded and dispatched before batch k is read, so the host
    prepares the next batch while the device works."""
    own_bar = bar is None and progress
    bar = tqdm(total=len(token_ids), unit="post", desc="embed") if own_bar else bar
    pending = None
    for batch in itertools.chain(self._batches(token_ids), [None]):  # None: read the last one
      out = self._dispatch(batch) if batch is not None else None
      if pending is not None:
        yield pending[0].positions, self._read(*pending)
        if bar is not None:
          bar.update(len(pending[0].positions))
      pending = (batch, out) if batch is not None else None
    if own_bar:
      bar.close()

  def embed_stream(
    self,
    records: Iterable[tuple[object, str]],
    *,
    chunk_size: int = 4096,
    progress: bool = False,
    on_truncated: Callable[[int], None] | None = None,
  ) -> Iterator[tuple[list, np.ndarray]]:
    """Yields (ids, embeddings) per chunk of ``chunk_size`` records, so memory stays flat on any input size (at
    most two chunks are held: the one embedded and the next, read and tokenised meanwhile by a background thread).
    ``on_truncated``, if given, is called per chunk with the number of its texts cut at max_length."""
    bar = tqdm(unit="post", desc="embed", disable=not progress)
    records = iter(records)

    def read_chunk():
      chunk = [r for _, r in zip(range(chunk_size), records)]
      texts = [r[1] for r in chunk]
      token_ids = self.tokenize(texts) if chunk else []
      return [r[0] for r in chunk], token_ids, self.count_truncated(texts, token_ids)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-read") as reader:
      upcoming = reader.submit(read_chunk)
      while True:
        ids, token_ids, truncated = upcoming.result()
        if not ids:
          break
        upcoming = reader.submit(read_chunk)
        if on_truncated is not None:
          on_truncated(truncated)
        vectors = np.zeros((len(ids), self.dim), np.float32)
        for positions, v in self._embed_sorted(token_ids, bar=bar):
          vectors[positions] = v
        yield ids, vectors
    bar.close()
