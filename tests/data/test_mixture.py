"""Training batches: format and content, bucketing, sampler proportions, resumable state, multi-host slices of
one global batch, the batch plan."""

import collections
import json

import numpy as np
import pytest

from postembed_jax.data import examples, mixture, tokenize

PAIRS = "interest,hashtag,storyline,search,translation"


def _same(a, b):
  return a.keys() == b.keys() and all(a[k] == b[k] if k == "task" else np.array_equal(a[k], b[k]) for k in a)


def _rows(batch, side):
  ids, mask = batch[f"{side}_ids"], batch[f"{side}_mask"]
  return [tuple(r[m.astype(bool)]) for r, m in zip(ids, mask)]


def test_batches_hold_true_pairs_and_labels(data_config, tokenizer, changed):
  cfg = changed(data_config, tasks=PAIRS + ",section,debtags")
  it = mixture.make_train_iterator(cfg, tokenizer, seed=0)
  enc = lambda t: tuple(tokenizer(t, truncation=True, max_length=cfg.max_length)["input_ids"])
  truth, names = {}, {}
  for name in it.task_names:
    ev = examples.make_eval_examples(name, "train", cfg, seed=0)
    names[name] = ev.label_names
    truth[name] = collections.defaultdict(list)  # Texts can repeat with other labels.
    for e in ev.examples:
      if ev.kind == "pair":
        truth[name][(enc(e["left"]), enc(e["right"]))].append(e["label"])
      else:
        truth[name][enc(e["text"])].append(e.get("label", e.get("labels")))
  buckets = set(tokenize.bucket_list(cfg.max_length, cfg.bucket_lengths))
  seen = collections.Counter()
  for _ in range(60):
    b = next(it)
    seen[b["task"]] += 1
    if "left_ids" in b:
      assert b["left_ids"].dtype == np.int32 and b["label"].dtype == np.float32
      assert b["left_ids"].shape[0] == cfg.batch_size and b["right_ids"].shape[1] in buckets
      assert b["left_ids"].shape[1] in buckets
      for l, r, y in zip(_rows(b, "left"), _rows(b, "right"), b["label"]):
        assert y in truth[b["task"]][(l, r)]
    else:
      assert b["ids"].shape[0] == cfg.batch_size and b["ids"].shape[1] in buckets
      rows = [tuple(r[m.astype(bool)]) for r, m in zip(b["ids"], b["mask"])]
      if b["task"] == "section":
        assert all(y in truth["section"][r] for r, y in zip(rows, b["label"].tolist()))
      else:
        assert b["labels"].shape == (cfg.batch_size, len(names["debtags"]))
        for r, y in zip(rows, b["labels"]):
          assert np.flatnonzero(y).tolist() in truth["debtags"][r]
  assert len(seen) == len(it.task_names)


def test_length_bucketing_keeps_padding_small(data_config, tokenizer, changed):
  cfg = changed(data_config, tasks="search,translation", batch_size=16, neg_ratio=0.0)

  def fill(**changes):
    it = mixture.make_train_iterator(changed(cfg, **changes), tokenizer, seed=0)
    return np.mean([next(it)["right_mask"].mean() for _ in range(200)])

  tokens, estimate, unsorted = fill(), fill(length_key="bytes"), fill(shuffle_window=1)
  assert tokens > 0.75 and estimate > 0.7 and tokens > estimate, (tokens, estimate)
  assert estimate > unsorted + 0.1, (estimate, unsorted)


@pytest.mark.parametrize(
  "sampling,extra",
  [
    ("uniform", {}),
    ("proportional", {"cap_k": 800}),
    ("temperature", {"temperature": 3.0}),
    ("weights", {"weights": "interest=1,hashtag=2,storyline=0,search=3,translation=4"}),
  ],
)
def test_sampler_reaches_target_proportions(data_config, tokenizer, sampling, extra, changed):
  cfg = changed(data_config, tasks=PAIRS, sampling=sampling, **extra)
  it = mixture.make_train_iterator(cfg, tokenizer, seed=1)
  n = np.array([len(examples.make_eval_examples(t, "train", cfg, seed=1).examples) for t in it.task_names], dtype=float)
  expected = {
    "uniform": np.ones_like(n),
    "proportional": np.minimum(n, 800),
    "temperature": n ** (1 / 3.0),
    "weights": np.array([1, 2, 0, 3, 4], dtype=float),
  }[sampling]
  expected = expected / expected.sum()
  np.testing.assert_allclose([it.probabilities[t] for t in it.task_names], expected)
  steps = 4000
  counts = collections.Counter(next(it)["task"] for _ in range(steps))
  for t, p in zip(it.task_names, expected):
    se = np.sqrt(p * (1 - p) / steps)
    assert abs(counts[t] / steps - p) <= 4 * se + 1e-12, (t, counts[t] / steps, p)


def test_mixed_batches_reach_target_proportions(data_config, tokenizer, changed):
  cfg = changed(data_config, tasks="interest,search,translation", mixed=True, sampling="uniform")
  it = mixture.make_train_iterator(cfg, tokenizer, seed=0)
  ids = np.concatenate([next(it)["task_id"] for _ in range(500)])
  assert len(ids) == 500 * cfg.batch_size
  frac = np.bincount(ids, minlength=3) / len(ids)
  assert np.all(np.abs(frac - 1 / 3) <= 4 * np.sqrt(2 / 9 / len(ids))), frac
  b = next(it)
  assert b["task"] == "mixed" and b["task_id"].dtype == np.int32
  assert len(set(b["task_id"].tolist())) > 1 or len(set(ids[:64].tolist())) > 1


@pytest.mark.parametrize("mixed", [False, True])
def test_saved_state_resumes_identically(data_config, tokenizer, mixed, changed):
  cfg = changed(
    data_config, tasks="interest,search,section" if not mixed else "interest,search", mixed=mixed, shuffle_window=4
  )
  it = mixture.make_train_iterator(cfg, tokenizer, seed=5)
  for _ in range(11):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(25)]
  fresh = mixture.make_train_iterator(cfg, tokenizer, seed=5)
  fresh.set_state(state)
  assert all(_same(a, b) for a, b in zip(expected, [next(fresh) for _ in range(25)]))
  other = mixture.make_train_iterator(cfg, tokenizer, seed=6)
  other.set_state(state)
  assert not all(_same(a, b) for a, b in zip(expected, [next(other) for _ in range(25)]))


def _assemble(parts):
  """The trainer's view of the hosts' batches: every 2-D ids/mask array padded
  (with 0) to the longest host, then rows concatenated in host order."""
  out = {"task": parts[0]["task"]}
  assert all(p["task"] == out["task"] and p.keys() == parts[0].keys() for p in parts)
  for k in parts[0]:
    if k == "task":
      continue
    arrays = [p[k] for p in parts]
    if arrays[0].ndim == 2 and k.endswith(("ids", "mask")):
      width = max(a.shape[1] for a in arrays)
      arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
    out[k] = np.concatenate(arrays)
  return out


def _check_host_batch(batch, buckets, rows):
  """A host's batch has its own rows, padded to the bucket of its longest one."""
  for k in batch:
    if k.endswith("mask"):
      longest = int(batch[k].sum(axis=1).max())
      assert batch[k].shape == (rows, min(b for b in buckets if b >= longest)), k
    if k != "task":
      assert len(batch[k]) == rows, k


@pytest.mark.parametrize(
  "tasks,mixed,length_key",
  [
    ("interest,search,section,debtags", False, "tokens"),
    ("interest,search,section,debtags", False, "bytes"),
    ("interest,search,translation", True, "tokens"),
    ("interest,search,translation", True, "bytes"),
  ],
  ids=["single-tokens", "single-bytes", "mixed-tokens", "mixed-bytes"],
)
def test_hosts_yield_their_slice_of_the_one_process_batch(data_config, tokenizer, tasks, mixed, length_key, changed):
  cfg = changed(
    data_config,
    tasks=tasks,
    mixed=mixed,
    length_key=length_key,
    shuffle_window=4,
    bucket_lengths=(16, 32, 48, 64, 96, 128),
  )
  buckets = tokenize.bucket_list(cfg.max_length, cfg.bucket_lengths)
  single = mixture.make_train_iterator(cfg, tokenizer, seed=3)
  expected = [next(single) for _ in range(30)]
  state = json.loads(json.dumps(single.get_state()))
  expected += [next(single) for _ in range(10)]
  assert len({b["task"] for b in expected}) == (1 if mixed else 4)
  # Row widths differ between hosts, so the test really covers per-host padding.
  for count in (1, 2, 4):
    hosts = [
      mixture.make_train_iterator(cfg, tokenizer, seed=3, process_index=i, process_count=count) for i in range(count)
    ]
    widths = set()
    for step, want in enumerate(expected[:30]):
      parts = [next(h) for h in hosts]
      for part in parts:
        _check_host_batch(part, buckets, cfg.batch_size // count)
      widths.add(len({p["left_ids"].shape[1] for p in parts if "left_ids" in p}))
      assert _same(_assemble(parts), want), (count, step)
    if count > 1:
      assert max(widths) > 1, "every host padded to the same width: weak test"
    # The state is host-independent: resume every host from a saved state.
    assert all(json.loads(json.dumps(h.get_state())) == state for h in hosts)
    resumed = [
      mixture.make_train_iterator(cfg, tokenizer, seed=3, process_index=i, process_count=count) for i in range(count)
    ]
    for h in resumed:
      h.set_state(state)
    for step, want in enumerate(expected[30:], start=30):
      assert _same(_assemble([next(h) for h in resumed]), want), (count, step)
  with pytest.raises(ValueError, match="not divisible"):
    mixture.make_train_iterator(changed(cfg, batch_size=9), tokenizer, seed=0, process_count=2)


def test_bytes_key_tokenises_only_the_hosts_rows(data_config, tokenizer, changed):
  cfg = changed(data_config, tasks="interest,search", length_key="bytes")
  hosts = [mixture.make_train_iterator(cfg, tokenizer, seed=0, process_index=i, process_count=2) for i in range(2)]
  vocab = hosts[0]._it._ds.batches["search"].vocab  # pylint: disable=protected-access
  assert vocab.num_tokenised == 0  # nothing at start-up
  seen = [set(), set()]
  for _ in range(20):
    for h, it in enumerate(hosts):
      b = next(it)
      for side in ("left", "right"):
        seen[h] |= set(_rows(b, side))
  for h, it in enumerate(hosts):
    vocab = it._it._ds.batches["search"].vocab  # pylint: disable=protected-access
    tokenised = {tuple(vocab._ids[t]) for t in np.flatnonzero(vocab.lengths >= 0)}  # pylint: disable=protected-access
    assert tokenised == seen[h]
  assert seen[0] != seen[1]
  cfg = changed(cfg, length_key="tokens")
  it = mixture.make_train_iterator(cfg, tokenizer, seed=0, process_index=0, process_count=2)
  next(it)  # 'tokens' needs the lengths of the whole window (shuffle_window global batches)
  vocab = it._it._ds.batches["search"].vocab  # pylint: disable=protected-access
  assert vocab.num_tokenised > cfg.batch_size * 2


def test_user_files_through_the_iterator(data_config, tokenizer, tmp_path, changed):
  path = tmp_path / "pairs.jsonl"
  path.write_text(
    "\n".join(json.dumps({"left": f"question number {i}", "right": f"answer {i}", "label": 1}) for i in range(100))
  )
  cfg = changed(data_config, source="files", files=f"qa={path}", tasks="qa")
  b = next(mixture.make_train_iterator(cfg, tokenizer, seed=0))
  assert b["task"] == "qa" and b["label"].tolist() == [1.0] * cfg.batch_size
  with pytest.raises(ValueError, match=r"Unknown task 'interest'; valid tasks: \['qa'\]"):
    mixture.make_train_iterator(changed(cfg, tasks="qa,interest"), tokenizer, seed=0)


def test_batch_plan_names_the_examples_of_the_next_batches(data_config, tokenizer, changed):
  cfg = changed(data_config, tasks="interest,search,section,debtags", shuffle_window=4)
  it = mixture.make_train_iterator(cfg, tokenizer, seed=2)
  for _ in range(5):
    next(it)
  state = it.get_state()
  plan = it.batch_plan(12)
  assert it.get_state() == state  # nothing consumed
  assert plan == it.batch_plan(12, json.loads(json.dumps(state)))
  batches = [next(it) for _ in range(12)]
  assert it.batch_plan(2, state) == plan[:2]
  known = {n: examples.make_eval_examples(n, "train", cfg, seed=2).examples for n in it.task_names}
  enc = lambda texts: [tuple(x) for x in tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]]
  for p, b in zip(plan, batches):
    rows = p["examples"]
    assert p["task"] == b["task"] and len(rows) == cfg.batch_size
    assert all(r in known[p["task"]] for r in rows)
    if "left_ids" in b:
      assert _rows(b, "left") == enc([r["left"] for r in rows])
      assert _rows(b, "right") == enc([r["right"] for r in rows])
      assert b["label"].tolist() == [r["label"] for r in rows]
    else:
      assert [tuple(r[m.astype(bool)]) for r, m in zip(b["ids"], b["mask"])] == enc([r["text"] for r in rows])
      if "labels" in b:
        assert [np.flatnonzero(y).tolist() for y in b["labels"]] == [r["labels"] for r in rows]
      else:
        assert b["label"].tolist() == [r["label"] for r in rows]
  assert {"left_ids", "ids"} <= {k for b in batches for k in b}, "plan covers one kind of task only: weak test"
  host = mixture.make_train_iterator(cfg, tokenizer, seed=2, process_index=1, process_count=2)
  assert host.batch_plan(12, state) == plan  # global batches, whatever the host
  mixed = mixture.make_train_iterator(changed(cfg, tasks="interest,search", mixed=True), tokenizer, seed=0)
  with pytest.raises(ValueError, match="mixed=True"):
    mixed.batch_plan(1)


def test_all_tasks_per_step_holds_every_tasks_next_batch_and_resumes(data_config, tokenizer, changed):
  tasks = "interest,search,section"
  one = mixture.make_train_iterator(changed(data_config, tasks=tasks), tokenizer, seed=3)
  every = mixture.make_train_iterator(
    changed(data_config, tasks=tasks, task_mixing="all_tasks_per_step"), tokenizer, seed=3
  )
  per_task = one._it._ds.batches  # the single-task batches each task would be trained on
  steps = [next(every) for _ in range(4)]
  for k, step in enumerate(steps):
    assert step["task"] == mixture.ALL_TASKS and list(step["batches"]) == ["interest", "search", "section"]
    for name, batch in step["batches"].items():
      assert batch["task"] == name and _same(batch, per_task[name][k])
  state = json.loads(json.dumps(every.get_state()))
  assert state == {"step": 4, "counters": {"interest": 4, "search": 4, "section": 4}}
  ahead = [next(every) for _ in range(2)]
  resumed = mixture.make_train_iterator(
    changed(data_config, tasks=tasks, task_mixing="all_tasks_per_step"), tokenizer, seed=3
  )
  resumed.set_state(state)
  for a in ahead:
    b = next(resumed)
    assert all(_same(a["batches"][n], b["batches"][n]) for n in a["batches"])
  plan = resumed.batch_plan(1, state)
  assert [(p["task"], p["step"]) for p in plan] == [("interest", 4), ("search", 4), ("section", 4)]


def test_all_tasks_per_step_refuses_mixed_batches(data_config, tokenizer, changed):
  with pytest.raises(ValueError, match="exclude each other"):
    mixture.make_train_iterator(changed(data_config, task_mixing="all_tasks_per_step", mixed=True), tokenizer, seed=0)
  with pytest.raises(ValueError, match=r"Unknown task_mixing 'every'; valid: \['one_task_per_step'"):
    mixture.make_train_iterator(changed(data_config, task_mixing="every"), tokenizer, seed=0)
