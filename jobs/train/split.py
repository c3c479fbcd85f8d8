"""The distributed split of ``tell train --levels 2``: every row to its coarse group, and
the groups gathered into partitions, by plain Ray tasks over the streamed input.

The driver never holds the rows. Each **split task** (:func:`split_piece`, reserving no
CPU, like the scan's) reads a run of row groups of one input file (about
:data:`PIECE_BYTES` of features: :func:`jobs.input.inspect.row_group_runs`), normalises
the rows, labels each with its nearest coarse center and returns the rows per coarse
center, (k1,), and ``n_parts`` **pieces**: piece p holds, in input order, the rows whose
coarse center c has ``c % n_parts == p``. The pieces stay in the object store, owned by
the driver (Ray spills them to disk when they outgrow it and rebuilds a lost one by
re-running its task), until the fine fits are done. **Partition** p is then the pieces p
of every split task, in input order: each group's rows in one place and in the input's
order, as :func:`tell.two_level.split_rows` orders them. A partition task
(:func:`run_partition`) takes its pieces as arguments, so Ray moves them to where it runs.

This is a one-pass hash shuffle without Ray Data's: ``groupby().map_groups()`` shuffles
through tasks that ask for a whole CPU each, which a cluster whose nodes have only
fractions free never schedules (issue #13), and materialises its input first.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jobs import storage
from jobs.input.inspect import InputSet, open_parquet, row_group_runs
from tell.assign import nearest
from tell.errors import TellDataError
from tell.io import screen_rows
from tell.two_level import FineTask, distinct_rows, fit_fine

SPLIT_TASK_CPUS = 0  # split tasks reserve no CPU (a window bounds how many run): see scan.py
PIECE_BYTES = 64 * 2**20  # features a split task reads (its memory: about twice this) ...
MAX_PIECES = 1 << 18  # ... grown so that split tasks x partitions stays within this
PARTITION_BYTES = 256 * 2**20  # features per partition: bounds a partition task's rows


def n_partitions(n_rows: int, dim: int, n_coarse: int, workers: int) -> int:
    """Partitions of the split: enough that each holds about :data:`PARTITION_BYTES` of
    features, at least two per worker (so that fits of unequal length balance), at most
    one per coarse center."""
    by_bytes = math.ceil(n_rows * dim * 4 / PARTITION_BYTES)
    return int(max(1, min(n_coarse, max(2 * workers, by_bytes))))


def piece_rows(n_rows: int, dim: int, n_parts: int) -> int:
    """Rows a split task reads: about :data:`PIECE_BYTES` of features, more when the
    pieces (split tasks x ``n_parts``) would exceed :data:`MAX_PIECES` objects."""
    return max(PIECE_BYTES // (4 * max(dim, 1)), math.ceil(n_rows * n_parts / MAX_PIECES))


def partition_of(coarse: np.ndarray | int, n_parts: int) -> np.ndarray | int:
    """The partition of each coarse center index in ``coarse`` (the split's one rule)."""
    return coarse % n_parts


def unit_rows(X: np.ndarray, where: str, first_row: int = 0) -> np.ndarray:
    """``X`` (n, d) float32 with unit rows (in place); a zero row is refused (no direction),
    named by its row number in ``where`` (``X``'s first row being ``first_row`` there)."""
    norms = np.linalg.norm(X, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise TellDataError(
            f"{zero.size} rows of {where} are zero vectors (first: row "
            f"{first_row + int(zero[0])}), which have no direction to cluster by; remove "
            "them for levels: 2."
        )
    X /= norms[:, None]
    return X


def split_rows_of(
    x: np.ndarray, coarse_centers: torch.Tensor, n_parts: int, where: str, first_row: int = 0
) -> tuple[np.ndarray, ...]:
    """The split of rows ``x`` (m, d) float32 (rows ``first_row``... of ``where``):
    (counts (k1,) int64 rows per coarse center, then ``n_parts`` pieces, each a (rows
    (m_p, d) float32 unit, coarse center (m_p,) int32) pair in the order of ``x``)."""
    x = unit_rows(x, where, first_row)
    labels = nearest(torch.from_numpy(x), coarse_centers)[0].numpy().astype(np.int32)
    counts = np.bincount(labels, minlength=coarse_centers.shape[0]).astype(np.int64)
    part = partition_of(labels, n_parts)
    order = np.argsort(part, kind="stable")  # by partition, input order within each
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
    rows = [order[bounds[p] : bounds[p + 1]] for p in range(n_parts)]
    return (counts, *((x[r], labels[r]) for r in rows))


def split_piece(
    location: storage.Location,
    path: str,
    row_groups: list[int],
    first_row: int,
    column: str,
    dim: int,
    coarse_centers: torch.Tensor,
    n_parts: int,
) -> tuple[Any, ...]:
    """The split task: row groups ``row_groups`` of ``path`` (rows the scan already found
    usable; the first is row ``first_row`` of the file) through :func:`split_rows_of`, on
    one torch thread."""
    torch.set_num_threads(1)
    with open_parquet(location, path) as pf:
        x = screen_rows(pf.read_row_groups(row_groups, columns=[column]), column, dim).matrix
    x = np.ascontiguousarray(x, np.float32)
    return split_rows_of(x, coarse_centers, n_parts, path, first_row)


@dataclass(frozen=True)
class Split:
    """What the split passes on: ``counts`` (k1,) int64 rows per coarse center, and
    ``pieces[p]`` the ObjectRefs of partition p's pieces, in input order."""

    counts: np.ndarray
    pieces: list[list[Any]]

    @property
    def n_parts(self) -> int:
        return len(self.pieces)


def split_input(
    info: InputSet,
    coarse_centers: torch.Tensor,
    n_parts: int,
    beat: Callable[[str], None] = lambda _: None,
) -> Split:
    """Split every row of the input (see the module docstring): a bounded window of split
    tasks in flight, ``beat`` as each one finishes."""
    import ray

    task = ray.remote(split_piece).options(
        num_cpus=SPLIT_TASK_CPUS, scheduling_strategy="SPREAD", num_returns=n_parts + 1
    )
    centers = ray.put(coarse_centers)
    target = piece_rows(info.num_rows, info.dim, n_parts)
    runs = [
        (footer.path, groups, sum(footer.row_group_rows[: groups[0]]))
        for footer in info.footers
        for groups, _ in row_group_runs(footer.row_group_rows, target)
    ]
    todo = iter(runs)
    window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque[list[Any]] = deque()
    counts = np.zeros(coarse_centers.shape[0], np.int64)
    pieces: list[list[Any]] = [[] for _ in range(n_parts)]
    done = 0
    try:
        while True:
            for path, groups, first_row in itertools.islice(todo, window - len(pending)):
                args = (info.location, path, groups, first_row, info.column, info.dim)
                pending.append(list(task.remote(*args, centers, n_parts)))
            if not pending:
                return Split(counts, pieces)
            refs = pending.popleft()
            counts += ray.get(refs[0])
            for p, ref in enumerate(refs[1:]):
                pieces[p].append(ref)
            done += 1
            beat(f"split {done} of {len(runs)} pieces")
    except BaseException:
        for refs in pending:  # a failed split (zero rows, a storage error) stops the others
            ray.cancel(refs[0], force=True)
        raise


@dataclass(frozen=True)
class PartitionWork:
    """What one partition task does with its groups (coarse center indices, ascending):
    count their distinct rows (``shares`` empty), or fit each group's ``shares`` fine
    centers (``all_distinct``, ``seeds`` and the :class:`tell.TELL` ``params`` as in
    :class:`tell.two_level.FineTask`)."""

    part: int
    groups: tuple[int, ...]
    shares: tuple[int, ...] = ()
    all_distinct: tuple[bool, ...] = ()
    seeds: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return bool(self.shares)


Piece = tuple[np.ndarray, np.ndarray]  # (rows (m, d) float32, coarse center (m,) int32)


def group_rows(pieces: tuple[Piece, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(coarse center, its rows (m, d)) for every group present in ``pieces``, ascending,
    each group's rows in the pieces' order."""
    x = np.concatenate([rows for rows, _ in pieces])
    labels = np.concatenate([group for _, group in pieces])
    order = np.argsort(labels, kind="stable")
    found, starts = np.unique(labels[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    for i, g in enumerate(found.tolist()):
        yield g, x[order[bounds[i] : bounds[i + 1]]]


def run_partition(work: PartitionWork, threads: int, *pieces: Any) -> list[Any]:
    """The partition task: per group of ``work``, in its order, the distinct rows (int) or
    the fine centers ((share, d) float32 unit rows), on ``threads`` torch threads."""
    torch.set_num_threads(threads)
    rows = dict(group_rows(pieces))
    if not work.fits:
        return [distinct_rows(rows[g]) for g in work.groups]
    out = []
    plan = zip(work.groups, work.shares, work.all_distinct, work.seeds, strict=True)
    for g, share, alone, seed in plan:
        task = FineTask(rows[g], share, alone, seed, work.params)
        try:
            out.append(fit_fine(task))
        except TellDataError as exc:
            raise TellDataError(
                f"The fine fit of coarse group {g} ({len(task.rows)} rows into {share} "
                f"centers) failed: {exc}"
            ) from None
    return out
