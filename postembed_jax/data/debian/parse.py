"""Debian index text -> Python values: deb822 paragraphs, descriptions, relations, tags, Packages and
Translation-* files."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator
from typing import Any


def iter_paragraphs(text: str) -> Iterator[dict[str, str]]:
  """Yields deb822 paragraphs as dicts; continuation lines keep their newlines."""
  for block in re.split(r"\n\s*\n", text):
    para = _parse_paragraph(block)
    if para:
      yield para


def _parse_paragraph(block: str) -> dict[str, str]:
  para: dict[str, str] = {}
  key = None
  for line in block.split("\n"):
    if not line or line.startswith("#"):
      continue
    if line[0] in " \t":
      if key is not None:
        para[key] += "\n" + line
    elif ":" in line:
      key, value = line.split(":", 1)
      para[key] = value.strip()
  return para


def _iter_raw_paragraphs(data: bytes, dropped: collections.Counter, what: str) -> Iterator[dict[str, str]]:
  """Splits raw bytes into paragraphs, dropping any that is not valid UTF-8."""
  for block in re.split(rb"\n\s*\n", data):
    if not block.strip():
      continue
    try:
      text = block.decode("utf-8")
    except UnicodeDecodeError:
      dropped[f"{what}_broken_encoding"] += 1
      continue
    para = _parse_paragraph(text)
    if para:
      yield para


def split_description(value: str) -> tuple[str, str]:
  """Splits a Description field into (synopsis, rendered long description).

  Long-description lines start with one space; " ." is a paragraph break and
  lines with two leading spaces are verbatim (kept on their own line).
  """
  first, *rest = value.split("\n")
  paragraphs, cur = [], ""
  for line in rest:
    s = line[1:] if line.startswith(" ") else line
    if s.strip() == ".":
      if cur:
        paragraphs.append(cur)
      cur = ""
    elif s.startswith((" ", "\t")):
      cur = f"{cur}\n{s.strip()}" if cur else s.strip()
    elif s.strip():
      cur = _join_wrapped(cur, s.strip())
  if cur:
    paragraphs.append(cur)
  return first.strip(), "\n".join(paragraphs)


def _join_wrapped(cur: str, nxt: str) -> str:
  """Joins a wrapped line; CJK text is wrapped without spaces between words."""
  if not cur:
    return nxt
  cjk = lambda ch: ord(ch) >= 0x2E80
  return cur + ("" if cjk(cur[-1]) and cjk(nxt[0]) else " ") + nxt


def relation_names(value: str) -> list[str]:
  """Package names in a relation field: 'a (>= 1) | b:any, c [amd64]' -> [a, b, c]."""
  names = []
  for alt in re.split(r"[,|]", value):
    name = alt.strip().split(" ", 1)[0].split("(", 1)[0].split("[", 1)[0].split(":", 1)[0]
    if name and name not in names:
      names.append(name)
  return names


def parse_tags(value: str) -> list[str]:
  return sorted({t.strip() for t in value.replace("\n", " ").split(",") if "::" in t})


def parse_packages(data: bytes, dropped: collections.Counter) -> list[dict[str, Any]]:
  """Parses a Packages index into partial records keyed on Description-md5."""
  out, seen = [], set()
  for para in _iter_raw_paragraphs(data, dropped, "packages"):
    missing = [k for k in ("Package", "Section", "Description", "Description-md5") if not para.get(k, "").strip()]
    if missing:
      dropped["missing_fields"] += 1
      continue
    name = para["Package"]
    if name in seen:
      dropped["duplicate_package"] += 1
      continue
    seen.add(name)
    out.append(
      {
        "name": name,
        "source": para.get("Source", name).split(" ", 1)[0] or name,
        "section": para["Section"].rsplit("/", 1)[-1],
        "tags": parse_tags(para.get("Tag", "")),
        "synopsis": para["Description"].split("\n", 1)[0].strip(),
        "md5": para["Description-md5"],
        "depends": relation_names(para.get("Depends", "")),
        "recommends": relation_names(para.get("Recommends", "")),
        "suggests": relation_names(para.get("Suggests", "")),
      }
    )
  return out


def parse_translation(data: bytes, lang: str, dropped: collections.Counter) -> dict[tuple[str, str], tuple[str, str]]:
  """Parses Translation-<lang>: (package, md5) -> (synopsis, long description)."""
  out = {}
  key = f"Description-{lang}"
  for para in _iter_raw_paragraphs(data, dropped, f"translation_{lang}"):
    if not para.get("Package") or not para.get("Description-md5") or key not in para:
      dropped[f"translation_{lang}_missing_fields"] += 1
      continue
    out[(para["Package"], para["Description-md5"])] = split_description(para[key])
  return out
