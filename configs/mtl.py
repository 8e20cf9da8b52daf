"""Multi-task training on the Debian corpus: `python launch/train.py --config configs/mtl.py[:quick]`.

All training tasks share one tower (all-MiniLM-L6-v2 -> 50-d), every task in every step: the paper's BCE-on-cosine
loss, weighted 2, on interest and hashtag, InfoNCE on search, storyline and translation, the projection started from
a PCA of the base model, the best validation checkpoint exported (train/config.py main_job). `:quick` is the laptop
/ test variant: 60 steps, one task per step, a random start, BCE on every task.
"""

from postembed_jax import config_args
from postembed_jax.train import config as common

VARIANTS = config_args.Variants(quick=False)


def get_config(arg: str | None = None):
  args = VARIANTS.parse(arg)
  config = common.training_config(",".join(common.PAIR_TASKS))
  if args.quick:
    common.quick(config)
  else:
    common.main_job(config)
  return config
