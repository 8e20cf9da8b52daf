"""Batch job inputs: JSONL, text and Parquet from a file, a directory or a glob; bad records and bad inputs named."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postembed_jax.serving import embed_io
from postembed_jax.serving.embed_io import BadRecordError, ReadStats


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_every_input_kind_and_field_names(tmp_path):
  _write_jsonl(tmp_path / "a.jsonl", [{"key": "j1", "body": "first"}, {"key": 7, "body": "second"}])
  pq.write_table(pa.table({"body": ["third", "fourth"], "key": ["q1", "q2"], "extra": [1, 2]}), tmp_path / "b.parquet")
  (tmp_path / "c.txt").write_text("fifth\nsixth\n")
  (tmp_path / "notes.md").write_text("not an input\n")  # unknown suffix: not read from a directory
  fields = dict(id_field="key", text_field="body")
  expected = [("j1", "first"), ("7", "second"), ("q1", "third"), ("q2", "fourth"), ("c.txt:1", "fifth")]
  expected.append(("c.txt:2", "sixth"))
  assert list(embed_io.read_posts(embed_io.resolve_inputs(tmp_path, **fields))) == expected
  assert list(embed_io.read_posts(embed_io.resolve_inputs(tmp_path / "[ab].*", **fields))) == expected[:4]
  single = embed_io.resolve_inputs(tmp_path / "b.parquet", **fields)
  assert list(embed_io.read_posts(single)) == expected[2:4] and single.formats == ("parquet",)
  # One plain text file keeps today's ids: the line numbers.
  assert list(embed_io.read_posts(tmp_path / "c.txt")) == [(1, "fifth"), (2, "sixth")]
  assert embed_io.count_records(embed_io.resolve_inputs(tmp_path, **fields)) == 6


def test_glob_directory_or_path_with_nothing_to_read_fails_at_once(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.input: the glob .*\*.jsonl' matches no file"):
    embed_io.resolve_inputs(tmp_path / "*.jsonl")
  with pytest.raises(FileNotFoundError, match=r"config.input: the directory .* holds no .jsonl"):
    embed_io.resolve_inputs(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"config.input: .*missing.jsonl does not exist"):
    embed_io.resolve_inputs(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match=r"config.input_format='csv'"):
    embed_io.resolve_inputs(tmp_path, fmt="csv")


def test_parquet_without_the_named_columns_fails_before_reading(tmp_path):
  path = tmp_path / "posts.parquet"
  pq.write_table(pa.table({"id": ["a"], "body": ["text"], "n": [1.5]}), path)
  with pytest.raises(
    ValueError, match=r"config.text_field: .*posts.parquet has no column 'text' \(its columns: id, body"
  ):
    embed_io.resolve_inputs(path)
  with pytest.raises(ValueError, match=r"config.id_field: column 'n' of .* is double, not a string"):
    embed_io.resolve_inputs(path, id_field="n", text_field="body")
  (tmp_path / "fake.parquet").write_text("not parquet")
  with pytest.raises(ValueError, match=r"config.input: .*fake.parquet is not a readable Parquet file"):
    embed_io.resolve_inputs(tmp_path / "fake.parquet")


def test_parquet_null_and_empty_texts_are_named_by_row(tmp_path):
  path = tmp_path / "posts.parquet"
  pq.write_table(pa.table({"id": ["a", "b", "c", None], "text": ["fine", None, " ", "no id"]}), path)
  inputs = embed_io.resolve_inputs(path)
  with pytest.raises(BadRecordError, match=r"posts.parquet:row 2: field 'text' is null"):
    list(embed_io.read_posts(inputs))
  stats = ReadStats()
  assert list(embed_io.read_posts(inputs, skip_bad_lines=True, skip_empty_texts=True, stats=stats)) == [("a", "fine")]
  assert (stats.read, stats.skipped, stats.empty) == (1, 2, 1)


def test_read_indexed_numbers_records_across_files_and_parses_only_the_wanted(tmp_path):
  (tmp_path / "a.txt").write_text("zero\none\n")
  (tmp_path / "b.jsonl").write_text('{"id": "x", "text": "two"}\n\nnot json at all\n{"id": "y", "text": "four"}\n')
  inputs = embed_io.resolve_inputs(tmp_path)
  # Record 3 is malformed, but not wanted: it is never parsed, so nothing is raised.
  got = list(embed_io.read_indexed(inputs, wanted=lambda i: i != 3))
  assert got == [(0, ("a.txt:1", "zero")), (1, ("a.txt:2", "one")), (2, ("x", "two")), (4, ("y", "four"))]
  with pytest.raises(BadRecordError, match=r"b.jsonl:3: bad JSON"):
    list(embed_io.read_indexed(inputs))


def test_plain_text_ids_are_line_numbers(tmp_path):
  path = tmp_path / "posts.txt"
  path.write_text("first post\nsecond post\nthird\n")
  assert list(embed_io.read_posts(path)) == [(1, "first post"), (2, "second post"), (3, "third")]


@pytest.mark.parametrize("name,content,line", [("posts.txt", "first\n\nthird\n", 2), ("posts.jsonl", None, 3)])
def test_empty_texts_are_refused_naming_the_line_or_skipped_and_counted(tmp_path, name, content, line):
  path = tmp_path / name
  if content is None:
    path.write_text('{"id": "a", "text": "first"}\n\n{"id": "b", "text": " \\t "}\n{"id": "c", "text": "third"}\n')
  else:
    path.write_text(content)
  with pytest.raises(BadRecordError, match=rf"{name}:{line}: text is empty.*skip_empty_texts=True"):
    list(embed_io.read_posts(path))
  # skip_bad_lines is for malformed lines: it does not let empty texts through either.
  with pytest.raises(BadRecordError, match=rf"{name}:{line}: text is empty"):
    list(embed_io.read_posts(path, skip_bad_lines=True))
  stats = ReadStats()
  assert [t for _, t in embed_io.read_posts(path, skip_empty_texts=True, stats=stats)] == ["first", "third"]
  assert (stats.read, stats.skipped, stats.empty) == (2, 0, 1)
  assert stats.report() == "skipped 1 empty texts"


@pytest.mark.parametrize(
  "line,message",
  [
    (b'{"id": 1, "text": "ok"', "posts.jsonl:2: bad JSON"),
    (b'{"id": 1}', "posts.jsonl:2: missing field 'text'"),
    (b'{"text": "no id"}', "posts.jsonl:2: missing field 'id'"),
    (b'{"id": 1, "text": 5}', "posts.jsonl:2: field 'text' must be a string"),
    (b'["a", "b"]', "posts.jsonl:2: expected a JSON object"),
    (b'{"id": 1, "text": "caf\xe9"}', "posts.jsonl:2: invalid UTF-8"),
  ],
)
def test_bad_line_is_named(tmp_path, line, message):
  path = tmp_path / "posts.jsonl"
  path.write_bytes(b'{"id": 0, "text": "fine"}\n' + line + b"\n")
  with pytest.raises(BadRecordError, match=message):
    list(embed_io.read_posts(path))
  stats = ReadStats()
  assert list(embed_io.read_posts(path, skip_bad_lines=True, stats=stats)) == [("0", "fine")]
  assert (stats.read, stats.skipped) == (1, 1)
