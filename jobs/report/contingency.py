"""Clustering scores from a streamed (clusters x labels) contingency table.

ACC, NMI and ARI depend on the labels only through the contingency table, so they can be
computed over any number of rows with memory in O(k x n_labels). The formulas match
:func:`tell.metrics.clustering_scores` (scikit-learn's NMI with arithmetic normalisation and
ARI, the Hungarian ACC) to float precision; a unit test checks it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import linear_sum_assignment


def scores_from_contingency(table: np.ndarray) -> dict[str, float]:
    """ACC, NMI and ARI of the partition described by ``table``.

    Parameters
    ----------
    table : array of shape (n_clusters, n_labels), non-negative ints: rows of each label in
        each cluster. Empty rows and columns are allowed.

    Returns
    -------
    dict with float "acc", "nmi" in [0, 1] and "ari" in [-1, 1].
    """
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]  # (clusters used, labels present)
    n = t.sum()
    if n == 0:
        raise ValueError("The contingency table is empty: no labelled rows.")
    rows, cols = linear_sum_assignment(t, maximize=True)
    acc = float(t[rows, cols].sum() / n)
    a, b = t.sum(axis=1), t.sum(axis=0)
    if len(a) == len(b) == 1:  # one cluster, one label: a perfect match (as scikit-learn)
        return {"acc": acc, "nmi": 1.0, "ari": 1.0}
    nz = t > 0
    outer = np.outer(a, b)
    mi = float((t[nz] / n * (np.log(t[nz] * n) - np.log(outer[nz]))).sum())
    h_a = float(-(a / n * np.log(a / n)).sum())
    h_b = float(-(b / n * np.log(b / n)).sum())
    nmi = 0.0 if mi <= 0 else mi / max((h_a + h_b) / 2.0, np.finfo(np.float64).eps)
    pairs = float((t * (t - 1)).sum() / 2)
    pairs_a, pairs_b = float((a * (a - 1)).sum() / 2), float((b * (b - 1)).sum() / 2)
    total = n * (n - 1) / 2
    expected = pairs_a * pairs_b / total if total else 0.0
    maximum = (pairs_a + pairs_b) / 2
    ari = 1.0 if maximum == expected else (pairs - expected) / (maximum - expected)
    return {"acc": acc, "nmi": float(min(nmi, 1.0)), "ari": float(ari)}


class Contingency:
    """Accumulates cluster sizes, inertia and the (cluster x label) table batch by batch.

    Label values may be of any Arrow type; null (and NaN) labels count in the sizes and
    inertia but not in the table. Rows with a null or negative cluster are counted in
    ``unassigned``.
    """

    def __init__(self) -> None:
        self._table = np.zeros((0, 0), dtype=np.int64)
        self._sizes = np.zeros(0, dtype=np.int64)
        self._index: dict[Any, int] = {}
        self.label_values: list[Any] = []
        self.inertia = 0.0
        self.unassigned = 0

    @property
    def n_clusters(self) -> int:
        """1 + the largest cluster id seen."""
        return len(self._sizes)

    def _grow(self, k: int, n_labels: int) -> None:
        rows, cols = max(k, self._table.shape[0]), max(n_labels, self._table.shape[1])
        if (rows, cols) != self._table.shape:
            grown = np.zeros((rows, cols), dtype=np.int64)
            grown[: self._table.shape[0], : self._table.shape[1]] = self._table
            self._table = grown
        if rows > len(self._sizes):
            self._sizes = np.concatenate([self._sizes, np.zeros(rows - len(self._sizes), np.int64)])

    def _label_codes(self, labels: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Global label index per row, -1 for null labels."""
        if isinstance(labels, pa.ChunkedArray):
            labels = labels.combine_chunks()
        if pa.types.is_floating(labels.type):  # NaN is a missing label, not a class
            labels = pc.if_else(pc.is_nan(labels), pa.scalar(None, labels.type), labels)
        encoded = labels.dictionary_encode()
        lut = np.empty(len(encoded.dictionary), dtype=np.int64)
        for i, value in enumerate(encoded.dictionary.to_pylist()):
            if value not in self._index:
                self._index[value] = len(self.label_values)
                self.label_values.append(value)
            lut[i] = self._index[value]
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return np.where(indices >= 0, lut[np.maximum(indices, 0)] if len(lut) else -1, -1)

    def add(
        self,
        clusters: pa.Array | pa.ChunkedArray,
        distance: pa.Array | pa.ChunkedArray,
        labels: pa.Array | pa.ChunkedArray,
    ) -> None:
        """Add one batch: clusters (n,) ints, distance (n,) floats, labels (n,) any type."""
        c = pc.fill_null(clusters, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        d = pc.fill_null(distance, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        y = self._label_codes(labels)
        ok = c >= 0
        self.unassigned += int((~ok).sum())
        c, d, y = c[ok], d[ok], y[ok]
        if c.size == 0:
            return
        self._grow(int(c.max()) + 1, len(self.label_values))
        self._sizes += np.bincount(c, minlength=len(self._sizes))
        self.inertia += float(d.sum())
        labelled = y >= 0
        k, n_labels = self._table.shape
        flat = np.bincount(c[labelled] * n_labels + y[labelled], minlength=k * n_labels)
        self._table += flat.reshape(k, n_labels)

    def sizes(self, k: int) -> np.ndarray:
        """Rows per cluster, shape (max(k, n_clusters),), int64."""
        self._grow(k, self._table.shape[1])
        return self._sizes.copy()

    def table(self, k: int) -> np.ndarray:
        """Labelled rows per (cluster, label), shape (max(k, n_clusters), n_labels), int64."""
        self._grow(k, self._table.shape[1])
        return self._table.copy()
