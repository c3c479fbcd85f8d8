"""The Delta Lake log of an assignment run (``tell assign --table-format delta``): the
atomic replacement that plain Parquet cannot give.

The run directory ``<out>/<run_id>/`` is then also a Delta table. The parts are written,
reconciled and promoted exactly as :mod:`jobs.commit.writer` describes; before the
``_SUCCESS`` manifest, :meth:`DeltaLog.publish` commits ONE Delta transaction that adds the
unit's promoted parts and removes the files of the commit it replaces. A Delta reader
(``deltalake``, Spark with delta-spark, Ray Data ``read_delta``, DuckDB over
``DeltaTable.to_pyarrow_dataset()``, Trino, ...) resolves a snapshot from the log, so it
reads the previous complete result or the new complete result: never a mix, not even while
a re-run promotes its parts or after one was killed doing it.

Units map onto the table as partitions: a whole-input run is the whole table (a re-run
overwrites it); each hive partition of an incremental run (``dt=2026-11-28/``) is a table
partition, replaced by its own transaction (``partition_filters``); ``--partition-by
cluster`` makes ``cluster`` a partition column too. Partition columns are not stored in the
files (the hive convention); Delta readers take them from the log.

Files stay readable for one commit after they were replaced: garbage collection
(:func:`jobs.commit.writer.collect_garbage`) keeps every file of the unit that the table's
current version or the version before it references (:meth:`DeltaLog.referenced`), so a
reader that resolved the previous snapshot just before a commit still finds its files.
Nothing older is kept: ``DeltaTable.load_as_version`` further back finds its files deleted.

On S3 the log is written with the endpoint and credentials of :mod:`jobs.storage`
(:func:`jobs.storage.object_store_options`); one writer per run at a time is assumed, as for
the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import storage
from tell.errors import TellConfigError, TellStorageError

logger = logging.getLogger("tell.commit")

LOG_DIR = "_delta_log"
PARTITION_COLUMN = "cluster"  # writer.PARTITION_COLUMN (not imported: writer names DeltaLog)


def _deltalake():
    try:
        import deltalake
        import deltalake.transaction
    except ImportError:
        raise TellConfigError(
            "--table-format delta needs the 'deltalake' package: pip install 'tell-ray[delta]' "
            "(or use the default --table-format parquet)."
        ) from None
    return deltalake


def hive_values(unit: str) -> dict[str, str]:
    """``"dt=2026-11-28/region=eu"`` -> ``{"dt": "2026-11-28", "region": "eu"}``; ``""`` -> {}."""
    return dict(segment.split("=", 1) for segment in unit.split("/")) if unit else {}


def is_table(run: storage.Location) -> bool:
    """Whether ``run`` holds a Delta log (a run committed with ``--table-format delta``)."""
    return storage.exists(run.join(LOG_DIR))


class DeltaLog:
    """One unit's view of the run's Delta table.

    Parameters
    ----------
    run : the run directory (the table root).
    unit : the unit's path below it ("" for a whole-input run, ``dt=...`` for a partition).
    schema : the assigned rows' schema (id columns and assignment columns, the ``cluster``
        column included), used when the unit has no assigned part to read it from.
    partition_by_cluster : whether the parts sit in ``cluster=J/`` directories.
    """

    def __init__(
        self,
        run: storage.Location,
        unit: str,
        schema: pa.Schema,
        *,
        partition_by_cluster: bool,
    ) -> None:
        self.run, self.unit = run, unit
        self.unit_loc = run.join(unit) if unit else run
        self.schema = schema
        self.hive = hive_values(unit)
        self.partition_columns = [*self.hive, *([PARTITION_COLUMN] if partition_by_cluster else [])]
        self.options = storage.object_store_options(run)
        self.uri = run.uri if run.is_s3 else run.path

    def publish(self, files: Sequence[dict[str, Any]], *, attempt: str) -> int | None:
        """Commit the unit's assigned ``files`` (manifest entries: ``path`` relative to the
        unit, ``rows``, ``cluster`` when partitioned) as one Delta transaction that replaces
        the unit's previous files; returns the table version it created (None when the
        commit succeeded but reading the version back failed)."""
        dl = _deltalake()
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

        adds = [
            AddAction(
                path=self._table_path(entry["path"]),
                size=info.size,
                partition_values={**self.hive, **self._cluster_value(entry)},
                modification_time=int(info.mtime.timestamp() * 1000) if info.mtime else 0,
                data_change=True,
                stats=json.dumps({"numRecords": int(entry["rows"])}),
            )
            for entry, info in zip(files, self._infos(files), strict=True)
        ]
        schema = dl.Schema.from_arrow(self._table_schema(files))
        props = CommitProperties(custom_metadata={"tell.attempt": attempt, "tell.unit": self.unit})
        with _delta_errors(self.uri, "commit"):
            if not self.hive:  # the whole table: a re-run may change the partitioning
                create_table_with_add_actions(
                    self.uri, schema, adds, mode="overwrite",
                    partition_by=self.partition_columns, storage_options=self.options,
                    commit_properties=props,
                )  # fmt: skip
            else:
                if not dl.DeltaTable.is_deltatable(self.uri, storage_options=self.options):
                    create_table_with_add_actions(
                        self.uri, schema, [], mode="ignore",
                        partition_by=self.partition_columns, storage_options=self.options,
                    )  # fmt: skip
                table = dl.DeltaTable(self.uri, storage_options=self.options)
                self._require_partitioning(list(table.metadata().partition_columns))
                table.create_write_transaction(
                    adds, mode="overwrite", schema=schema, partition_by=self.partition_columns,
                    partition_filters=[(key, "=", value) for key, value in self.hive.items()],
                    commit_properties=props,
                )  # fmt: skip
        try:  # committed: a failure to read it back must not undo the commit's files
            return dl.DeltaTable(self.uri, storage_options=self.options).version()
        except Exception as exc:
            logger.warning("committed the Delta log of %s; reading its version failed: %s",
                           self.uri, type(exc).__name__)  # fmt: skip
            return None

    def _require_partitioning(self, table_columns: list[str]) -> None:
        """A partition of an incremental run must be partitioned as the table is: deltalake
        would accept other partition values and read the missing ones as nulls."""
        if table_columns != self.partition_columns:
            raise TellConfigError(
                f"The Delta table {self.uri} is partitioned by {table_columns}, this partition "
                f"by {self.partition_columns}: assign every partition of a run with the same "
                "--partition-by (and the same hive keys), or give this run a new --run-id."
            )

    def referenced(self) -> set[str]:
        """Paths, relative to the unit, of the files that the table's current version or the
        version before it references (what garbage collection must keep); empty when the run
        has no Delta log yet."""
        if not is_table(self.run):
            return set()
        dl = _deltalake()
        with _delta_errors(self.uri, "read"):
            table = dl.DeltaTable(self.uri, storage_options=self.options)
            paths = self._unit_paths(table)
            if table.version() > 0:
                table.load_as_version(table.version() - 1)
                paths |= self._unit_paths(table)
        return paths

    # ------------------------------------------------------------------ helpers

    def _table_path(self, unit_path: str) -> str:
        return f"{self.unit}/{unit_path}" if self.unit else unit_path

    def _unit_paths(self, table: Any) -> set[str]:
        prefix = f"{self.unit}/" if self.unit else ""
        paths = (unquote(p) for p in pa.table(table.get_add_actions()).column("path").to_pylist())
        return {p[len(prefix) :] for p in paths if p.startswith(prefix)}

    @staticmethod
    def _cluster_value(entry: dict[str, Any]) -> dict[str, str]:
        cluster = entry.get(PARTITION_COLUMN)
        return {} if cluster is None else {PARTITION_COLUMN: str(cluster)}

    def _infos(self, files: Sequence[dict[str, Any]]) -> list[pafs.FileInfo]:
        locs = [self.unit_loc.join(entry["path"]) for entry in files]
        if not locs:
            return []
        with storage.storage_errors(self.unit_loc, "listing"):
            return self.unit_loc.filesystem.get_file_info([loc.path for loc in locs])

    def _table_schema(self, files: Sequence[dict[str, Any]]) -> pa.Schema:
        """The files' schema (from the first file's footer: exactly what was written), with
        the partition columns the files leave out (hive values: strings; ``cluster``:
        int32, as the output schema has it)."""
        if files:
            loc = self.unit_loc.join(files[0]["path"])
            with storage.storage_errors(loc, "reading the footer of"):
                with loc.filesystem.open_input_file(loc.path) as f:
                    schema = pq.read_schema(f)
        else:
            schema = self.schema
        schema = schema.remove_metadata()
        for name in self.partition_columns:
            if name in schema.names:
                schema = schema.remove(schema.get_field_index(name))
        extra = [pa.field(key, pa.string()) for key in self.hive]
        if PARTITION_COLUMN in self.partition_columns:
            extra.append(self.schema.field(PARTITION_COLUMN))
        return pa.schema([*schema, *extra])


@contextlib.contextmanager
def _delta_errors(uri: str, action: str) -> Iterator[None]:
    """A deltalake failure as one line naming the table and the action (never a secret)."""
    try:
        yield
    except (TellStorageError, TellConfigError):
        raise
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise TellStorageError(
            f"Could not {action} the Delta log of {uri} ({type(exc).__name__}: {first}). "
            "Fix the cause and re-run."
        ) from None
