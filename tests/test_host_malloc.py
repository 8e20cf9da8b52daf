"""host_malloc: a launcher's XLA:CPU buffers are reused from one call to the next instead of faulted in again."""

import json
import os
import subprocess
import sys

from postembed_jax import host_malloc

# A launcher whose main calls a jitted function with 64 MiB temporaries (more than glibc's largest mmap threshold,
# 32 MiB) three times and prints the minor page faults of each call.
FAULTING_LAUNCHER = """
import json
import resource

import jax
import jax.numpy as jnp

from postembed_jax import launching


def main(argv):
  x = jnp.ones((4096, 4096))
  step = jax.jit(lambda x: (jnp.sort(jnp.exp(x), axis=0) @ x).sum())
  faults = []
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(json.dumps(faults))


launching.run(main)
"""


def _faults(script, **env):
  result = subprocess.run(
    [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_launcher_reuses_freed_buffers_and_the_opt_out_restores_glibc(tmp_path):
  assert host_malloc.applies({})  # glibc on Linux: the settings below are this machine's
  script = tmp_path / "job.py"
  script.write_text(FAULTING_LAUNCHER)
  glibc = _faults(script, **{host_malloc.OPT_OUT: "default"})
  kept = _faults(script, **{host_malloc.OPT_OUT: ""})
  # glibc maps every call's temporaries afresh: a page fault per 4 KiB of them, at every call.
  assert min(glibc) > 500_000, glibc
  # Kept: the first call grows the heap, the later ones reuse it.
  assert max(kept[1:]) < 0.05 * min(glibc), (kept, glibc)


def test_the_opt_out_is_read_from_the_environment():
  assert not host_malloc.applies({host_malloc.OPT_OUT: "default"})
  assert host_malloc.applies({host_malloc.OPT_OUT: ""}) == host_malloc.applies({})
