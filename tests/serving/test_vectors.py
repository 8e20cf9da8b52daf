"""Stored vector formats: each precision survives a Parquet round trip within its rounding, widths are checked
against the export, and the schema metadata says what a reader needs."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from postembed_jax.serving import vectors


@pytest.fixture(scope="module")
def unit_vectors():
  x = np.random.default_rng(0).normal(size=(50, 40)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _round_trip(tmp_path, x, precision, width=None):
  schema = vectors.output_schema("m", x.shape[1], 128, precision, width)
  path = tmp_path / f"{precision}.parquet"
  pq.write_table(vectors.to_table([f"p{i}" for i in range(len(x))], x, schema), path)
  table = pq.read_table(path)
  assert table.column("id").to_pylist() == [f"p{i}" for i in range(len(x))]
  return table, vectors.decode(table)


def test_float_precisions_round_trip(tmp_path, unit_vectors):
  _, f32 = _round_trip(tmp_path, unit_vectors, "float32")
  np.testing.assert_array_equal(f32, unit_vectors)
  _, f16 = _round_trip(tmp_path, unit_vectors, "float16")
  np.testing.assert_allclose(f16, unit_vectors, atol=2**-11, rtol=0)
  assert not np.array_equal(f16, unit_vectors)  # really stored as half floats


def test_int8_error_is_within_half_a_step_of_the_per_vector_scale(tmp_path, unit_vectors):
  table, decoded = _round_trip(tmp_path, unit_vectors, "int8")
  scale = table.column("scale").to_numpy()
  np.testing.assert_allclose(scale, np.abs(unit_vectors).max(axis=1) / 127, rtol=1e-6)
  assert np.all(np.abs(decoded - unit_vectors) <= scale[:, None] / 2 + 1e-7)
  stored = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
  assert stored.dtype == np.int8 and np.abs(stored).max(axis=1).tolist() == [127] * len(stored)


def test_binary_is_the_sign_packed_into_bits(tmp_path, unit_vectors):
  table, decoded = _round_trip(tmp_path, unit_vectors[:, :37], "binary")  # 37 bits: a partial last byte
  assert table.schema.field("embedding").type.byte_width == 5
  np.testing.assert_array_equal(decoded, np.where(unit_vectors[:, :37] > 0, 1.0, -1.0))
  # A slice starts at an offset into the packed buffer: still the right rows.
  np.testing.assert_array_equal(vectors.decode(table.slice(7, 3)), decoded[7:10])


def test_metadata_is_todays_plus_precision_and_width_when_not_default():
  assert vectors.output_schema("m", 40, 128).metadata == {b"model": b"m", b"dim": b"40", b"max_length": b"128"}
  meta = vectors.output_schema("m", 40, 128, "int8", 16).metadata
  assert meta[b"precision"] == b"int8" and meta[b"width"] == b"16" and meta[b"scale_column"] == b"scale"
  assert vectors.output_schema("m", 40, 128, "float32", 40).metadata.get(b"width") is None


def test_width_truncates_and_renormalises(tmp_path, unit_vectors):
  _, decoded = _round_trip(tmp_path, unit_vectors, "float32", width=16)
  assert decoded.shape == (50, 16)
  np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-6)
  prefix = unit_vectors[:, :16]
  np.testing.assert_allclose(decoded, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-7)


def test_unknown_precision_is_named():
  with pytest.raises(ValueError, match=r"config.precision='int4' is not one of float32, float16, int8, binary"):
    vectors.check_precision("int4")


def test_widths_are_those_the_export_was_trained_at(matryoshka_export, tiny_model_dir):
  assert vectors.supported_widths(matryoshka_export) == (8, 16, 32)
  assert vectors.check_width(16, 32, matryoshka_export) == 16
  assert vectors.check_width(None, 32, matryoshka_export) == vectors.check_width(32, 32, matryoshka_export) == 32
  with pytest.raises(ValueError, match=r"config.dim=12: .* was trained at widths 8, 16, 32\."):
    vectors.check_width(12, 32, matryoshka_export)
  assert vectors.supported_widths(str(tiny_model_dir)) is None
  with pytest.raises(ValueError, match=r"config.dim=16: .* not trained with Matryoshka widths.*full width 32"):
    vectors.check_width(16, 32, str(tiny_model_dir))
  assert vectors.check_width(32, 32, str(tiny_model_dir)) == 32
