"""The Debian package corpus: fetch and verify index files, parse them, and
write them as the TFDS dataset ``debian_packages`` (array_record, no TensorFlow).

Why Debian: every package has a human-written long description (a "post"), a
Section (topic), debtags (hashtags), a source package (a "story" grouping
related binaries), dependency relations and translations -- real, public,
multilingual labels that anyone can rebuild from a mirror.

Trust model: the (In)Release file is the root; every other index file is
checked against its SHA256 and size. The PGP signature of InRelease is *not*
verified (we do not depend on gpg); compare the recorded InRelease hash with a
trusted copy if that matters to you.
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import functools
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import urllib.parse
import urllib.request
from typing import Any, Iterable, Iterator

from etils import epath
import tensorflow_datasets as tfds

SPLITS = ('train', 'validation', 'test')
# Percent of split groups (hash buckets 0..99) per split.
SPLIT_BUCKETS = {'train': range(0, 80), 'validation': range(80, 90), 'test': range(90, 100)}
DEFAULT_RELEASE = 'bookworm'
DEFAULT_LANGUAGES = ('de', 'es', 'fr', 'it', 'ja', 'pt_BR', 'ru')
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'postembed_jax', 'debian')
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'postembed_jax', 'tensorflow_datasets')
# Preferred order when InRelease lists several compressions of one index.
_COMPRESSIONS = ('.xz', '.bz2', '.gz', '')
_DECOMPRESS = {
    '.xz': lzma.decompress,
    '.bz2': bz2.decompress,
    '.gz': gzip.decompress,
    '': lambda b: b,
}
RECORD_KEYS = ('name', 'source', 'section', 'tags', 'synopsis', 'description',
               'translations', 'depends', 'recommends', 'suggests')


# --------------------------------------------------------------------------
# Mirror discovery and file fetching.
# --------------------------------------------------------------------------

def apt_mirror(apt_dir: str = '/etc/apt') -> str:
  """Returns the Debian archive URI the machine's apt sources use.

  Reads deb822 ``*.sources`` files and one-line ``*.list`` files and picks the
  first ``deb`` entry whose suites are not security/updates suites, so no host
  name is ever hard-coded in this project.
  """
  candidates = []
  for path in sorted(glob.glob(os.path.join(apt_dir, 'sources.list.d', '*.sources'))):
    with open(path, encoding='utf-8') as f:
      for para in iter_paragraphs(f.read()):
        if 'deb' not in para.get('Types', '').split():
          continue
        suites = para.get('Suites', '').split()
        for uri in para.get('URIs', '').split():
          candidates.append((uri, suites))
  lists = [os.path.join(apt_dir, 'sources.list')]
  lists += sorted(glob.glob(os.path.join(apt_dir, 'sources.list.d', '*.list')))
  for path in lists:
    if not os.path.exists(path):
      continue
    with open(path, encoding='utf-8') as f:
      for line in f:
        parts = re.sub(r'\[[^\]]*\]', ' ', line.split('#', 1)[0]).split()
        if len(parts) >= 3 and parts[0] == 'deb':
          candidates.append((parts[1], [parts[2]]))
  for uri, suites in candidates:
    if any(not s.endswith(('-security', '-updates', '/updates')) for s in suites):
      return uri.rstrip('/')
  raise RuntimeError(
      f'No Debian archive found in the apt sources under {apt_dir}; '
      'set the `mirror` config value to an archive URI.')


@dataclasses.dataclass(frozen=True)
class ReleaseInfo:
  """What the (In)Release file says: identity of the snapshot and file hashes."""
  fields: dict[str, str]
  sha256: dict[str, tuple[str, int]]  # relative path -> (hex digest, size)
  digest: str  # sha256 of the (In)Release file itself

  @property
  def date(self) -> str:
    return self.fields.get('Date', '')


def parse_release(data: bytes) -> ReleaseInfo:
  """Parses an InRelease (PGP clear-signed) or plain Release file."""
  text = data.decode('utf-8')
  if text.startswith('-----BEGIN PGP SIGNED MESSAGE-----'):
    body = text.split('\n\n', 1)[1]  # Skip the armor header ("Hash: ...").
    text = body.split('\n-----BEGIN PGP SIGNATURE-----', 1)[0]
  para = next(iter_paragraphs(text), {})
  sha256 = {}
  for line in para.get('SHA256', '').splitlines():
    parts = line.split()
    if len(parts) == 3:
      sha256[parts[2]] = (parts[0], int(parts[1]))
  if not sha256:
    raise ValueError('Release file has no SHA256 section.')
  fields = {k: v for k, v in para.items() if '\n' not in v}
  return ReleaseInfo(fields=fields, sha256=sha256, digest=hashlib.sha256(data).hexdigest())


class IndexSource:
  """Provides verified, decompressed index files of one release.

  Files come from ``index_dir`` (a copy of ``dists/<release>/`` the user
  already has; nothing is downloaded) or from ``mirror``, cached under
  ``cache_dir/<release>/`` so rebuilds are offline.
  """

  def __init__(self, release: str = DEFAULT_RELEASE, *, mirror: str | None = None,
               cache_dir: str | None = None, index_dir: str | None = None,
               progress: bool = False):
    self.release = release
    self.index_dir = os.path.expanduser(index_dir) if index_dir else None
    self.mirror = None if self.index_dir else (mirror or apt_mirror()).rstrip('/')
    self.cache_dir = os.path.join(
        os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR), release)
    self.progress = progress
    self.info = parse_release(self._release_bytes())
    self.used: dict[str, tuple[str, int]] = {}  # path -> verified (sha256, size)

  def _root(self) -> str:
    return self.index_dir or self.cache_dir

  def _release_bytes(self) -> bytes:
    for name in ('InRelease', 'Release'):
      path = os.path.join(self._root(), name)
      if os.path.exists(path):
        with open(path, 'rb') as f:
          return f.read()
    if self.index_dir:
      raise FileNotFoundError(f'No InRelease or Release file in {self.index_dir}')
    data = self._download('InRelease')
    os.makedirs(self.cache_dir, exist_ok=True)
    with open(os.path.join(self.cache_dir, 'InRelease'), 'wb') as f:
      f.write(data)
    return data

  def _url(self, rel: str) -> str:
    return f'{self.mirror}/dists/{urllib.parse.quote(self.release)}/{rel}'

  def _download(self, rel: str) -> bytes:
    url = self._url(rel)
    with urllib.request.urlopen(url, timeout=120) as resp:
      total = int(resp.headers.get('Content-Length') or 0)
      chunks = []
      bar = _tqdm(total=total, desc=rel, unit='B', unit_scale=True, disable=not self.progress)
      while chunk := resp.read(1 << 20):
        chunks.append(chunk)
        bar.update(len(chunk))
      bar.close()
    return b''.join(chunks)

  def variants(self, rel: str) -> list[str]:
    """Paths of ``rel`` (uncompressed name) that InRelease lists, preferred first."""
    return [rel + ext for ext in _COMPRESSIONS if rel + ext in self.info.sha256]

  def available(self, rel: str) -> bool:
    return bool(self.variants(rel))

  def read(self, rel: str) -> bytes:
    """Returns the decompressed content of index ``rel``, hash-verified."""
    variants = self.variants(rel)
    if not variants:
      raise FileNotFoundError(f'{rel} is not listed in the Release file of {self.release}')
    if self.index_dir:
      local = [v for v in variants if os.path.exists(os.path.join(self.index_dir, v))]
      if not local:
        raise FileNotFoundError(f'None of {variants} exists in {self.index_dir}')
      path = local[0]
      with open(os.path.join(self.index_dir, path), 'rb') as f:
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
      with open(local, 'rb') as f:
        data = f.read()
      if hashlib.sha256(data).hexdigest() == want:
        self._verify(path, data, local)
        return data
    data = self._download(path)
    if hashlib.sha256(data).hexdigest() != want:
      # The mirror moved on since our cached InRelease: fetch by hash.
      by_hash = f'{os.path.dirname(path)}/by-hash/SHA256/{want}'
      data = self._download(by_hash)
    self._verify(path, data, self._url(path))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local + '.part', 'wb') as f:
      f.write(data)
    os.replace(local + '.part', local)
    return data

  def _verify(self, path: str, data: bytes, where: str) -> None:
    want, size = self.info.sha256[path]
    got = hashlib.sha256(data).hexdigest()
    if got != want or len(data) != size:
      raise ValueError(
          f'{where}: sha256 {got} / {len(data)} bytes does not match the Release '
          f'file ({want} / {size} bytes).')
    self.used[path] = (want, size)


def _compression(path: str) -> str:
  return next((e for e in _COMPRESSIONS if e and path.endswith(e)), '')


def _tqdm(**kwargs):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(**kwargs)


# --------------------------------------------------------------------------
# Parsing.
# --------------------------------------------------------------------------

def iter_paragraphs(text: str) -> Iterator[dict[str, str]]:
  """Yields deb822 paragraphs as dicts; continuation lines keep their newlines."""
  for block in re.split(r'\n\s*\n', text):
    para = _parse_paragraph(block)
    if para:
      yield para


def _parse_paragraph(block: str) -> dict[str, str]:
  para: dict[str, str] = {}
  key = None
  for line in block.split('\n'):
    if not line or line.startswith('#'):
      continue
    if line[0] in ' \t':
      if key is not None:
        para[key] += '\n' + line
    elif ':' in line:
      key, value = line.split(':', 1)
      para[key] = value.strip()
  return para


def _iter_raw_paragraphs(data: bytes, dropped: collections.Counter, what: str
                         ) -> Iterator[dict[str, str]]:
  """Splits raw bytes into paragraphs, dropping any that is not valid UTF-8."""
  for block in re.split(rb'\n\s*\n', data):
    if not block.strip():
      continue
    try:
      text = block.decode('utf-8')
    except UnicodeDecodeError:
      dropped[f'{what}_broken_encoding'] += 1
      continue
    para = _parse_paragraph(text)
    if para:
      yield para


def split_description(value: str) -> tuple[str, str]:
  """Splits a Description field into (synopsis, rendered long description).

  Long-description lines start with one space; " ." is a paragraph break and
  lines with two leading spaces are verbatim (kept on their own line).
  """
  first, *rest = value.split('\n')
  paragraphs, cur = [], ''
  for line in rest:
    s = line[1:] if line.startswith(' ') else line
    if s.strip() == '.':
      if cur:
        paragraphs.append(cur)
      cur = ''
    elif s.startswith((' ', '\t')):
      cur = f'{cur}\n{s.strip()}' if cur else s.strip()
    elif s.strip():
      cur = _join_wrapped(cur, s.strip())
  if cur:
    paragraphs.append(cur)
  return first.strip(), '\n'.join(paragraphs)


def _join_wrapped(cur: str, nxt: str) -> str:
  """Joins a wrapped line; CJK text is wrapped without spaces between words."""
  if not cur:
    return nxt
  cjk = lambda ch: ord(ch) >= 0x2E80
  return cur + ('' if cjk(cur[-1]) and cjk(nxt[0]) else ' ') + nxt


def relation_names(value: str) -> list[str]:
  """Package names in a relation field: 'a (>= 1) | b:any, c [amd64]' -> [a, b, c]."""
  names = []
  for alt in re.split(r'[,|]', value):
    name = alt.strip().split(' ', 1)[0].split('(', 1)[0].split('[', 1)[0].split(':', 1)[0]
    if name and name not in names:
      names.append(name)
  return names


def parse_tags(value: str) -> list[str]:
  return sorted({t.strip() for t in value.replace('\n', ' ').split(',') if '::' in t})


def parse_packages(data: bytes, dropped: collections.Counter) -> list[dict[str, Any]]:
  """Parses a Packages index into partial records keyed on Description-md5."""
  out, seen = [], set()
  for para in _iter_raw_paragraphs(data, dropped, 'packages'):
    missing = [k for k in ('Package', 'Section', 'Description', 'Description-md5')
               if not para.get(k, '').strip()]
    if missing:
      dropped['missing_fields'] += 1
      continue
    name = para['Package']
    if name in seen:
      dropped['duplicate_package'] += 1
      continue
    seen.add(name)
    out.append({
        'name': name,
        'source': para.get('Source', name).split(' ', 1)[0] or name,
        'section': para['Section'].rsplit('/', 1)[-1],
        'tags': parse_tags(para.get('Tag', '')),
        'synopsis': para['Description'].split('\n', 1)[0].strip(),
        'md5': para['Description-md5'],
        'depends': relation_names(para.get('Depends', '')),
        'recommends': relation_names(para.get('Recommends', '')),
        'suggests': relation_names(para.get('Suggests', '')),
    })
  return out


def parse_translation(data: bytes, lang: str, dropped: collections.Counter
                      ) -> dict[tuple[str, str], tuple[str, str]]:
  """Parses Translation-<lang>: (package, md5) -> (synopsis, long description)."""
  out = {}
  key = f'Description-{lang}'
  for para in _iter_raw_paragraphs(data, dropped, f'translation_{lang}'):
    if not para.get('Package') or not para.get('Description-md5') or key not in para:
      dropped[f'translation_{lang}_missing_fields'] += 1
      continue
    out[(para['Package'], para['Description-md5'])] = split_description(para[key])
  return out


def build_records(packages: list[dict[str, Any]],
                  translations: dict[str, dict[tuple[str, str], tuple[str, str]]],
                  dropped: collections.Counter) -> list[dict[str, Any]]:
  """Joins packages with their English and translated long descriptions.

  A package without an English long description is dropped (that is what
  makes it a "post"); a translation whose long description is empty is
  skipped and counted.
  """
  english = translations['en']
  records = []
  for pkg in packages:
    key = (pkg['name'], pkg['md5'])
    if key not in english:
      dropped['no_english_description'] += 1
      continue
    _, description = english[key]
    if not description.strip():
      dropped['empty_description'] += 1
      continue
    trans = {}
    for lang, table in translations.items():
      if lang == 'en' or key not in table:
        continue
      if table[key][1].strip():
        trans[lang] = table[key][1]
      else:
        dropped[f'translation_{lang}_empty'] += 1
    rec = {k: v for k, v in pkg.items() if k != 'md5'}
    rec.update(description=description, translations=trans)
    records.append(rec)
  return records


def assign_splits(records: list[dict[str, Any]]) -> dict[str, str]:
  """Maps package name -> split, keeping each source package and each
  identical English description inside one split (no leakage).

  Packages linked by a shared source or an identical description form one
  group (union-find); the group's smallest source name is hashed.
  """
  parent: dict[str, str] = {}

  def find(x):
    while parent.setdefault(x, x) != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  def union(a, b):
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)

  by_text: dict[str, str] = {}
  for rec in records:
    src = 's:' + rec['source']
    find(src)
    text = ' '.join(rec['description'].split())
    if text in by_text:
      union(src, by_text[text])
    else:
      by_text[text] = src
  out = {}
  for rec in records:
    bucket = int(hashlib.sha256(find('s:' + rec['source']).encode()).hexdigest(), 16) % 100
    out[rec['name']] = next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)
  return out


def records_digest(records: Iterable[dict[str, Any]]) -> str:
  """Order-independent content hash of records (as load_records returns them)."""
  canon = sorted(json.dumps({k: r[k] for k in RECORD_KEYS}, sort_keys=True, ensure_ascii=False)
                 for r in records)
  return hashlib.sha256('\n'.join(canon).encode('utf-8')).hexdigest()


def corpus_statistics(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
  """Counts recorded in the dataset info and printed after a build."""
  all_recs = [r for recs in splits.values() for r in recs]
  tags = collections.Counter(t for r in all_recs for t in r['tags'])
  langs = collections.Counter(l for r in all_recs for l in r['translations'])
  return {
      'packages': len(all_recs),
      'packages_per_split': {s: len(r) for s, r in splits.items()},
      'sources_per_split': {s: len({x['source'] for x in r}) for s, r in splits.items()},
      'sections': len({r['section'] for r in all_recs}),
      'tagged_packages': sum(1 for r in all_recs if r['tags']),
      'tags': len(tags),
      'facets': len({t.split('::', 1)[0] for t in tags}),
      'translations_per_language': dict(sorted(langs.items())),
      'median_description_words': _median([len(r['description'].split()) for r in all_recs]),
  }


def _median(xs: list[int]) -> float:
  xs = sorted(xs)
  return float(xs[len(xs) // 2]) if xs else 0.0


# --------------------------------------------------------------------------
# TFDS builder.
# --------------------------------------------------------------------------

class DebianPackagesConfig(tfds.core.BuilderConfig):
  """One release/component/architecture/language set; the name says which."""

  def __init__(self, *, release: str = DEFAULT_RELEASE, component: str = 'main',
               arch: str = 'amd64', languages: Iterable[str] = DEFAULT_LANGUAGES,
               local_digest: str | None = None):
    self.release, self.component, self.arch = release, component, arch
    self.languages = tuple(sorted(languages))
    name = '-'.join([release, component, arch, '.'.join(self.languages) or 'en'])
    if local_digest:  # User-supplied index files get their own dataset dir.
      name += f'-local{local_digest[:10]}'
    super().__init__(name=name, description=f'Debian {release}/{component} {arch}')


_TEXTS = tfds.features.Sequence(tfds.features.Text())


class DebianPackages(tfds.core.GeneratorBasedBuilder):
  """TFDS builder `debian_packages`; see the module docstring."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Packages + Translation-* of one Debian release.'}
  BUILDER_CONFIGS = [DebianPackagesConfig()]
  # Fixed path: TFDS's own lookup imports `importlib_resources`, which is not
  # a dependency; there is no checksums.tsv (InRelease hashes are used).
  code_path = epath.Path(__file__)

  def __init__(self, *, mirror: str | None = None, cache_dir: str | None = None,
               index_dir: str | None = None, progress: bool = False, **kwargs):
    self._mirror, self._cache_dir, self._index_dir = mirror, cache_dir, index_dir
    self._progress = progress
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(),
            'source': tfds.features.Text(),
            'section': tfds.features.Text(),
            'tags': _TEXTS,
            'synopsis': tfds.features.Text(),
            'description': tfds.features.Text(),
            'translations': tfds.features.Sequence({
                'lang': tfds.features.Text(), 'text': tfds.features.Text()}),
            'depends': _TEXTS,
            'recommends': _TEXTS,
            'suggests': _TEXTS,
        }),
        homepage='https://www.debian.org/distrib/packages',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Index files are fetched with urllib and verified here.
    cfg = self.builder_config
    src = IndexSource(cfg.release, mirror=self._mirror, cache_dir=self._cache_dir,
                      index_dir=self._index_dir, progress=self._progress)
    records, dropped = read_corpus(src, cfg.component, cfg.arch, cfg.languages)
    split_of = assign_splits(records)
    splits = {s: [r for r in records if split_of[r['name']] == s] for s in SPLITS}
    stats = corpus_statistics(splits)
    self.info.metadata.update({
        'release': dict(src.info.fields, release=cfg.release),
        'inrelease_sha256': src.info.digest,
        'source': src.index_dir or src.mirror,
        'files': {p: {'sha256': h, 'size': n} for p, (h, n) in sorted(src.used.items())},
        'languages': list(cfg.languages),
        'dropped': dict(sorted(dropped.items())),
        'statistics': stats,
        # array_record bytes differ between identical builds; compare these instead.
        'content_sha256': {s: records_digest(recs) for s, recs in splits.items()},
    })
    print(format_statistics(self.info.metadata))
    return {s: self._generate_examples(recs) for s, recs in splits.items()}

  def _generate_examples(self, records):
    for rec in records:
      ex = dict(rec)
      ex['translations'] = [{'lang': l, 'text': t} for l, t in sorted(rec['translations'].items())]
      yield rec['name'], ex


def read_corpus(src: IndexSource, component: str, arch: str, languages: Iterable[str]
                ) -> tuple[list[dict[str, Any]], collections.Counter]:
  """Reads, verifies and joins the Packages and Translation-* indexes."""
  dropped: collections.Counter = collections.Counter()
  packages = parse_packages(src.read(f'{component}/binary-{arch}/Packages'), dropped)
  translations = {}
  for lang in ('en', *languages):
    rel = f'{component}/i18n/Translation-{lang}'
    if not src.available(rel):
      raise ValueError(f'Language {lang!r} has no {rel} in {src.release}; available: '
                       f'{available_languages(src.info, component)}')
    translations[lang] = parse_translation(src.read(rel), lang, dropped)
  return build_records(packages, translations, dropped), dropped


def available_languages(info: ReleaseInfo, component: str = 'main') -> list[str]:
  prefix = f'{component}/i18n/Translation-'
  return sorted({re.sub(r'\.(xz|bz2|gz)$', '', p[len(prefix):])
                 for p in info.sha256 if p.startswith(prefix)} - {'en'})


def format_statistics(metadata: dict[str, Any]) -> str:
  """Human-readable build summary (printed by the builder and build_data.py)."""
  st, rel = metadata['statistics'], metadata['release']
  lines = [
      f"Debian {rel.get('release')} ({rel.get('Version', '?')}, {rel.get('Date', '?')}) "
      f"InRelease sha256 {metadata['inrelease_sha256'][:16]}...",
      f"packages: {st['packages']}  per split: {st['packages_per_split']}",
      f"sources per split: {st['sources_per_split']}",
      f"sections: {st['sections']}  tags: {st['tags']} in {st['facets']} facets  "
      f"tagged packages: {st['tagged_packages']}",
      f"translations: {st['translations_per_language']}",
      f"median description words: {st['median_description_words']}",
      f"dropped: {metadata['dropped'] or 'none'}",
  ]
  return '\n'.join(lines)


# --------------------------------------------------------------------------
# Loading for trainers and evaluators.
# --------------------------------------------------------------------------

def make_builder(config=None, *, data_dir: str | None = None, progress: bool = False
                 ) -> DebianPackages:
  """Builder for the corpus a data config names (fixture or full mirror).

  Reads config fields release, component, arch, corpus_languages, mirror,
  cache_dir, index_dir and data_dir (all optional).
  """
  get = (lambda k, d=None: config.get(k, d) if config is not None and config.get(k) is not None else d)
  return _make_builder(
      get('release', DEFAULT_RELEASE), get('component', 'main'), get('arch', 'amd64'),
      tuple(_as_list(get('corpus_languages', DEFAULT_LANGUAGES))),
      os.path.expanduser(data_dir or get('data_dir') or DEFAULT_DATA_DIR),
      get('mirror'), get('cache_dir'), get('index_dir'), progress)


@functools.lru_cache(maxsize=32)
def _make_builder(release, component, arch, languages, data_dir, mirror, cache_dir, index_dir,
                  progress) -> DebianPackages:
  digest = None
  if index_dir:
    digest = IndexSource(release, index_dir=index_dir).info.digest
  bcfg = DebianPackagesConfig(release=release, component=component, arch=arch,
                              languages=languages, local_digest=digest)
  if any(c.name == bcfg.name for c in DebianPackages.BUILDER_CONFIGS):
    bcfg = bcfg.name  # TFDS refuses a custom config named like a registered one.
  return DebianPackages(config=bcfg, data_dir=data_dir, mirror=mirror, cache_dir=cache_dir,
                        index_dir=index_dir, progress=progress)


def _as_list(value) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return list(value)


def prepare(config=None, *, data_dir: str | None = None, progress: bool = False
            ) -> DebianPackages:
  """Builds the dataset if it is not on disk yet; returns the ready builder."""
  builder = make_builder(config, data_dir=data_dir, progress=progress)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=download_config())
  return builder


def download_config(force: bool = False) -> tfds.download.DownloadConfig:
  """Never asks GCS for a prebuilt copy; `force` regenerates an existing build."""
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if force
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  return tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode)


def load_records(split: str, *, data_dir: str | None = None, config=None) -> list[dict[str, Any]]:
  """Package records of one split, sorted by name (built on first use).

  Each record has keys name, source, section, tags, synopsis, description
  (English long description), translations (lang -> text), depends,
  recommends, suggests.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid splits: {list(SPLITS)}')
  builder = prepare(config, data_dir=data_dir)
  return list(_load_split(builder.data_dir, builder.builder_config.name, split))


@functools.lru_cache(maxsize=16)
def _load_split(dataset_dir: str, config_name: str, split: str) -> tuple[dict[str, Any], ...]:
  del config_name  # Part of the cache key only; dataset_dir already names it.
  builder = tfds.builder_from_directory(dataset_dir)
  source = builder.as_data_source(split=split)
  raw = source.__getitems__(range(len(source))) if len(source) else []
  return tuple(sorted((decode_example(ex) for ex in raw), key=lambda r: r['name']))


def decode_example(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS example (bytes) -> plain record (str)."""
  s = lambda b: b.decode('utf-8') if isinstance(b, bytes) else str(b)
  rec = {k: s(ex[k]) for k in ('name', 'source', 'section', 'synopsis', 'description')}
  for k in ('tags', 'depends', 'recommends', 'suggests'):
    rec[k] = [s(x) for x in ex[k]]
  tr = ex['translations']
  rec['translations'] = {s(l): s(t) for l, t in zip(tr['lang'], tr['text'])}
  return rec


def dataset_metadata(config=None, *, data_dir: str | None = None) -> dict[str, Any]:
  """Release, hashes, statistics and dropped counts of the (built) dataset."""
  return dict(prepare(config, data_dir=data_dir).info.metadata)
