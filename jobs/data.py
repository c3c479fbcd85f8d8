"""Input data: inspect Parquet footers up front, then stream with Ray Data.

``inspect_input`` runs on the driver before any worker starts: it lists the files, reads
every footer (in parallel) and refuses, with one clear line, data that cannot work: no
files, a corrupt file, a missing or non-numeric column, feature widths that differ across
files, no rows. Row-level problems (NaN, wrong length in a list column) are found while
streaming, by :func:`tell.io.screen_rows`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage
from tell.errors import TellDataError, TellError, TellStorageError
from tell.io import image_shape_from_schema, screen_rows

_FOOTER_THREADS = 16


@dataclass(frozen=True)
class InputInfo:
    """What the driver knows about an input data set before reading its rows.

    files : paths of the Parquet files, for ``location.filesystem``.
    column_type : Arrow type of the feature column.
    dim : values per row when the type fixes it (fixed_size_list/binary), else the length
        of the first row (list columns are checked row by row while streaming).
    num_rows : total rows, from the footers.
    image_shape : (H, W, C) from the schema metadata written by tell.io, or None.
    """

    uri: str
    location: storage.Location
    files: list[str]
    column: str
    column_type: pa.DataType
    dim: int
    num_rows: int
    columns: list[str]
    image_shape: tuple[int, int, int] | None


@contextlib.contextmanager
def parquet_read_errors(loc: storage.Location, path: str) -> Iterator[None]:
    """A failed read of Parquet file ``path`` becomes one line: a storage error on S3,
    else "not a valid Parquet file" (pyarrow reports corrupt files as OSError too)."""
    try:
        yield
    except TellError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and loc.is_s3:
            raise TellStorageError(f"Cannot read {path} from {loc.uri}: {message}") from None
        raise TellDataError(f"{path} is not a valid Parquet file ({message}).") from None


def _footer(loc: storage.Location, path: str) -> pq.FileMetaData:
    with parquet_read_errors(loc, path), loc.filesystem.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata


def _fixed_width(typ: pa.DataType) -> int | None:
    if isinstance(typ, pa.BaseExtensionType):
        typ = typ.storage_type
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    if pa.types.is_fixed_size_binary(typ):
        return typ.byte_width
    return None


def inspect_input(uri: str, column: str, required: Sequence[str] = ()) -> InputInfo:
    """Check that ``uri`` holds Parquet rows with a usable ``column`` (and ``required`` ones)."""
    loc = storage.resolve(uri)
    storage.check_access(loc, write=False)
    files = storage.list_files(loc, suffix=".parquet", recursive=True)
    if not files:
        raise TellDataError(f"No Parquet files under {uri}.")
    with ThreadPoolExecutor(min(_FOOTER_THREADS, len(files))) as pool:
        footers = list(pool.map(lambda p: _footer(loc, p), files))
    schema = footers[0].schema.to_arrow_schema()
    widths: dict[int | None, str] = {}
    for path, footer in zip(files, footers, strict=True):
        file_schema = footer.schema.to_arrow_schema()
        for name in (column, *required):
            if name not in file_schema.names:
                raise TellDataError(
                    f"Column {name!r} not found in {path}; columns are {file_schema.names}."
                )
        column_type = file_schema.field(column).type
        # Type check from the schema alone (an empty column of this type), for every file:
        # fixed-width columns are never screened on the driver otherwise.
        screen_rows(pa.table({column: pa.array([], column_type)}), column, 1)
        widths.setdefault(_fixed_width(column_type), path)
    if len(widths) > 1:
        (w1, f1), (w2, f2) = list(widths.items())[:2]
        raise TellDataError(
            f"Column {column!r} has {w1} values per row in {f1} but {w2} in {f2}; "
            "every file must have the same feature width."
        )
    num_rows = sum(f.num_rows for f in footers)
    if num_rows == 0:
        raise TellDataError(f"The data set at {uri} has no rows ({len(files)} file(s)).")
    column_type = schema.field(column).type
    dim = _fixed_width(column_type)
    if dim is None:
        dim = _first_row_width(loc, files, footers, column)
    return InputInfo(
        uri=uri,
        location=loc,
        files=files,
        column=column,
        column_type=column_type,
        dim=dim,
        num_rows=num_rows,
        columns=schema.names,
        image_shape=image_shape_from_schema(schema),
    )


def _first_row_width(
    loc: storage.Location, files: list[str], footers: list[pq.FileMetaData], column: str
) -> int:
    """Length of the first non-null row of a variable-length column (and a type check)."""
    for path, footer in zip(files, footers, strict=True):
        if footer.num_rows == 0:
            continue
        with loc.filesystem.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(0, columns=[column])
        arr = table.column(column).combine_chunks()
        screen_rows(table.slice(0, 1), column, 1)  # raises on a non-numeric type
        lengths = [len(v) for v in arr.to_pylist()[:100] if v is not None]
        if lengths:
            return int(np.bincount(lengths).argmax())
    raise TellDataError(f"Column {column!r} holds only nulls in the first row groups.")


def read_dataset(info: InputInfo, columns: Sequence[str]):  # -> ray.data.Dataset
    """A lazy, streaming Ray Dataset over the inspected files, reading only ``columns``."""
    import ray.data

    dataset = ray.data.read_parquet(
        info.files, filesystem=info.location.filesystem, file_extensions=["parquet"]
    )
    return dataset.select_columns(list(columns))  # projected into the read by Ray's optimizer


class FeatureBatches:
    """``map_batches`` callable: an Arrow batch -> {"x": (B, d) float32} of valid rows.

    Raises TellDataError on a bad row: training refuses data with bad rows (the scan pass
    reports them before any worker starts; this guards against data changing mid-run).
    """

    def __init__(self, column: str, dim: int) -> None:
        self.column, self.dim = column, dim

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        screen = screen_rows(batch, self.column, self.dim)
        if not screen.valid.all():
            first = int(np.flatnonzero(~screen.valid)[0])
            raise TellDataError(
                f"Column {self.column!r} has an unusable row ({screen.reasons[first]})."
            )
        return {"x": screen.matrix}
