"""Duplicated ids in an assignment, noticed in bounded memory: a K-minimum-values sketch.

Every write task hashes the id columns of the rows it writes (64-bit, one per row) and
keeps the :data:`SKETCH_SIZE` smallest distinct hashes; the driver merges the tasks'
sketches. Fewer distinct hashes than that: the count of distinct ids is exact. Otherwise
it is estimated as ``(K - 1) / (K-th smallest hash / 2**64)`` (relative error about
``1 / sqrt(K)``, 1.6%): a partition copied twice (half the ids distinct) shows, a handful of
duplicates in a billion rows does not. A retried task hashes the same ids again, which
changes nothing: the sketch is a set.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SKETCH_SIZE = 4096
_ESTIMATE_SLACK = 0.1  # an estimated count this far below the rows is reported


def sketch(table: pa.Table, columns: tuple[str, ...], keep: np.ndarray | None = None) -> np.ndarray:
    """The smallest distinct 64-bit hashes of the rows' ``columns``, merged with ``keep``."""
    import pandas as pd

    hashes = pd.util.hash_pandas_object(table.select(list(columns)).to_pandas(), index=False)
    return merge([hashes.to_numpy(np.uint64), *([] if keep is None else [keep])])


def merge(sketches: list[np.ndarray]) -> np.ndarray:
    """One sketch of the union of the sketches' rows."""
    values = [np.asarray(s, np.uint64) for s in sketches]
    joined = np.concatenate(values) if values else np.zeros(0, np.uint64)
    return np.unique(joined)[:SKETCH_SIZE]


def duplicated_ids_message(merged: np.ndarray, rows: int, columns: tuple[str, ...]) -> str | None:
    """A warning when the sketch says there are fewer distinct ids than ``rows``, else None."""
    if len(merged) < SKETCH_SIZE:
        distinct, exact = len(merged), True
        if distinct >= rows:
            return None
    else:
        fraction = (float(merged[-1]) + 1.0) / 2.0**64
        distinct, exact = int((SKETCH_SIZE - 1) / fraction), False
        if distinct >= (1 - _ESTIMATE_SLACK) * rows:
            return None
    count = f"{distinct:,}" if exact else f"about {distinct:,} (estimated)"
    return (
        f"the id column(s) {list(columns)} hold {count} distinct values in {rows:,} rows: some "
        "ids are duplicated (an input file or partition given twice?); every row was "
        "assigned, but the ids do not identify them"
    )
