"""Preemption: a SIGTERM (the notice a scheduler sends before it kills the job) asks the run to save and stop at the
next step boundary, and every process stops at the same one.

The handler is installed when the run starts, before the model loads and compiles, so a notice that arrives then
is kept rather than killing the process. With several processes the stop is agreed at each step boundary: every
process all-gathers its own flag, so a notice that reached one host stops all of them at the same step, where they
save together (Orbax saves are collective: a host that saved alone would wait for the others forever).

JAX's own preemption sync (``multihost_utils.reached_preemption_sync_point``, which Orbax's
``CheckpointManager`` consults) is not used: it settles on the step after the largest one reported when the notice
arrives, and a process that has not reported a step yet (a notice during start-up, or a resumed run) reports 0, so
a resumed run would never reach that step. Our handler replaces the SIGTERM handler it installs.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Holds the SIGTERM handler from construction to ``close``. ``requested()`` answers, the same on every process,
  whether any process has had a notice; call it at the same step boundaries on every process."""

  def __init__(self):
    self.signalled = False  # this process's own notice
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.signalled = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self.signalled
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.signalled))))

  def close(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)
