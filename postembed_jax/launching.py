"""How every launcher ends: ``launching.run(main)`` in place of ``app.run(main)``.

Someone who mistypes a path or a config value wants one line that names the problem, not forty frames of JAX and
Orbax; someone chasing a bug wants the traceback. So an exception ends a launcher with one line on stderr and an
exit status that says what kind of end it was, and ``--verbose`` prints the full traceback before that line:

  0   finished
  1   ``EXIT_USER_ERROR``: an expected error, one this package raised with a message (a bad config value, a missing
      input, a workdir whose checkpoint is another run's: ``ValueError``, ``LookupError``, ``RuntimeError``,
      ``FloatingPointError``), or an OS error (no such file, permission, network); the status absl and
      ``config_overrides`` already use for a mistyped flag or ``--config`` field
  70  ``EXIT_INTERNAL_ERROR`` (sysexits' EX_SOFTWARE): anything else, a bug or an error deep in a library; the line
      names the library and the last line of this package it came through
  75  ``EXIT_PREEMPTED`` (EX_TEMPFAIL, "try again"): SIGTERM stopped a training run after it saved (``Preempted``);
      the same command resumes it

Before anything else, ``run`` sets the malloc settings of ``host_malloc`` (XLA:CPU's step buffers reused rather
than faulted in again at every step), while no JAX computation has run yet.

Top-level helper: imports no layer of the package, so the training loop can raise ``Preempted`` from below.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path

from absl import app, flags

from postembed_jax import host_malloc

flags.disclaim_key_flags()  # --verbose belongs to the launcher that calls run(), so its --help lists it

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 70
EXIT_PREEMPTED = 75

# Raised with a message by a `raise` statement of this package: the message is the whole story. (The same types
# from a library, or from a C function called by this package, such as a numpy reshape, are internal errors.)
_MESSAGE_ERRORS = (ValueError, LookupError, RuntimeError, FloatingPointError)
_PACKAGE = Path(__file__).resolve().parent
_MAX_MESSAGE = 400  # an internal error's message can be a whole pytree diff


class Preempted(Exception):
  """A training run stopped by a preemption notice (SIGTERM) after saving its checkpoint: not a failure, but not
  finished either, so it must not end like a finished run."""


def run(main) -> None:
  """``app.run(main)`` with the exits above and a ``--verbose`` flag."""
  host_malloc.keep_freed_memory()
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_boolean("verbose", False, "On an error, print the full traceback before the one-line message.")
  app.run(lambda argv: _run_main(main, argv))


def _run_main(main, argv):
  try:
    return main(argv)
  except app.UsageError:
    raise  # absl prints the usage
  except Preempted as e:
    print(f"{_prog()}: {_one_line(str(e))} Run the same command again to resume: {_command()}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except Exception as e:
    if flags.FLAGS.verbose:
      traceback.print_exc()
    line, status = error_line(e, _prog(), verbose=flags.FLAGS.verbose)
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)


def error_line(error: BaseException, prog: str, *, verbose: bool = False) -> tuple[str, int]:
  """The one line a launcher prints for ``error`` and the exit status it ends with."""
  frames = traceback.extract_tb(error.__traceback__)
  ours = [f for f in frames if _is_ours(f.filename)]
  message = _one_line(str(error)) or type(error).__name__
  raised_by_us = bool(frames) and frames[-1] in ours and (frames[-1].line or "").startswith("raise")
  if isinstance(error, OSError) or (isinstance(error, _MESSAGE_ERRORS) and raised_by_us):
    if isinstance(error, KeyError):
      message = f"KeyError {message}"  # KeyError('x') reads "'x'" alone
    return f"{prog}: error: {message}", EXIT_USER_ERROR
  if len(message) > _MAX_MESSAGE:
    message = message[:_MAX_MESSAGE] + "..."
  where = ""
  if frames:
    origin = frames[-1]
    where = f" in {_library(origin.filename)}" if origin not in ours else ""
    if ours:
      where += f" ({_short(ours[-1].filename)}:{ours[-1].lineno}, {ours[-1].name})"
    else:
      where += f" ({_short(origin.filename)}:{origin.lineno})"
  hint = "the traceback is above" if verbose else "rerun with --verbose for the traceback"
  return f"{prog}: internal error{where}: {type(error).__name__}: {message} ({hint})", EXIT_INTERNAL_ERROR


def _is_ours(filename: str) -> bool:
  path = Path(filename).resolve()
  return path.is_relative_to(_PACKAGE) or path == Path(sys.argv[0]).resolve()


def _library(filename: str) -> str:
  """The top-level package a file belongs to (``.../site-packages/orbax/checkpoint/x.py`` -> ``orbax``)."""
  parts = Path(filename).parts
  for marker in ("site-packages", "dist-packages"):
    if marker in parts and parts.index(marker) + 1 < len(parts):
      return Path(parts[parts.index(marker) + 1]).stem
  return Path(filename).stem


def _short(filename: str) -> str:
  path = Path(filename).resolve()
  return str(path.relative_to(_PACKAGE.parent)) if path.is_relative_to(_PACKAGE.parent) else filename


def _one_line(text: str) -> str:
  return " ".join(text.split())


def _prog() -> str:
  return Path(sys.argv[0]).name


def _command() -> str:
  """This process's command line, as ``python -m MODULE ...`` when it was started that way."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = ["-m", spec.name] if spec is not None and spec.name != "__main__" else sys.argv[:1]
  return "python " + shlex.join(head + sys.argv[1:])
