"""The Parquet column contract: feature matrices in and out of Arrow tables.

Every job reads its input as an Arrow table (or a batch of one) with an id
column and one feature column, and writes Parquet files in the same layout.
This module is the one place that turns such a column into a dense
``(n, d) float32`` matrix and back. It depends on numpy and pyarrow only.

Feature columns
---------------
The writer, :func:`embeddings_to_table`, always produces
``fixed_size_list<float32>[d]``: one row per sample, ``d`` values per row.
Images of shape ``(n, H, W, C)`` are stored flattened in C order, as
``(n, H * W * C)`` float32, which is what the jobs read; the image shape is
kept in the schema metadata under :data:`IMAGE_SHAPE_KEY` (see
:func:`image_shape_from_schema`).

The reader, :func:`table_to_matrix`, also accepts what other writers produce:

- ``fixed_size_list<T>[d]`` for any integer or floating ``T``;
- ``list<T>`` and ``large_list<T>`` whose rows all have the same length;
- ``binary``, ``large_binary`` and ``fixed_size_binary`` holding raw image
  bytes, one byte per pixel;
- extension types whose storage is one of the above (Arrow's
  ``fixed_shape_tensor``, Ray Data's tensor columns).

Values of type ``uint8`` (``list<uint8>`` or binary) are read as pixel bytes and
scaled to ``[0, 1]`` by dividing by 255; every other numeric type is cast to
float32 as is.

Examples
--------
>>> import numpy as np
>>> X = np.arange(6, dtype=np.float32).reshape(3, 2)
>>> table = embeddings_to_table(X, labels=[0, 1, 1])
>>> table.column_names
['id', 'embedding', 'label']
>>> table_to_matrix(table, "embedding").tolist()
[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tell.errors import TellConfigError, TellDataError

__all__ = [
    "IMAGE_SHAPE_KEY",
    "embeddings_to_table",
    "image_shape_from_schema",
    "table_to_matrix",
    "write_parquet_files",
]

#: Schema metadata key holding ``"H,W,C"`` for tables of flattened images.
IMAGE_SHAPE_KEY = b"tell.image_shape"

_MAX_LENGTHS_SHOWN = 5


# --------------------------------------------------------------------------- writing


def embeddings_to_table(
    X: np.ndarray,
    *,
    column: str = "embedding",
    ids: Sequence[int] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    id_column: str = "id",
    label_column: str = "label",
    text_column: str = "text",
) -> pa.Table:
    """Build an Arrow table with an id column and a ``fixed_size_list`` feature column.

    Parameters
    ----------
    X : np.ndarray
        Array of shape (n, d) (embeddings) or (n, H, W, C) (images), any real
        dtype; it is converted to float32. Images are stored flattened in C
        order as (n, H * W * C), and ``"H,W,C"`` is recorded in the schema
        metadata under :data:`IMAGE_SHAPE_KEY`.
    column : str, default="embedding"
        Name of the feature column, of type ``fixed_size_list<float32>[d]``.
    ids : array-like of shape (n,), optional
        Row ids, stored as int64. Defaults to ``0 .. n-1``.
    labels : array-like of shape (n,), optional
        Integer class labels, stored as int64 in ``label_column``. Omitted when None.
    texts : sequence of str of length n, optional
        Raw texts, stored as string in ``text_column``. Omitted when None.
    id_column, label_column, text_column : str
        Column names.

    Returns
    -------
    pa.Table
        Columns, in order: ``id_column`` (int64), ``column``, then ``label_column``
        and ``text_column`` when given.

    Raises
    ------
    TellDataError
        If ``X`` is not 2-D or 4-D, or ``ids``, ``labels`` or ``texts`` do not
        have one entry per row.
    TellConfigError
        If two column names are equal.
    """
    X = np.asarray(X)
    if X.ndim not in (2, 4):
        raise TellDataError(
            "X must be 2-D (n_samples, n_features) or 4-D (n_samples, H, W, C). "
            f"Got shape {X.shape}."
        )
    n = X.shape[0]
    names = [id_column, column]
    columns: list[pa.Array] = [
        _int64_column(np.arange(n) if ids is None else ids, id_column, n),
        _fixed_size_list_column(X.reshape(n, -1)),
    ]
    if labels is not None:
        names.append(label_column)
        columns.append(_int64_column(labels, label_column, n))
    if texts is not None:
        names.append(text_column)
        columns.append(_string_column(texts, text_column, n))
    if len(set(names)) != len(names):
        raise TellConfigError(f"Column names must be distinct. Got {names}.")
    metadata = None
    if X.ndim == 4:
        metadata = {IMAGE_SHAPE_KEY: ",".join(str(s) for s in X.shape[1:]).encode()}
    return pa.Table.from_arrays(columns, names=names, metadata=metadata)


def image_shape_from_schema(schema: pa.Schema) -> tuple[int, int, int] | None:
    """Return the ``(H, W, C)`` recorded by :func:`embeddings_to_table`, or None.

    Parameters
    ----------
    schema : pa.Schema
        Schema of a table (or of a Parquet file) written from images.

    Returns
    -------
    tuple of int or None
        ``(H, W, C)`` when the schema carries :data:`IMAGE_SHAPE_KEY`.
    """
    raw = (schema.metadata or {}).get(IMAGE_SHAPE_KEY)
    if raw is None:
        return None
    try:
        h, w, c = (int(part) for part in raw.decode().split(","))
    except ValueError:
        raise TellDataError(
            f"Schema metadata {IMAGE_SHAPE_KEY.decode()!r} must be 'H,W,C'. Got {raw!r}."
        ) from None
    return (h, w, c)


def _fixed_size_list_column(X2: np.ndarray) -> pa.FixedSizeListArray:
    """Wrap a 2-D array as ``fixed_size_list<float32>[d]`` (inputs are assumed validated)."""
    flat = np.ascontiguousarray(X2, dtype=np.float32).reshape(-1)  # (n * d,)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), X2.shape[1])


def _int64_column(values: Sequence[int] | np.ndarray, name: str, n: int) -> pa.Array:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise TellDataError(
            f"Column {name!r} needs one value per row ({n}). Got shape {arr.shape}."
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TellDataError(f"Column {name!r} must hold integers. Got dtype {arr.dtype}.")
    return pa.array(arr.astype(np.int64, copy=False))


def _string_column(values: Sequence[str], name: str, n: int) -> pa.Array:
    values = list(values)
    if len(values) != n:
        raise TellDataError(f"Column {name!r} needs one value per row ({n}). Got {len(values)}.")
    return pa.array(values, type=pa.string())


def write_parquet_files(
    table: pa.Table,
    out_dir: str | Path,
    n_files: int,
    *,
    prefix: str = "part",
    overwrite: bool = False,
) -> list[str]:
    """Split a table's rows into ``n_files`` local Parquet files of near-equal size.

    Files are named ``{prefix}-00000.parquet``, ``{prefix}-00001.parquet``, ...
    and hold consecutive row ranges, so reading them in name order gives back
    the table's rows in order. File sizes differ by at most one row.

    Parameters
    ----------
    table : pa.Table
        Rows to write; schema metadata is kept.
    out_dir : str or Path
        Local directory, created if missing.
    n_files : int
        Number of files, in ``[1, max(1, table.num_rows)]``.
    prefix : str, default="part"
        File name prefix.
    overwrite : bool, default=False
        When False, refuse to write if ``out_dir`` already holds
        ``{prefix}-*.parquet`` files (left over from an earlier run, a reader
        globbing the folder would mix them in). When True, delete them first.

    Returns
    -------
    list of str
        The paths written, in row order.

    Raises
    ------
    TellConfigError
        If ``n_files`` is out of range.
    TellDataError
        If ``out_dir`` holds earlier files and ``overwrite`` is False.
    """
    n_rows = table.num_rows
    if (
        isinstance(n_files, bool)
        or not isinstance(n_files, (int, np.integer))
        or not 1 <= n_files <= max(1, n_rows)
    ):
        raise TellConfigError(
            f"The 'n_files' parameter must be an int in [1, {max(1, n_rows)}] "
            f"(the table has {n_rows} rows). Got {n_files!r}."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob(f"{prefix}-*.parquet"))
    if stale and not overwrite:
        raise TellDataError(
            f"{out} already holds {len(stale)} '{prefix}-*.parquet' files "
            f"(first: {stale[0].name}). Remove them or pass overwrite=True."
        )
    for path in stale:
        path.unlink()
    bounds = np.linspace(0, n_rows, int(n_files) + 1).round().astype(np.int64)
    paths = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        path = out / f"{prefix}-{i:05d}.parquet"
        pq.write_table(table.slice(int(start), int(stop - start)), path)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- reading


def table_to_matrix(
    table_or_column: pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array,
    column: str = "embedding",
    *,
    copy: bool = False,
) -> np.ndarray:
    """Read a feature column as a dense float32 matrix.

    Parameters
    ----------
    table_or_column : pa.Table, pa.RecordBatch, pa.ChunkedArray or pa.Array
        A table (or batch) holding ``column``, or the column itself. See the
        module docstring for the accepted column types.
    column : str, default="embedding"
        Name of the feature column; for a bare column it is only used in error messages.
    copy : bool, default=False
        A single-chunk float32 ``fixed_size_list`` or ``list`` column without
        nulls is returned as a zero-copy, read-only view of the Arrow buffer.
        Pass True to always get a fresh writable array.

    Returns
    -------
    np.ndarray
        Array of shape (n_rows, d), float32, C-contiguous. uint8 and binary
        columns are scaled to [0, 1].

    Raises
    ------
    TellDataError
        If ``column`` is missing, has a non-numeric type, holds nulls, or its
        rows do not all have the same length.
    """
    arr = _select_column(table_or_column, column)
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    parts = [_array_to_matrix(chunk, column) for chunk in chunks]
    if not parts:  # a ChunkedArray with no chunks
        return np.empty((0, 0), dtype=np.float32)
    widths = {p.shape[1] for p in parts if p.shape[0] > 0}
    if len(widths) > 1:
        raise TellDataError(
            f"Column {column!r} has rows of different lengths across chunks: {sorted(widths)}. "
            "Every row must have the same number of features."
        )
    if len(parts) == 1:
        out = parts[0]
    else:
        width = widths.pop() if widths else parts[0].shape[1]
        out = np.concatenate([p.reshape(-1, width) for p in parts])
    return out.copy() if copy and not out.flags.writeable else out


def _select_column(
    data: pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array, column: str
) -> pa.ChunkedArray | pa.Array:
    if isinstance(data, (pa.ChunkedArray, pa.Array)):
        return data
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        if column not in data.column_names:
            raise TellDataError(
                f"Column {column!r} not found; columns are {data.column_names}. "
                "Pass the name of the feature column."
            )
        return data.column(column)
    raise TellDataError(
        "table_to_matrix expects a pyarrow Table, RecordBatch, ChunkedArray or Array. "
        f"Got {type(data).__name__}."
    )


def _array_to_matrix(arr: pa.Array, column: str) -> np.ndarray:
    """Convert one Arrow array to (n, d) float32 (dispatch on the Arrow type)."""
    if isinstance(arr.type, pa.BaseExtensionType):
        return _array_to_matrix(arr.storage, column)
    _reject_nulls(arr, column, "rows")
    typ = arr.type
    if pa.types.is_fixed_size_list(typ):
        return _values_to_matrix(arr.flatten(), typ.list_size, len(arr), column, arr.type)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        width = _common_length(pc.list_value_length(arr), column)
        return _values_to_matrix(arr.flatten(), width, len(arr), column, arr.type)
    if pa.types.is_fixed_size_binary(typ):
        data = _binary_bytes(arr, typ.byte_width)
        return _bytes_to_matrix(data, typ.byte_width, len(arr))
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        width = _common_length(pc.binary_length(arr), column)
        data = _binary_bytes(arr, width)
        return _bytes_to_matrix(data, width, len(arr))
    raise _non_numeric(column, typ)


def _values_to_matrix(
    values: pa.Array, width: int, n_rows: int, column: str, list_type: pa.DataType
) -> np.ndarray:
    """Reshape a list column's flat values to (n_rows, width) float32."""
    vtype = values.type
    if not (pa.types.is_integer(vtype) or pa.types.is_floating(vtype)):
        raise _non_numeric(column, list_type)
    _reject_nulls(values, column, "values")
    flat = values.to_numpy(zero_copy_only=False)  # (n_rows * width,), zero-copy when possible
    if pa.types.is_uint8(vtype):
        flat = flat.astype(np.float32) / np.float32(255.0)
    else:
        flat = flat.astype(np.float32, copy=False)
    return flat.reshape(n_rows, width)


def _binary_bytes(arr: pa.Array, width: int) -> np.ndarray:
    """Return a binary array's bytes as uint8 (n * width,); every value has ``width`` bytes."""
    n = len(arr)
    data_buf = arr.buffers()[-1]
    if data_buf is None or n == 0:
        return np.empty(0, dtype=np.uint8)
    data = np.frombuffer(data_buf, dtype=np.uint8)
    if pa.types.is_fixed_size_binary(arr.type):
        start = arr.offset * width
    else:
        offset_dtype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        start = int(np.frombuffer(arr.buffers()[1], dtype=offset_dtype)[arr.offset])
    # All values have the same length, so they are contiguous from the first offset.
    return data[start : start + n * width]


def _bytes_to_matrix(data: np.ndarray, width: int, n_rows: int) -> np.ndarray:
    return (data.astype(np.float32) / np.float32(255.0)).reshape(n_rows, width)


def _common_length(lengths: pa.Array, column: str) -> int:
    """Return the single row length of a variable-length column, or raise naming the offenders."""
    values = lengths.to_numpy(zero_copy_only=False)
    if values.size == 0:
        return 0
    distinct = np.unique(values)
    if distinct.size == 1:
        return int(distinct[0])
    first_bad = int(np.flatnonzero(values != values[0])[0])
    shown = ", ".join(str(int(v)) for v in distinct[:_MAX_LENGTHS_SHOWN])
    more = (
        f" and {distinct.size - _MAX_LENGTHS_SHOWN} more"
        if distinct.size > _MAX_LENGTHS_SHOWN
        else ""
    )
    raise TellDataError(
        f"Column {column!r} has rows of different lengths: {shown}{more} "
        f"(row 0 has {int(values[0])}, row {first_bad} has {int(values[first_bad])}). "
        "Every row must have the same number of features."
    )


def _reject_nulls(arr: pa.Array, column: str, what: str) -> None:
    if arr.null_count:
        raise TellDataError(
            f"Column {column!r} has {arr.null_count} null {what}. "
            "Drop or fill them before clustering."
        )


def _non_numeric(column: str, typ: pa.DataType) -> TellDataError:
    return TellDataError(
        f"Column {column!r} has type {typ}, which is not a numeric feature column. "
        "Expected fixed_size_list or list of integers or floats, or binary image bytes."
    )


# --------------------------------------------------------------------------- screening


class RowScreen(NamedTuple):
    """A batch split into usable and rejected rows.

    matrix : (m, d) float32, the rows that can be clustered (finite, length d), in order.
    valid : (n,) bool, which input rows those are.
    reasons : (n,) object array, None for valid rows, else why the row was rejected.
    """

    matrix: np.ndarray
    valid: np.ndarray
    reasons: np.ndarray


def screen_rows(table: pa.Table | pa.RecordBatch, column: str, dim: int) -> RowScreen:
    """Read ``column`` row by row-safe: reject nulls, wrong lengths and non-finite values.

    Unlike :func:`table_to_matrix`, bad *rows* do not raise; they are reported with a
    reason ("null", "length 3, expected 4", "non-finite value") so a job can quarantine
    them. A column of the wrong *type* still raises :class:`TellDataError`.
    """
    arr = _select_column(table, column)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if isinstance(arr.type, pa.BaseExtensionType):
        arr = arr.storage
    n = len(arr)
    reasons = np.full(n, None, dtype=object)
    typ = arr.type
    if pa.types.is_fixed_size_list(typ) or pa.types.is_fixed_size_binary(typ):
        width = typ.list_size if pa.types.is_fixed_size_list(typ) else typ.byte_width
        lengths = np.full(n, width, dtype=np.int64)
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
    elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        lengths = pc.fill_null(pc.binary_length(arr), -1).to_numpy(zero_copy_only=False)
    else:
        raise _non_numeric(column, typ)
    is_null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        vtype = typ.value_type
        if not (pa.types.is_integer(vtype) or pa.types.is_floating(vtype)):
            raise _non_numeric(column, typ)
    good_len = (lengths == dim) & ~is_null
    reasons[is_null] = "null"
    bad_len = ~is_null & (lengths != dim)
    for i in np.flatnonzero(bad_len):
        reasons[i] = f"length {int(lengths[i])}, expected {dim}"
    rows = np.flatnonzero(good_len)
    subset = arr if rows.size == n else arr.take(pa.array(rows))
    if rows.size:
        matrix = _array_to_matrix_nullsafe(subset, column, dim)
        finite = np.isfinite(matrix).all(axis=1)
    else:
        matrix = np.empty((0, dim), dtype=np.float32)
        finite = np.empty(0, dtype=bool)
    reasons[rows[~finite]] = "non-finite value"
    valid = np.zeros(n, dtype=bool)
    valid[rows[finite]] = True
    return RowScreen(np.ascontiguousarray(matrix[finite]), valid, reasons)


def _array_to_matrix_nullsafe(arr: pa.Array, column: str, dim: int) -> np.ndarray:
    """Rows of equal length ``dim`` to float32; null *values* inside a row become NaN."""
    typ = arr.type
    if (
        pa.types.is_fixed_size_binary(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        return _array_to_matrix(arr, column)
    values = arr.flatten()
    if values.null_count:
        values = pc.fill_null(pc.cast(values, pa.float32()), np.float32("nan"))
    flat = values.to_numpy(zero_copy_only=False)
    if pa.types.is_uint8(values.type):
        flat = flat.astype(np.float32) / np.float32(255.0)
    return flat.astype(np.float32, copy=False).reshape(len(arr), dim)
