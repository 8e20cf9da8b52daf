"""Token ids -> padded arrays by the one bucket rule that training batches and inference share, and the lazy,
tokenise-once vocabulary of a training run.

The rule: a group of token id lists is right-padded to the smallest bucket length that holds its longest list
(the largest bucket if none does, truncating), so jit sees a few shapes and little compute goes to padding. A
bucket list always ends at max_length.

Packing (inference, and training with ``config.pack_pairs``): several short lists share one row of a bucket
length, each marked by its segment id (0 = padding, k >= 1 = the row's k-th list), so the model attends within a
segment and little compute goes to padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers


def bucket_list(max_length: int, lengths: Iterable[int]) -> tuple[int, ...]:
  """The bucket lengths below max_length, plus max_length itself, ascending."""
  max_length = int(max_length)
  return tuple(sorted({int(b) for b in lengths if int(b) < max_length} | {max_length}))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length; the largest bucket when none is."""
  return buckets[min(bisect.bisect_left(buckets, length), len(buckets) - 1)]


def pad(
  token_id_lists: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """ids and mask, int32 [rows (default: one per list), bucket of the longest list]; extra rows are all padding."""
  longest = max((len(t) for t in token_id_lists), default=1)
  length = bucket_for(longest, buckets)
  rows = rows or len(token_id_lists)
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, t in enumerate(token_id_lists):
    t = t[:length]
    ids[i, : len(t)] = t
    mask[i, : len(t)] = 1
  return ids, mask


def pack_rows(lengths: Sequence[int], row_length: int, max_segments: int) -> list[list[int]]:
  """Indices of ``lengths`` grouped into rows of at most ``row_length`` tokens and ``max_segments`` lists each, by
  best-fit decreasing (longest first, each into the open row it fills most tightly): within 11/9 of the fewest
  rows, like first-fit decreasing, in O(n log n). Lists longer than ``row_length`` get a row each (truncated by
  ``pad_packed``)."""
  rows: list[list[int]] = []
  open_rows: list[tuple[int, int]] = []  # (free tokens, row index) of rows below max_segments, sorted
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    need = min(int(lengths[i]), row_length)
    slot = bisect.bisect_left(open_rows, (need, -1))
    if slot < len(open_rows):
      free, r = open_rows.pop(slot)
    else:
      free, r = row_length, len(rows)
      rows.append([])
    rows[r].append(i)
    if len(rows[r]) < max_segments:
      bisect.insort(open_rows, (free - need, r))
  return rows


def segments_per_row(row_length: int) -> int:
  """The most lists a packed row of ``row_length`` holds: lists have at least 2 tokens (CLS, SEP), and 1/8 of the
  row keeps segment pooling cheap. A function of the row length only, so a compiled step knows it from shapes."""
  return max(1, row_length // 8)


def pad_packed(
  token_id_lists: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], row_length: int, pad_id: int, num_rows: int
) -> tuple[np.ndarray, np.ndarray]:
  """ids and segment ids, int32 [num_rows, row_length]: row r holds ``token_id_lists[i]`` for i in ``rows[r]``
  back to back, the k-th as segment k; extra rows are all padding."""
  ids = np.full((num_rows, row_length), pad_id, np.int32)
  segments = np.zeros((num_rows, row_length), np.int32)
  for r, members in enumerate(rows):
    start = 0
    for k, i in enumerate(members, start=1):
      t = token_id_lists[i][: row_length - start]
      ids[r, start : start + len(t)] = t
      segments[r, start : start + len(t)] = k
      start += len(t)
  return ids, segments


def row_slots(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """For the members of ``rows`` in row-major order: the row each sits in and its segment index within the row
  (where ``embed_segments`` puts its embedding)."""
  row_of = np.repeat(np.arange(len(rows)), [len(m) for m in rows])
  slot_of = np.concatenate([np.arange(len(m)) for m in rows]) if len(rows) else np.zeros(0, np.int64)
  return row_of, slot_of


def pack_pair_batch(batch: dict, row_multiple: int = 8) -> dict:
  """A padded pair batch with both sides' texts packed into rows as long as its longest side (``pad_packed``), the
  row count rounded up to ``row_multiple`` so that steps see few shapes. ``left_ids``/``right_ids`` and their masks
  become ``packed_ids`` and ``packed_segments`` [rows, length] and ``left_slot``/``right_slot`` [pairs]: where each
  text's embedding sits in the row-major [rows * segments_per_row(length)] embeddings of the packed rows. Every
  other field is kept."""
  sides = [(batch[f"{side}_ids"], batch[f"{side}_mask"]) for side in ("left", "right")]
  length = max(ids.shape[1] for ids, _ in sides)
  texts = [row[:n] for ids, mask in sides for row, n in zip(ids, np.sum(mask > 0, axis=1))]
  per_row = segments_per_row(length)
  rows = pack_rows([len(t) for t in texts], length, per_row)
  ids, segments = pad_packed(texts, rows, length, 0, -(-len(rows) // row_multiple) * row_multiple)
  row_of, slot_of = row_slots(rows)
  slot = np.empty(len(texts), np.int32)
  slot[np.concatenate(rows)] = row_of * per_row + slot_of
  pairs = sides[0][0].shape[0]
  out = {k: v for k, v in batch.items() if k not in ("left_ids", "left_mask", "right_ids", "right_mask")}
  return dict(out, packed_ids=ids, packed_segments=segments, left_slot=slot[:pairs], right_slot=slot[pairs:])


class Vocab:
  """The distinct texts of a training run, each tokenised (with the fast tokenizer) at most once, when a length
  or a batch first needs it."""

  def __init__(self, tokenizer, texts: Sequence[str], max_length: int, *, length_key: str = "tokens"):
    self.index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    self.texts = list(self.index)
    self.max_length, self.length_key = int(max_length), length_key
    # The Rust tokenizer directly (a copy, so the caller's settings are kept):
    # same ids as tokenizer(..., truncation=True), without per-text Python work.
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(self.max_length)
    self._encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    self._ids: list[np.ndarray | None] = [None] * len(self.texts)
    self.lengths = np.full(len(self.texts), -1, dtype=np.int32)  # -1: not tokenised yet
    self._bytes: np.ndarray | None = None
    self.pad_id = int(tokenizer.pad_token_id or 0)

  @property
  def num_tokenised(self) -> int:
    return int((self.lengths >= 0).sum())

  def token_lengths(self, text_ids: np.ndarray) -> np.ndarray:
    """Token counts (after truncation), tokenising the texts not seen yet."""
    text_ids = np.asarray(text_ids, dtype=np.int64)
    todo = np.unique(text_ids[self.lengths[text_ids] < 0])
    if len(todo):
      encodings = self._encode([self.texts[t] for t in todo], add_special_tokens=True)
      for t, e in zip(todo.tolist(), encodings):
        self._ids[t] = np.asarray(e.ids, dtype=np.int32)
        self.lengths[t] = len(e.ids)
    return self.lengths[text_ids]

  def sort_lengths(self, text_ids: np.ndarray) -> np.ndarray:
    """Host-independent lengths that windows are sorted by: token counts, or
    (length_key='bytes') a rough token estimate from the UTF-8 byte length."""
    if self.length_key == "tokens":
      return self.token_lengths(text_ids).astype(np.int64)
    if self._bytes is None:
      self._bytes = np.array([len(t.encode()) for t in self.texts], dtype=np.int64)
    return np.minimum(2 + self._bytes[np.asarray(text_ids, dtype=np.int64)] // 4, self.max_length)

  def pad(self, text_ids: np.ndarray, buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask [len(text_ids), bucket of the longest text], by the shared rule."""
    self.token_lengths(text_ids)
    return pad([self._ids[t] for t in np.asarray(text_ids).tolist()], buckets, self.pad_id)
