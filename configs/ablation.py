"""Transfer ablation: `python launch/ablate.py --config configs/ablation.py[:quick] [--config.FIELD=VALUE ...]`.

The multi-task model and one single-task model per task (optionally each leave-one-task-out model), over several
seeds, with equal steps and batch size: each run is `train` plus the overrides `data.tasks` and `seed`, in
`<workdir>/<variant>/seed_<s>`. Re-running the command skips finished runs and resumes killed ones.
Variants (times measured on a 2-core CPU, docs/evaluation.md):
  (default)  all five pair tasks, 250 steps of 16 pairs, 3 seeds: 18 runs, the largest that fits in a working
             session of a 2-core CPU
  :quick     three tasks, 40 steps: the whole pipeline end to end in under half an hour
  :long      the main training job's budget (600 steps of 32 pairs up to 128 tokens) for every run: about 9 hours
             on a 2-core CPU, for a GPU
"""

import ml_collections

from postembed_jax.train import config as training


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tasks = ",".join(training.PAIR_TASKS)  # compared: MTL on all of them against STL on each
  c.seeds = "0,1,2"
  c.leave_one_out = False  # also train each "all tasks but one" model
  c.workdir = "workdirs/ablation"
  c.workers = 1  # > 1: that many training processes at once
  c.affinity_every_steps = 25  # MTL runs log the lookahead task affinity this often (0: never)

  c.train = training.training_config(c.tasks)  # every run's training config, before its overrides
  c.metric = "pair_auc"  # per-task metric the report compares (the paper's)
  c.evaluators = "pair_auc"  # names in evaluators.EVALUATORS, run on each run's export
  c.evaluation = ml_collections.ConfigDict()  # fields of evaluators.EvalSettings
  c.evaluation.max_examples = 600  # test examples per task
  c.evaluation.confidence_intervals = False  # intervals come from the seeds
  c.evaluation.batch_size = 64

  if arg in (None, "", "quick"):
    training.quick(c.train)  # short texts and small batches: the per-step cost a CPU can afford 18 times
  if not arg:
    c.train.total_steps = 250
    c.train.optim.warmup_steps = 25
    c.train.checkpoint.every_steps = 50
    c.train.data.max_examples_per_task = 0  # every training pair: 250 x 16 exhausts no task
  elif arg == "quick":
    c.tasks = c.train.data.tasks = "interest,search,translation"
    c.train.total_steps = 40
    c.affinity_every_steps = 10
    c.evaluation.max_examples = 300
    c.workdir = "workdirs/ablation_quick"
  elif arg == "long":
    c.evaluation.max_examples = 1000
    c.affinity_every_steps = 50
    c.workdir = "workdirs/ablation_long"
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; valid: 'quick', 'long'.")
  # Runs are compared on the test split after training; the trainer's own validation (first and last step) only
  # picks its best checkpoint, so it reads few examples.
  c.train.eval.every_steps = 10 ** 9
  c.train.eval.max_examples = 100
  return c
