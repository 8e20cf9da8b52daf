"""The data config: its defaults, list-valued fields, and start-up checks that name the valid values."""

import pytest

from postembed_jax.data import config, mixture, tasks
from postembed_jax.data.lists import as_list


def test_as_list_reads_strings_sequences_and_none():
  assert as_list(" a, b,,c ,") == ["a", "b", "c"]
  assert as_list(("a", 1)) == ["a", "1"]
  assert as_list(None) == [] and as_list("") == []


def test_default_tasks_are_the_trainable_pair_tasks():
  assert as_list(config.default_data_config().tasks) == list(tasks.PAIR_TASKS)
  assert tasks.PAIR_TASKS == ("interest", "hashtag", "storyline", "search", "translation")
  assert set(tasks.TRAINABLE_TASKS) == set(tasks.PAIR_TASKS) | {"section", "debtags"}


def test_task_probabilities_follow_the_strategy(data_config, changed):
  counts = {"a": 100, "b": 400}
  assert config.task_probabilities(changed(data_config, sampling="uniform"), counts) == {"a": 0.5, "b": 0.5}
  assert config.task_probabilities(changed(data_config, sampling="proportional", cap_k=200), counts) == {
    "a": 1 / 3,
    "b": 2 / 3,
  }
  probs = config.task_probabilities(changed(data_config, sampling="temperature", temperature=2.0), counts)
  assert probs == pytest.approx({"a": 1 / 3, "b": 2 / 3})
  weights = changed(data_config, sampling="weights", weights="a=3, b=1")
  assert config.task_probabilities(weights, counts) == {"a": 0.75, "b": 0.25}


@pytest.mark.parametrize(
  "changes,msg",
  [
    ({"tasks": "interest,bogus"}, r"Unknown task 'bogus'; valid tasks: \['debtags', "),
    ({"tasks": "relation"}, r"held out for zero-shot evaluation; trainable tasks: \['debtags'"),
    ({"languages": "de,xx"}, r"Unknown language\(s\) \['xx'\] in languages; valid languages"),
    ({"languages": "de,ja"}, r"Languages \['ja'\] are both trained on and held out"),
    ({"sampling": "greedy"}, r"Unknown sampling 'greedy'; valid: \['uniform'"),
    ({"sampling": "weights", "weights": "interest=1"}, r"weights must name exactly the tasks"),
    ({"tasks": "interest,section", "mixed": True}, "mixed=True mixes pair tasks only"),
    ({"source": "web"}, r"Unknown source 'web'"),
  ],
)
def test_bad_config_fails_at_start_with_valid_names(data_config, tokenizer, changes, msg, changed):
  with pytest.raises(ValueError, match=msg):
    mixture.make_train_iterator(changed(data_config, **changes), tokenizer, seed=0)
