"""Clustering quality: ACC (Hungarian), NMI, ARI, inertia (also streamed over chunks) and the
cluster-size histogram."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one map of clusters to labels (Hungarian), fraction of rows it gets right.

    Works for any label values, empty clusters and k != number of classes: the
    contingency table is built over the labels that occur, and rows left unmatched when
    k != classes count as errors.

    Parameters
    ----------
    y_true, y_pred : arrays of shape (n,), integer labels.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} != {y_pred.size}.")
    if y_true.size == 0:
        raise ValueError("cluster_accuracy needs at least one row.")
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((clusters.size, classes.size), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y_true.size)


def cluster_sizes(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Rows per cluster, shape (k,), int64 (empty clusters count 0)."""
    return np.bincount(np.asarray(labels).ravel(), minlength=n_clusters).astype(np.int64)


def inertia(z: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared Euclidean distances of rows z (n, d) to their centers (k, d)."""
    diff = np.asarray(z, dtype=np.float64) - np.asarray(centers, dtype=np.float64)[labels]
    return float(np.einsum("ij,ij->", diff, diff))


def clustering_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ACC, NMI (arithmetic normalisation) and ARI as a dict of floats in [0, 1] (ARI >= -1)."""
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def partition_inertia(x: np.ndarray, labels: np.ndarray) -> float:
    """The k-means objective of a partition: sum of squared distances to each cluster's MEAN.

    Compares partitions fairly whatever centers their method keeps (TELL keeps unit
    centers on the sphere, k-means keeps means inside it).
    """
    x = np.asarray(x)
    uniques, inverse = np.unique(np.asarray(labels).ravel(), return_inverse=True)
    total = PartitionInertia(uniques.size, x.shape[1])
    total.add(x, inverse)
    return total.value


class PartitionInertia:
    """:func:`partition_inertia` accumulated over chunks of rows, for sets too large for memory.

    Holds the per-cluster sums (k, d) and counts (k,) in float64 (``k * d * 8`` bytes), never
    the rows: ``add`` every chunk, then read :attr:`value`.

    Parameters
    ----------
    n_clusters : int, labels are in [0, n_clusters).
    n_features : int, d.

    Examples
    --------
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    >>> acc = PartitionInertia(2, 2)
    >>> acc.add(x[:2], np.array([0, 0])); acc.add(x[2:], np.array([1]))
    >>> acc.value == partition_inertia(x, [0, 0, 1]) == 2.0
    True
    """

    def __init__(self, n_clusters: int, n_features: int) -> None:
        self._sums = torch.zeros(n_clusters, n_features, dtype=torch.float64)
        self._counts = torch.zeros(n_clusters, dtype=torch.float64)
        self._sq_norms = 0.0

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Add rows ``x`` (m, d) with their integer ``labels`` (m,)."""
        rows = torch.from_numpy(np.asarray(x, dtype=np.float64))  # (m, d)
        index = torch.from_numpy(np.asarray(labels, dtype=np.int64).ravel())
        self._sums.index_add_(0, index, rows)
        self._counts += torch.bincount(index, minlength=self._counts.shape[0]).double()
        self._sq_norms += float(torch.einsum("ij,ij->", rows, rows))

    @property
    def value(self) -> float:
        """Sum of squared distances of the rows added so far to their cluster's mean."""
        used = self._counts > 0
        sums = self._sums[used]
        means_sq = torch.einsum("ij,ij->i", sums, sums) / self._counts[used]  # (k_used,)
        return self._sq_norms - float(means_sq.sum())
