"""The shared padding rule and the lazy vocabulary."""

import numpy as np

from postembed_jax.data import tokenize


def test_bucket_list_ends_at_max_length():
  assert tokenize.bucket_list(128, (32, 64, 96, 128)) == (32, 64, 96, 128)
  assert tokenize.bucket_list(100, (32, 64, 96, 128, 256)) == (32, 64, 96, 100)
  assert tokenize.bucket_list(64, ()) == (64,)


def test_bucket_for_is_the_smallest_that_fits():
  assert [tokenize.bucket_for(n, (4, 8)) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 8]


def test_pad_pads_rows_and_length():
  ids, mask = tokenize.pad([[5, 6, 7], [8]], (4, 8), pad_id=0, rows=4)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(mask.sum(1), [3, 1, 0, 0])
  assert ids.dtype == mask.dtype == np.int32
  ids, mask = tokenize.pad([list(range(10))], (4, 8), pad_id=9)  # longer than every bucket: cut to the largest
  assert ids.tolist() == [list(range(8))] and mask.sum() == 8


def test_vocab_tokenises_lazily_and_pads_like_the_tokenizer(tokenizer):
  texts = ["a short one", "a somewhat longer text with quite a few more words in it", "a short one"]
  vocab = tokenize.Vocab(tokenizer, texts, max_length=12)
  assert vocab.texts == texts[:2] and vocab.num_tokenised == 0
  vocab.sort_lengths(np.array([0, 1]))  # 'tokens': exact lengths, so this tokenises
  assert vocab.num_tokenised == 2
  buckets = (8, 12)
  want = tokenize.pad(
    tokenizer(texts[:2], truncation=True, max_length=12)["input_ids"], buckets, tokenizer.pad_token_id
  )
  for got, expected in zip(vocab.pad(np.array([0, 1]), buckets), want):
    np.testing.assert_array_equal(got, expected)
  assert vocab.pad(np.array([0]), buckets)[0].shape == (1, 8)
  by_bytes = tokenize.Vocab(tokenizer, texts, max_length=12, length_key="bytes")
  assert by_bytes.sort_lengths(np.array([0, 1])).tolist() == [2 + 11 // 4, 12] and by_bytes.num_tokenised == 0


def test_pack_rows_fills_rows_tightly_within_their_limits():
  lengths = [9, 3, 7, 5, 2, 8, 1, 6]  # 41 tokens: the fewest rows of 10 is 5
  rows = tokenize.pack_rows(lengths, row_length=10, max_segments=3)
  assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
  assert len(rows) == 5
  assert all(sum(lengths[i] for i in row) <= 10 and len(row) <= 3 for row in rows)
  assert [len(row) for row in tokenize.pack_rows([1] * 7, row_length=10, max_segments=2)] == [2, 2, 2, 1]


def test_pad_packed_writes_segments_back_to_back():
  ids, segments = tokenize.pad_packed([[5, 6, 7], [8], [9, 9]], [[0, 1], [2]], row_length=5, pad_id=0, num_rows=3)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 8, 0], [9, 9, 0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(segments, [[1, 1, 1, 2, 0], [1, 1, 0, 0, 0], [0] * 5])
  assert ids.dtype == segments.dtype == np.int32


def test_row_slots_name_each_members_row_and_segment():
  row_of, slot_of = tokenize.row_slots([[4, 1, 2], [0], [3, 5]])
  np.testing.assert_array_equal(row_of, [0, 0, 0, 1, 2, 2])
  np.testing.assert_array_equal(slot_of, [0, 1, 2, 0, 0, 1])
  assert [len(a) for a in tokenize.row_slots([])] == [0, 0]


def test_pack_pair_batch_puts_every_text_in_its_slot():
  """Both sides' texts share rows of the longer side's length; each slot points at its own text's segment."""
  rng = np.random.default_rng(0)
  batch = {"task": "search", "label": np.arange(6, dtype=np.float32), "task_id": np.zeros(6, np.int32)}
  texts = {}
  for side, length in (("left", 12), ("right", 16)):
    real = rng.integers(2, length + 1, 6)
    batch[f"{side}_mask"] = (np.arange(length)[None] < real[:, None]).astype(np.int32)
    batch[f"{side}_ids"] = rng.integers(3, 90, (6, length)).astype(np.int32) * batch[f"{side}_mask"]
    texts[side] = [batch[f"{side}_ids"][i, :n] for i, n in enumerate(real)]
  packed = tokenize.pack_pair_batch(batch, row_multiple=4)
  assert {"left_ids", "left_mask", "right_ids", "right_mask"}.isdisjoint(packed)
  assert packed["task"] == "search" and packed["label"] is batch["label"] and packed["task_id"] is batch["task_id"]
  ids, segments = packed["packed_ids"], packed["packed_segments"]
  per_row = tokenize.segments_per_row(16)
  assert ids.shape[1] == 16 and ids.shape[0] % 4 == 0 and per_row == 2
  real_tokens = sum(len(t) for side in texts.values() for t in side)
  assert ids.shape[0] < 12 and np.sum(segments > 0) == real_tokens  # fewer rows than texts, no token lost
  for side in ("left", "right"):
    for text, slot in zip(texts[side], packed[f"{side}_slot"]):
      row, segment = divmod(int(slot), per_row)
      np.testing.assert_array_equal(ids[row][segments[row] == segment + 1], text)
  assert len(set(packed["left_slot"]) | set(packed["right_slot"])) == 12
