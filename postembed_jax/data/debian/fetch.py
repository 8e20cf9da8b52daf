"""Debian index files: find the archive in the apt sources, then read each index file of one release from a local
copy, the cache or the mirror, verified against the (In)Release file.

Trust model: the (In)Release file is the root; every other index file is checked against its SHA256 and size. The
PGP signature of InRelease is *not* verified (we do not depend on gpg); compare the recorded InRelease hash with a
trusted copy if that matters to you.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import hashlib
import lzma
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from postembed_jax.data.debian.parse import iter_paragraphs

DEFAULT_RELEASE = "bookworm"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "postembed_jax", "debian")
# Preferred order when InRelease lists several compressions of one index.
_COMPRESSIONS = (".xz", ".bz2", ".gz", "")
_DECOMPRESS = {
  ".xz": lzma.decompress,
  ".bz2": bz2.decompress,
  ".gz": gzip.decompress,
  "": lambda b: b,
}


# Debian's release code names (Toy Story characters) and suite names. An apt entry none of whose suites is one of
# these serves another distribution: Ubuntu's archive (jammy, noble, ...) on Colab has no Debian release at all.
DEBIAN_SUITES = frozenset(
  "buzz rex bo hamm slink potato woody sarge etch lenny squeeze wheezy jessie stretch buster bullseye bookworm "
  "trixie forky duke sid experimental unstable testing stable oldstable oldoldstable".split()
)
SET_MIRROR_HINT = (
  "Set a Debian archive: --config.mirror=http://deb.debian.org/debian for launch/build_data.py, "
  "--config.data.mirror=... for training and evaluation, MIRROR in the notebooks; or index_dir for a local copy."
)


class NotADebianArchiveError(RuntimeError):
  """The mirror (from the apt sources or the config) is not a Debian archive, or lacks the release."""


def is_debian_suite(suite: str) -> bool:
  """``bookworm``, ``bookworm-updates``, ``stable``, ``sid``: yes; ``jammy``, ``noble-updates``, ``focal/``: no."""
  return suite.strip("/").split("/")[0].split("-")[0] in DEBIAN_SUITES


def apt_mirror(apt_dir: str = "/etc/apt") -> str:
  """Returns the Debian archive URI the machine's apt sources use.

  Reads deb822 ``*.sources`` files and one-line ``*.list`` files and picks the
  first ``deb`` entry with a Debian suite that is not a security/updates suite, so no host
  name is ever hard-coded in this project. Raises NotADebianArchiveError, naming what the sources do list, when
  no entry is a Debian one (an Ubuntu machine such as Colab).
  """
  candidates = []
  for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources"))):
    with open(path, encoding="utf-8") as f:
      for para in iter_paragraphs(f.read()):
        if "deb" not in para.get("Types", "").split():
          continue
        suites = para.get("Suites", "").split()
        for uri in para.get("URIs", "").split():
          candidates.append((uri, suites))
  lists = [os.path.join(apt_dir, "sources.list")]
  lists += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
  for path in lists:
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      for line in f:
        parts = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(parts) >= 3 and parts[0] == "deb":
          candidates.append((parts[1], [parts[2]]))
  others = []
  for uri, suites in candidates:
    main_suites = [s for s in suites if not s.endswith(("-security", "-updates", "/updates"))]
    if any(is_debian_suite(s) for s in main_suites):
      return uri.rstrip("/")
    if main_suites:
      others.append(f"{uri.rstrip('/')} ({', '.join(suites)})")
  if others:
    raise NotADebianArchiveError(
      f"The apt sources under {apt_dir} list no Debian archive: {'; '.join(others[:3])} "
      f"{'is' if len(others) == 1 else 'are'} not Debian (no Debian release name among the suites; an Ubuntu "
      f"machine such as Colab lists only Ubuntu's archive). {SET_MIRROR_HINT}"
    )
  raise NotADebianArchiveError(f"No Debian archive found in the apt sources under {apt_dir}. {SET_MIRROR_HINT}")


@dataclasses.dataclass(frozen=True)
class ReleaseInfo:
  """What the (In)Release file says: identity of the snapshot and file hashes."""

  fields: dict[str, str]
  sha256: dict[str, tuple[str, int]]  # relative path -> (hex digest, size)
  digest: str  # sha256 of the (In)Release file itself

  @property
  def date(self) -> str:
    return self.fields.get("Date", "")


def parse_release(data: bytes) -> ReleaseInfo:
  """Parses an InRelease (PGP clear-signed) or plain Release file."""
  text = data.decode("utf-8")
  if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
    body = text.split("\n\n", 1)[1]  # Skip the armor header ("Hash: ...").
    text = body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
  para = next(iter_paragraphs(text), {})
  sha256 = {}
  for line in para.get("SHA256", "").splitlines():
    parts = line.split()
    if len(parts) == 3:
      sha256[parts[2]] = (parts[0], int(parts[1]))
  if not sha256:
    raise ValueError("Release file has no SHA256 section.")
  fields = {k: v for k, v in para.items() if "\n" not in v}
  return ReleaseInfo(fields=fields, sha256=sha256, digest=hashlib.sha256(data).hexdigest())


class IndexSource:
  """Provides verified, decompressed index files of one release.

  Files come from ``index_dir`` (a copy of ``dists/<release>/`` the user
  already has; nothing is downloaded) or from ``mirror``, cached under
  ``cache_dir/<release>/`` so rebuilds are offline.
  """

  def __init__(
    self,
    release: str = DEFAULT_RELEASE,
    *,
    mirror: str | None = None,
    cache_dir: str | None = None,
    index_dir: str | None = None,
    progress: bool = False,
  ):
    self.release = release
    self.index_dir = os.path.expanduser(index_dir) if index_dir else None
    self.mirror = None if self.index_dir else (mirror or apt_mirror()).rstrip("/")
    self.cache_dir = os.path.join(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR), release)
    self.progress = progress
    self.info = parse_release(self._release_bytes())
    self.used: dict[str, tuple[str, int]] = {}  # path -> verified (sha256, size)

  def _root(self) -> str:
    return self.index_dir or self.cache_dir

  def _release_bytes(self) -> bytes:
    for name in ("InRelease", "Release"):
      path = os.path.join(self._root(), name)
      if os.path.exists(path):
        with open(path, "rb") as f:
          return f.read()
    if self.index_dir:
      raise FileNotFoundError(f"No InRelease or Release file in {self.index_dir}")
    try:
      data = self._download("InRelease")
    except urllib.error.HTTPError as e:
      if e.code != 404:
        raise
      raise NotADebianArchiveError(
        f"The mirror {self.mirror} has no Debian release {self.release!r} ({self._url('InRelease')}: HTTP 404); "
        f"it is not a Debian archive, or not one with this release. {SET_MIRROR_HINT}"
      ) from e
    except urllib.error.URLError as e:
      if not isinstance(e.reason, FileNotFoundError):  # unreachable host, refused, ...: the message says so
        raise
      raise NotADebianArchiveError(
        f"The mirror {self.mirror} has no Debian release {self.release!r} ({self._url('InRelease')} does not "
        f"exist). {SET_MIRROR_HINT}"
      ) from e
    os.makedirs(self.cache_dir, exist_ok=True)
    with open(os.path.join(self.cache_dir, "InRelease"), "wb") as f:
      f.write(data)
    return data

  def _url(self, rel: str) -> str:
    return f"{self.mirror}/dists/{urllib.parse.quote(self.release)}/{rel}"

  def _download(self, rel: str) -> bytes:
    url = self._url(rel)
    with urllib.request.urlopen(url, timeout=120) as resp:
      total = int(resp.headers.get("Content-Length") or 0)
      chunks = []
      bar = _tqdm(total=total, desc=rel, unit="B", unit_scale=True, disable=not self.progress)
      while chunk := resp.read(1 << 20):
        chunks.append(chunk)
        bar.update(len(chunk))
      bar.close()
    return b"".join(chunks)

  def variants(self, rel: str) -> list[str]:
    """Paths of ``rel`` (uncompressed name) that InRelease lists, preferred first."""
    return [rel + ext for ext in _COMPRESSIONS if rel + ext in self.info.sha256]

  def available(self, rel: str) -> bool:
    return bool(self.variants(rel))

  def read(self, rel: str) -> bytes:
    """Returns the decompressed content of index ``rel``, hash-verified."""
    variants = self.variants(rel)
    if not variants:
      raise FileNotFoundError(f"{rel} is not listed in the Release file of {self.release}")
    if self.index_dir:
      local = [v for v in variants if os.path.exists(os.path.join(self.index_dir, v))]
      if not local:
        raise FileNotFoundError(f"None of {variants} exists in {self.index_dir}")
      path = local[0]
      with open(os.path.join(self.index_dir, path), "rb") as f:
        data = f.read()
      self._verify(path, data, os.path.join(self.index_dir, path))
    else:
      path = variants[0]
      data = self._cached_or_download(path)
    return _DECOMPRESS[_compression(path)](data)

  def _cached_or_download(self, path: str) -> bytes:
    local = os.path.join(self.cache_dir, path)
    want, _ = self.info.sha256[path]
    if os.path.exists(local):
      with open(local, "rb") as f:
        data = f.read()
      if hashlib.sha256(data).hexdigest() == want:
        self._verify(path, data, local)
        return data
    data = self._download(path)
    if hashlib.sha256(data).hexdigest() != want:
      # The mirror moved on since our cached InRelease: fetch by hash.
      by_hash = f"{os.path.dirname(path)}/by-hash/SHA256/{want}"
      data = self._download(by_hash)
    self._verify(path, data, self._url(path))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local + ".part", "wb") as f:
      f.write(data)
    os.replace(local + ".part", local)
    return data

  def _verify(self, path: str, data: bytes, where: str) -> None:
    want, size = self.info.sha256[path]
    got = hashlib.sha256(data).hexdigest()
    if got != want or len(data) != size:
      raise ValueError(
        f"{where}: sha256 {got} / {len(data)} bytes does not match the Release file ({want} / {size} bytes)."
      )
    self.used[path] = (want, size)


def _compression(path: str) -> str:
  return next((e for e in _COMPRESSIONS if e and path.endswith(e)), "")


def _tqdm(**kwargs):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(**kwargs)


def available_languages(info: ReleaseInfo, component: str = "main") -> list[str]:
  prefix = f"{component}/i18n/Translation-"
  return sorted({re.sub(r"\.(xz|bz2|gz)$", "", p[len(prefix) :]) for p in info.sha256 if p.startswith(prefix)} - {"en"})
