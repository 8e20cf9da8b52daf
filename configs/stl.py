"""Single-task training, everything else as in mtl.py: `--config configs/stl.py:search` or `:search,quick`."""

from postembed_jax.train import config as common


def get_config(arg: str | None = None):
  task, _, variant = (arg or "search").partition(",")
  if task not in common.TRAINABLE_TASKS:
    raise ValueError(f"Unknown task {task!r}; trainable tasks: {list(common.TRAINABLE_TASKS)}.")
  config = common.training_config(task)
  if variant == "quick":
    common.quick(config)
  elif variant:
    raise ValueError(f"Unknown config variant {variant!r}; valid: 'quick'.")
  return config
