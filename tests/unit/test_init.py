"""Seeding that scales in k (issue #14): greedy k-means++ and k-means|| in torch."""

import numpy as np
import pytest
import torch
from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus
from torch.nn import functional as F

from tell.assign import nearest
from tell.init import (
    initial_centers,
    kmeans_parallel,
    kmeans_plusplus,
    lloyd_,
    restarts_for,
    sample_rows_for,
    two_level_kmeans_parallel,
)


def _blobs(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(k, d, generator=generator), dim=1)
    labels = torch.randint(0, k, (n,), generator=generator)
    return F.normalize(centers[labels] + 0.15 * torch.randn(n, d, generator=generator), dim=1)


def _inertia(z: torch.Tensor, centers: torch.Tensor) -> float:
    return float(nearest(z, centers)[1].double().sum())


def two_level(z: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    return two_level_kmeans_parallel(z, k, seed, leaf_centers=8)


SEEDINGS = [kmeans_plusplus, kmeans_parallel, two_level]


@pytest.mark.parametrize("seeding", SEEDINGS)
def test_seedings_return_k_distinct_unit_rows_of_the_sample(seeding):
    z = _blobs(2000, 8, 30)
    centers = seeding(z, 30, 0)
    assert centers.shape == (30, 8) and centers.dtype == torch.float32
    torch.testing.assert_close(centers.norm(dim=1), torch.ones(30))
    assert torch.unique(centers, dim=0).shape[0] == 30
    rows = nearest(centers, z)[0]  # each center is a row of z
    assert torch.equal(z[rows], centers)
    assert torch.equal(seeding(z, 30, 0), centers)  # the seed decides


# Groups of 8 centers (5 groups here) cost some quality at the groups' borders.
@pytest.mark.parametrize(
    ("seeding", "ratio"), [(kmeans_plusplus, 1.05), (kmeans_parallel, 1.05), (two_level, 1.1)]
)
def test_seedings_are_as_good_as_scikit_learns(seeding, ratio):
    z = _blobs(3000, 16, 40, seed=1)
    ours = np.mean([_inertia(z, seeding(z, 40, s)) for s in range(3)])
    theirs = np.mean(
        [
            _inertia(z, torch.from_numpy(sklearn_kmeans_plusplus(z.numpy(), 40, random_state=s)[0]))
            for s in range(3)
        ]
    )
    assert ours <= ratio * theirs, (ours, theirs)


def test_kmeans_plusplus_uses_the_weights():
    # Two far groups; with the weight on the second group the first pick lands there.
    z = F.normalize(torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5), dim=1)
    z = z + torch.tensor([[0.0, 1e-3]]) * torch.arange(10.0)[:, None]
    weight = torch.tensor([1e-9] * 5 + [1.0] * 5, dtype=torch.float64)
    centers = kmeans_plusplus(F.normalize(z, dim=1), 1, 0, sample_weight=weight)
    assert centers[0, 1] > centers[0, 0]


def test_seeding_with_fewer_distinct_rows_than_k_still_returns_k_rows():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    for seeding in SEEDINGS:
        assert seeding(z, 3, 0).shape == (3, 2)
    assert kmeans_plusplus(z, 4, 0).shape == (4, 2)


def test_seeding_on_all_rows_picks_every_row():
    z = _blobs(50, 4, 5)
    centers = initial_centers("k-means++", z, 50, 0)
    assert torch.unique(centers, dim=0).shape[0] == 50


@pytest.mark.parametrize(
    ("k", "n_rows", "cap", "expected"),
    [
        (10, 10**9, 10**6, 10_000),  # the floor
        (1024, 10**9, 10**6, 65_536),  # 64 rows per center
        (65_536, 10**9, 10**6, 10**6),  # the cap
        (4096, 50_000, 10**6, 50_000),  # all rows
        (300, 100, 10**6, 100),  # fewer rows than k: all of them (validated elsewhere)
        (5000, 10**9, 1000, 5000),  # a cap below k: k rows
    ],
)
def test_sample_rows_for(k, n_rows, cap, expected):
    assert sample_rows_for(k, n_rows, cap) == expected


def test_restarts_fall_with_k():
    assert [restarts_for(k) for k in (2, 20, 21, 50, 100, 101, 256, 65536)] == [
        10, 10, 9, 4, 2, 1, 1, 1,
    ]  # fmt: skip


def test_lloyd_never_raises_the_inertia_and_keeps_unit_centers(global_random_seed):
    z = _blobs(2000, 8, 6, seed=global_random_seed)
    centers = kmeans_parallel(z, 6, global_random_seed).clone()
    before = _inertia(z, centers)
    assert lloyd_(z, centers, 10) <= before + 1e-6
    assert torch.allclose(centers.norm(dim=1), torch.ones(6), atol=1e-5)


def test_initial_centers_keep_the_best_restart(global_random_seed):
    """Restarts + Lloyd reach at most the inertia of the single seeding they start from."""
    z = _blobs(3000, 8, 10, seed=global_random_seed)
    single = _inertia(z, kmeans_parallel(z, 10, global_random_seed))
    assert _inertia(z, initial_centers("k-means++", z, 10, global_random_seed)) <= single
