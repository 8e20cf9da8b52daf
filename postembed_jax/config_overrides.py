"""The one way launchers, benchmarks and tests load a config file and take ``--config.FIELD=VALUE`` overrides.

ml_collections only suggests the nearest key for a mistyped override; a researcher running a sweep wants the valid
keys listed, before any work starts, and ``--help`` to show what can be set. Every launcher defines its config flag
with ``define_config_flag``, which checks the overrides against the config named on the command line first
(ml_collections applies overrides as soon as the flag is defined) and lists the config's fields in the flag's help.

A ``configs/NAME.py`` path that does not exist relative to the working directory names the copy of the repository's
``configs/`` installed with the package (as ``postembed_jax.configs``), so ``python -m postembed_jax.launch.train
--config configs/mtl.py`` runs from any directory, and from a non-editable install.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from postembed_jax import config_args

flags.disclaim_key_flags()  # flags defined through this module belong to the launcher, so --help lists them


def _config_arg(argv: list[str], flag: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      return arg.split("=", 1)[1]
    if arg == f"--{flag}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def resolve_config_path(path: str) -> str:
  """``path`` when it exists; else, for ``configs/NAME.py``, the installed copy of that file if there is one."""
  relative = Path(path)
  if relative.exists() or relative.parts[:1] != ("configs",) or len(relative.parts) < 2:
    return path
  try:
    installed = importlib.resources.files("postembed_jax.configs").joinpath(*relative.parts[1:])
  except ModuleNotFoundError:  # a clone used without installing it
    return path
  return str(installed) if installed.is_file() else path


def resolve_config_spec(spec: str) -> str:
  """``resolve_config_path`` of the path part of ``path[:arg]``."""
  path, colon, arg = str(spec).partition(":")
  return resolve_config_path(path) + colon + arg


def load_module(path: str):
  """The config file at ``path`` (see ``resolve_config_path``) as a module (not added to sys.modules)."""
  path = resolve_config_path(path)
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  if module_spec is None or not Path(path).is_file():
    raise FileNotFoundError(
      f"No config file {path!r} (relative paths are read from the working directory; configs/NAME.py also from "
      "the package's installed configs)."
    )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str):
  """``path/to/config.py[:arg]`` -> the ConfigDict its ``get_config(arg)`` returns, as ``--config`` loads it."""
  path, colon, arg = str(spec).partition(":")
  module = load_module(path)
  return module.get_config(arg) if colon else module.get_config()


def unknown_override(config, argv: list[str], flag: str = "config") -> str | None:
  """The first override naming a field ``config`` lacks, as an error message listing the valid names."""
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    dotted = arg[len(flag) + 3 :].split("=", 1)[0]
    node, walked = config, []
    for key in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        where = ".".join([flag, *walked]) or flag
        return (
          f"Unknown config field --{flag}.{dotted}: {where} has no field {key!r}. "
          f"Valid fields of {where}: {', '.join(sorted(keys))}."
        )
      node, walked = node[key], walked + [key]
  return None


def _load_or_exit(spec: str, flag: str):
  try:
    return load_config(spec)
  except (config_args.ConfigArgError, FileNotFoundError) as e:
    sys.exit(f"--{flag} {spec}: {e}")


def exit_on_unknown_override(spec: str, flag: str = "config"):
  """The config ``spec`` names, after checking ``sys.argv``'s overrides against it; exits with one line if not."""
  config = _load_or_exit(spec, flag)
  message = unknown_override(config, sys.argv, flag)
  if message:
    sys.exit(message)
  return config


def field_lines(config, prefix: str = "") -> list[str]:
  """``dotted.field = default`` for every leaf of ``config``; unset placeholders show their type."""
  lines = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      lines += field_lines(value, f"{name}.")
    elif value is None and config.get_type(key) is not type(None):
      lines.append(f"{name} = None ({config.get_type(key).__name__})")
    else:
      lines.append(f"{name} = {value!r}")
  return lines


def config_help(spec: str, summary: str, flag: str = "config", config=None) -> str:
  """The config flag's help: what it is, the file's variants and every field with its default."""
  path, _, _ = spec.partition(":")
  config = load_config(spec) if config is None else config
  variants = getattr(load_module(path), "VARIANTS", None)
  lines = [f"{summary} A config file, path[:arg]."]
  if variants is not None and variants.spec:
    lines.append(f"Arguments of {path}: {variants.describe()}.")
  lines.append(f"Fields of {spec}, each set with --{flag}.FIELD=VALUE (defaults shown):")
  return "\n".join(lines + [f"{flag}.{line}" for line in field_lines(config)])


def define_config_flag(default: str, summary: str, flag: str = "config") -> flags.FlagHolder:
  """The launcher's ``--config`` flag: exits at once on a mistyped field, and its help lists every field."""
  spec = _config_arg(sys.argv, flag) or default
  config = exit_on_unknown_override(spec, flag)
  _resolve_config_arg(sys.argv, flag)  # ml_collections opens the path as given
  return config_flags.DEFINE_config_file(flag, resolve_config_spec(default), config_help(spec, summary, flag, config))


def _resolve_config_arg(argv: list[str], flag: str) -> None:
  """Rewrites the ``--flag`` value in ``argv`` (in place) to ``resolve_config_spec`` of it."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      argv[i] = f"--{flag}={resolve_config_spec(arg.split('=', 1)[1])}"
      return
    if arg == f"--{flag}" and i + 1 < len(argv):
      argv[i + 1] = resolve_config_spec(argv[i + 1])
      return
