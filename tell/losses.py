"""The two terms of the TELL objective, computed exactly as the reference code does."""

from __future__ import annotations

import torch
from torch.nn import functional as F

DEFAULT_CLUSTER_WEIGHT = 0.01


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all B*D entries (reference: ``nn.MSELoss()``), a scalar."""
    return F.mse_loss(x_hat, x)


def cluster_loss(
    picked: torch.Tensor,
    n_clusters: int,
    alpha: float,
    weight: float = DEFAULT_CLUSTER_WEIGHT,
) -> torch.Tensor:
    """The reference code's L_clu, a scalar.

    ``(weight / alpha) * mean over the B*k entries of (2 alpha - onehot(c) * s)``; only the
    assigned center's score ``s_i,c(i)`` is nonzero in ``onehot(c) * s``, so it is computed
    from those B scores. With unit features and centers this equals
    ``weight * 2 * (1 - 1/k) + (weight / k) * mean_i ||z_i - Omega_c(i)||^2``:
    a constant plus the k-means objective, so its gradient is the k-means gradient.
    ``weight`` is the paper's lambda (0.01).

    Parameters
    ----------
    picked : Tensor of shape (B,), ``W_c(i) . z_i`` for the assigned center c(i).
    n_clusters : int, k.
    alpha : float, the layer's scale.
    weight : float, lambda.
    """
    # mean over B*k of (2a - onehot*s) == 2a - sum_i s_i,c(i) / (B k)
    mean_term = 2.0 * alpha - picked.sum() / (picked.shape[0] * n_clusters)
    return (weight / alpha) * mean_term


def cluster_loss_constant(n_clusters: int, weight: float = DEFAULT_CLUSTER_WEIGHT) -> float:
    """The constant part of :func:`cluster_loss`: ``2 * weight * (1 - 1/k)``."""
    return 2.0 * weight * (1.0 - 1.0 / n_clusters)
