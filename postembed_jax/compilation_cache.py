"""JAX's persistent compilation cache: XLA executables kept on disk, so a resumed run, the next run of an
ablation, a restarted service or the next test process skips compiling the shapes it has seen before."""

from pathlib import Path

import jax


def enable(cache_dir: str | Path | None, min_compile_secs: float = 1.0) -> None:
  """Turns the cache on at ``cache_dir`` (None or "" leaves it off) for compilations that took at least
  ``min_compile_secs``. Call before the first compilation."""
  if not cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", str(Path(cache_dir).expanduser()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
