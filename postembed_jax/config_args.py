"""One parser for the argument of a config file's ``get_config(arg)``, big_vision style.

``configs/stl.py:task=search,quick``: comma-separated items, each ``key=value``, a declared flag alone (``quick``:
true) or a declared choice's value alone (``search`` sets ``task``). A config declares its keys once, as
``VARIANTS = config_args.Variants(...)``, so an unknown word stops with one line naming the valid ones instead of
silently giving the default config, and tests can load every declared variant.
"""

from __future__ import annotations

import dataclasses

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigArgError(ValueError):
  """An argument that names no declared key or value; the message lists the valid ones."""


@dataclasses.dataclass(frozen=True)
class OneOf:
  """A key taking one of ``values``; a value given alone also sets it."""

  values: tuple[str, ...]
  default: str


def one_of(*values: str, default: str | None = None) -> OneOf:
  """``default`` is the first value unless given."""
  default = values[0] if default is None else default
  if default not in values:
    raise ValueError(f"default {default!r} is not one of {values}")
  return OneOf(tuple(values), default)


class Variants:
  """Declared keys: ``name=False`` a flag, ``name=one_of(...)`` a choice, ``name=<int|float|str>`` a typed value."""

  def __init__(self, **spec):
    self.spec = spec
    owners: dict[str, str] = {}
    for key, decl in spec.items():
      for value in decl.values if isinstance(decl, OneOf) else ():
        if value in spec or value in owners:
          raise ValueError(f"choice value {value!r} of {key!r} is also a key or another key's value")
        owners[value] = key
    self._owner = owners  # bare value -> its key

  def defaults(self) -> dict:
    return {k: d.default if isinstance(d, OneOf) else d for k, d in self.spec.items()}

  def describe(self) -> str:
    """The valid arguments, for error messages and --help."""
    if not self.spec:
      return "none (this config takes no argument)"
    parts = []
    for key, decl in self.spec.items():
      if isinstance(decl, OneOf):
        parts.append(f"{key}={'|'.join(decl.values)} or the value alone (default {decl.default})")
      elif isinstance(decl, bool):
        parts.append(f"{key} (flag, default {'on' if decl else 'off'})")
      else:
        parts.append(f"{key}=<{type(decl).__name__}> (default {decl!r})")
    return "; ".join(parts)

  def examples(self) -> list[str]:
    """One argument per declared flag and choice value, plus "" (the defaults)."""
    out = [""]
    for key, decl in self.spec.items():
      if isinstance(decl, OneOf):
        out += list(decl.values)
      elif isinstance(decl, bool):
        out.append(key)
    return out

  def parse(self, arg: str | None) -> ml_collections.ConfigDict:
    """The declared keys with their defaults, updated from ``arg``."""
    values, given = self.defaults(), set()
    for item in (arg or "").split(","):
      item = item.strip()
      if not item:
        continue
      key, eq, raw = (part.strip() for part in item.partition("="))
      if not eq:
        key, raw = (key, None) if key in self.spec else (self._owner.get(key), key)
      if key not in self.spec:
        raise ConfigArgError(
          f"Unknown config {'key' if eq else 'variant'} {item.split('=')[0]!r} in {arg!r}; valid: {self.describe()}."
        )
      if key in given:
        raise ConfigArgError(f"Config key {key!r} is given twice in {arg!r}; valid: {self.describe()}.")
      values[key] = self._value(key, raw, arg)
      given.add(key)
    config = ml_collections.ConfigDict(values)
    config.lock()
    return config

  def _value(self, key, raw, arg):
    decl = self.spec[key]
    if isinstance(decl, bool):
      if raw is None or raw.lower() in _TRUE:
        return True
      if raw.lower() in _FALSE:
        return False
      raise ConfigArgError(f"Config flag {key!r} takes true or false, not {raw!r} (in {arg!r}).")
    if raw is None:
      raise ConfigArgError(f"Config key {key!r} needs a value (in {arg!r}); valid: {self.describe()}.")
    if isinstance(decl, OneOf):
      if raw not in decl.values:
        raise ConfigArgError(f"Config key {key!r} takes one of {'|'.join(decl.values)}, not {raw!r} (in {arg!r}).")
      return raw
    try:
      return type(decl)(raw)
    except ValueError:
      raise ConfigArgError(
        f"Config key {key!r} takes a value of type {type(decl).__name__}, not {raw!r} (in {arg!r})."
      ) from None


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """``Variants(**spec).parse(arg)``, for a config that needs no module-level declaration."""
  return Variants(**spec).parse(arg)
