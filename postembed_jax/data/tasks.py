"""Paper-style tasks over Debian package records, in a registry keyed by name.

Pair tasks (siamese form) yield ``{"left", "right", "label"}`` with label 1.0
for a positive and 0.0 for a sampled negative; with ``neg_ratio=0`` they give
positives only, for in-batch contrastive training. Classification tasks yield
``{"text", "label"}`` (single label) or ``{"text", "labels"}`` (multi-label)
over ``label_names``.

Held out for zero-shot evaluation only (never produced by a training task):
debtags of HELDOUT_FACETS (``zs_hashtag``), dependency relations
(``relation``), and translations in HELDOUT_LANGUAGES (``zs_translation``).

Over 400 lines because a sixth of it is Debian's section-title table; the rest is one builder per task next to the
registry that names them.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from postembed_jax.data.lists import as_list

# Debian's own section titles (packages.debian.org); unknown ones are title-cased.
SECTION_TITLES = {
  "admin": "Administration Utilities",
  "cli-mono": "Mono/CLI",
  "comm": "Communication Programs",
  "database": "Databases",
  "debian-installer": "debian-installer udeb packages",
  "debug": "Debug packages",
  "devel": "Development",
  "doc": "Documentation",
  "editors": "Editors",
  "education": "Education",
  "electronics": "Electronics",
  "embedded": "Embedded software",
  "fonts": "Fonts",
  "games": "Games",
  "gnome": "GNOME",
  "gnu-r": "GNU R",
  "gnustep": "GNUstep",
  "golang": "Go",
  "graphics": "Graphics",
  "hamradio": "Ham Radio",
  "haskell": "Haskell",
  "httpd": "Web Servers",
  "interpreters": "Interpreters",
  "introspection": "GObject Introspection",
  "java": "Java",
  "javascript": "JavaScript",
  "kde": "KDE",
  "kernel": "Kernels",
  "libdevel": "Library development",
  "libs": "Libraries",
  "lisp": "Lisp",
  "localization": "Language packs",
  "mail": "Mail",
  "math": "Mathematics",
  "metapackages": "Metapackages",
  "misc": "Miscellaneous",
  "net": "Network",
  "news": "Newsgroups",
  "ocaml": "OCaml",
  "oldlibs": "Old Libraries",
  "otherosfs": "Other OS's and file systems",
  "perl": "Perl",
  "php": "PHP",
  "python": "Python",
  "ruby": "Ruby",
  "rust": "Rust",
  "science": "Science",
  "shells": "Shells",
  "sound": "Sound",
  "tasks": "Tasks",
  "tex": "TeX",
  "text": "Text Processing",
  "utils": "Utilities",
  "vcs": "Version Control Systems",
  "video": "Video",
  "web": "Web Software",
  "x11": "X Window System software",
  "xfce": "Xfce",
  "zope": "Zope/Plone Framework",
}
HELDOUT_FACETS = ("hardware", "security", "works-with-format")
TRAIN_LANGUAGES = ("de", "es", "fr", "it", "pt_BR")
HELDOUT_LANGUAGES = ("ja", "ru")
_NEG_TRIES = 20  # Rejection-sampling attempts per negative before giving up.


def render_section(section: str) -> str:
  """'libdevel' -> 'Library development' (the topic text of `interest`)."""
  return SECTION_TITLES.get(section, section.replace("-", " ").title())


def render_tag(tag: str) -> str:
  """'works-with::image:raster' -> 'works with: image raster'."""
  facet, _, value = tag.partition("::")
  clean = lambda s: " ".join(s.replace("-", " ").replace("_", " ").replace(":", " ").split())
  return f"{clean(facet)}: {clean(value)}"


def facet(tag: str) -> str:
  return tag.partition("::")[0]


def usable_tag(tag: str) -> bool:
  """Debtags' placeholder values ('::TODO') carry no meaning."""
  return not tag.endswith("::TODO")


def _rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _index(pairs: Iterable[tuple[str, Any]]) -> dict[str, set]:
  out: dict[str, set] = collections.defaultdict(set)
  for key, value in pairs:
    out[key].add(value)
  return out


@dataclasses.dataclass
class _PairSpace:
  """What a pair task needs to label any (left, right) pair and sample negatives.

  A pair is positive iff left_labels[left] and right_labels[right] intersect,
  computed over *texts* so that packages sharing a text never yield a false
  negative.
  """

  positives: list[tuple[str, str, Any]]  # (left, right, hard-negative key)
  left_labels: dict[str, set]
  right_labels: dict[str, set]
  pool: list[str]  # right texts to sample negatives from
  hard_pool: Callable[[Any], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class PairTask:
  """A siamese task: `build(records)` defines its positives and label space."""

  name: str
  description: str
  build: Callable[[PairTask, list[dict[str, Any]]], _PairSpace]
  zero_shot: bool = False
  languages: tuple[str, ...] = ()
  heldout_facets: tuple[str, ...] = ()  # hashtag: facets left out; zs_hashtag: the only facets used
  query: str = "synopsis"  # search: 'synopsis', 'name' or 'both'
  max_partners: int = 2  # storyline: partners per post
  kind: str = dataclasses.field(default="pair", init=False)

  def pairs(
    self, records: list[dict[str, Any]], *, seed: int = 0, neg_ratio: float = 1.0, hard_negatives: bool = False
  ) -> list[dict[str, Any]]:
    """Positives, each followed by ~neg_ratio sampled negatives (deterministic).

    A fractional ratio is met in expectation. Hard negatives come from the same
    facet (hashtag), from sections of packages sharing a debtag (interest) or
    from the same section (post-to-post tasks).
    """
    space = self.build(self, records)
    rng = _rng(seed, self.name)
    out = []
    for left, right, key in space.positives:
      out.append({"left": left, "right": right, "label": 1.0})
      n_neg = int(neg_ratio) + (rng.random() < neg_ratio - int(neg_ratio))
      for _ in range(n_neg):
        neg = self._negative(space, left, key, rng, hard_negatives)
        if neg is not None:
          out.append({"left": left, "right": neg, "label": 0.0})
    return out

  def retrieval(self, records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[list[int]]]:
    """(queries, documents, relevant): every left text of a positive queries the task's whole pool of right
    texts (for the text-to-text tasks, every post of the split); ``relevant[q]`` lists the documents that make a
    positive pair with query q under the task's label space (never the query's own text). Queries without a
    relevant document are left out."""
    space = self.build(self, records)
    docs = sorted(set(space.pool) | {right for _, right, _ in space.positives})
    docs_of_label: dict[Any, set[int]] = collections.defaultdict(set)
    for i, doc in enumerate(docs):
      for label in space.right_labels.get(doc, ()):
        docs_of_label[label].add(i)
    queries, relevant = [], []
    for query in sorted({left for left, _, _ in space.positives}):
      hits = sorted({i for label in space.left_labels[query] for i in docs_of_label.get(label, ()) if docs[i] != query})
      if hits:
        queries.append(query)
        relevant.append(hits)
    return queries, docs, relevant

  @staticmethod
  def _negative(space, left, key, rng, hard):
    labels = space.left_labels[left]
    pools = ([space.hard_pool(key)] if hard else []) + [space.pool]
    for pool in pools:
      if not pool:
        continue
      for _ in range(_NEG_TRIES):
        cand = pool[rng.integers(len(pool))]
        if cand != left and not labels & space.right_labels.get(cand, set()):
          return cand
    return None


def _by_section(records, text_of) -> Callable[[Any], list[str]]:
  groups = collections.defaultdict(set)
  for r in records:
    groups[r["section"]].add(text_of(r))
  frozen = {k: sorted(v) for k, v in groups.items()}
  return lambda key: frozen.get(key, [])


def _posts(records) -> list[str]:
  return sorted({r["description"] for r in records})


def _build_interest(task, records):
  titles = {r["section"]: render_section(r["section"]) for r in records}
  tag_sections = _index((t, r["section"]) for r in records for t in r["tags"])
  hard = {}
  for r in records:
    near = set().union(*(tag_sections[t] for t in r["tags"])) - {r["section"]}
    hard[r["name"]] = sorted(titles[s] for s in near)
  return _PairSpace(
    positives=[(r["description"], titles[r["section"]], r["name"]) for r in records],
    left_labels=_index((r["description"], r["section"]) for r in records),
    right_labels=_index((t, s) for s, t in titles.items()),
    pool=sorted(set(titles.values())),
    hard_pool=lambda key: hard.get(key, []),
  )


def _tags_in_scope(task, record) -> list[str]:
  if task.zero_shot:
    return [t for t in record["tags"] if usable_tag(t) and facet(t) in task.heldout_facets]
  return [t for t in record["tags"] if usable_tag(t) and facet(t) not in task.heldout_facets]


def _build_hashtag(task, records):
  scoped = [(r, t) for r in records for t in _tags_in_scope(task, r)]
  by_facet = collections.defaultdict(set)
  for _, t in scoped:
    by_facet[facet(t)].add(render_tag(t))
  by_facet = {k: sorted(v) for k, v in by_facet.items()}
  return _PairSpace(
    positives=[(r["description"], render_tag(t), facet(t)) for r, t in scoped],
    # Labels over *all* tags of a text, so a held-out-facet tag never hides a positive.
    left_labels=_index((r["description"], render_tag(t)) for r in records for t in r["tags"]),
    right_labels={render_tag(t): {render_tag(t)} for _, t in scoped},
    pool=sorted({render_tag(t) for _, t in scoped}),
    hard_pool=lambda key: by_facet.get(key, []),
  )


def _build_storyline(task, records):
  by_source = collections.defaultdict(list)
  for r in records:
    by_source[r["source"]].append(r)
  positives, seen = [], set()
  for src in sorted(by_source):
    texts = sorted({r["description"] for r in by_source[src]})
    if len(texts) < 2:
      continue
    section = {r["description"]: r["section"] for r in by_source[src]}
    for i, a in enumerate(texts):
      for j in range(1, min(task.max_partners, len(texts) - 1) + 1):
        b = texts[(i + j) % len(texts)]
        if (b, a) not in seen and (a, b) not in seen:
          seen.add((a, b))
          positives.append((a, b, section[a]))
  sources = _index((r["description"], r["source"]) for r in records)
  return _PairSpace(
    positives=positives,
    left_labels=sources,
    right_labels=sources,
    pool=_posts(records),
    hard_pool=_by_section(records, lambda r: r["description"]),
  )


def _query(task, r) -> str:
  return {"synopsis": r["synopsis"], "name": r["name"], "both": f"{r['name']}: {r['synopsis']}"}[task.query]


def _build_search(task, records):
  return _PairSpace(
    positives=[(_query(task, r), r["description"], r["section"]) for r in records],
    left_labels=_index((_query(task, r), r["name"]) for r in records),
    right_labels=_index((r["description"], r["name"]) for r in records),
    pool=_posts(records),
    hard_pool=_by_section(records, lambda r: r["description"]),
  )


def _build_translation(task, records):
  items = [(r, l) for r in records for l in task.languages if l in r["translations"]]
  return _PairSpace(
    positives=[(r["translations"][l], r["description"], r["section"]) for r, l in items],
    left_labels=_index((r["translations"][l], r["name"]) for r, l in items),
    right_labels=_index((r["description"], r["name"]) for r in records),
    pool=_posts(records),
    hard_pool=_by_section(records, lambda r: r["description"]),
  )


def _build_relation(task, records):
  """post(A) <-> post(B) where A Depends on B (both in the given records)."""
  by_name = {r["name"]: r for r in records}
  positives = [
    (r["description"], by_name[d]["description"], r["section"])
    for r in records
    for d in r["depends"]
    if d in by_name and by_name[d]["description"] != r["description"]
  ]
  return _PairSpace(
    positives=positives,
    left_labels=_index((r["description"], d) for r in records for d in r["depends"]),
    right_labels=_index((r["description"], r["name"]) for r in records),
    pool=_posts(records),
    hard_pool=_by_section(records, lambda r: r["description"]),
  )


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Post -> label(s), for classification heads; label space from train records."""

  name: str
  description: str
  multi_label: bool
  labels_of: Callable[[dict[str, Any]], list[str]]
  min_count: int = 1  # labels rarer than this in the train records are dropped
  zero_shot: bool = False
  kind: str = dataclasses.field(default="classification", init=False)

  def label_names(self, train_records: list[dict[str, Any]]) -> list[str]:
    counts = collections.Counter(l for r in train_records for l in self.labels_of(r))
    return sorted(l for l, c in counts.items() if c >= self.min_count)

  def examples(
    self,
    records: list[dict[str, Any]],
    label_names: Sequence[str] | None = None,
  ) -> list[dict[str, Any]]:
    """Labelled posts; records with no label in `label_names` are skipped."""
    names = self.label_names(records) if label_names is None else label_names
    return labelled_posts(((r["description"], self.labels_of(r)) for r in records), names, multi_label=self.multi_label)


def labelled_posts(
  posts: Iterable[tuple[str, Sequence[str]]], label_names: Sequence[str], *, multi_label: bool
) -> list[dict[str, Any]]:
  """(text, labels) -> ``{"text", "labels": ids}`` or ``{"text", "label": id}`` over `label_names`, for
  Debian and user-file classification tasks alike; posts with no label in `label_names` are skipped."""
  index = {n: i for i, n in enumerate(label_names)}
  out = []
  for text, labels in posts:
    ids = sorted({index[l] for l in labels if l in index})
    if not ids:
      continue
    out.append({"text": text, "labels": ids} if multi_label else {"text": text, "label": ids[0]})
  return out


def _debtag_labels(heldout: Sequence[str], *, held_out: bool = False) -> Callable[[dict[str, Any]], list[str]]:
  """A post's usable debtags outside the held-out facets, or (``held_out``) only those inside them."""
  return lambda r: [t for t in r["tags"] if usable_tag(t) and (facet(t) in heldout) == held_out]


TASKS: dict[str, PairTask | ClassificationTask] = {
  t.name: t
  for t in [
    PairTask("interest", "post <-> its Debian section (topic)", _build_interest),
    PairTask(
      "hashtag", "post <-> one of its debtags, held-out facets excluded", _build_hashtag, heldout_facets=HELDOUT_FACETS
    ),
    PairTask("storyline", "post <-> another post of the same source package", _build_storyline),
    PairTask("search", "query (synopsis) <-> post", _build_search),
    PairTask("translation", "translated post <-> English post", _build_translation, languages=TRAIN_LANGUAGES),
    ClassificationTask("section", "post -> section (multi-class)", False, lambda r: [r["section"]]),
    ClassificationTask(
      "debtags",
      "post -> debtags (multi-label), held-out facets excluded",
      True,
      _debtag_labels(HELDOUT_FACETS),
      min_count=5,
    ),
    PairTask(
      "zs_hashtag",
      "ZERO-SHOT: post <-> debtag of a held-out facet",
      _build_hashtag,
      zero_shot=True,
      heldout_facets=HELDOUT_FACETS,
    ),
    PairTask("relation", "ZERO-SHOT: post <-> post of a package it Depends on", _build_relation, zero_shot=True),
    PairTask(
      "zs_translation",
      "ZERO-SHOT: post in a held-out language <-> English post",
      _build_translation,
      zero_shot=True,
      languages=HELDOUT_LANGUAGES,
    ),
    ClassificationTask(
      "zs_debtags",
      "ZERO-SHOT: post -> debtags of the held-out facets (multi-label)",
      True,
      _debtag_labels(HELDOUT_FACETS, held_out=True),
      zero_shot=True,
    ),
  ]
}


TRAINABLE_TASKS = tuple(n for n, t in TASKS.items() if not t.zero_shot)
PAIR_TASKS = tuple(n for n in TRAINABLE_TASKS if TASKS[n].kind == "pair")  # trainable pair tasks


def get_task(name: str, config=None) -> PairTask | ClassificationTask:
  """Task by name, specialised by a data config's languages/facets/query if given."""
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; valid tasks: {sorted(TASKS)}")
  task = TASKS[name]
  if config is None:
    return task
  get = lambda k, d: config.get(k) if config.get(k) is not None else d
  if name in ("debtags", "zs_debtags"):
    heldout = tuple(as_list(get("heldout_facets", HELDOUT_FACETS)))
    return dataclasses.replace(task, labels_of=_debtag_labels(heldout, held_out=name == "zs_debtags"))
  if not isinstance(task, PairTask):
    return task
  changes = {}
  if name == "translation":
    changes["languages"] = tuple(as_list(get("languages", task.languages)))
  elif name == "zs_translation":
    changes["languages"] = tuple(as_list(get("heldout_languages", task.languages)))
  elif name in ("hashtag", "zs_hashtag"):
    changes["heldout_facets"] = tuple(as_list(get("heldout_facets", task.heldout_facets)))
  elif name == "search":
    changes["query"] = get("search_query", task.query)
  return dataclasses.replace(task, **changes)
