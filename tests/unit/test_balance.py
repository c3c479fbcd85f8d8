"""Cluster sizes under control (issue #14): ``max_imbalance`` bounds the largest cluster."""

import numpy as np
import pytest
import torch

from tell.assign import assign
from tell.config import TrainConfig
from tell.encoders import EncoderSpec
from tell.engine import capacity_mask, run_epoch
from tell.errors import TellConfigError
from tell.init import initial_centers
from tell.model import TELLNet
from tell.schedule import CENTERS, EpochPlan

BATCH = 64


def skewed_blobs() -> torch.Tensor:
    """One tight blob of 600 rows beside five looser ones of 60: k-means with k=6 gives
    the big one 4x the mean cluster size."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    sizes, spreads = [600, 60, 60, 60, 60, 60], [0.08, 0.15, 0.15, 0.15, 0.15, 0.15]
    parts = zip(centers, sizes, spreads, strict=True)
    x = np.concatenate([c + spread * rng.normal(size=(n, 16)) for c, n, spread in parts])
    return torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32)), dim=1)


def fit(x: torch.Tensor, max_imbalance: float | None, epochs: int = 6):
    """Identity TELL, k=6, through run_epoch; returns the history and the prediction."""
    torch.manual_seed(0)
    cfg = TrainConfig(k=6, max_imbalance=max_imbalance)
    net = TELLNet(EncoderSpec("identity", x.shape[1]), 6)
    net.cluster.set_centers_(initial_centers("k-means++", x, 6, 0))
    generator = torch.Generator().manual_seed(0)
    history = []
    for epoch in range(epochs):
        plan = EpochPlan(epoch, CENTERS, False, False, epoch < epochs - 3, 0.01)
        batches = x[torch.randperm(x.shape[0], generator=generator)].split(BATCH)
        history.append(run_epoch(net, batches, None, plan, cfg))
    return history, assign(x, net.cluster.centers).labels


def imbalance(labels: torch.Tensor, k: int) -> float:
    sizes = torch.bincount(labels, minlength=k).double()
    return float(sizes.max() / sizes.mean())


def test_max_imbalance_bounds_the_largest_cluster_on_a_skewed_set():
    x = skewed_blobs()
    plain_history, plain_labels = fit(x, None)
    assert plain_history[-1]["size_imbalance"] == pytest.approx(4.0, abs=0.05)
    assert imbalance(plain_labels, 6) == pytest.approx(4.0, abs=0.05)

    history, labels = fit(x, 2.0)
    slack = BATCH * 6 / x.shape[0]  # a center may take one more batch when it reaches its cap
    assert history[0]["size_imbalance"] > 3.5  # the first epoch measures the cap
    assert all(h["size_imbalance"] <= 2.0 + slack for h in history[1:])
    # Prediction is the plain nearest center, balanced here because the centers moved
    # (not bounded in general: a tight dense blob can keep its rows nearest its center).
    assert imbalance(labels, 6) <= 2.2


def test_capacity_mask_excludes_full_centers_but_never_all():
    counts = torch.tensor([5.0, 2.0, 7.0], dtype=torch.float64)
    cap = torch.tensor(5.0, dtype=torch.float64)
    assert capacity_mask(counts, cap).tolist() == [True, False, True]
    assert capacity_mask(counts + 10, cap).tolist() == [False, False, False]


def test_max_imbalance_below_one_is_refused():
    with pytest.raises(TellConfigError, match=r"'max_imbalance' must be in \[1.0"):
        TrainConfig(k=3, max_imbalance=0.5)
