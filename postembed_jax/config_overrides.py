"""Fail early and helpfully on a mistyped ``--config.some.field=value`` override.

ml_collections only suggests the nearest key; a researcher running a sweep wants the valid keys listed, before
any work starts. Every launcher calls ``exit_on_unknown_override`` before defining its config flag (ml_collections
applies overrides to a default config file as soon as the flag is defined).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _config_arg(argv: list[str], flag: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      return arg.split("=", 1)[1]
    if arg == f"--{flag}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config(spec: str):
  """``path/to/config.py[:arg]`` -> the ConfigDict its ``get_config(arg)`` returns."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def unknown_override(config, argv: list[str], flag: str = "config") -> str | None:
  """The first override naming a field ``config`` lacks, as an error message listing the valid names."""
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    dotted = arg[len(flag) + 3:].split("=", 1)[0]
    node, walked = config, []
    for key in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        where = ".".join([flag, *walked]) or flag
        return (f"Unknown config field --{flag}.{dotted}: {where} has no field {key!r}. "
                f"Valid fields of {where}: {', '.join(sorted(keys))}.")
      node, walked = node[key], walked + [key]
  return None


def exit_on_unknown_override(default: str, flag: str = "config") -> None:
  """Checks ``sys.argv``'s config overrides against the config file named there (or ``default``)."""
  message = unknown_override(load_config(_config_arg(sys.argv, flag) or default), sys.argv, flag)
  if message:
    sys.exit(message)
