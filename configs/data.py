"""Building the Debian package corpus: `python launch/build_data.py [--config configs/data.py] [--config.FIELD=...]`.

The fields are the corpus settings of the data config (docs/data.md). With no `mirror` the archive named in the
machine's apt sources is used; raw index files are cached in `cache_dir`, so a rebuild is offline; `index_dir` reads
index files you already have (a dists/<release>/ copy).
"""

import ml_collections

from postembed_jax import config_args
from postembed_jax.data import config as data_config

VARIANTS = config_args.Variants()
CORPUS_FIELDS = ("release", "component", "arch", "corpus_languages", "mirror", "index_dir", "data_dir", "cache_dir")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  VARIANTS.parse(arg)
  c = data_config.default_data_config()
  for key in [k for k in c.keys() if k not in CORPUS_FIELDS]:
    del c[key]  # the rest (tasks, batching) does not change the corpus
  c.force = False  # rebuild even if built
  return c
