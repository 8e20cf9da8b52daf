import numpy as np
import pytest

from postembed_jax.evaluation import evaluators, examples
from postembed_jax.evaluation.baselines import TfidfEmbedder


class LookupEmbedder:
  """Embeds each text as a fixed vector from a table (unknown texts: a constant), for exact expected metrics."""

  def __init__(self, table: dict[str, np.ndarray], dim: int, name: str = "lookup"):
    self.table, self.dim, self.name = table, dim, name

  def embed(self, texts):
    return np.stack([self.table.get(t, np.ones(self.dim)) for t in texts]).astype(np.float32)


class ConstantEmbedder:
  name, dim = "constant", 8

  def embed(self, texts):
    return np.ones((len(texts), self.dim), np.float32)


class HashEmbedder:
  """A deterministic random vector per text: an embedding that knows nothing."""

  name, dim = "hash", 32

  def embed(self, texts):
    return np.stack([np.random.default_rng(list(t.encode())).normal(size=self.dim) for t in texts]).astype(np.float32)


# Texts a, b / c, d / e share topics 0 / 1 / 2; the "perfect" embedding is the topic's one-hot vector.
TOPIC = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2}
PERFECT = LookupEmbedder({t: np.eye(3)[k] for t, k in TOPIC.items()}, dim=3, name="perfect")
PAIRS = examples.Pairs(
  left=["a", "a", "c", "c", "e"], right=["b", "d", "d", "e", "b"], labels=np.array([1, 0, 1, 0, 0])
)


def test_pair_auc_of_perfect_and_constant_embeddings():
  assert evaluators.score_pairs(PERFECT, PAIRS) == {"pair_auc": 1.0}
  assert evaluators.score_pairs(ConstantEmbedder(), PAIRS) == {"pair_auc": 0.5}
  with pytest.raises(ValueError, match="one class"):
    evaluators.score_pairs(PERFECT, examples.Pairs(["a"], ["b"], np.array([1])))


# Queries a, c against the pool b, d, e (and a itself, which is never ranked for query a): each query's one
# relevant document is the only other one of its topic, so the perfect embedding ranks it first.
RETRIEVAL = examples.Retrieval(
  queries=["a", "c"], docs=["a", "b", "d", "e"], relevance=np.array([[0, 1, 0, 0], [0, 0, 1, 0]], np.int8)
)


def test_retrieval_on_hand_built_case():
  out = evaluators.score_retrieval(PERFECT, RETRIEVAL)
  assert out == {"recall@1": 1.0, "recall@10": 1.0, "mrr": 1.0, "ndcg@10": 1.0}
  # A constant embedding ties every rankable document (3 for query a, whose own text is not ranked; 4 for c):
  # ranks count ties against it; nDCG shares the tied gains.
  constant = evaluators.score_retrieval(ConstantEmbedder(), RETRIEVAL)
  assert constant["recall@1"] == 0.0 and constant["recall@10"] == 1.0
  assert constant["mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)
  tied = lambda n: np.mean([1 / np.log2(i + 2) for i in range(n)])
  assert constant["ndcg@10"] == pytest.approx((tied(3) + tied(4)) / 2)


def test_retrieval_queries_search_the_whole_split(fixture_data_config):
  from postembed_jax.data import debian

  posts = {r["description"] for r in debian.load_records("validation", config=fixture_data_config)}
  for task in ("search", "storyline", "translation"):
    retrieval = examples.retrieval(task, "validation", fixture_data_config)
    assert set(retrieval.docs) == posts, task  # every post of the split is a candidate
    assert retrieval.relevance.sum(axis=1).min() >= 1
    for q, text in enumerate(retrieval.queries):
      assert text not in [retrieval.docs[d] for d in np.flatnonzero(retrieval.relevance[q])]
  # storyline: the relevant posts of a query are the other posts of its source package.
  records = debian.load_records("validation", config=fixture_data_config)
  story = examples.retrieval("storyline", "validation", fixture_data_config)
  source_of = {}
  for r in records:
    source_of.setdefault(r["description"], set()).add(r["source"])
  for q, text in enumerate(story.queries):
    expected = {d for d in posts if d != text and source_of[d] & source_of[text]}
    assert {story.docs[d] for d in np.flatnonzero(story.relevance[q])} == expected


def test_triplet_accuracy_on_hand_built_case():
  triplets = examples.Triplets(anchor=["a", "c", "e"], positive=["b", "d", "e"], negative=["c", "a", "e"])
  # a-b and c-d share a topic, the negatives do not; e's positive and negative are the same text: a tie, half.
  assert evaluators.score_triplets(PERFECT, triplets) == {"triplet_accuracy": pytest.approx(2.5 / 3)}
  assert evaluators.score_triplets(ConstantEmbedder(), triplets) == {"triplet_accuracy": 0.5}


def test_probes_score_perfect_embedding_perfectly_and_multilabel_too():
  texts = [f"t{i}" for i in range(30)]
  topic = [i % 3 for i in range(30)]
  embedder = LookupEmbedder({t: np.eye(3)[k] + 0.01 * i for i, (t, k) in enumerate(zip(texts, topic))}, dim=3)
  train = examples.Labelled(texts[:20], topic[:20], ["x", "y", "z", "never"], multilabel=False)
  test = examples.Labelled(texts[20:], topic[20:], ["x", "y", "z", "never"], multilabel=False)
  out = evaluators.score_labels(embedder, train, test)
  for probe in ("knn", "linear"):
    assert out[f"{probe}_accuracy"] == 1.0 and out[f"{probe}_map"] == 1.0
  multi = lambda ls: examples.Labelled(
    ls.texts, [[y, 3] if y == 0 else [y] for y in ls.labels], ls.label_names, multilabel=True
  )
  out = evaluators.score_labels(embedder, multi(train), multi(test))
  assert out["knn_map"] == 1.0 and out["linear_map"] == 1.0 and out["linear_macro_f1"] == 1.0


def test_test_split_figures_carry_intervals_around_the_point():
  rng = np.random.default_rng(0)
  pairs = examples.Pairs([f"l{i}" for i in range(60)], [f"r{i}" for i in range(60)], np.arange(60) % 2)
  noisy = LookupEmbedder(
    {
      **{f"l{i}": np.array([1.0, 0.0]) for i in range(60)},
      **{
        f"r{i}": np.array([1.0, 0.0]) + rng.normal(scale=1.5, size=2) * (1 - i % 2) + np.array([0.0, 0.3])
        for i in range(60)
      },
    },
    dim=2,
  )
  out = evaluators.score_pairs(noisy, pairs, settings=evaluators.EvalSettings(bootstrap_resamples=200), ci=True)
  assert out["pair_auc/ci95_low"] < out["pair_auc"] < out["pair_auc/ci95_high"]
  assert evaluators.EvalSettings().wants_ci("test") and not evaluators.EvalSettings().wants_ci("validation")


def test_cached_embedder_embeds_each_text_once():
  calls = []

  class Counting(ConstantEmbedder):
    def embed(self, texts):
      calls.append(list(texts))
      return super().embed(texts)

  cached = evaluators.CachedEmbedder(Counting())
  assert cached.embed(["x", "y", "x"]).shape == (3, 8)
  cached.embed(["y", "z"])
  assert calls == [["x", "y"], ["z"]]


def test_unknown_evaluator_names_fail_listing_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown evaluator\(s\) \['pair_acu'\]; valid evaluators: \['classif"):
    evaluators.evaluate(ConstantEmbedder(), "pair_auc,pair_acu", split="validation", data_config=None)
  assert evaluators.check_names(" pair_auc , retrieval") == ["pair_auc", "retrieval"]


def test_settings_from_config_reads_known_fields_only():
  settings = evaluators.EvalSettings.from_config({"max_examples": 10, "retrieval_ks": "1,5", "unrelated": 3})
  assert settings.max_examples == 10 and settings.retrieval_ks == (1, 5)


@pytest.fixture(scope="module")
def tfidf_results(fixture_data_config):
  tfidf = TfidfEmbedder(examples.corpus_texts("train", fixture_data_config))
  return evaluators.evaluate(tfidf, list(evaluators.EVALUATORS), split="validation", data_config=fixture_data_config)


def test_full_suite_on_fixture_covers_every_task(tfidf_results):
  tasks = {k.split("/")[0] for k in tfidf_results}
  assert tasks == {
    "interest",
    "hashtag",
    "storyline",
    "search",
    "translation",
    "section",
    "debtags",
    "zs_hashtag",
    "relation",
    "zs_translation",
    "zs_debtags",
  }
  assert all(0.0 <= v <= 1.0 for v in tfidf_results.values())
  assert not any("ci95" in k for k in tfidf_results)  # validation split: no intervals


def test_every_pair_task_gets_triplet_and_hard_negative_figures(tfidf_results):
  for task in ("interest", "hashtag", "storyline", "search", "translation"):
    for key in ("pair_auc", "triplet_accuracy", "pair_auc_hard", "triplet_accuracy_hard"):
      assert f"{task}/{key}" in tfidf_results, (task, key)
  # Hard negatives share a section or facet with the positive: lexical overlap tells them apart less well.
  assert tfidf_results["search/pair_auc_hard"] < tfidf_results["search/pair_auc"]


def _same_pairs(a: examples.Pairs, b: examples.Pairs) -> bool:
  return a.left == b.left and a.right == b.right and np.array_equal(a.labels, b.labels)


def test_evaluation_examples_do_not_depend_on_training_settings(fixture_data_config):
  trained = fixture_data_config.copy_and_resolve_references()
  trained.update(neg_ratio=3.0, hard_negatives=True, max_examples_per_task=7, batch_size=4, tasks="search")
  for hard in (False, True):
    for task in ("interest", "storyline", "search"):
      assert _same_pairs(
        examples.pairs(task, "validation", trained, hard_negatives=hard),
        examples.pairs(task, "validation", fixture_data_config, hard_negatives=hard),
      )
      assert examples.triplets(task, "validation", trained, hard_negatives=hard) == examples.triplets(
        task, "validation", fixture_data_config, hard_negatives=hard
      )
  base = examples.pairs("search", "validation", fixture_data_config)
  assert len(base.left) > 14 and base.labels.mean() == pytest.approx(0.5, abs=0.05)  # one negative per positive
  assert examples.labelled("section", "validation", trained) == examples.labelled(
    "section", "validation", fixture_data_config
  )
  # A corpus field does change the examples: search queries become package names.
  named = fixture_data_config.copy_and_resolve_references()
  named.search_query = "name"
  assert examples.pairs("search", "validation", named).left != base.left


def test_tfidf_on_fixture_regression_values(tfidf_results):
  # Lexical overlap makes search and translation (shared names, cognates) easy; interest and hashtag
  # (post vs. a short topic phrase) near chance. Bounds are loose around the values measured when written.
  assert tfidf_results["search/pair_auc"] > 0.75
  assert tfidf_results["translation/pair_auc"] > 0.8
  assert tfidf_results["search/recall@10"] > 0.8
  assert 0.35 < tfidf_results["interest/pair_auc"] < 0.75


def test_an_embedding_that_knows_nothing_scores_chance(fixture_data_config):
  out = evaluators.evaluate(HashEmbedder(), "pair_auc", split="validation", data_config=fixture_data_config)
  assert all(0.25 < v < 0.75 for v in out.values()), out


def test_test_split_suite_adds_intervals(fixture_data_config):
  settings = evaluators.EvalSettings(bootstrap_resamples=50)
  out = evaluators.evaluate(
    HashEmbedder(), "pair_auc", split="test", data_config=fixture_data_config, settings=settings
  )
  points = [k for k in out if "ci95" not in k]
  assert points and all(out[f"{k}/ci95_low"] <= out[k] <= out[f"{k}/ci95_high"] for k in points)


def test_pretrained_model_beats_tfidf_on_interest(default_embedder, fixture_data_config, tfidf_results):
  out = evaluators.evaluate(default_embedder, "pair_auc", split="validation", data_config=fixture_data_config)
  assert out["interest/pair_auc"] > tfidf_results["interest/pair_auc"] + 0.1
  assert out["search/pair_auc"] > 0.85
