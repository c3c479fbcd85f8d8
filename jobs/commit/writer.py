"""Exactly-once output for ``tell assign``: staged parts, promoted into the run, then a
``_SUCCESS`` manifest written last.

Nothing here imports Ray: the protocol is plain storage operations on a
:class:`jobs.storage.Location`, so the unit tests drive it on local directories. This module
writes a commit; :mod:`jobs.commit.reader` is the one reader of what a commit holds.

Layout of one committed unit (a run, or one input partition of an incremental run)::

    <out>/<run_id>/                            the unit (incremental: <out>/<run_id>/dt=.../)
        _SUCCESS                               the manifest (JSON), written LAST
        part-*.parquet                         assigned rows (--partition-by cluster:
                                               cluster=<J>/part-*.parquet, no cluster column)
        _rejected/part-*.parquet.rejected      rows that could not be assigned + reason
        _staging/<attempt>/...*.staged         the same tree, while an attempt writes it
        _delta_log/                            --table-format delta only (at the run's top):
                                               the Delta Lake log (:mod:`jobs.commit.delta`)

So a plain Parquet reader pointed at ``<out>/<run_id>/`` (pyarrow.dataset, pandas, Ray
Data, Spark; DuckDB with ``*.parquet`` or ``cluster=*/*.parquet``) reads exactly the
committed assigned rows: it skips ``_``-prefixed names (``_SUCCESS``, ``_rejected``,
``_staging``), nothing but committed parts is ever left outside them, and no other file
ends in ``.parquet`` (Ray Data skips ``_`` names only at the top of the path it reads, so
an incremental run read from its root relies on the suffix).

Protocol
--------
1. Every attempt (every execution of ``tell assign`` for the unit) writes into a fresh
   ``_staging/<attempt>/`` prefix (a new UUID), never next to anything else. Each write task
   streams its rows into files with unique names and *returns* the relative paths and row
   counts it wrote. Files of a failed or retried write task are never returned, so they can
   lie in the prefix without ever being referenced.
2. :func:`commit` reads the footer of every returned file (row counts come from the files,
   not from the writers' word) and refuses to commit (:class:`RowCountMismatch`) unless
   ``input rows == assigned rows + rejected rows``.
3. Promotion: each returned file is moved from ``_staging/<attempt>/<path>`` to
   ``<path>`` in the unit (locally one rename per file; on S3, which has no rename, one
   server-side copy per file, the staged copy deleted in step 5). Each promoted file
   appears whole (a rename; an S3 object exists only once complete); its name is unique to
   the attempt, so it never overwrites a file of the previous commit.
   With ``--table-format delta``, one Delta transaction then adds the promoted parts and
   removes the replaced commit's (:mod:`jobs.commit.delta`): Delta readers' commit point.
4. The commit point is ONE write of ``_SUCCESS``: a single PUT on S3 (visible only when
   complete), a write-to-temp + rename locally. It lists the exact promoted files of this
   attempt with their row counts, the row counts in and out, the model id, the input
   files, the run id, the time and the tell-ray version.
5. After the commit, every part file of the unit that the manifest does not list (the
   previous commit of a re-run, promoted files of a crashed attempt) and every staging
   prefix are deleted, best effort. :func:`repair` does the same before an attempt starts,
   so a run that crashed in steps 3-5 converges on the next run.

Why this is exactly-once for tell's reader: it trusts ONLY the files the manifest lists
(S3 has no rename, so "the files in the directory" is never the truth). A crashed or failed
attempt writes no manifest, so a unit without ``_SUCCESS`` is not committed. Counts are
reconciled from footers before the commit, so a lost or duplicated row cannot be committed.

What a plain reader (one that lists the directory) sees: after a commit, exactly the
committed rows; while an attempt stages (steps 1-2, nearly all of a run's time), and after
it failed or was killed there, nothing new: the previous commit, or no rows. Plain Parquet
has no atomic multi-file replace, so during steps 3-5 (one rename or server-side copy per
part, then one delete per old part: milliseconds locally, seconds on S3) a plain reader
can see part of the new files beside the previous commit's; a crash in that window leaves
them there until :func:`repair` runs at the next attempt. Readers that cannot accept that
window read through the manifest (``jobs.commit.reader``), or check that ``_SUCCESS`` is
unchanged before and after their read.

Re-running a run id never adds rows for tell's reader: the new attempt stages in its own
prefix and replaces the manifest in one write, so the manifest names the old complete
output or the new complete output, never a mix and never a gap; the old files are then
deleted. If the re-run fails before step 4, the previous commit stays as it was (repair
removes any file it promoted). (Deleting the old output first would open a window with no
committed output at all.) One writer per unit at a time is assumed (schedulers:
concurrencyPolicy Forbid); two concurrent writers cannot mix rows in a manifest, but the
later commit may garbage-collect the other's files and make it fail.

Incremental mode: input laid out as hive partitions (``<data>/dt=2026-11-28/*.parquet``,
nested ``k=v`` levels allowed) is assigned partition by partition; each partition is its own
unit at ``<out>/<run_id>/<partition path>/`` with its own ``_SUCCESS``. A later run with the
same run id assigns only the partitions that have no ``_SUCCESS`` yet
(:func:`jobs.commit.reader.committed_units`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import storage
from tell.errors import TellDataError, TellStorageError

if TYPE_CHECKING:
    from jobs.commit.delta import DeltaLog

logger = logging.getLogger("tell.commit")

MANIFEST_FILE = "_SUCCESS"
STAGING_DIR = "_staging"
REJECTED_DIR = "_rejected"
MANIFEST_FORMAT = "tell-assign-manifest"
MANIFEST_VERSION = 2  # 2: parts promoted out of _staging/, optional cluster=J/ directories
ASSIGNED, REJECTED = "assigned", "rejected"
REASON_COLUMN = "reason"
PARTITION_COLUMN = "cluster"  # the one column --partition-by accepts
# Only committed assigned parts end in ".parquet": staged and rejected files carry another
# suffix, so readers that keep "*.parquet" (Ray Data, DuckDB's globs) skip them even where
# they skip "_" names only at the top of what they read (Ray Data, reading an incremental
# run whose partitions hold _staging/ and _rejected/).
STAGED_SUFFIX = ".staged"
REJECTED_SUFFIX = ".rejected"
# Where a commit promotes part files in its unit (relative paths): at its top, in
# cluster=J/ and in _rejected/. Other files (another unit's, below dt=.../) are never touched.
_PART_FILE = re.compile(
    rf"^(?:{PARTITION_COLUMN}=-?\d+/)?[^/._][^/]*\.parquet$"
    rf"|^{REJECTED_DIR}/[^/._][^/]*\.parquet{REJECTED_SUFFIX}$"
)

_IO_THREADS = 16


class RowCountMismatch(TellDataError):
    """Rows out (assigned + rejected, from the written footers) differ from rows in."""


@dataclass(frozen=True)
class Part:
    """One written Parquet file: ``path`` relative to the unit, ``rows`` claimed by the writer,
    ``cluster`` the value of its ``cluster=J/`` directory (None when not partitioned)."""

    path: str
    rows: int
    kind: str = ASSIGNED
    cluster: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "kind": self.kind, "cluster": self.cluster}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Part:
        cluster = data.get("cluster")
        return cls(
            str(data["path"]),
            int(data["rows"]),
            str(data.get("kind", ASSIGNED)),
            None if cluster is None else int(cluster),
        )


@dataclass(frozen=True)
class Attempt:
    """One execution's private write area: ``<unit>/_staging/<attempt_id>/``."""

    unit: storage.Location
    attempt_id: str

    @property
    def prefix(self) -> str:
        return f"{STAGING_DIR}/{self.attempt_id}"

    def relpath(self, kind: str, name: str, cluster: int | None = None) -> str:
        """Path, relative to the unit, of a staged part file of this attempt."""
        if kind == REJECTED:
            return f"{self.prefix}/{REJECTED_DIR}/{name}{STAGED_SUFFIX}"
        if cluster is not None:
            return f"{self.prefix}/{PARTITION_COLUMN}={cluster}/{name}{STAGED_SUFFIX}"
        return f"{self.prefix}/{name}{STAGED_SUFFIX}"

    def promoted(self, relpath: str) -> str:
        """Where a staged part lands in the unit once committed: the staging prefix and
        suffix off; a rejected part keeps a suffix of its own (see STAGED_SUFFIX)."""
        path = relpath[len(self.prefix) + 1 :].removesuffix(STAGED_SUFFIX)
        return path + REJECTED_SUFFIX if path.startswith(REJECTED_DIR + "/") else path


def start_attempt(unit: storage.Location) -> Attempt:
    """A fresh attempt under ``unit`` (nothing is written until a part is)."""
    return Attempt(unit, f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}")


# ----------------------------------------------------------------------------- writing


class PartWriter:
    """Stream Arrow tables of one schema into one Parquet file of an attempt.

    Storage failures raise a one-line :class:`TellStorageError`; ``close`` returns the
    :class:`Part` (or None when no row was written, in which case no file exists).
    """

    def __init__(self, attempt: Attempt, kind: str, name: str, cluster: int | None = None) -> None:
        self.kind, self.cluster = kind, cluster
        self.relpath = attempt.relpath(kind, name, cluster)
        self.loc = attempt.unit.join(self.relpath)
        self.rows = 0
        self._stream: Any = None
        self._abandon: Callable[[], None] | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._stream, self._abandon = storage.open_output(self.loc)
        with storage.storage_errors(self.loc, "writing"):
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._stream, table.schema)
            elif not table.schema.equals(self._writer.schema):
                table = table.cast(self._writer.schema)
            self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Part | None:
        if self._writer is None:
            return None
        with storage.storage_errors(self.loc, "writing"):
            self._writer.close()
            self._stream.close()  # S3: completes the upload; only now the object exists
        self._writer = self._stream = self._abandon = None
        return Part(self.relpath, self.rows, self.kind, self.cluster)

    def abort(self) -> None:
        """Drop a half-written file, best effort and without waiting on the storage (it may
        be what failed): the file is never created (:func:`jobs.storage.open_output`), and
        it would never be listed in a manifest anyway; the next commit's garbage collection
        deletes whatever a crashed process left."""
        abandon, parquet = self._abandon, self._writer
        self._writer = self._stream = self._abandon = None
        if abandon is None:
            return
        abandon()
        if parquet is not None:  # its footer now goes nowhere, not into a garbage collector
            with contextlib.suppress(Exception):
                parquet.close()


# ---------------------------------------------------------------------------- counting


def footer_rows(unit: storage.Location, relpaths: Sequence[str]) -> list[int]:
    """Row count of each file (``relpaths`` relative to ``unit``), read from its footer."""

    def one(rel: str) -> int:
        loc = unit.join(rel)
        with storage.storage_errors(loc, "reading the footer of"):
            try:
                with loc.filesystem.open_input_file(loc.path) as f:
                    return pq.ParquetFile(f).metadata.num_rows
            except FileNotFoundError:
                raise TellStorageError(
                    f"{loc.uri} was written by this attempt but is missing when it is "
                    "committed: the storage lost it or is failing."
                ) from None
            except pa.ArrowInvalid as exc:
                raise TellDataError(
                    f"{loc.uri} is not a valid Parquet file ({exc}); the attempt is damaged: "
                    "re-run the assignment."
                ) from None

    if not relpaths:
        return []
    with ThreadPoolExecutor(min(_IO_THREADS, len(relpaths))) as pool:
        return list(pool.map(one, relpaths))


# ----------------------------------------------------------------------------- commit


def commit(
    attempt: Attempt,
    *,
    input_rows: int,
    parts: Iterable[Part],
    metadata: dict[str, Any] | None = None,
    rejected_reasons: dict[str, int] | None = None,
    log: DeltaLog | None = None,
) -> dict[str, Any]:
    """Verify the attempt's files against ``input_rows`` and write the ``_SUCCESS`` manifest.

    Parameters
    ----------
    attempt : the attempt whose files are committed.
    input_rows : rows read, from the input footers.
    parts : the files the write tasks reported (their ``rows`` are checked against footers).
    metadata : JSON-serialisable fields added to the manifest (model, input, run id, ...).
    rejected_reasons : reason -> count of rejected rows (informational).
    log : the run's Delta log (``--table-format delta``): the promoted parts are committed
        to it in one transaction before the manifest is written (:mod:`jobs.commit.delta`).

    Returns
    -------
    dict, the manifest written.

    Raises
    ------
    RowCountMismatch
        If assigned + rejected rows (from the footers) differ from ``input_rows``.
    TellDataError
        If a part lies outside the attempt, is listed twice, or its footer disagrees with
        what its writer reported.
    TellStorageError
        If storage fails; then no manifest was written (or the old one still stands).
    """
    parts = sorted(parts, key=lambda p: (p.kind, p.path))
    seen: set[str] = set()
    for part in parts:
        if not part.path.startswith(attempt.prefix + "/") or part.path in seen:
            raise TellDataError(
                f"Part {part.path!r} is outside attempt {attempt.prefix!r} or listed twice; "
                "refusing to commit."
            )
        seen.add(part.path)
    counts = footer_rows(attempt.unit, [p.path for p in parts])
    for part, rows in zip(parts, counts, strict=True):
        if rows != part.rows:
            raise TellDataError(
                f"{attempt.unit.join(part.path).uri} holds {rows} rows but its writer reported "
                f"{part.rows}; refusing to commit: re-run the assignment."
            )
    assigned = sum(r for p, r in zip(parts, counts, strict=True) if p.kind == ASSIGNED)
    rejected = sum(r for p, r in zip(parts, counts, strict=True) if p.kind == REJECTED)
    if assigned + rejected != input_rows:
        raise RowCountMismatch(
            f"Row counts do not reconcile for {attempt.unit.uri}: {input_rows} rows in, "
            f"{assigned} assigned + {rejected} rejected = {assigned + rejected} out; nothing "
            f"was committed (attempt {attempt.attempt_id} left in {STAGING_DIR}/). Re-run the "
            "assignment; if it persists, the input changed while it was read."
        )
    promoted = _promote(attempt, parts)
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        **(metadata or {}),
        "attempt": attempt.attempt_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tell_version": _tell_version(),
        "table_format": "parquet" if log is None else "delta",
        "rows": {"input": input_rows, "assigned": assigned, "rejected": rejected},
        "rejected_reasons": dict(sorted((rejected_reasons or {}).items())),
        "partition_by": [PARTITION_COLUMN] if any(p.cluster is not None for p in parts) else [],
        "files": [
            _entry(path, part, rows)
            for path, part, rows in zip(promoted, parts, counts, strict=True)
            if part.kind == ASSIGNED
        ],
        "rejected_files": [
            _entry(path, part, rows)
            for path, part, rows in zip(promoted, parts, counts, strict=True)
            if part.kind == REJECTED
        ],
    }
    if log is not None:  # Delta readers' commit point: one transaction
        try:
            manifest["delta_version"] = log.publish(manifest["files"], attempt=attempt.attempt_id)
        except Exception:  # not committed: the promoted files go, as for a failed manifest
            _delete_quietly(attempt.unit, promoted)
            raise
    data = json.dumps(manifest, indent=2, default=str).encode()
    try:
        storage.write_bytes(attempt.unit.join(MANIFEST_FILE), data)  # THE commit point
    except TellStorageError:
        if log is None:  # (the Delta log references them: the next repair keeps them)
            _delete_quietly(attempt.unit, promoted)  # the previous commit stays the only one
        raise
    collect_garbage(attempt.unit, manifest, keep=() if log is None else log.referenced())
    return manifest


def _entry(path: str, part: Part, rows: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "rows": rows}
    if part.cluster is not None:
        entry[PARTITION_COLUMN] = part.cluster
    return entry


def _promote(attempt: Attempt, parts: Sequence[Part]) -> list[str]:
    """Step 3: move every part out of the attempt's staging prefix into the unit; returns
    the promoted relative paths (in the order of ``parts``). On failure, the files promoted
    so far are deleted (best effort; :func:`repair` catches the rest) and the error raised."""
    unit = attempt.unit
    targets = [attempt.promoted(p.path) for p in parts]

    def one(pair: tuple[str, str]) -> None:
        src, dst = unit.join(pair[0]), unit.join(pair[1])
        storage.promote_file(src, dst)

    if not parts:
        return targets
    try:
        with ThreadPoolExecutor(min(_IO_THREADS, len(parts))) as pool:
            list(pool.map(one, zip([p.path for p in parts], targets, strict=True)))
    except Exception:
        _delete_quietly(unit, targets)
        raise
    return targets


def _delete_quietly(unit: storage.Location, relpaths: Iterable[str]) -> None:
    for rel in relpaths:
        with contextlib.suppress(TellStorageError):
            storage.delete_tree(unit.join(rel))


def collect_garbage(
    unit: storage.Location, manifest: dict[str, Any] | None, keep: Iterable[str] = ()
) -> list[str]:
    """Delete every part file of ``unit`` that ``manifest`` does not list (all of them when
    it is None: nothing is committed) and that is not in ``keep`` (relative paths: the files
    a Delta log still references), and every staging prefix. Best effort.

    Returns the relative paths deleted (a staging prefix counts as one entry).
    """
    manifest = manifest or {}
    listed = {f["path"] for f in manifest.get("files", []) + manifest.get("rejected_files", [])}
    listed.update(keep)
    deleted: list[str] = []
    try:
        for rel in part_files(unit):
            if rel not in listed:
                storage.delete_tree(unit.join(rel))
                deleted.append(rel)
        staging = unit.join(STAGING_DIR)
        if storage.exists(staging):
            storage.delete_tree(staging)
            deleted.append(STAGING_DIR)
    except TellStorageError as exc:
        logger.warning("could not delete stale files under %s: %s", unit.uri, exc)
    if deleted:
        logger.info("deleted %d stale item(s) under %s", len(deleted), unit.uri)
    return deleted


def repair(
    unit: storage.Location, manifest: dict[str, Any] | None, keep: Iterable[str] = ()
) -> list[str]:
    """Before an attempt starts: undo what a crashed attempt left in the unit (promoted files
    that no manifest lists and no Delta log references (``keep``), staging prefixes), so
    that plain readers see exactly the commit ``manifest`` (the unit's current one, or None)
    again. Best effort, like step 5."""
    return collect_garbage(unit, manifest, keep)


def discard(attempt: Attempt) -> None:
    """Delete an attempt that will not be committed (best effort; GC catches the rest)."""
    try:
        storage.delete_tree(attempt.unit.join(attempt.prefix))
    except TellStorageError as exc:
        logger.warning("could not delete failed attempt %s: %s", attempt.prefix, exc)


def part_files(unit: storage.Location) -> list[str]:
    """Relative paths of the part files promoted into ``unit`` (``part-*.parquet``,
    ``cluster=J/part-*.parquet``, ``_rejected/part-*.parquet``), whatever commit they are
    from; other files (the user's, other units') are not listed."""
    return [rel for rel in _files_below(unit) if _PART_FILE.match(rel)]


def staged_files(unit: storage.Location) -> list[str]:
    """Relative paths of every file under ``<unit>/_staging/`` (``_staging/<attempt>/...``)."""
    staging = unit.join(STAGING_DIR)
    return [f"{STAGING_DIR}/{rel}" for rel in _files_below(staging)]


def _files_below(loc: storage.Location) -> list[str]:
    if not storage.exists(loc):
        return []
    with storage.storage_errors(loc, "listing"):
        infos = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    base = loc.path.rstrip("/") + "/"
    return sorted(
        info.path[len(base) :]
        for info in infos
        if info.type == pafs.FileType.File and info.path.startswith(base)
    )


def count_reasons(reasons: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for item in reasons:
        total.update(item)
    return dict(total)


def _tell_version() -> str:
    try:
        return importlib.metadata.version("tell-ray")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
