"""Evaluate embedding models on one suite: `python launch/evaluate.py --config configs/evaluate.py
--config.model=NAME_OR_DIR[,NAME_OR_DIR...]`.

A model is `tfidf`, `random_projection`, `pca50:<model>` (a frozen model reduced to 50-d by PCA on training posts),
`dim32:<model>` (a model's first 32 dimensions, renormalised: a Matryoshka export at a smaller width),
a packaged model (`all-MiniLM-L6-v2`: the general-purpose base model with
mean pooling, our stand-in for OpenAI ADA), an HF directory, our export, or a training workdir. `:quick` reads fewer
examples and resamples less (minutes instead of tens of minutes on a 2-core CPU). Own data (docs/own_data.md):
`--config.data.source=files --config.data.files=NAME=PATH,... --config.data.tasks=NAME,...`, as in training.
"""

import ml_collections

from postembed_jax import config_args
from postembed_jax.data import config as data_config
from postembed_jax.models import hf_io
from postembed_jax.train import config as training

VARIANTS = config_args.Variants(quick=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = VARIANTS.parse(arg)
  c = ml_collections.ConfigDict()
  c.model = f"{hf_io.DEFAULT_MODEL},tfidf,random_projection"
  c.evaluators = "pair_auc,retrieval,classification,zero_shot"  # names in evaluators.EVALUATORS
  c.split = "test"  # test figures carry bootstrap 95% intervals
  c.output_dir = "workdirs/evaluate"  # results.json (all models so far) and results.md

  c.data = data_config.default_data_config()
  c.data.tasks = ",".join(training.TRAINABLE_TASKS)  # pair and classification tasks; zero-shot ones always run

  c.evaluation = ml_collections.ConfigDict()  # fields of evaluators.EvalSettings
  c.evaluation.max_examples = 1000  # per task
  c.evaluation.probe_train_examples = 2000
  c.evaluation.retrieval_ks = "1,10"
  c.evaluation.knn_k = 10
  c.evaluation.bootstrap_resamples = 1000
  c.evaluation.seed = 0

  c.max_length = 128  # tokens per text for transformer models
  c.batch_size = 64
  c.baseline_fit_texts = 20000  # training descriptions the TF-IDF vocabulary is fitted on
  c.tfidf_max_features = 4096
  c.random_projection_dim = 50  # as wide as our fine-tuned embedding
  c.pca_fit_texts = 2000  # training posts a `pca<dim>:<model>` PCA is fitted on (as training's projection_init_texts)
  c.seed = 0

  # `st_mtl:<model>`: the sentence-transformers multi-task peer (postembed_jax/evaluation/st_peer.py), trained once
  # into <output_dir>/peers/ on the same tasks, pair budget, lengths and width as configs/mtl.py's main job: one
  # batch of every task per step (round-robin) for as many steps.
  main = training.main_job(training.training_config(",".join(training.PAIR_TASKS)))
  c.peer = ml_collections.ConfigDict()
  c.peer.tasks = main.data.tasks
  c.peer.steps = main.total_steps  # batches of each task
  c.peer.batch_size = main.data.batch_size
  c.peer.lr = main.optim.lr
  c.peer.warmup_steps = main.optim.warmup_steps
  c.peer.max_length = main.data.max_length
  c.peer.embed_dim = main.embed_dim
  c.peer.scale = 20.0  # MultipleNegativesRankingLoss's default
  c.peer.seed = main.seed
  if args.quick:
    c.evaluation.max_examples = 300
    c.evaluation.probe_train_examples = 1000
    c.evaluation.bootstrap_resamples = 200
  return c
