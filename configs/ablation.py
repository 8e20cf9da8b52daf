"""Transfer ablation: `python launch/ablate.py --config configs/ablation.py[:quick][,capped|scarce] [--config.F=V]`.

The paper's protocol (postembed_jax/ablation/plan.py has the details): the multi-task model (MTL, one batch of
every task per step, `data.task_mixing="all_tasks_per_step"`) against one single-task model (STL) per task, with the
same maximum steps and per-task batch size, every run early-stopped on validation and exported at its best
validation checkpoint, each arm's learning rate chosen on validation from `lr_grid` (seed `selection_seed`), then
every seed at the chosen rate scored once on the test split. Runs live in
`<workdir>/<regime>/<arm>/lr_<lr>/seed_<s>` (a capped STL arm sharing a scarce one's runs: `scarce-<t>/stl-<t>`);
re-running the command skips finished runs and resumes killed ones.
Own data (docs/own_data.md): `--config.train.data.source=files --config.train.data.files=a=PATH,b=PATH
--config.tasks=a,b` (each run's data config is `train.data`; `tasks` are the tasks compared).

The argument is `budget=default|quick|long` and `regime=full|capped|scarce` (or the values alone, e.g. `:quick,scarce`;
`--config.regimes=full,capped,scarce` runs several into one report). Times are for the 2-core CPU with
`--config.workers=2` (two runs at once), measured in the default run of docs/ablation_protocol_default/ unless
marked as estimates:
  default  five pair tasks, 3 seeds, lr grid {1e-4, 3e-4}, at most 80 steps of 16 pairs per task (max length 64),
           validation every 20 steps on 100 examples per task, patience 3 (so at this budget early stopping picks
           the exported checkpoint but cannot end a run before its last step). regime=full: 6 arms x (3 seeds + 1
           more grid rate) = 24 trainings: 4 MTL of 20-40 min (an all-tasks step of five 16-pair batches took
           8-15 s with two runs at once, up to 60 s while other jobs shared the cores), 20 STL of about 3.5 min;
           the report has the wall time. capped: every task at 128 training examples, the count scarce keeps, so
           its STL arms are the scarce regime's STL runs, trained once (plan.Arm.runs_as): 24 trainings alone (18 at
           one learning rate: 47.2 min, docs/ablation_capped/), 44 with scarce; scarce: 10 arms, 40 trainings (20
           MTL); at one learning rate each scarce task took 67-94 min (docs/ablation_scarce_<task>/).
           (150 steps, the earlier default, measured 15 s per MTL step at once: about 2.6 hours, over the 90-minute
           budget this variant is sized for.)
  quick    tasks interest and search, 2 seeds, one learning rate, at most 40 steps: 6 trainings, about 12 min
  long     the paper-scale budget for a GPU (one worker): the main job's batch at 128 tokens, at most 2,000 steps,
           validation every 100 steps on 500 examples, 5 seeds, lr grid {5e-5, 1e-4, 2e-4}
"""

import ml_collections
from ml_collections import config_dict

from postembed_jax import config_args
from postembed_jax.train import config as training

VARIANTS = config_args.Variants(
  budget=config_args.one_of("default", "quick", "long"), regime=config_args.one_of("full", "capped", "scarce")
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = VARIANTS.parse(arg)
  budget = args.budget
  c = ml_collections.ConfigDict()
  c.tasks = ",".join(training.PAIR_TASKS)  # compared: MTL on all of them against STL on each
  c.seeds = "0,1,2"
  c.regimes = args.regime  # comma-separated: full | capped | scarce
  c.cap_examples = 1000  # capped: training examples of every task
  c.scarce_fraction = 0.05  # scarce: the share of the scarce task's training examples, in both arms
  # scarce: > 0 keeps that many of the scarce task's training examples instead of a share. The default budget sets
  # it: its runs draw 80 x 16 = 1,280 pairs per task, fewer than 5% of any task here, so a share would not be scarce.
  c.scarce_examples = 0
  c.scarce_tasks = ""  # scarce: the tasks made scarce in turn ("" = every task)
  c.leave_one_out = False  # also train each "all tasks but one" model (full and capped regimes)
  c.lr_grid = "1e-4,3e-4"  # optim.lr candidates per arm; one value = no selection
  c.selection_seed = config_dict.placeholder(int)  # the seed the grid is trained with; None = the first seed
  # The per-task validation metric the learning rate, early stopping and the exported checkpoint are chosen by,
  # over the tasks an arm is scored on: val/mean_pair_auc for MTL, val/<task>/<metric> for STL and scarce arms.
  c.selection_metric = "pair_auc"
  c.workdir = "workdirs/ablation"
  c.workers = 1  # > 1: that many training processes at once (CPU; on one GPU keep 1)
  c.affinity_every_steps = 50  # MTL runs log the lookahead task affinity this often (0: never)
  c.delete_checkpoints = True  # a trained run keeps its export only (each checkpoint is about 270 MB)

  c.train = training.training_config(c.tasks)  # every run's training config, before its overrides
  c.metric = "pair_auc"  # the headline metric: plots and the summary line (the report covers every metric)
  c.evaluators = "pair_auc,hard_negatives"  # names in evaluators.EVALUATORS, run once on each final run's export
  c.evaluation = ml_collections.ConfigDict()  # fields of evaluators.EvalSettings
  c.evaluation.max_examples = 600  # test examples per task
  c.evaluation.confidence_intervals = False  # intervals come from the seeds
  c.evaluation.batch_size = 64

  # Validation picks the learning rate and each run's best checkpoint, and stops a run early.
  c.train.eval.at_start = False
  c.train.early_stopping.patience = 3
  c.train.early_stopping.min_delta = 0.0
  c.train.export_checkpoint = "best"

  if budget == "default":
    training.quick(c.train)  # short texts and small batches: the per-step cost a CPU can afford
    c.train.total_steps = 80
    c.train.optim.warmup_steps = 8
    c.train.data.max_examples_per_task = 0  # every training pair
    c.train.eval.every_steps = c.train.checkpoint.every_steps = 20
    c.train.eval.max_examples = 100
    c.scarce_examples = 128  # a tenth of the pairs a run draws per task: 10 passes over them in 80 steps
    c.cap_examples = 128  # the same count for every task: 1,000 would be most of the 1,280 pairs a run draws
  elif budget == "quick":
    training.quick(c.train)
    c.tasks = c.train.data.tasks = "interest,search"
    c.seeds = "0,1"
    c.lr_grid = "1e-4"
    c.cap_examples = 300
    c.train.total_steps = 40
    c.train.optim.warmup_steps = 5
    c.train.eval.every_steps = c.train.checkpoint.every_steps = 10
    c.train.eval.max_examples = 100
    c.train.early_stopping.patience = 2
    c.affinity_every_steps = 10
    c.evaluation.max_examples = 300
    c.workdir = "workdirs/ablation_quick"
  elif budget == "long":  # the main job's batch at full length (128), trained to convergence
    c.seeds = "0,1,2,3,4"
    c.lr_grid = "5e-5,1e-4,2e-4"
    c.cap_examples = 5000
    c.train.total_steps = 2000
    c.train.optim.warmup_steps = 100
    c.train.eval.every_steps = c.train.checkpoint.every_steps = 100
    c.train.eval.max_examples = 500
    c.train.early_stopping.patience = 5
    c.affinity_every_steps = 100
    c.evaluators = "pair_auc,hard_negatives,retrieval"
    c.evaluation.max_examples = 1000
    c.workdir = "workdirs/ablation_long"
  return c
