"""The two terms of the TELL objective, computed exactly as the reference code does."""

from __future__ import annotations

import torch
from torch.nn import functional as F

DEFAULT_CLUSTER_WEIGHT = 0.01


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all B*D entries (reference: ``nn.MSELoss()``), a scalar."""
    return F.mse_loss(x_hat, x)


def cluster_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    weight: float = DEFAULT_CLUSTER_WEIGHT,
) -> torch.Tensor:
    """The reference code's L_clu, a scalar.

    ``(weight / alpha) * mean over the B*k entries of (2 alpha - onehot(c) * s)``.
    With unit features and centers this equals
    ``weight * 2 * (1 - 1/k) + (weight / k) * mean_i ||z_i - Omega_c(i)||^2``:
    a constant plus the k-means objective, so its gradient is the k-means gradient.
    ``weight`` is the paper's lambda (0.01).

    Parameters
    ----------
    scores : Tensor of shape (B, k), the layer's scores ``W z``.
    labels : Tensor of shape (B,), int64, the assigned (argmax) center of each row.
    alpha : float, the layer's scale.
    weight : float, lambda.
    """
    picked = scores.gather(1, labels[:, None]).squeeze(1)  # (B,)
    n_clusters = scores.shape[1]
    # mean over B*k of (2a - onehot*s) == 2a - sum_i s_i,c(i) / (B k)
    mean_term = 2.0 * alpha - picked.sum() / (scores.shape[0] * n_clusters)
    return (weight / alpha) * mean_term


def cluster_loss_constant(n_clusters: int, weight: float = DEFAULT_CLUSTER_WEIGHT) -> float:
    """The constant part of :func:`cluster_loss`: ``2 * weight * (1 - 1/k)``."""
    return 2.0 * weight * (1.0 - 1.0 / n_clusters)
