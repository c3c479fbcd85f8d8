"""Center initialisation: the paper's random init and greedy k-means++ on a sample.

Both return unit centers of shape (k, d), float32. The jobs draw the sample through Ray
Data and broadcast the result; this module only sees an in-memory array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

INITS = ("k-means++", "random")


def random_centers(n_clusters: int, n_features: int, seed: int) -> torch.Tensor:
    """Unit centers (k, d) drawn uniformly on the sphere (the paper's initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_clusters, n_features, generator=generator), dim=1)


def kmeans_plusplus(
    z: np.ndarray | torch.Tensor,
    n_clusters: int,
    seed: int,
    n_local_trials: int | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding (scikit-learn's, 2 + log k candidates per step).

    Parameters
    ----------
    z : array of shape (n, d), float, unit rows; n >= k. Inputs are assumed validated.
    n_clusters : int, k.
    seed : int, random seed.
    n_local_trials : int or None, candidates per step (None: 2 + int(log k)).

    Returns
    -------
    Tensor of shape (k, d), float32, unit rows: k distinct rows of ``z``.
    """
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus  # slow import, used once

    z_np = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    # float64: scikit-learn computes float32 distances through a chunked upcast that is
    # several times slower; the chosen rows are exact copies of float32 rows either way.
    z_np = np.ascontiguousarray(z_np, dtype=np.float64)
    centers, _ = sk_kmeans_plusplus(
        z_np, n_clusters, random_state=seed, n_local_trials=n_local_trials
    )
    return F.normalize(torch.from_numpy(np.asarray(centers, dtype=np.float32)), dim=1)


def initial_centers(
    init: str, z_sample: np.ndarray | torch.Tensor, n_clusters: int, seed: int
) -> torch.Tensor:
    """Dispatch on ``init`` ("k-means++" or "random"); returns unit centers (k, d)."""
    if init == "random":
        return random_centers(n_clusters, z_sample.shape[1], seed)
    return kmeans_plusplus(z_sample, n_clusters, seed)
