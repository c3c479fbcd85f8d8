"""The assignment job's Ray Data sink: stages Parquet parts and reports what it wrote.

Kept apart from :mod:`jobs.assign.driver` so that the driver's validation (and the CLI's
errors) run without importing Ray Data.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink

from jobs.assign import ids
from jobs.commit import writer

REASON = writer.REASON_COLUMN
CLUSTER = writer.PARTITION_COLUMN


class AssignmentSink(Datasink):
    """Ray Data sink: each write task streams its rows into one assigned part and (when
    it saw rejected rows) one rejected part of the attempt, and returns what it wrote.
    With ``partition_by_cluster``, one assigned part per cluster the task saw, under
    ``cluster=J/`` and without the ``cluster`` column (the hive convention: readers take
    it from the directory name).

    With ``check_column`` (a two-level model's routing check, see
    :mod:`jobs.assign.predictor`), that column is counted and dropped before writing:
    ``routing_check`` is then (rows checked, rows whose routed center was not the exact one).

    Only the returned parts are committed: files of failed or retried tasks are ignored.
    """

    def __init__(
        self,
        attempt: writer.Attempt,
        id_columns: tuple[str, ...],
        min_rows_per_file: int,
        on_event: Callable[[str], None] | None = None,
        *,
        partition_by_cluster: bool = False,
        check_column: str | None = None,
    ) -> None:
        self.attempt = attempt
        self.check_column = check_column
        self.routing_check = (0, 0)
        self.partition_by_cluster = partition_by_cluster
        self.id_columns = tuple(id_columns)
        self.min_rows = int(min_rows_per_file)
        self.on_event = on_event
        self.parts: list[writer.Part] = []
        self.reasons: dict[str, int] = {}
        self.id_sketch = ids.merge([])  # of every row written (jobs/assign/ids.py)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_event": None}  # the hook stays on the driver

    @property
    def min_rows_per_write(self) -> int:
        return self.min_rows

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        if self.on_event is not None:
            self.on_event("write_start")

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        from ray.data.block import BlockAccessor

        name = f"part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:10]}.parquet"
        # key: REJECTED, ASSIGNED, or the cluster id when partitioned
        writers: dict[Any, writer.PartWriter] = {}

        def part_writer(key: Any) -> writer.PartWriter:
            if key not in writers:
                if isinstance(key, str):
                    writers[key] = writer.PartWriter(self.attempt, key, name)
                else:
                    writers[key] = writer.PartWriter(self.attempt, writer.ASSIGNED, name, key)
            return writers[key]

        reasons: Counter[str] = Counter()
        id_sketch = ids.merge([])
        checked = differs = 0
        try:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                if self.check_column is not None:
                    check = table.column(self.check_column)
                    checked += pc.sum(pc.greater_equal(check, 0)).as_py() or 0
                    differs += pc.sum(pc.equal(check, 1)).as_py() or 0
                    table = table.drop_columns([self.check_column])
                id_sketch = ids.sketch(table, self.id_columns, id_sketch)
                reason = table.column(REASON)
                if reason.null_count == table.num_rows:
                    self._write_assigned(table.drop_columns([REASON]), part_writer)
                    continue
                ok = pc.is_null(reason)
                self._write_assigned(table.filter(ok).drop_columns([REASON]), part_writer)
                bad = table.filter(pc.invert(ok)).select([*self.id_columns, REASON])
                part_writer(writer.REJECTED).write(bad)
                reasons.update(bad.column(REASON).to_pylist())
            parts = [w.close() for w in writers.values()]
        except BaseException:
            for one in writers.values():
                one.abort()
            raise
        return {
            "parts": [p.to_dict() for p in parts if p],
            "reasons": dict(reasons),
            "ids": id_sketch,
            "routing_check": [checked, differs],
        }

    def _write_assigned(self, table: pa.Table, part_writer) -> None:
        if not self.partition_by_cluster:
            part_writer(writer.ASSIGNED).write(table)
            return
        if table.num_rows == 0:
            return
        clusters = table.column(CLUSTER).to_numpy()
        rest = table.drop_columns([CLUSTER])
        order = np.argsort(clusters, kind="stable")
        values, starts = np.unique(clusters[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        for value, start, stop in zip(values, starts, bounds, strict=True):
            part_writer(int(value)).write(rest.take(order[start:stop]))

    def on_write_complete(self, write_result: Any) -> None:
        returns = [r for r in write_result.write_returns if r]
        self.parts = [writer.Part.from_dict(p) for r in returns for p in r["parts"]]
        self.reasons = writer.count_reasons(r["reasons"] for r in returns)
        self.id_sketch = ids.merge([r["ids"] for r in returns])
        checks = [r["routing_check"] for r in returns]
        self.routing_check = (sum(c[0] for c in checks), sum(c[1] for c in checks))
