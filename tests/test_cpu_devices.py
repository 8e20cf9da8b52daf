"""The CPU device count a config asks for, and the one-line error when JAX has started with another."""

import os

import jax
import pytest

from postembed_jax import cpu_devices


def test_requested_counts(monkeypatch):
  assert cpu_devices.requested(0) is None
  assert cpu_devices.requested(3) == 3
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
  assert cpu_devices.requested(-1) == 3  # the CPUs this process may run on, not the machine's
  monkeypatch.delattr(os, "sched_getaffinity")
  monkeypatch.setattr(os, "cpu_count", lambda: 7)
  assert cpu_devices.requested(-1) == 7  # where there is no affinity mask (macOS)
  for bad in (-2, True, 1.5):
    with pytest.raises(ValueError, match=rf"config.cpu_devices={bad}: use 0"):
      cpu_devices.requested(bad)


def test_after_start_only_the_running_count_passes():
  have = len(jax.devices("cpu"))  # the backend exists from here on
  cpu_devices.use(have)
  with pytest.raises(ValueError, match=rf"asks for {have + 1} CPU devices, but JAX has already started with {have}"):
    cpu_devices.use(have + 1)
