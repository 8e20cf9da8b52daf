"""glibc malloc settings under which XLA:CPU's step buffers stay mapped from one step to the next.

XLA:CPU allocates an executable's temporaries with malloc on every call and frees them after it (a MiniLM-L6
training step of 32 pairs x 128 tokens assigns 3.97 GiB). glibc gives blocks that large a fresh mmap, and a
thread's own arena does so even with mmap turned off, or trims them off the top of the heap when they are freed; so
every step faults its whole working set back in, page by page, and the kernel zeroes each page. On the 2-core
development CPU that step took 1.06M minor page faults and 6 of its 16 CPU-seconds (docs/training.md, "Host memory
on a CPU"). With one arena, no mmap and no trimming, a freed buffer stays in the heap and the next step reuses it:
no faults, and the step 2.4x faster. The price is the one a caching allocator pays: the process keeps its peak heap
until it ends.

``keep_freed_memory()`` sets them with ``mallopt``. It must run before JAX's first computation: a thread that has
already allocated keeps its own arena. Every launcher calls it first (``launching.run``), so do the benchmarks and
the tests; a notebook calls it in its first cell. ``POSTEMBED_MALLOC=default`` keeps glibc's settings.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

OPT_OUT = "POSTEMBED_MALLOC"  # =default: leave glibc's settings alone
# mallopt(3) parameters, from glibc's malloc.h. A trim threshold of -1 is SIZE_MAX: never trim.
_SETTINGS = {"M_ARENA_MAX": (-8, 1), "M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, -1)}
_kept = False


def applies(env=os.environ) -> bool:
  """Whether ``keep_freed_memory`` changes anything here: glibc on Linux, and not turned off by ``OPT_OUT``."""
  return sys.platform == "linux" and platform.libc_ver()[0] == "glibc" and env.get(OPT_OUT, "") != "default"


def keep_freed_memory() -> bool:
  """Sets the settings above for this process; returns whether they were set."""
  global _kept
  if not applies():
    return False
  mallopt = ctypes.CDLL(None).mallopt
  for name, (param, value) in _SETTINGS.items():
    if mallopt(param, value) != 1:
      raise RuntimeError(f"mallopt({name}, {value}) failed; set {OPT_OUT}=default to run with glibc's settings")
  _kept = True
  return True


def kept() -> bool:
  """Whether ``keep_freed_memory`` has set the settings in this process."""
  return _kept
