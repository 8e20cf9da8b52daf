"""Texts -> embeddings with as little padding as possible: the one inference path for batch jobs, eval and serving.

Texts are tokenised, sorted by length, grouped into batches and padded to the next of a few bucket lengths (and
three batch sizes), so XLA compiles a handful of shapes and little compute goes to padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from postembed_jax.data import tokenize
from postembed_jax.models import hf_io

# Inference lengths; padding follows data/tokenize.py, the rule training batches use.
DEFAULT_BUCKETS = (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class Embedder:
  """A frozen tower plus its tokenizer; ``embed`` keeps input order, ``embed_stream`` bounds memory."""

  def __init__(self, model: nnx.Module, tokenizer, *, max_length: int = 256, batch_size: int = 64, name: str = "model"):
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.batch_size = batch_size
    self.name = name
    self.dim = model.output_dim
    self.buckets = tokenize.bucket_list(max_length, DEFAULT_BUCKETS)
    # Three row counts: a partial batch pads to 1/8, 1/2 or all of batch_size. Every (rows, length) pair is a
    # compilation, so fewer buckets compile faster; 1/8 keeps a lone near-line post cheap.
    self._batch_buckets = tuple(sorted({max(1, batch_size // 8), max(1, batch_size // 2), batch_size}))
    graphdef, state = nnx.split(model)
    self._state = state

    @jax.jit
    def forward(state, ids, mask):
      return nnx.merge(graphdef, state)(ids, mask, deterministic=True)

    self._forward = forward

  @classmethod
  def from_pretrained(
    cls, name_or_dir: str | Path, *, max_length: int | None = None, batch_size: int = 64, dtype=jnp.float32, **tower
  ) -> Embedder:
    """``tower`` overrides pooling / normalize / embed_dim (see hf_io.load_pretrained)."""
    model, tokenizer, settings = hf_io.load_pretrained(name_or_dir, dtype=dtype, **tower)
    return cls(
      model, tokenizer, max_length=max_length or settings.max_length, batch_size=batch_size, name=str(name_or_dir)
    )

  def set_params(self, state: nnx.State) -> None:
    """Swap in new weights of the same tower (e.g. mid-training validation) without recompiling."""
    self._state = state

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
    """Embeds one batch (<= batch_size rows) of token id lists."""
    n = len(token_ids)
    rows = self._batch_buckets[bisect.bisect_left(self._batch_buckets, n)]
    ids, mask = tokenize.pad(token_ids, self.buckets, self.tokenizer.pad_token_id, rows=rows)
    out = self._forward(self._state, ids, mask)
    return np.asarray(out[:n], np.float32)

  def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    out = np.zeros((len(texts), self.dim), np.float32)
    for positions, vectors in self._embed_sorted(self.tokenize(texts), progress=progress):
      out[positions] = vectors
    return out

  def _embed_sorted(
    self, token_ids: list[list[int]], *, progress: bool = False, bar: tqdm | None = None
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    own_bar = bar is None and progress
    bar = tqdm(total=len(token_ids), unit="post", desc="embed") if own_bar else bar
    for start in range(0, len(order), self.batch_size):
      positions = order[start : start + self.batch_size]
      yield positions, self.embed_token_ids([token_ids[i] for i in positions])
      if bar is not None:
        bar.update(len(positions))
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
    """Yields (ids, embeddings) per chunk of ``chunk_size`` records, so memory stays flat on any input size.
    ``on_truncated``, if given, is called per chunk with the number of its texts cut at max_length."""
    bar = tqdm(unit="post", desc="embed", disable=not progress)
    chunk: list[tuple[object, str]] = []

    def flush():
      ids = [r[0] for r in chunk]
      texts = [r[1] for r in chunk]
      token_ids = self.tokenize(texts)
      if on_truncated is not None:
        on_truncated(self.count_truncated(texts, token_ids))
      vectors = np.zeros((len(chunk), self.dim), np.float32)
      for positions, v in self._embed_sorted(token_ids, bar=bar):
        vectors[positions] = v
      return ids, vectors

    for record in records:
      chunk.append(record)
      if len(chunk) == chunk_size:
        yield flush()
        chunk = []
    if chunk:
      yield flush()
    bar.close()
