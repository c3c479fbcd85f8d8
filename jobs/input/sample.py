"""A bounded random sample of a Parquet data set, read on the driver (no Ray).

At most :data:`MAX_ROW_GROUPS` random row groups are opened (weighted by their row counts),
streamed in batches of :data:`READ_BATCH_ROWS`, and the rows drawn uniformly among them: with
up to :data:`MAX_ROW_GROUPS` row groups in the data set, the sample is uniform over all rows.
Memory is bounded by one batch plus the sample.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from jobs.input.inspect import InputSet, open_parquet
from tell.errors import TellDataError
from tell.io import screen_rows

MAX_ROW_GROUPS = 64
READ_BATCH_ROWS = 65_536


class Sample(NamedTuple):
    """Usable sample rows: x (n, D) float32 and the other requested columns, as numpy arrays."""

    x: np.ndarray
    columns: dict[str, np.ndarray]
    dropped: int


def _row_groups(info: InputSet) -> list[tuple[str, int, int]]:
    """(path, row group index, rows) of every non-empty row group, from the footers."""
    return [
        (footer.path, i, rows)
        for footer in info.footers
        for i, rows in enumerate(footer.row_group_rows)
        if rows
    ]


def read_sample(info: InputSet, extra_columns: list[str], n_rows: int, seed: int) -> Sample:
    """Draw about ``n_rows`` random rows (see the module docstring); bad feature rows dropped.

    Returns the feature matrix (m, D), m <= n_rows, and ``extra_columns`` for the same rows.
    """
    rng = np.random.default_rng(seed)
    groups = _row_groups(info)
    if len(groups) > MAX_ROW_GROUPS:
        weights = np.array([g[2] for g in groups], dtype=np.float64)
        picked = rng.choice(len(groups), MAX_ROW_GROUPS, replace=False, p=weights / weights.sum())
        groups = [groups[i] for i in np.sort(picked)]
    starts = np.cumsum([0] + [g[2] for g in groups])
    chosen = np.sort(rng.choice(int(starts[-1]), min(n_rows, int(starts[-1])), replace=False))
    columns = [info.column, *extra_columns]
    xs, extras, dropped = [], {c: [] for c in extra_columns}, 0
    for (path, group, _), start, stop in zip(groups, starts[:-1], starts[1:], strict=True):
        local = chosen[(chosen >= start) & (chosen < stop)] - start
        if local.size == 0:
            continue
        with open_parquet(info.location, path) as pf:
            batches = pf.iter_batches(
                batch_size=READ_BATCH_ROWS, row_groups=[group], columns=columns
            )
            offset = 0
            for batch in batches:
                sel = local[(local >= offset) & (local < offset + batch.num_rows)] - offset
                offset += batch.num_rows
                if sel.size == 0:
                    continue
                part = batch.take(pa.array(sel))
                screen = screen_rows(part, info.column, info.dim)
                dropped += int((~screen.valid).sum())
                xs.append(screen.matrix)
                for c in extra_columns:
                    values = part.column(c).to_numpy(zero_copy_only=False)
                    extras[c].append(values[screen.valid])
    if not xs or sum(len(x) for x in xs) == 0:
        raise TellDataError(
            f"No usable rows of column {info.column!r} in the sample of {info.uri}."
        )
    return Sample(np.concatenate(xs), {c: np.concatenate(v) for c, v in extras.items()}, dropped)
