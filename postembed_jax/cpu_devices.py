"""How many devices JAX makes of the host's CPU, set from a config before JAX's first computation.

XLA:CPU runs one program per device, and on one device its step kept the 2-core development CPU busy at 1.87 cores
while spending 1.2x the CPU time per pair of a step split over two devices (docs/training.md, "One CPU device per
core"). A data mesh of one device per core is then the faster way to use a CPU host; on a GPU or TPU host it only
adds CPU devices that nothing uses.
"""

from __future__ import annotations

import os

import jax


def requested(count: int) -> int | None:
  """The CPU device count ``count`` asks for: None for 0 (JAX's own: 1, or ``XLA_FLAGS``'
  ``--xla_force_host_platform_device_count``), the cores this process may run on for -1, else ``count``."""
  count = int(count)
  if count < -1:
    raise ValueError(f"config.cpu_devices={count}: use 0 (JAX's default), -1 (one per core) or a device count.")
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
    have = len(jax.devices("cpu"))
    if have != n:
      raise ValueError(
        f"config.cpu_devices={count} asks for {n} CPU devices, but JAX has already started with {have}: set it "
        "before JAX's first computation (a launcher does), or set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n}."
      ) from None
