"""The scan pass before training: validate every row and draw the k-means++ sample at once."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from jobs.data import InputInfo, read_dataset
from tell.io import screen_rows


class ScanResult(NamedTuple):
    """rows : usable + bad rows seen; bad_rows and first_reason describe the unusable ones;
    sample : (m, d) float32, m <= the requested sample size, uniformly drawn usable rows."""

    rows: int
    bad_rows: int
    first_reason: str
    sample: np.ndarray


class ScanBatch:
    """``map_batches`` callable: one stats row, then the batch's sampled rows.

    Output columns: x (B', d) float32, is_stats bool, rows int64, bad int64, reason str.
    """

    def __init__(self, column: str, dim: int, fraction: float, seed: int) -> None:
        self.column, self.dim, self.fraction, self.seed = column, dim, fraction, seed

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        screen = screen_rows(batch, self.column, self.dim)
        # A per-batch seed derived from the data keeps the sample independent of scheduling.
        salt = zlib.crc32(screen.matrix[:1].tobytes()) if len(screen.matrix) else 0
        rng = np.random.default_rng([self.seed, salt, len(screen.valid)])
        picked = screen.matrix[rng.random(len(screen.matrix)) < self.fraction]
        bad = ~screen.valid
        reason = str(screen.reasons[np.flatnonzero(bad)[0]]) if bad.any() else ""
        m = len(picked)
        return {
            "x": np.concatenate([np.zeros((1, self.dim), np.float32), picked]),
            "is_stats": np.array([True] + [False] * m),
            "rows": np.array([len(screen.valid)] + [0] * m, dtype=np.int64),
            "bad": np.array([int(bad.sum())] + [0] * m, dtype=np.int64),
            "reason": np.array([reason] + [""] * m, dtype=object),
        }


def scan_input(info: InputInfo, sample_rows: int, seed: int) -> ScanResult:
    """One streaming pass over the input: row counts, bad rows, and a uniform sample."""
    fraction = min(1.0, 1.2 * sample_rows / info.num_rows + 1e-9)
    scanned = read_dataset(info, [info.column]).map_batches(
        ScanBatch(info.column, info.dim, fraction, seed), batch_format="pyarrow"
    )
    rows = bad = 0
    reason = ""
    parts: list[np.ndarray] = []
    for batch in scanned.iter_batches(batch_format="numpy", batch_size=None):
        stats = batch["is_stats"].astype(bool)
        rows += int(batch["rows"][stats].sum())
        bad += int(batch["bad"][stats].sum())
        reason = reason or next((r for r in batch["reason"][stats] if r), "")
        parts.append(np.asarray(batch["x"][~stats], dtype=np.float32).reshape(-1, info.dim))
    sample = np.concatenate(parts) if parts else np.zeros((0, info.dim), np.float32)
    if len(sample) > sample_rows:
        rng = np.random.default_rng(seed)
        sample = sample[np.sort(rng.choice(len(sample), sample_rows, replace=False))]
    return ScanResult(rows, bad, reason, np.ascontiguousarray(sample))
