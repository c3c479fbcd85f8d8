"""The label-free verdict (issue 11): its two measures against brute-force references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from tell.verdict import HELPED_MARGIN, cosine_silhouette, encoder_verdict, neighbour_agreement


@pytest.fixture
def rows(global_random_seed):
    rng = np.random.default_rng(global_random_seed)
    centers = rng.normal(size=(3, 6))
    labels = rng.integers(0, 3, 300)
    x = centers[labels] + 0.6 * rng.normal(size=(300, 6))
    return x, labels


def test_silhouette_equals_scikit_learns_cosine_silhouette(rows):
    x, labels = rows
    labels = labels.copy()
    labels[0] = 4  # a singleton cluster counts 0; cluster 3 is empty
    expected = silhouette_score(x, labels, metric="cosine")
    got = cosine_silhouette(torch.tensor(x), torch.tensor(labels), 5)
    assert got == pytest.approx(expected, abs=1e-9)


def test_neighbour_agreement_equals_a_brute_force_count(rows):
    x, labels = rows
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1)[:, :10]
    expected = (labels[neighbours] == labels[:, None]).mean()
    got = neighbour_agreement(torch.tensor(x), torch.tensor(labels))
    assert got == pytest.approx(expected, abs=1e-6)


def test_verdict_prefers_the_partition_that_follows_the_data(rows):
    x, labels = rows
    shuffled = np.random.default_rng(1).permutation(labels)
    verdict = encoder_verdict(torch.tensor(x), torch.tensor(labels), torch.tensor(shuffled), 3)
    assert verdict["helped"] and verdict["agreement_learned"] > verdict["agreement_identity"]
    assert verdict["rows"] == 300 and "nearest neighbours" in verdict["how"]
    worse = encoder_verdict(torch.tensor(x), torch.tensor(shuffled), torch.tensor(labels), 3)
    assert not worse["helped"]
    assert verdict["reading"].startswith("helped")
    assert worse["reading"].startswith("not confirmed")  # one-sided: never "worse"


def test_a_gain_smaller_than_the_margin_is_not_confirmed(rows):
    """Differences of neighbour agreement below HELPED_MARGIN came in both directions on the
    benchmark sets: a partition a little closer to the data is "not confirmed"."""
    x, labels = rows
    nudged = labels.copy()
    nudged[:3] = (labels[:3] + 1) % 3  # three rows moved: a tiny loss of agreement
    learned = neighbour_agreement(torch.tensor(x), torch.tensor(labels))
    other = neighbour_agreement(torch.tensor(x), torch.tensor(nudged))
    assert 0 < learned - other < HELPED_MARGIN
    verdict = encoder_verdict(torch.tensor(x), torch.tensor(labels), torch.tensor(nudged), 3)
    assert not verdict["helped"] and verdict["reading"].startswith("not confirmed")
