"""How many devices JAX makes of the host's CPU, set from a config before JAX's first computation.

A data mesh of several CPU devices splits each batch between them. On the 2-core development CPU, one device per
core embedded 1.2x faster than one device, and trained the benchmark's 128-token steps faster in two runs of four,
but the main job (64 tokens) more slowly (docs/training.md, "One CPU device per core"); so it is a setting, 0 by
default. On a GPU or TPU host it only adds CPU devices that nothing uses.
"""

from __future__ import annotations

import os

import jax


def requested(count: int) -> int | None:
  """The CPU device count ``count`` asks for: None for 0 (JAX's own: 1, or ``XLA_FLAGS``'
  ``--xla_force_host_platform_device_count``), the logical CPUs this process may run on for -1 (its affinity mask;
  a cgroup quota is not read), else ``count``."""
  if isinstance(count, bool) or int(count) != count or count < -1:
    raise ValueError(f"config.cpu_devices={count}: use 0 (JAX's default), -1 (one per core) or a device count.")
  count = int(count)
  if count == 0:
    return None
  if count > 0:
    return count
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use(count: int) -> None:
  """Makes JAX create ``requested(count)`` CPU devices. Must run before JAX's first computation; afterwards it
  passes only if the CPU already has that many devices, and otherwise says where to set it."""
  n = requested(count)
  if n is None:
    return
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # the backends exist already
    try:
      have = len(jax.devices("cpu"))
    except RuntimeError:  # started without a CPU backend (JAX_PLATFORMS)
      have = 0
    if have != n:
      raise ValueError(
        f"config.cpu_devices={count} asks for {n} CPU devices, but JAX has already started with {have}: set it "
        "before JAX's first computation (a launcher does), or start the process with "
        f"--xla_force_host_platform_device_count={n} added to XLA_FLAGS."
      ) from None
