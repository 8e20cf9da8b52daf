"""Multi-task training on the Debian corpus: `python launch/train.py --config configs/mtl.py[:quick]`.

All training tasks share one tower (all-MiniLM-L6-v2 -> 50-d), the paper's BCE-on-cosine loss per pair task,
temperature-balanced task sampling. `:quick` is the laptop / test variant.
"""

from postembed_jax import config_args
from postembed_jax.train import config as common

VARIANTS = config_args.Variants(quick=False)


def get_config(arg: str | None = None):
  args = VARIANTS.parse(arg)
  config = common.training_config(",".join(common.PAIR_TASKS))
  if args.quick:
    common.quick(config)
  return config
