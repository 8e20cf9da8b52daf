"""Builds the full Debian package corpus (TFDS `debian_packages`) and prints its statistics.

  python launch/build_data.py [--config configs/data.py] [--config.release=bookworm] [--config.mirror=URI]
      [--config.index_dir=DIR] [--config.data_dir=DIR] [--config.cache_dir=DIR] [--config.force]

The fields and what they default to are in configs/data.py (and `--help`).

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

import os
import time

from postembed_jax import config_overrides, launching
from postembed_jax.data import debian

_CONFIG = config_overrides.define_config_flag("configs/data.py", "Corpus config.")


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.time()
  builder = debian.make_builder(config, progress=True)
  built = config.force or not builder.is_prepared()
  if built:  # The builder prints the statistics while it builds.
    builder.download_and_prepare(download_config=debian.download_config(config.force))
  seconds = time.time() - start
  builder = debian.make_builder(config)  # Re-read dataset info from disk.
  if not built:
    print(debian.format_statistics(builder.info.metadata))
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(builder.data_dir) for f in fs)
  print(f"dataset dir: {builder.data_dir} (release, file hashes and counts: metadata.json)")
  print(f"{'build' if built else 'load'} time: {seconds:.1f} s   on-disk size: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
  launching.run(main)
