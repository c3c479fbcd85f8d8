"""The one reader of what a ``tell assign`` commit holds (see :mod:`jobs.commit.writer` for
the protocol): the manifest, the files it lists, and nothing else.

Readers trust ONLY the files a unit's ``_SUCCESS`` manifest lists, never a directory
listing: :func:`committed_parts` names them, :func:`open_part` opens one (the one policy for
a listed file that is missing, damaged or unreadable), :func:`read_committed` reads them all
(``tell evaluate`` streams them instead), :func:`committed_units` tells which partitions of
an incremental run are committed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import storage
from jobs.commit.writer import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PARTITION_COLUMN,
    REASON_COLUMN,
)
from tell.errors import TellDataError, TellStorageError

_IO_THREADS = 16


class ListedPart(NamedTuple):
    """A file a manifest lists: where it is, its row count, and the value of its
    ``cluster=J/`` directory (None when the run is not partitioned by cluster; then the
    file holds the ``cluster`` column itself)."""

    loc: storage.Location
    rows: int
    cluster: int | None = None

    def with_partition_column(self, table: pa.Table) -> pa.Table:
        """``table`` (read from this file) with the ``cluster`` column its directory names
        added, as the output schema has it (int32); unchanged when not partitioned."""
        if self.cluster is None or PARTITION_COLUMN in table.column_names:
            return table
        values = pa.array(np.full(table.num_rows, self.cluster, np.int32))
        return table.append_column(PARTITION_COLUMN, values)


class PartMissing(TellDataError):
    """A file that a manifest lists does not exist (the run is damaged, or was replaced by a
    re-run while being read)."""


def read_manifest(unit: storage.Location) -> dict[str, Any] | None:
    """The unit's manifest, or None when it has no ``_SUCCESS`` (not committed)."""
    marker = unit.join(MANIFEST_FILE)
    if not storage.exists(marker):
        return None
    raw = storage.read_bytes(marker)
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TellDataError(f"{marker.uri} is not valid JSON ({exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise TellDataError(f"{marker.uri} is not a tell assignment manifest.")
    if int(manifest.get("format_version", 0)) > MANIFEST_VERSION:
        raise TellDataError(
            f"{marker.uri} has manifest version {manifest['format_version']}, newer than this "
            f"tell-ray supports ({MANIFEST_VERSION}); upgrade tell-ray."
        )
    return manifest


def committed_parts(
    unit: storage.Location, *, include_rejected: bool = False
) -> tuple[dict[str, Any], list[ListedPart]]:
    """The unit's manifest and the parts it lists (:class:`ListedPart`); assigned parts first.

    The one place where readers learn what a commit holds: ``read_committed`` and
    ``tell evaluate`` read exactly these files, never a directory listing.

    Raises
    ------
    TellDataError
        If the unit is not committed (naming committed units below it, if any), or its
        manifest lists a malformed entry or a path that would leave the unit.
    """
    manifest = read_manifest(unit)
    if manifest is None:
        below = _committed_units_below(unit)
        hint = f" Committed runs below it: {below}." if below else ""
        raise TellDataError(
            f"{unit.uri} is not a committed assignment: it has no {MANIFEST_FILE} manifest "
            "(the run has not finished, or failed). Pass a run directory written by "
            f"'tell assign' (<out>/<run_id>), or re-run 'tell assign' with this run id.{hint}"
        )
    listed = list(manifest.get("files", []))
    if include_rejected:
        listed += list(manifest.get("rejected_files", []))
    return manifest, [_listed_part(unit, entry) for entry in listed]


def _listed_part(unit: storage.Location, entry: Any) -> ListedPart:
    """A manifest entry {"path": relative path, "rows": n[, "cluster": J]} as a ListedPart
    inside the unit."""
    manifest_uri = unit.join(MANIFEST_FILE).uri
    path = entry.get("path") if isinstance(entry, dict) else None
    rows = entry.get("rows") if isinstance(entry, dict) else None
    cluster = entry.get(PARTITION_COLUMN) if isinstance(entry, dict) else None
    if (
        not isinstance(path, str)
        or not isinstance(rows, int)
        or rows < 0
        or not (cluster is None or isinstance(cluster, int))
    ):
        raise TellDataError(
            f"{manifest_uri} lists a malformed file entry {entry!r}; the run is damaged: "
            "re-run the assignment."
        )
    try:
        return ListedPart(unit.join(path), rows, cluster)
    except TellStorageError:
        raise TellDataError(
            f"{manifest_uri} lists {path!r}, an unsafe path outside the run; refusing to read it."
        ) from None


def _committed_units_below(loc: storage.Location, limit: int = 5) -> list[str]:
    """Up to ``limit`` child directories of ``loc`` that hold a manifest (for error hints)."""
    if not storage.exists(loc):
        return []
    with storage.storage_errors(loc, "listing"):
        children = loc.filesystem.get_file_info(pafs.FileSelector(loc.path))
    dirs = sorted(c.base_name for c in children if c.type == pafs.FileType.Directory)[:50]
    return [loc.join(d).uri for d in dirs if storage.exists(loc.join(d, MANIFEST_FILE))][:limit]


def read_committed(
    uri: str | storage.Location,
    *,
    include_rejected: bool = False,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read exactly the files a unit's manifest lists (see :func:`committed_parts`).

    Parameters
    ----------
    uri : the unit (``<out>/<run_id>``, or ``<out>/<run_id>/dt=...`` in incremental mode).
    include_rejected : also return the rejected rows: then every row has a ``reason``
        (null for assigned rows) and rejected rows have null ``cluster``/``distance``/...
    columns : read only these columns (those missing from a file are null-filled).

    Raises
    ------
    TellDataError
        If the unit is not committed, or its files disagree with the manifest.
    """
    unit = uri if isinstance(uri, storage.Location) else storage.resolve(uri)
    for attempt_no in range(2):
        manifest, parts = committed_parts(unit, include_rejected=include_rejected)
        try:
            tables = [_read_part(unit, part, columns) for part in parts]
        except PartMissing:
            if attempt_no == 0 and (read_manifest(unit) or {}).get("attempt") != manifest.get(
                "attempt"
            ):
                continue  # replaced by a re-run while reading: read the new commit
            raise TellDataError(
                f"A file listed in {unit.join(MANIFEST_FILE).uri} is missing; the run is "
                "damaged: re-run the assignment."
            ) from None
        break
    if not tables:
        return pa.table({name: pa.array([], pa.null()) for name in (columns or [])})
    table = pa.concat_tables(tables, promote_options="default")
    if columns is None and manifest.get("partition_by"):  # cluster was appended: put it back
        first = [c for c in manifest.get("columns", []) if c in table.column_names]
        table = table.select(first + [c for c in table.column_names if c not in first])
    if include_rejected and REASON_COLUMN not in table.column_names:
        table = table.append_column(REASON_COLUMN, pa.nulls(table.num_rows, pa.string()))
    return table


@contextlib.contextmanager
def open_part(unit: storage.Location, loc: storage.Location, rows: int) -> Iterator[pq.ParquetFile]:
    """Open a file that the manifest of ``unit`` lists with ``rows`` rows.

    THE policy for a listed file: storage failures become one-line TellStorageErrors; a
    missing file raises :class:`PartMissing`, a file that is not Parquet or whose footer
    disagrees with the manifest a TellDataError: the run is damaged.
    """
    with storage.storage_errors(loc, "reading"):
        try:
            with loc.filesystem.open_input_file(loc.path) as f:
                pf = pq.ParquetFile(f)
                if pf.metadata.num_rows != rows:
                    raise TellDataError(
                        f"{loc.uri} holds {pf.metadata.num_rows} rows but the manifest of "
                        f"{unit.uri} records {rows}; the run is damaged: re-run the assignment."
                    )
                yield pf
        except FileNotFoundError:
            raise PartMissing(
                f"{loc.uri} is listed in its run's manifest but does not exist; the run is "
                "damaged: re-run the assignment."
            ) from None
        except pa.ArrowInvalid as exc:
            raise TellDataError(f"{loc.uri} is not a valid Parquet file ({exc}).") from None


def _read_part(unit: storage.Location, part: ListedPart, columns: Sequence[str] | None) -> pa.Table:
    with open_part(unit, part.loc, part.rows) as pf:
        present = pf.schema_arrow.names
        wanted = None if columns is None else [c for c in columns if c in present]
        table = pf.read(columns=wanted)
    if columns is None or PARTITION_COLUMN in columns:
        table = part.with_partition_column(table)
    if columns is not None:
        for name in columns:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows))
        table = table.select(list(columns))
    return table


def committed_units(run: storage.Location, units: Sequence[str]) -> dict[str, dict | None]:
    """``{unit: manifest or None}`` for each partition unit below ``run`` (in parallel)."""
    if not units:
        return {}
    with ThreadPoolExecutor(min(_IO_THREADS, len(units))) as pool:
        manifests = pool.map(lambda u: read_manifest(run.join(u)), units)
        return dict(zip(units, manifests, strict=True))
