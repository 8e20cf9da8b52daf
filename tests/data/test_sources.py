"""User data files: valid files load; bad ones name the file, line and field."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postembed_jax.data import sources


def _jsonl(path, rows):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_pairs_jsonl_and_hash_splits(tmp_path):
  rows = [{"left": f"query {i}", "right": f"post {i}", "label": i % 2} for i in range(200)]
  task = sources.file_task("mine", _jsonl(tmp_path / "p.jsonl", rows))
  assert task.kind == "pair"
  splits = {s: task.records(s) for s in sources.SPLITS}
  assert sum(len(v) for v in splits.values()) == 200
  assert len(splits["train"]) > len(splits["test"]) > 0
  lefts = [{r["left"] for r in v} for v in splits.values()]
  assert not (lefts[0] & lefts[1] or lefts[0] & lefts[2] or lefts[1] & lefts[2])
  assert task.pairs(splits["train"]) == splits["train"]
  assert task.pairs(splits["train"], neg_ratio=0) == splits["train"]  # files carry their own negatives


def test_labelled_posts_parquet_per_split_files(tmp_path):
  for split in sources.SPLITS:
    table = pa.table({"text": ["a post", "another post"], "labels": [["x", "y"], ["y"]]})
    pq.write_table(table, tmp_path / f"{split}.parquet")
  task = sources.file_task("tags", str(tmp_path / "{split}.parquet"))
  assert task.kind == "classification" and task.multi_label
  names = task.label_names(task.records("train"))
  assert names == ["x", "y"]
  assert task.examples(task.records("test"), names) == [
    {"text": "a post", "labels": [0, 1]},
    {"text": "another post", "labels": [1]},
  ]


def test_single_label_posts(tmp_path):
  task = sources.file_task(
    "cls", _jsonl(tmp_path / "c.jsonl", [{"text": "t1", "labels": 3}, {"text": "t2", "labels": 5}])
  )
  assert not task.multi_label
  assert task.examples([{"text": "t", "labels": ["5"]}], ["3", "5"]) == [{"text": "t", "label": 1}]


@pytest.mark.parametrize(
  "bad,line,field,msg",
  [
    ({"left": "a", "rigth": "b", "label": 1}, 2, "right", "missing field"),
    ({"left": "a", "right": "b", "label": 1, "extra": 0}, 2, "extra", "unexpected field"),
    ({"left": " ", "right": "b", "label": 1}, 2, "left", "empty text"),
    ({"left": "a", "right": 7, "label": 1}, 2, "right", "expected a string"),
    ({"left": "a", "right": "b", "label": "yes"}, 2, "label", "unknown label type str"),
    ({"left": "a", "right": "b", "label": 0.5}, 2, "label", "must be 0 or 1"),
    ({"text": "a", "labels": "x"}, 2, None, "a classification row in a file of pair rows"),
    ({"foo": 1}, 2, None, "wrong schema"),
    ("{not json", 2, None, "not valid JSON"),
  ],
)
def test_bad_pair_rows_name_file_line_field(tmp_path, bad, line, field, msg):
  path = _jsonl(tmp_path / "bad.jsonl", [{"left": "ok", "right": "ok", "label": 1}, bad])
  with pytest.raises(sources.DataError) as err:
    sources.file_task("bad", path)
  text = str(err.value)
  assert text.startswith(f"{path}:{line}:") and msg in text
  if field:
    assert f"field '{field}'" in text


@pytest.mark.parametrize(
  "labels,msg",
  [
    ({"a": 1}, "unknown label type dict"),
    (1.5, "unknown label type float"),
    ([], "empty label list"),
    (["x", 2], "mixes string and integer"),
    (True, "unknown label type bool"),
  ],
)
def test_bad_labels(tmp_path, labels, msg):
  path = _jsonl(tmp_path / "bad.jsonl", [{"text": "fine", "labels": "x"}, {"text": "b", "labels": labels}])
  with pytest.raises(sources.DataError, match=rf"bad.jsonl:2: field 'labels': .*{msg}"):
    sources.file_task("bad", path)


def test_bad_parquet_row_and_files(tmp_path):
  pq.write_table(pa.table({"text": ["ok", ""], "labels": ["a", "b"]}), tmp_path / "x.parquet")
  with pytest.raises(sources.DataError, match=r"x.parquet:2: field 'text': empty text"):
    sources.file_task("x", str(tmp_path / "x.parquet"))
  (tmp_path / "enc.jsonl").write_bytes(b'{"text": "ok", "labels": "a"}\n{"text": "\xff"}\n')
  with pytest.raises(sources.DataError, match=r"enc.jsonl:2: not valid UTF-8"):
    sources.file_task("e", str(tmp_path / "enc.jsonl"))
  with pytest.raises(sources.DataError, match="file not found"):
    sources.file_task("m", str(tmp_path / "missing.jsonl"))
  with pytest.raises(ValueError, match="name=path"):
    sources.parse_files("no-equals-sign")
