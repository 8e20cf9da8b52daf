"""Builds the full Debian package corpus (TFDS `debian_packages`) and prints its statistics.

  python launch/build_data.py [--release bookworm] [--mirror URI] [--index_dir DIR]
      [--data_dir DIR] [--cache_dir DIR] [--languages de,es,fr,it,ja,pt_BR,ru]

With no --mirror the archive named in the machine's apt sources is used. Raw
index files are cached (default ~/.cache/postembed_jax/debian), so a rebuild is
offline. --index_dir reads index files you already have (a dists/<release>/ copy).
"""

import argparse
import os
import time

from postembed_jax.data import debian
from postembed_jax.data import pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  for flag in ('release', 'mirror', 'index_dir', 'data_dir', 'cache_dir'):
    parser.add_argument(f'--{flag}', default=None)
  parser.add_argument('--languages', default=None,
                      help='comma-separated translation languages to include')
  parser.add_argument('--force', action='store_true', help='rebuild even if built')
  args = parser.parse_args()
  cfg = pipeline.default_data_config()
  for flag in ('release', 'mirror', 'index_dir', 'data_dir', 'cache_dir'):
    if getattr(args, flag) is not None:
      cfg[flag] = getattr(args, flag)
  if args.languages is not None:
    cfg.corpus_languages = args.languages
  start = time.time()
  builder = debian.make_builder(cfg, progress=True)
  built = args.force or not builder.is_prepared()
  if built:  # The builder prints the statistics while it builds.
    builder.download_and_prepare(download_config=debian.download_config(args.force))
  seconds = time.time() - start
  builder = debian.make_builder(cfg)  # Re-read dataset info from disk.
  if not built:
    print(debian.format_statistics(builder.info.metadata))
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(builder.data_dir) for f in fs)
  print(f'dataset dir: {builder.data_dir} (release, file hashes and counts: metadata.json)')
  print(f'{"build" if built else "load"} time: {seconds:.1f} s   '
        f'on-disk size: {size / 2**20:.1f} MiB')

if __name__ == '__main__':
  main()
