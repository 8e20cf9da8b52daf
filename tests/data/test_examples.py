"""Task examples: fixed evaluation examples, valid splits, config-specialised tasks and example caps."""

import pytest

from postembed_jax.data import examples


def test_eval_examples_are_fixed(data_config):
  a = examples.make_eval_examples("relation", "test", data_config)
  assert a.kind == "pair" and a.examples
  assert a.examples == examples.make_eval_examples("relation", "test", data_config).examples
  sec = examples.make_eval_examples("section", "validation", data_config)
  assert sec.kind == "classification" and sec.label_names and not sec.multi_label
  assert all(0 <= e["label"] < len(sec.label_names) for e in sec.examples)


def test_unknown_split_for_eval(data_config):
  with pytest.raises(ValueError, match=r"valid splits: \['train', 'validation', 'test'\]"):
    examples.make_eval_examples("search", "dev", data_config)


def test_config_specialises_tasks_and_caps_examples(data_config, changed):
  cfg = changed(data_config, heldout_facets="role", max_examples_per_task=50)
  ev = examples.make_eval_examples("debtags", "train", cfg)
  assert ev.multi_label and not [n for n in ev.label_names if n.startswith("role::")]
  assert len(ev.examples) == 50
  zs = examples.make_eval_examples("zs_hashtag", "train", changed(cfg, neg_ratio=0.0))
  assert zs.examples and all(e["right"].startswith("role: ") for e in zs.examples)


def test_task_fractions_make_one_task_scarce(data_config, changed, tokenizer):
  from postembed_jax.data import config as config_lib
  from postembed_jax.data import mixture

  full = examples.make_eval_examples("search", "train", data_config).examples
  scarce_cfg = changed(data_config, tasks="search,interest", task_fractions="search=0.1")
  scarce = examples.make_eval_examples("search", "train", scarce_cfg).examples
  assert len(scarce) == round(0.1 * len(full)) and all(e in full for e in scarce)
  # Only the named task shrinks.
  assert (
    examples.make_eval_examples("interest", "train", scarce_cfg).examples
    == examples.make_eval_examples("interest", "train", data_config).examples
  )
  counted = examples.make_eval_examples("search", "train", changed(scarce_cfg, task_fractions="search=7")).examples
  assert len(counted) == 7 and all(e in full for e in counted)  # a count rather than a share
  # The ablation trains a capped single-task arm once with the scarce arm at the same count (plan._scarce_twin).
  assert (
    counted == examples.make_eval_examples("search", "train", changed(data_config, max_examples_per_task=7)).examples
  )
  for bad in ("search=2.5", "search=0", "search=-1", "search"):
    with pytest.raises(ValueError, match=r'task_fractions entry .search.*must look like "task=share"'):
      examples.task_fractions(changed(data_config, task_fractions=bad))
  with pytest.raises(ValueError, match=r"task_fractions names \['hashtag'\], which are not among"):
    config_lib.resolve_training_tasks(changed(data_config, tasks="search", task_fractions="hashtag=0.5"))
  assert mixture.make_train_iterator(scarce_cfg, tokenizer, seed=0)  # trains
