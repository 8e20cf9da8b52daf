"""The CPU device count a config asks for, and the one-line error when JAX has started with another."""

import os

import jax
import pytest

from postembed_jax import cpu_devices


def test_requested_counts():
  assert cpu_devices.requested(0) is None
  assert cpu_devices.requested(3) == 3
  assert cpu_devices.requested(-1) == len(os.sched_getaffinity(0))
  with pytest.raises(ValueError, match=r"config.cpu_devices=-2: use 0"):
    cpu_devices.requested(-2)


def test_after_start_only_the_running_count_passes():
  have = len(jax.devices("cpu"))  # the backend exists from here on
  cpu_devices.use(0)
  cpu_devices.use(have)
  with pytest.raises(ValueError, match=rf"asks for {have + 1} CPU devices, but JAX has already started with {have}"):
    cpu_devices.use(have + 1)
