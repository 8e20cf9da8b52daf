"""Evaluate embedding models on one suite: `python launch/evaluate.py --config configs/evaluate.py
--config.model=NAME_OR_DIR[,NAME_OR_DIR...]`.

A model is `tfidf`, `random_projection`, a packaged model (`all-MiniLM-L6-v2`: the general-purpose base model with
mean pooling, our stand-in for OpenAI ADA), an HF directory, our export, or a training workdir. `:quick` reads fewer
examples and resamples less (minutes instead of tens of minutes on a 2-core CPU).
"""

import ml_collections

from postembed_jax.data import pipeline
from postembed_jax.train import config as training


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "all-MiniLM-L6-v2,tfidf,random_projection"
  c.evaluators = "pair_auc,retrieval,classification,zero_shot"  # names in evaluators.EVALUATORS
  c.split = "test"  # test figures carry bootstrap 95% intervals
  c.output_dir = "workdirs/evaluate"  # results.json (all models so far) and results.md

  c.data = pipeline.default_data_config()
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
  c.seed = 0
  if arg == "quick":
    c.evaluation.max_examples = 300
    c.evaluation.probe_train_examples = 1000
    c.evaluation.bootstrap_resamples = 200
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; valid: 'quick'.")
  return c
