"""Multi-task training on the Debian corpus: `python launch/train.py --config configs/mtl.py[:quick]`.

All training tasks share one tower (all-MiniLM-L6-v2 -> 50-d), the paper's BCE-on-cosine loss per pair task,
temperature-balanced task sampling. `:quick` is the laptop / test variant.
"""

from postembed_jax.train import config as common


def get_config(arg: str | None = None):
  config = common.training_config(",".join(common.PAIR_TASKS))
  if arg == "quick":
    common.quick(config)
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; valid: 'quick'.")
  return config
