"""Single-task training, everything else as in mtl.py: `--config configs/stl.py:search` or `:search,quick`.

The argument is `task=NAME` (or the task name alone, default search) and the `quick` flag, e.g. `:task=search,quick`.
"""

from postembed_jax import config_args
from postembed_jax.train import config as common

VARIANTS = config_args.Variants(task=config_args.one_of(*common.TRAINABLE_TASKS, default="search"), quick=False)


def get_config(arg: str | None = None):
  args = VARIANTS.parse(arg)
  config = common.training_config(args.task)
  if args.quick:
    common.quick(config)
  else:
    common.main_job(config)
  return config
