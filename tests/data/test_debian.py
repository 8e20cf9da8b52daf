"""Debian corpus: mirror discovery, verification, parsing, splits, bad input."""

import bz2
import collections
import hashlib
import lzma
import os
import shutil

import pytest

from postembed_jax.data import debian

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "..", "fixtures", "debian")


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path):
  (tmp_path / "sources.list.d").mkdir()
  (tmp_path / "sources.list.d" / "debian.sources").write_text(
    "Types: deb\n# a comment\nURIs: http://security.example/debian-security\n"
    "Suites: bookworm-security\nComponents: main\n\n"
    "Types: deb deb-src\nURIs: http://archive.example/debian/\n"
    "Suites: bookworm bookworm-updates\nComponents: main\n"
  )
  assert debian.apt_mirror(str(tmp_path)) == "http://archive.example/debian"
  os.remove(tmp_path / "sources.list.d" / "debian.sources")
  (tmp_path / "sources.list").write_text(
    "# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://one.example/debian bookworm main\n"
  )
  assert debian.apt_mirror(str(tmp_path)) == "http://one.example/debian"
  os.remove(tmp_path / "sources.list")
  with pytest.raises(RuntimeError, match="mirror"):
    debian.apt_mirror(str(tmp_path))


# /etc/apt on a Colab runtime (Ubuntu 22.04): Ubuntu's archive, NVIDIA's CUDA repository, CRAN and a PPA.
_COLAB_SOURCES_LIST = """\
deb http://archive.ubuntu.com/ubuntu/ jammy main restricted
# deb-src http://archive.ubuntu.com/ubuntu/ jammy main restricted
deb http://archive.ubuntu.com/ubuntu/ jammy-updates main restricted
deb http://archive.ubuntu.com/ubuntu/ jammy universe
deb http://security.ubuntu.com/ubuntu/ jammy-security main restricted
"""
_COLAB_LISTS = {
  "cuda.list": "deb [signed-by=/usr/share/keyrings/cuda.gpg] "
  "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64 /\n",
  "r-project.list": "deb https://cloud.r-project.org/bin/linux/ubuntu jammy-cran40/\n",
}
_UBUNTU_DEB822 = "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\nSuites: noble noble-updates\nComponents: main\n"


def test_apt_mirror_refuses_an_ubuntu_machine_naming_its_archive_and_the_setting(tmp_path):
  (tmp_path / "sources.list.d").mkdir()
  (tmp_path / "sources.list").write_text(_COLAB_SOURCES_LIST)
  for name, text in _COLAB_LISTS.items():
    (tmp_path / "sources.list.d" / name).write_text(text)
  with pytest.raises(debian.NotADebianArchiveError) as e:
    debian.apt_mirror(str(tmp_path))
  message = str(e.value)
  assert "list no Debian archive: http://archive.ubuntu.com/ubuntu (jammy)" in message
  assert "--config.mirror=http://deb.debian.org/debian" in message and "MIRROR in the notebooks" in message
  # Ubuntu 24.04's deb822 file alone: the same.
  for path in [tmp_path / "sources.list", *(tmp_path / "sources.list.d").iterdir()]:
    path.unlink()
  (tmp_path / "sources.list.d" / "ubuntu.sources").write_text(_UBUNTU_DEB822)
  with pytest.raises(debian.NotADebianArchiveError, match=r"ubuntu \(noble, noble-updates\) is not Debian"):
    debian.apt_mirror(str(tmp_path))
  # A Debian entry after the Ubuntu ones is found.
  (tmp_path / "sources.list").write_text("deb http://ftp.example/debian trixie main\n")
  assert debian.apt_mirror(str(tmp_path)) == "http://ftp.example/debian"


@pytest.mark.parametrize(
  "suite,debian_suite",
  [("bookworm", True), ("bookworm-backports", True), ("stable", True), ("sid", True), ("jammy", False)]
  + [("noble-updates", False), ("jammy-cran40/", False), ("/", False)],
)
def test_is_debian_suite(suite, debian_suite):
  assert debian.is_debian_suite(suite) is debian_suite


def test_a_mirror_without_the_release_fails_naming_it(tmp_path):
  """An archive with no dists/bookworm (Ubuntu's, say), over HTTP (404) and as a local file:// copy."""
  import functools
  import http.server
  import threading

  (tmp_path / "ubuntu" / "dists" / "jammy").mkdir(parents=True)
  (tmp_path / "ubuntu" / "dists" / "jammy" / "InRelease").write_text("Origin: Ubuntu\n")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    mirror = f"http://127.0.0.1:{server.server_address[1]}/ubuntu"
    with pytest.raises(debian.NotADebianArchiveError, match=rf"The mirror {mirror} has no Debian release 'bookworm'"):
      debian.IndexSource("bookworm", mirror=mirror, cache_dir=str(tmp_path / "cache"))
  finally:
    server.shutdown()
    server.server_close()
  mirror = (tmp_path / "ubuntu").as_uri()
  with pytest.raises(debian.NotADebianArchiveError, match="--config.mirror=http://deb.debian.org/debian"):
    debian.IndexSource("bookworm", mirror=mirror, cache_dir=str(tmp_path / "cache"))
  assert not (tmp_path / "cache").exists()


def test_split_description_renders_paragraphs_verbatim_and_cjk():
  synopsis, long = debian.split_description("short one\n first line\n wrapped here\n .\n  verbatim  line\n second para")
  assert synopsis == "short one"
  assert long == "first line wrapped here\nverbatim  line second para"
  assert debian.split_description("x\n 日本語の\n 説明です")[1] == "日本語の説明です"


def test_relation_and_tag_parsing():
  assert debian.relation_names("a (>= 1) | b:any, c [amd64], a") == ["a", "b", "c"]
  assert debian.parse_tags("role::program, works-with::image,\n use::viewing") == [
    "role::program",
    "use::viewing",
    "works-with::image",
  ]


def test_fixture_build_records_metadata(records, data_config):
  meta = debian.dataset_metadata(data_config)
  release = open(os.path.join(FIXTURE_DIR, "Release"), "rb").read()
  assert meta["inrelease_sha256"] == hashlib.sha256(release).hexdigest()
  assert meta["release"]["Codename"] == "bookworm" and meta["release"]["Date"]
  info = debian.parse_release(release)
  assert {p: (f["sha256"], f["size"]) for p, f in meta["files"].items()} == info.sha256
  st = meta["statistics"]
  assert st["packages"] == sum(len(r) for r in records.values()) > 300
  assert st["packages_per_split"] == {s: len(r) for s, r in records.items()}
  assert meta["dropped"] == {}
  assert meta["content_sha256"] == {s: debian.records_digest(r) for s, r in records.items()}
  for split in debian.SPLITS:
    assert records[split]
  rec = next(r for r in records["train"] if r["name"] == "agda")
  assert set(rec) == set(debian.RECORD_KEYS)
  assert rec["section"] == "misc" and rec["tags"] == ["role::metapackage"]
  assert rec["synopsis"] == "dependently typed functional programming language"
  assert rec["description"].startswith("Agda is a dependently typed")
  assert "agda-bin" in rec["depends"]
  assert rec["translations"]["de"].startswith("Agda ist eine")
  langs = collections.Counter(l for rs in records.values() for r in rs for l in r["translations"])
  assert set(langs) == set(debian.DEFAULT_LANGUAGES)


def test_no_source_or_identical_description_crosses_splits(records):
  split_of_source, split_of_text = {}, {}
  for split, recs in records.items():
    for r in recs:
      assert split_of_source.setdefault(r["source"], split) == split, r["source"]
      assert split_of_text.setdefault(r["description"], split) == split, r["name"]
  # The fixture includes different sources sharing one description.
  by_text = collections.defaultdict(set)
  for recs in records.values():
    for r in recs:
      by_text[r["description"]].add(r["source"])
  assert any(len(s) > 1 for s in by_text.values())


def _copy_fixture(tmp_path):
  root = tmp_path / "index"
  shutil.copytree(FIXTURE_DIR, root, ignore=shutil.ignore_patterns("*.py"))
  return root


def _rewrite(root, rel, transform):
  """Replaces index file `rel` (compressed as in the fixture) and its Release hash."""
  path = root / rel
  comp = lzma if rel.endswith(".xz") else bz2
  data = comp.compress(transform(comp.decompress(path.read_bytes())))
  path.write_bytes(data)
  lines = []
  for line in (root / "Release").read_text().splitlines():
    if line.endswith(" " + rel):
      line = f" {hashlib.sha256(data).hexdigest()} {len(data):8d} {rel}"
    lines.append(line)
  (root / "Release").write_text("\n".join(lines) + "\n")


def test_hash_mismatch_is_refused(tmp_path):
  root = _copy_fixture(tmp_path)
  rel = "main/i18n/Translation-de.bz2"
  (root / rel).write_bytes(bz2.compress(b"Package: x\nDescription-md5: y\nDescription-de: z\n"))
  src = debian.IndexSource("bookworm", index_dir=str(root))
  with pytest.raises(ValueError, match=r"Translation-de\.bz2: sha256 .* does not match"):
    src.read("main/i18n/Translation-de")


def test_bad_records_are_dropped_and_counted(tmp_path, capsys):
  root = _copy_fixture(tmp_path)
  pk, en = "main/binary-amd64/Packages.xz", "main/i18n/Translation-en.xz"
  bad_packages = (
    b"Package: broken-enc\nSection: misc\nDescription: caf\xe9 latin-1\n"
    b"Description-md5: 00000000000000000000000000000001\n\n"
    b"Package: no-md5\nSection: misc\nDescription: lacks md5\n\n"
    b"Package: no-english\nSection: misc\nDescription: nothing in en\n"
    b"Description-md5: 00000000000000000000000000000002\n\n"
    b"Package: empty-long\nSection: misc\nDescription: synopsis only\n"
    b"Description-md5: 00000000000000000000000000000003\n\n"
  )
  _rewrite(root, pk, lambda b: bad_packages + b)
  _rewrite(
    root,
    en,
    lambda b: (
      b + b"\nPackage: empty-long\nDescription-md5: 00000000000000000000000000000003\nDescription-en: synopsis only\n"
    ),
  )
  builder = debian.DebianPackages(
    config=debian.DebianPackagesConfig(local_digest="bad"), data_dir=str(tmp_path / "tfds"), index_dir=str(root)
  )
  builder.download_and_prepare(download_config=debian.download_config())
  dropped = dict(builder.info.metadata["dropped"])
  assert dropped == {
    "packages_broken_encoding": 1,
    "missing_fields": 1,
    "no_english_description": 1,
    "empty_description": 1,
  }
  assert "dropped: {'empty_description': 1" in capsys.readouterr().out


def test_download_verify_cache_then_offline(tmp_path):
  mirror = tmp_path / "mirror"
  dists = mirror / "dists" / "bookworm"
  shutil.copytree(FIXTURE_DIR, dists, ignore=shutil.ignore_patterns("*.py"))
  os.rename(dists / "Release", dists / "InRelease")
  cache = tmp_path / "cache"
  src = debian.IndexSource("bookworm", mirror=mirror.as_uri(), cache_dir=str(cache))
  first, _ = debian.read_corpus(src, "main", "amd64", ["ja"])
  assert (cache / "bookworm" / "main" / "i18n" / "Translation-ja.bz2").exists()
  shutil.rmtree(mirror)  # Offline now: everything comes from the cache.
  src = debian.IndexSource("bookworm", mirror=mirror.as_uri(), cache_dir=str(cache))
  again, _ = debian.read_corpus(src, "main", "amd64", ["ja"])
  assert again == first and any("ja" in r["translations"] for r in again)


def test_unknown_language_and_split_fail_with_valid_names(data_config, tmp_path):
  src = debian.IndexSource("bookworm", index_dir=data_config.index_dir)
  with pytest.raises(ValueError, match=r"Language 'xx'.*available: \['de', 'es'"):
    debian.read_corpus(src, "main", "amd64", ["xx"])
  with pytest.raises(ValueError, match=r"valid splits: \['train', 'validation', 'test'\]"):
    debian.load_records("dev", config=data_config)
