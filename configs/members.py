"""Simulated-member retrieval (Ward interest clusters against the mean embedding), docs/serving.md:

  python launch/evaluate_members.py --config configs/members.py --config.model=NAME_OR_DIR --config.out=report.json

The fields are the arguments of postembed_jax.evaluation.members.run_member_evaluation, plus `out`.
"""

import ml_collections
from ml_collections import config_dict

from postembed_jax import config_args
from postembed_jax.models import hf_io

VARIANTS = config_args.Variants()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  VARIANTS.parse(arg)
  c = ml_collections.ConfigDict()
  c.model = hf_io.DEFAULT_MODEL  # short name, Hugging Face directory or our export
  c.split = "test"  # Debian corpus split whose distinct descriptions are the posts
  c.n_members = 500
  c.seed = 0  # members and the max_posts subsample
  c.max_length = config_dict.placeholder(int)  # None: the model's own (sentence-transformers' setting)
  c.max_posts = config_dict.placeholder(int)  # subsample the split's posts; None: all of them
  c.data_dir = config_dict.placeholder(str)  # TFDS data dir of the Debian corpus; None: the default
  c.index_dir = config_dict.placeholder(str)  # read Debian index files from here (e.g. tests/fixtures/debian)
  c.out = config_dict.placeholder(str)  # write the JSON report here (it is printed either way)
  return c
