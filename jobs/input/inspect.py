"""The input set: every job opens its Parquet input here, once, before any Ray work.

:func:`open_input` is the one owner of a job's input. It preflights the location (one
request), lists the Parquet files (one listing, recursive: hive partitions such as
``dt=2026-11-28/`` are part of the input), reads every footer (once, in parallel) and
refuses, with one clear line, data that cannot work: no files, a corrupt file, a missing
column, a non-numeric feature column, feature widths that differ across files, no rows.
The :class:`InputSet` it returns carries what the footers said, so later steps (the width
check against a model, the partitions of a run, the explain sample) never list or read a
footer again. It is :func:`list_input` (the preflight and the listing, an
:class:`InputFiles`) followed by :meth:`InputFiles.open` (the footers): an incremental
assignment opens only the partitions it has not committed yet.

Each input check has one home here: the Parquet-open error policy
(:func:`parquet_read_errors`), the numeric-column screening (:func:`check_feature_type`)
and the width check against a model (:meth:`InputSet.require_width`). Row-level problems
(NaN, a wrong length in a list column) are found while streaming, by
:func:`tell.io.screen_rows`.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage
from tell.errors import TellConfigError, TellDataError, TellError, TellStorageError
from tell.io import image_shape_from_schema, screen_rows

_FOOTER_THREADS = 16
_PARTITION_SEGMENT = re.compile(r"^[^=/_.][^=/]*=[^/]*$")


class Footer(NamedTuple):
    """What one file's footer says: its path (for the input's filesystem), rows, the rows of
    each row group, and its Arrow schema."""

    path: str
    num_rows: int
    row_group_rows: tuple[int, ...]
    schema: pa.Schema


@dataclass(frozen=True)
class InputSet:
    """An input data set as its footers describe it, checked (see :func:`open_input`).

    uri : the URI as the user gave it (a partition's: the root's URI joined with its path).
    location : the resolved root; its filesystem reads every file.
    column : the feature column, or None for an input read for other columns only.
    column_type : Arrow type of the feature column (None without a column).
    dim : values per row when the type fixes it (fixed_size_list/binary), else the length
        of the first rows (list columns are checked row by row while streaming); 0 without
        a column.
    image_shape : (H, W, C) from the schema metadata written by tell.io, or None.
    footers : one :class:`Footer` per file, in path order.
    """

    uri: str
    location: storage.Location
    column: str | None
    column_type: pa.DataType | None
    dim: int
    image_shape: tuple[int, int, int] | None
    footers: tuple[Footer, ...]

    @property
    def files(self) -> list[str]:
        """Paths of the Parquet files, for ``location.filesystem``."""
        return [f.path for f in self.footers]

    @property
    def num_rows(self) -> int:
        """Total rows, from the footers."""
        return sum(f.num_rows for f in self.footers)

    @property
    def columns(self) -> list[str]:
        """Column names of the first file."""
        return list(self.footers[0].schema.names)

    def file_uris(self) -> list[str]:
        """The files as URIs (``s3://bucket/key`` on S3), as manifests record them."""
        return [f"s3://{p}" if self.location.is_s3 else p for p in self.files]

    def require_width(self, width: int, model_uri: str) -> None:
        """Refuse a feature column whose width differs from the model's input width."""
        if self.dim != width:
            raise TellDataError(
                f"Column {self.column!r} of {self.uri} has {self.dim} values per row, but model "
                f"{model_uri} expects {width} (the width it was trained on). Pass the feature "
                "column the model was trained on (--column), or a matching model."
            )

    def partitions(self) -> dict[str, InputSet]:
        """The input grouped by directory below its root, from the footers already read.

        Returns ``{relative dir: InputSet of its files}`` in sorted order; ``""`` holds the
        files directly under the root. Each part is checked like a whole input (rows, width).
        """
        by_path = {f.path: f for f in self.footers}
        groups = _group(self.location, list(by_path))
        if list(groups) == [""]:
            return {"": self}
        return {
            unit: _input_set(
                self.location.join(unit).uri if unit else self.uri,
                self.location.join(unit) if unit else self.location,
                [by_path[p] for p in paths],
                self.column,
            )
            for unit, paths in groups.items()
        }


@dataclass(frozen=True)
class InputFiles:
    """The Parquet files of an input, listed (after the preflight), footers not read yet.

    uri : the URI as the user gave it; location : the resolved root; paths : the files, for
    ``location.filesystem``, sorted.
    """

    uri: str
    location: storage.Location
    paths: list[str]

    def uris(self, paths: Sequence[str]) -> list[str]:
        """``paths`` as URIs (``s3://bucket/key`` on S3), as manifests record them."""
        return [f"s3://{p}" if self.location.is_s3 else p for p in paths]

    def partitions(self, *, hive: bool = False) -> dict[str, list[str]]:
        """``{relative dir: its files}`` in sorted order (``""``: the files under the root).

        hive : refuse (TellConfigError) any file outside ``key=value`` directories, as
            incremental assignment needs.
        """
        groups = _group(self.location, self.paths)
        if hive:
            _check_hive(self.uri, groups)
        return groups

    def open(
        self, column: str | None, required: Sequence[str] = (), paths: Sequence[str] | None = None
    ) -> InputSet:
        """Read the footers of ``paths`` (default: every file) once and check them; see
        :func:`open_input`."""
        paths = self.paths if paths is None else list(paths)
        with ThreadPoolExecutor(max(1, min(_FOOTER_THREADS, len(paths)))) as pool:
            footers = tuple(pool.map(lambda p: _footer(self.location, p), paths))
        return _input_set(self.uri, self.location, footers, column, required)


def list_input(uri: str) -> InputFiles:
    """Preflight ``uri`` (one request) and list its Parquet files (one listing, recursive).

    Raises
    ------
    TellStorageError
        If the location is unreachable, missing or unreadable.
    TellDataError
        If it holds no Parquet files.
    """
    loc = storage.resolve(uri)
    storage.check_access(loc, write=False)
    paths = storage.list_files(loc, suffix=".parquet", recursive=True)
    if not paths:
        raise TellDataError(f"No Parquet files under {uri}.")
    return InputFiles(uri, loc, paths)


def open_input(uri: str, column: str | None, required: Sequence[str] = ()) -> InputSet:
    """Open the Parquet input at ``uri``: one preflight, one listing, every footer once.

    column : the feature column (its type must be numeric, its width the same in every
        file); None to check only the files and the ``required`` columns.
    required : other columns every file must have (id columns, a label column).

    Raises
    ------
    TellStorageError
        If the location is unreachable, missing or unreadable.
    TellDataError
        If there are no Parquet files or no rows, a file is not valid Parquet, a column is
        missing, or the feature column is not numeric or differs in width across files.
    """
    return list_input(uri).open(column, required)


def _input_set(
    uri: str,
    loc: storage.Location,
    footers: Sequence[Footer],
    column: str | None,
    required: Sequence[str] = (),
) -> InputSet:
    """Check the footers of one input (or partition) and describe it."""
    widths: dict[int | None, tuple[str, pa.DataType]] = {}
    for footer in footers:
        names = footer.schema.names
        for name in (*([column] if column else []), *required):
            if name not in names:
                raise TellDataError(
                    f"Column {name!r} not found in {footer.path}; columns are {names}."
                )
        if column:
            column_type = footer.schema.field(column).type
            check_feature_type(column, column_type)  # every file: fixed widths are never
            # every file: fixed widths are never screened otherwise
            widths.setdefault(_fixed_width(column_type), (footer.path, column_type))
    if None in widths and len(widths) > 1:  # a variable-length list beside fixed widths
        (f1, t1), (f2, t2) = widths[None], next(v for w, v in widths.items() if w is not None)
        raise TellDataError(
            f"Column {column!r} is {t1} (variable length) in {f1} but {t2} (fixed width) in "
            f"{f2}; every file must store the feature column with the same type. Rewrite "
            "the files with one type (e.g. fixed_size_list<float>[D])."
        )
    if len(widths) > 1:
        (w1, (f1, _)), (w2, (f2, _)) = list(widths.items())[:2]
        raise TellDataError(
            f"Column {column!r} has {w1} values per row in {f1} but {w2} in {f2}; "
            "every file must have the same feature width."
        )
    num_rows = sum(f.num_rows for f in footers)
    if num_rows == 0:
        raise TellDataError(f"The data set at {uri} has no rows ({len(footers)} file(s)).")
    schema = footers[0].schema
    column_type = schema.field(column).type if column else None
    dim = 0
    if column:
        dim = _fixed_width(column_type) or _first_row_width(loc, footers, column)
    return InputSet(
        uri=uri,
        location=loc,
        column=column,
        column_type=column_type,
        dim=dim,
        image_shape=image_shape_from_schema(schema),
        footers=tuple(footers),
    )


def row_group_runs(row_group_rows: Sequence[int], target: int) -> Iterator[tuple[list[int], int]]:
    """Consecutive non-empty row groups in runs of about ``target`` rows: (indices, rows)."""
    groups: list[int] = []
    rows = 0
    for index, n in enumerate(row_group_rows):
        if n == 0:
            continue
        groups.append(index)
        rows += n
        if rows >= target:
            yield groups, rows
            groups, rows = [], 0
    if groups:
        yield groups, rows


# ------------------------------------------------------------------ the checks


@contextlib.contextmanager
def parquet_read_errors(loc: storage.Location, path: str) -> Iterator[None]:
    """THE policy for a failed read of input file ``path``: one line, a storage error on S3,
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


@contextlib.contextmanager
def open_parquet(loc: storage.Location, path: str) -> Iterator[pq.ParquetFile]:
    """Open input file ``path`` (on ``loc.filesystem``) under :func:`parquet_read_errors`."""
    with parquet_read_errors(loc, path), loc.filesystem.open_input_file(path) as f:
        yield pq.ParquetFile(f)


def check_feature_type(column: str, column_type: pa.DataType) -> None:
    """Refuse a feature column type that is not numeric (from the type alone: an empty
    column of it is screened). Extension types are judged by their storage type."""
    if isinstance(column_type, pa.BaseExtensionType):
        column_type = column_type.storage_type
    screen_rows(pa.table({column: pa.array([], column_type)}), column, 1)


def _footer(loc: storage.Location, path: str) -> Footer:
    with open_parquet(loc, path) as pf:
        md = pf.metadata
        return Footer(
            path,
            md.num_rows,
            tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)),
            pf.schema_arrow,
        )


def _fixed_width(typ: pa.DataType | None) -> int | None:
    if isinstance(typ, pa.BaseExtensionType):
        typ = typ.storage_type
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    if pa.types.is_fixed_size_binary(typ):
        return typ.byte_width
    return None


def _first_row_width(loc: storage.Location, footers: Sequence[Footer], column: str) -> int:
    """The most common length among the first rows of a variable-length column."""
    for footer in footers:
        if footer.num_rows == 0:
            continue
        with open_parquet(loc, footer.path) as pf:
            table = pf.read_row_group(0, columns=[column])
        arr = table.column(column).combine_chunks()
        lengths = [len(v) for v in arr.to_pylist()[:100] if v is not None]
        if lengths:
            return int(np.bincount(lengths).argmax())
    raise TellDataError(f"Column {column!r} holds only nulls in the first row groups.")


def _group(root: storage.Location, paths: Sequence[str]) -> dict[str, list[str]]:
    """Files grouped by their directory below ``root``, in sorted order."""
    base = root.path.rstrip("/") + "/"
    groups: dict[str, list[str]] = {}
    for path in paths:
        rel = path[len(base) :] if path.startswith(base) else posixpath.basename(path)
        groups.setdefault(posixpath.dirname(rel), []).append(path)
    return dict(sorted(groups.items()))


def _check_hive(data_uri: str, groups: dict[str, list[str]]) -> None:
    """Incremental mode needs every file inside hive partition directories (``key=value``)."""
    for unit in groups:
        segments = unit.split("/") if unit else []
        if not segments or not all(_PARTITION_SEGMENT.match(s) for s in segments):
            where = f"{data_uri}/{unit}" if unit else data_uri
            example = groups[unit][0]
            raise TellConfigError(
                f"Incremental mode needs hive-partitioned input (directories like "
                f"dt=2026-11-28/ under {data_uri}); found {example} in {where}. Move the files "
                "into key=value directories, or run without --incremental."
            )
