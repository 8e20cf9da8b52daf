"""Training config defaults, shared by configs/mtl.py, configs/stl.py, the ablation config and notebooks."""

import ml_collections
from ml_collections import config_dict

from postembed_jax.data import config as data_config_lib
from postembed_jax.data import lists
from postembed_jax.data import tasks as tasks_lib
from postembed_jax.data.tasks import PAIR_TASKS, TRAINABLE_TASKS  # noqa: F401 (configs read both from here)
from postembed_jax.models import hf_io
from postembed_jax.train import sharding

TEXT_TO_TEXT_TASKS = ("search", "storyline", "translation")  # the pair tasks the main job trains with InfoNCE


def _default_loss(name: str) -> str:
  task = tasks_lib.TASKS[name]
  if task.kind == "pair":
    return "bce"  # the paper's loss; "infonce" is the in-batch contrastive alternative
  return "sigmoid" if task.multi_label else "softmax"


def training_config(tasks: str) -> ml_collections.ConfigDict:
  """The full training config for the given comma-separated tasks; every field can be overridden."""
  c = ml_collections.ConfigDict()
  c.model = hf_io.DEFAULT_MODEL  # short name, HF directory, or an export of ours
  c.embed_dim = 50  # the paper's width; None keeps the encoder width
  # random | pca: start the projection from a PCA of the pretrained tower's pooled outputs of training posts,
  # so that step 0 is the base model reduced to embed_dim
  c.projection_init = "random"
  c.projection_init_texts = 2000  # distinct training posts the PCA is fitted on
  # Matryoshka loss: comma-separated nested widths ("16,32"), each pair loss averaged over them; the full width is
  # always one. "" is off. Truncate an export at evaluation with the model name "dim16:<model>".
  c.matryoshka_dims = ""
  c.pooling = "mean"
  c.normalize = True
  c.dtype = "float32"  # compute dtype; parameters stay float32
  # How the encoder computes (models/encoder.py ENCODER_OPTIONS; docs/training.md "Accelerator efficiency options"):
  c.attention_impl = "einsum"  # einsum | xla | cudnn | auto (fused ones skip attention dropout)
  c.prng_impl = "threefry2x32"  # dropout masks' generator: threefry2x32 | rbg | unsafe_rbg
  c.gelu = "exact"  # exact | tanh (changes the model's activation)
  c.scan_layers = False  # layers under lax.scan: shorter compiles, same parameters and checkpoints
  c.remat = "none"  # none | full | dots_saveable: recompute layer activations in the backward pass
  # pair batches: both sides in "one" tower call (the shorter padded) or "two"; "auto": one on accelerators, and on
  # a CPU only when both sides have the same length (models/heads.py PAIR_TOWER_CALLS)
  c.pair_tower_calls = "auto"
  # pair batches: both sides' texts packed into shared rows with segment-aware attention (data/tokenize.py
  # pack_pair_batch), so little compute goes to padding; each example's loss is unchanged up to float rounding
  c.pack_pairs = False
  c.seed = 0
  c.total_steps = 600
  c.init_checkpoint = config_dict.placeholder(str)  # see docs/training.md, "Where a run starts from"

  c.data = data_config_lib.default_data_config()
  c.data.tasks = tasks
  c.task_losses = {name: _default_loss(name) for name in TRAINABLE_TASKS}  # per task: bce|infonce|softmax|sigmoid
  c.loss_weights = {name: 1.0 for name in TRAINABLE_TASKS}
  # data.task_mixing='all_tasks_per_step': how task losses are weighted in the one update of a step (setup.py):
  # equal | sampling (as data.sampling would draw them) | initial_loss (each divided by its value at the start)
  c.task_weighting = "equal"

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.head_lr = 1e-3  # projection and task heads start from scratch: a larger step
  c.optim.warmup_steps = 50
  c.optim.schedule = "cosine"  # cosine | linear | constant (after warm-up)
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0
  c.optim.layer_decay = 1.0  # < 1: layer-wise learning-rate decay (lower layers move less)

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # devices JAX makes of a CPU host (postembed_jax/cpu_devices.py): 0 = JAX's own (1, or XLA_FLAGS'), -1 = one per
  # core, N = N; what a mesh of them gains or costs: docs/training.md. A GPU or TPU host ignores its CPU devices
  c.cpu_devices = 0
  c.sharding_rules = sharding.DEFAULT_RULES
  c.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize arguments
  c.distributed.coordinator_address = config_dict.placeholder(str)
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 2  # the last K, plus the best by checkpoint.best_metric
  # "auto": val/mean_pair_auc with pair tasks, val/mean_linear_map with label tasks only, none without evaluators
  # (then the export is the last checkpoint); see train/loop.py best_metric
  c.checkpoint.best_metric = "auto"
  c.checkpoint.async_save = True

  c.eval = ml_collections.ConfigDict()
  c.eval.evaluators = "pair_auc"  # names in postembed_jax.evaluation.evaluators.EVALUATORS
  c.eval.every_steps = 200
  c.eval.at_start = True  # validate the starting model too (step 0 in metrics.jsonl)
  c.eval.max_examples = 400  # validation examples per task
  c.eval.batch_size = 64
  c.affinity_every_steps = 0  # > 0: log the lookahead inter-task affinity matrix every N steps
  c.log_every_steps = 10
  c.compilation_cache_dir = "~/.cache/postembed_jax/jax_cache"  # "" turns JAX's persistent cache off
  c.export = True
  c.export_checkpoint = "best"  # "best" (by checkpoint.best_metric) or "last"; see train/loop.py
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.patience = 0  # > 0: stop after that many evaluations without improvement (total_steps caps)
  c.early_stopping.min_delta = 0.0
  return c


def main_job(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe of configs/mtl.py and configs/stl.py, chosen on validation (docs/recipes/results.md): every task in
  every step (each task sees 32 pairs a step, as in its single-task run), the projection started from a PCA of the
  base model, InfoNCE on the text-to-text tasks and, with several tasks, the two label tasks' BCE weighted 2 (search
  recall@1 against the whole pool rose, mean pair AUC tied; interest dropped a little), at most 120 steps with the
  best validation checkpoint exported. A single-task run (configs/stl.py) gets the same per-task losses, which were
  validated in the multi-task runs only. Texts are cut at 64 tokens so that the 19,200 pairs of a run fit in about a
  quarter of an hour on a 2-core CPU (at 128 an all-tasks step took four times as long); library defaults stay the
  cheaper one-task-per-step, random-start, BCE-everywhere ones the tests use."""
  c.data.task_mixing = "all_tasks_per_step"
  for task in TEXT_TO_TEXT_TASKS:
    c.task_losses[task] = "infonce"
  if len(lists.as_list(c.data.tasks)) > 1:  # a weight only means something against other tasks' losses
    for task in ("interest", "hashtag"):
      c.loss_weights[task] = 2.0
  c.data.max_length = 64
  c.data.bucket_lengths = (32, 48, 64)
  c.projection_init = "pca"
  c.total_steps = 120
  c.optim.warmup_steps = 12
  c.eval.every_steps = c.checkpoint.every_steps = 40
  c.early_stopping.patience = 2
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few minutes on a laptop CPU: short texts, small batches, few steps."""
  c.total_steps = 60
  c.data.batch_size = 16
  c.data.max_length = 64
  c.data.bucket_lengths = (32, 64)
  c.data.max_examples_per_task = 2000
  c.optim.warmup_steps = 10
  c.checkpoint.every_steps = 30
  c.eval.every_steps = 30
  c.eval.max_examples = 200
  c.log_every_steps = 5
  return c
