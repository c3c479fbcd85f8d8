import numpy as np
import pytest

from tell.metrics import (
    PartitionInertia,
    cluster_accuracy,
    cluster_sizes,
    clustering_scores,
    inertia,
    partition_inertia,
)


def test_acc_is_invariant_to_label_permutation():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(y, np.array([2, 2, 0, 0, 1, 1])) == 1.0


def test_acc_with_empty_cluster_zero():
    # The reference code's ACC breaks when cluster 0 is empty; ours must not.
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 1, 2, 2, 3, 3])  # cluster 0 unused, k=4 > 3 classes
    assert cluster_accuracy(y, pred) == 1.0


def test_acc_with_fewer_clusters_than_classes_counts_unmatched_as_errors():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 1, 1])
    assert cluster_accuracy(y, pred) == pytest.approx(4 / 6)


def test_acc_hand_example():
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, 0, 0])
    # best map: 1->0 (2 right), 0->1 (3 right)
    assert cluster_accuracy(y, pred) == pytest.approx(5 / 6)


def test_scores_and_sizes():
    y = np.array([0, 0, 1, 1])
    s = clustering_scores(y, np.array([1, 1, 0, 0]))
    assert s == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}
    assert cluster_sizes(np.array([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]


def test_inertia_and_partition_inertia():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    labels = np.array([0, 0, 1])
    assert partition_inertia(x, labels) == pytest.approx(2.0)
    centers = np.array([[0.0, 0.0], [10.0, 1.0]])
    assert inertia(x, centers, labels) == pytest.approx(0 + 4 + 1)


def test_partition_inertia_streamed_over_chunks_equals_the_whole():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 5)).astype(np.float32)
    labels = rng.integers(0, 40, size=1000) * 3  # labels 0..117, most never used
    acc = PartitionInertia(120, 5)
    for start in range(0, 1000, 128):
        acc.add(x[start : start + 128], labels[start : start + 128])
    assert acc.value == pytest.approx(partition_inertia(x, labels), rel=1e-9)
