"""Ray Data's read of an opened input: read tasks planned from the footers already read.

``ray.data.read_parquet`` lists the files again in a ``ListFiles`` task and samples them,
and those tasks ask for a whole CPU whatever the read's own ``num_cpus`` says: on a cluster
whose nodes have only fractions free (actors holding the rest) they are never scheduled
and the job waits forever (issue 13). :class:`InputDatasource` needs neither: the
:class:`~jobs.input.inspect.InputSet` knows every file and the rows of each row group, so
the read tasks are planned on the driver, each a run of row groups of one file, and they
ask for :data:`READ_TASK_CPUS` CPUs (a bounded number run at once, see
:func:`read_dataset`). Each task reads through
:func:`jobs.input.inspect.open_parquet` (the input's one error policy).

Imports Ray Data: import it only once Ray runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from jobs import storage
from jobs.input.inspect import InputSet, open_parquet, row_group_runs

# Read tasks reserve no CPU: a task that waits for a CPU that actors hold never runs. The
# number in flight is capped by the read's concurrency instead (read_dataset).
READ_TASK_CPUS = 0
_BATCH_ROWS = 65536  # rows per Arrow batch a read task yields


Transform = Callable[[pa.Table], Any]  # an Arrow batch -> a batch (dict of arrays) or table


class InputDatasource(Datasource):
    """The columns ``columns`` of every row of an :class:`InputSet`, in file order, each
    batch passed through ``transform`` when given (in the read task)."""

    def __init__(
        self, info: InputSet, columns: Sequence[str], transform: Transform | None = None
    ) -> None:
        super().__init__()
        self.info, self.columns, self.transform = info, list(columns), transform
        first = info.footers[0].schema
        self.schema = None if transform else pa.schema([first.field(c) for c in self.columns])

    def get_name(self) -> str:
        return "ReadInput"

    def estimate_inmemory_data_size(self) -> int:
        return self.info.num_rows * self._row_bytes()

    def _row_bytes(self) -> int:
        return 4 * max(self.info.dim, 1) + 8 * max(len(self.columns) - 1, 0)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """About ``parallelism`` tasks of similar row counts; a task never spans files."""
        target = max(1, math.ceil(self.info.num_rows / max(1, parallelism)))
        tasks = []
        for footer in self.info.footers:
            for groups, rows in row_group_runs(footer.row_group_rows, target):
                tasks.append(
                    ReadTask(
                        partial(
                            read_row_groups,
                            self.info.location,
                            footer.path,
                            groups,
                            self.columns,
                            self.transform,
                        ),
                        BlockMetadata(
                            num_rows=rows,
                            size_bytes=rows * self._row_bytes(),
                            input_files=[footer.path],
                            exec_stats=None,
                        ),
                        schema=self.schema,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
        return tasks


def read_row_groups(
    location: storage.Location,
    path: str,
    groups: list[int],
    columns: list[str],
    transform: Transform | None = None,
) -> Iterator[Any]:
    """The read task: ``columns`` of row groups ``groups`` of ``path``, batch by batch."""
    from ray.data.block import BlockAccessor

    with open_parquet(location, path) as pf:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=columns):
            table = pa.Table.from_batches([batch])
            yield table if transform is None else BlockAccessor.batch_to_block(transform(table))


def read_dataset(
    input_set: InputSet,
    columns: Sequence[str],
    *,
    transform: Transform | None = None,
    concurrency: int = 2,
    blocks: int = 0,
) -> Any:  # ray.data.Dataset
    """A lazy, streaming Ray Dataset of ``columns`` of every row of the input (each batch
    through ``transform`` in the read task), read by :class:`InputDatasource` tasks: at most
    ``concurrency`` at once, about ``blocks`` of them (row groups permitting; at least one
    per file)."""
    import ray.data

    return ray.data.read_datasource(
        InputDatasource(input_set, columns, transform),
        num_cpus=READ_TASK_CPUS,
        concurrency=max(1, concurrency),
        override_num_blocks=max(blocks, len(input_set.files)),
    )
