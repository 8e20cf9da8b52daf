"""The one place that decides how embeddings are stored in Parquet: schema, metadata, precision, Matryoshka width.

The local batch job and the Beam pipeline both write through ``output_schema`` + ``to_table`` and read back through
``decode``, so every output of either says the same thing the same way. Precisions:

- ``float32`` (default) and ``float16``: ``embedding`` is a fixed-size list of that float type.
- ``int8``: symmetric per-vector scale, ``embedding`` = round(127 * x / max|x|) as int8 and a float32 column ``scale``
  = max|x| / 127, so ``embedding * scale`` is within ``scale / 2`` of x per component. Per vector rather than one
  global scale: a unit vector of 384 dimensions has components near 0.05, so a global step of 1/127 would waste
  most of the int8 range; and a per-vector scale needs no pass over the data first, so each part file is final
  on its own.
- ``binary``: the sign bits (x > 0) packed with ``np.packbits`` into ``ceil(width / 8)`` bytes (fixed-size binary);
  ``decode`` gives +-1 per dimension, whose cosine is 1 - 2 * Hamming / width.

Metadata: ``model``, ``dim`` (the model's width) and ``max_length`` always; ``precision`` when not float32;
``width`` when the vectors keep only the first ``width`` of ``dim`` dimensions, renormalised (an export trained with
Matryoshka widths, ``config.matryoshka_dims``); ``scale_column`` for int8.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from postembed_jax.models import hf_io

PRECISIONS = ("float32", "float16", "int8", "binary")
DEFAULT_PRECISION = "float32"
SCALE_COLUMN = "scale"


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"config.precision={precision!r} is not one of {', '.join(PRECISIONS)}.")
  return precision


def supported_widths(model_name: str) -> tuple[int, ...] | None:
  """The Matryoshka widths an export was trained with (its postembed.json; full width included); None when the
  model was not trained with nested widths (a plain checkpoint, or an export without ``matryoshka_dims``)."""
  meta = hf_io.resolve_model_dir(model_name) / hf_io.EXPORT_META
  widths = json.loads(meta.read_text()).get("matryoshka_widths") if meta.exists() else None
  return tuple(widths) if widths else None


def check_width(width: int | None, dim: int, model_name: str) -> int:
  """``config.dim`` -> the width to keep (``dim`` for None). A smaller width must be one the export was trained
  at: the first N dimensions of any other model are not an embedding of their own."""
  if width is None or width == dim:
    return dim
  widths = supported_widths(model_name)
  if not widths:
    raise ValueError(
      f"config.dim={width}: {model_name} was not trained with Matryoshka widths (no matryoshka_widths in its "
      f"{hf_io.EXPORT_META}); only its full width {dim} is available."
    )
  if width not in widths:
    raise ValueError(f"config.dim={width}: {model_name} was trained at widths {', '.join(map(str, widths))}.")
  return width


def truncate(vectors: np.ndarray, width: int) -> np.ndarray:
  """The first ``width`` dimensions, L2-renormalised (rows of zeros stay zeros): how a Matryoshka prefix is read."""
  kept = np.asarray(vectors, np.float32)[:, :width]
  norms = np.linalg.norm(kept, axis=1, keepdims=True)
  return kept / np.where(norms > 0, norms, 1.0)


def output_schema(
  model_name: str, dim: int, max_length: int, precision: str = DEFAULT_PRECISION, width: int | None = None
) -> pa.Schema:
  """Columns ``id`` (string), ``embedding`` (and ``scale`` for int8) with the module docstring's metadata."""
  check_precision(precision)
  width = width or dim
  metadata = {"model": model_name, "dim": str(dim), "max_length": str(max_length)}
  if precision != DEFAULT_PRECISION:
    metadata["precision"] = precision
  if width != dim:
    metadata["width"] = str(width)
  fields = [("id", pa.string()), ("embedding", _embedding_type(precision, width))]
  if precision == "int8":
    metadata["scale_column"] = SCALE_COLUMN
    fields.append((SCALE_COLUMN, pa.float32()))
  return pa.schema(fields, metadata=metadata)


def _embedding_type(precision: str, width: int) -> pa.DataType:
  if precision == "binary":
    return pa.binary((width + 7) // 8)
  return pa.list_({"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8()}[precision], width)


def encode(vectors: np.ndarray, precision: str) -> dict[str, pa.Array]:
  """[n, width] float vectors -> the columns besides ``id`` (``embedding``, plus ``scale`` for int8)."""
  vectors = np.asarray(vectors, np.float32)
  n, width = vectors.shape
  if check_precision(precision) == "binary":
    packed = np.packbits(vectors > 0, axis=1)
    return {"embedding": pa.Array.from_buffers(pa.binary(packed.shape[1]), n, [None, pa.py_buffer(packed.tobytes())])}
  if precision == "int8":
    scale = np.abs(vectors).max(axis=1, initial=0.0) / 127
    q = np.rint(vectors / np.where(scale > 0, scale, 1.0)[:, None]).astype(np.int8)
    return {
      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(q.reshape(-1)), width),
      SCALE_COLUMN: pa.array(scale.astype(np.float32)),
    }
  values = vectors.astype(np.float16 if precision == "float16" else np.float32).reshape(-1)
  return {"embedding": pa.FixedSizeListArray.from_arrays(pa.array(values), width)}


def to_table(ids: Sequence, vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
  """One batch of (id, full-width vector) as rows of ``schema``: truncated to its width, encoded to its precision."""
  meta = schema.metadata
  width = int(meta.get(b"width", meta[b"dim"]))
  vectors = np.asarray(vectors, np.float32)
  if width != vectors.shape[1]:
    vectors = truncate(vectors, width)
  columns = encode(vectors, meta.get(b"precision", DEFAULT_PRECISION.encode()).decode())
  return pa.table({"id": pa.array([str(i) for i in ids], pa.string()), **columns}, schema=schema)


def decode(table: pa.Table) -> np.ndarray:
  """Rows written by ``to_table`` -> [n, width] float32 (+-1 per dimension for binary, ``q * scale`` for int8)."""
  meta = table.schema.metadata
  width = int(meta.get(b"width", meta[b"dim"]))
  precision = meta.get(b"precision", DEFAULT_PRECISION.encode()).decode()
  column = table.column("embedding").combine_chunks()
  if precision == "binary":
    packed = np.frombuffer(column.buffers()[1], np.uint8)[
      column.offset * column.type.byte_width : (column.offset + len(column)) * column.type.byte_width
    ]
    bits = np.unpackbits(packed.reshape(len(column), -1), axis=1, count=width)
    return np.where(bits, 1.0, -1.0).astype(np.float32)
  values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width).astype(np.float32)
  if precision == "int8":
    values *= table.column(SCALE_COLUMN).to_numpy()[:, None]
  return values
