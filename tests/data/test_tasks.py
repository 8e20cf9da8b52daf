"""Tasks: positives share the label, negatives do not, held-out data stays out."""

import collections

import pytest

from postembed_jax.data import tasks

PAIR_TASKS = [n for n, t in tasks.TASKS.items() if t.kind == "pair"]


def _by_text(records, key):
  out = collections.defaultdict(set)
  for r in records:
    out[r[key]].add(r["name"])
  return out


def _truth(name, records):
  """An independent statement of each task's label: (left, right) -> shares a label."""
  by_name = {r["name"]: r for r in records}
  posts = _by_text(records, "description")
  recs_of = lambda text: [by_name[n] for n in posts.get(text, ())]
  if name == "interest":
    return lambda l, rt: any(tasks.render_section(r["section"]) == rt for r in recs_of(l))
  if name in ("hashtag", "zs_hashtag"):
    return lambda l, rt: any(tasks.render_tag(t) == rt for r in recs_of(l) for t in r["tags"])
  if name == "storyline":
    return lambda l, rt: bool({r["source"] for r in recs_of(l)} & {r["source"] for r in recs_of(rt)})
  if name == "search":
    return lambda q, rt: any(r["synopsis"] == q for r in recs_of(rt))
  if name in ("translation", "zs_translation"):
    return lambda l, rt: any(l in r["translations"].values() for r in recs_of(rt))
  if name == "relation":
    return lambda l, rt: any(d["name"] in r["depends"] for r in recs_of(l) for d in recs_of(rt))
  raise AssertionError(name)


@pytest.mark.parametrize("name", PAIR_TASKS)
@pytest.mark.parametrize("hard", [False, True])
def test_pairs_are_correctly_labelled(name, hard, records):
  recs = records["train"] + records["validation"] + records["test"]
  pairs = tasks.TASKS[name].pairs(recs, seed=3, neg_ratio=2, hard_negatives=hard)
  truth = _truth(name, recs)
  labels = collections.Counter(p["label"] for p in pairs)
  assert labels[1.0] > 20 and labels[0.0] > 1.5 * labels[1.0], labels
  for p in pairs:
    assert p["left"].strip() and p["right"].strip()
    assert truth(p["left"], p["right"]) == (p["label"] == 1.0), p
  if name in ("storyline", "relation"):
    assert all(p["left"] != p["right"] for p in pairs)


def test_pairs_deterministic_and_ratio(records):
  task = tasks.TASKS["search"]
  a = task.pairs(records["train"], seed=1, neg_ratio=0.5)
  assert a == task.pairs(records["train"], seed=1, neg_ratio=0.5)
  assert a != task.pairs(records["train"], seed=2, neg_ratio=0.5)
  pos = sum(p["label"] for p in a)
  assert abs((len(a) - pos) / pos - 0.5) < 0.15
  assert all(p["label"] == 1.0 for p in task.pairs(records["train"], neg_ratio=0))


def test_hard_negatives_come_from_the_same_facet(records):
  pairs = tasks.TASKS["hashtag"].pairs(records["train"], seed=0, neg_ratio=1, hard_negatives=True)
  same = total = 0
  for pos, neg in zip(pairs, pairs[1:]):
    if pos["label"] == 1.0 and neg["label"] == 0.0:
      total += 1
      same += pos["right"].split(":")[0] == neg["right"].split(":")[0]
  assert same / total > 0.6


def test_held_out_data_never_in_training_tasks(records):
  recs = records["train"]
  held = {tasks.render_tag(t) for r in recs for t in r["tags"] if tasks.facet(t) in tasks.HELDOUT_FACETS}
  assert held
  train = tasks.TASKS["hashtag"].pairs(recs, seed=0, neg_ratio=1)
  assert not {p["right"] for p in train} & held
  zs = tasks.TASKS["zs_hashtag"].pairs(recs, seed=0, neg_ratio=1)
  assert zs and {p["right"] for p in zs} <= held
  held_texts = {r["translations"][l] for r in recs for l in tasks.HELDOUT_LANGUAGES if l in r["translations"]}
  train_texts = {p["left"] for p in tasks.TASKS["translation"].pairs(recs, neg_ratio=0)}
  assert held_texts and not held_texts & train_texts
  assert {p["left"] for p in tasks.TASKS["zs_translation"].pairs(recs, neg_ratio=0)} <= held_texts
  debtag_names = tasks.TASKS["debtags"].label_names(recs)
  assert not [n for n in debtag_names if tasks.facet(n) in tasks.HELDOUT_FACETS]
  zs_names = tasks.TASKS["zs_debtags"].label_names(recs)  # the complement: held-out facets only
  assert zs_names and {tasks.facet(n) for n in zs_names} <= set(tasks.HELDOUT_FACETS)
  narrowed = tasks.get_task("zs_debtags", {"heldout_facets": "hardware"}).label_names(recs)
  assert narrowed and {tasks.facet(n) for n in narrowed} == {"hardware"}
  assert all(t.zero_shot == n.startswith(("zs_", "relation")) for n, t in tasks.TASKS.items())


def test_classification_examples(records):
  section = tasks.TASKS["section"]
  names = section.label_names(records["train"])
  by_text = collections.defaultdict(set)
  for r in records["validation"]:
    by_text[r["description"]].add(r["section"])
  ex = section.examples(records["validation"], names)
  assert ex and all(names[e["label"]] in by_text[e["text"]] for e in ex)
  debtags = tasks.TASKS["debtags"]
  names = debtags.label_names(records["train"])
  tags_of = {r["description"]: set(r["tags"]) for r in records["train"]}
  ex = debtags.examples(records["train"], names)
  assert ex and all(e["labels"] and {names[i] for i in e["labels"]} <= tags_of[e["text"]] for e in ex)


def test_renderings_and_unknown_task():
  assert tasks.render_tag("works-with::image") == "works with: image"
  assert tasks.render_tag("works-with::image:raster") == "works with: image raster"
  assert tasks.render_section("libdevel") == "Library development"
  assert tasks.render_section("new-thing") == "New Thing"
  with pytest.raises(ValueError, match=r"Unknown task 'nope'; valid tasks: \['debtags'"):
    tasks.get_task("nope")
