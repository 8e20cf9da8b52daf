"""The one parser of `get_config(arg)`: key=value items, flags alone, a choice's value alone, one-line errors."""

import pytest

from postembed_jax import config_args

VARIANTS = config_args.Variants(
  task=config_args.one_of("interest", "search", default="search"), quick=False, steps=100, lr=1e-3, name="run"
)


def test_defaults_and_every_spelling():
  assert VARIANTS.parse(None).to_dict() == dict(task="search", quick=False, steps=100, lr=1e-3, name="run")
  assert VARIANTS.parse("") == VARIANTS.parse(None)
  assert VARIANTS.parse("quick").quick and VARIANTS.parse("quick").task == "search"
  for arg in ("task=interest,quick", "interest,quick", "quick,interest", " interest , quick=true "):
    args = VARIANTS.parse(arg)
    assert (args.task, args.quick) == ("interest", True), arg
  args = VARIANTS.parse("steps=7,lr=0.5,name=a=b,quick=false")
  assert (args.steps, args.lr, args.name, args.quick) == (7, 0.5, "a=b", False)
  assert isinstance(args.steps, int) and isinstance(args.lr, float)


def test_unknown_variant_lists_the_valid_ones():
  with pytest.raises(config_args.ConfigArgError) as error:
    VARIANTS.parse("quik")
  message = str(error.value)
  assert "\n" not in message and "'quik'" in message
  assert "task=interest|search or the value alone (default search)" in message and "quick (flag" in message


@pytest.mark.parametrize(
  "arg, expected",
  [
    ("tsak=search", "Unknown config key 'tsak'"),
    ("task=storyline", "takes one of interest|search, not 'storyline'"),
    ("task", "'task' needs a value"),
    ("search,task=interest", "'task' is given twice"),
    ("quick=maybe", "takes true or false"),
    ("steps=many", "takes a value of type int, not 'many'"),
    ("steps", "'steps' needs a value"),
  ],
)
def test_bad_arguments_fail_with_one_line(arg, expected):
  with pytest.raises(config_args.ConfigArgError, match=expected) as error:
    VARIANTS.parse(arg)
  assert "\n" not in str(error.value)


def test_a_config_without_arguments_refuses_one():
  assert config_args.Variants().parse(None).to_dict() == {}
  with pytest.raises(config_args.ConfigArgError, match="takes no argument"):
    config_args.Variants().parse("quick")


def test_declarations_are_checked():
  with pytest.raises(ValueError, match="also a key"):
    config_args.Variants(quick=False, mode=config_args.one_of("quick", "long"))
  with pytest.raises(ValueError, match="not one of"):
    config_args.one_of("a", "b", default="c")
  assert VARIANTS.examples() == ["", "interest", "search", "quick"]
  assert config_args.parse_arg("long", size=config_args.one_of("short", "long")).size == "long"
  with pytest.raises(AttributeError):
    _ = VARIANTS.parse(None).quikc  # the parsed arguments are locked: a typo in a config file fails too
