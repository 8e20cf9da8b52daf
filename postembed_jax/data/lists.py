"""List-valued config fields ("a,b", ("a", "b") or None), read one way everywhere.

Its own module because every other data module (and the layers above) parses such fields, and data/config.py
imports those modules.
"""

from __future__ import annotations


def as_list(value) -> list[str]:
  """A comma-separated string (items stripped, empty ones dropped), a sequence or None -> a list of strings."""
  if value is None:
    return []
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]
