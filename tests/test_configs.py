"""Every config file declares its arguments with config_args, and every declared variant and documented spelling
loads."""

from pathlib import Path

import pytest

from postembed_jax import config_args, config_overrides
from postembed_jax.models import hf_io

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_declared_variant_loads(path):
  module = config_overrides.load_module(str(path))
  assert isinstance(module.VARIANTS, config_args.Variants), f"{path.name} must declare VARIANTS"
  for arg in module.VARIANTS.examples():
    config = config_overrides.load_config(f"{path}:{arg}" if arg else str(path))
    assert list(config.keys()), (path.name, arg)
  with pytest.raises(config_args.ConfigArgError, match="valid: ") as error:
    module.get_config("no_such_variant")
  assert "\n" not in str(error.value)


def _load(spec):
  return config_overrides.load_config(str(REPO / "configs" / spec))


def test_documented_spellings():
  """The spellings README.md, docs/ and the tests use."""
  quick_search = _load("stl.py:search,quick")
  assert _load("stl.py:search").data.tasks == quick_search.data.tasks == "search"
  assert _load("stl.py").data.tasks == "search"
  assert (quick_search.total_steps, _load("stl.py:search").total_steps) == (60, 120)
  assert _load("stl.py:task=search,quick").to_dict() == quick_search.to_dict()
  assert _load("stl.py:quick,interest").data.tasks == "interest"
  assert _load("mtl.py:quick").total_steps == 60 and _load("mtl.py").total_steps == 120
  main = _load("mtl.py")
  assert (main.data.task_mixing, main.projection_init) == ("all_tasks_per_step", "pca")
  assert _load("evaluate.py").peer.max_length == main.data.max_length == 64
  assert (_load("evaluate.py").peer.steps, _load("evaluate.py").peer.batch_size) == (120, 32)  # the main job's budget
  assert (_load("serve.py:tiny").max_batch, _load("serve.py").max_batch) == (8, 32)
  assert _load("ablation.py:long").train.total_steps == 2000
  assert _load("ablation.py:budget=quick").to_dict() == _load("ablation.py:quick").to_dict()
  assert _load("ablation.py:default").to_dict() == _load("ablation.py").to_dict()
  assert _load("evaluate.py:quick").evaluation.max_examples == 300
  assert _load("embed.py:quick").max_length == 128
  with pytest.raises(config_args.ConfigArgError, match="'budget' is given twice"):
    _load("ablation.py:quick,long")


def test_configs_default_to_the_one_default_model():
  for spec in ("mtl.py", "embed.py", "serve.py", "members.py"):
    assert _load(spec).model == hf_io.DEFAULT_MODEL, spec
  assert _load("evaluate.py").model.split(",")[0] == hf_io.DEFAULT_MODEL
