"""A label-free verdict: did the learned encoder give better clusters than k-means would?

Users have no labels. What they can compare is how well each partition follows the rows'
own neighbourhoods *in the input space*, where both partitions are judged by the same ruler:
the neighbour agreement (the fraction of each row's 10 nearest neighbours, by cosine, that
share its cluster) of the learned model's clusters against that of the identity encoder
(spherical k-means, TELL's identity model) fitted on the same bounded sample. The learned
encoder "helped" when its agreement is higher by at least :data:`HELPED_MARGIN`.

Why not the silhouette: it rewards compact, spherical clusters in the input space, which is
what k-means optimises, so it prefers k-means even where the learned clusters are far
better (digits: mlp ACC 0.895 has silhouette 0.285, k-means ACC 0.797 has 0.305). The
neighbour agreement measures whether a partition cuts through the data's local structure
(digits' true classes: 0.963; k-means: 0.91). Both are reported. docs/DEFAULTS.md shows how
the verdict agrees with the labelled one on the benchmark sets.

The signal is one-sided, and ``reading`` says so. Below a margin it is noise: over the 31
learned runs of the quality benchmarks, the runs that did *not* help (by the labels) reached
up to +0.009 of agreement over k-means (two held-out text runs that lost 3 and 6 ACC points
were called "helped" without a margin), while every run above +0.02 helped (MNIST, +0.05 to
+0.06; three later runs on a 10k subset of MNIST, +0.024 to +0.034, helped too). With the
margin every run called "helped" did help, but a gain that does not show in the input
space's neighbourhoods goes unseen (digits: all 10 runs of the defaults helped,
by 2.1 to 12.7 ACC points, and none clears the margin; nine other input-space measures,
from 5 to 30 neighbours, random walks, normalised cut, modularity, boundary density and
agreement with a spectral clustering, miss them too: bench-results/verdict-candidates.json).
So "not helped" reads "not confirmed", never "worse".
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

VERDICT_SAMPLE_ROWS = 5000
_CHUNK_ROWS = 1024
N_NEIGHBORS = 10
# The learned partition's neighbour agreement must exceed k-means's by this much to count as
# "helped" (module docstring: differences below 0.01 came in both directions).
HELPED_MARGIN = 0.02


def verdict_rows(n_clusters: int) -> int:
    """Rows the verdict judges: 5,000, or 5 per cluster when k is larger (O(n^2) cost)."""
    return max(VERDICT_SAMPLE_ROWS, 5 * n_clusters)


@torch.no_grad()
def cosine_silhouette(x: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> float:
    """Mean silhouette of ``labels`` under the cosine distance ``1 - cos(x_i, x_j)``.

    Parameters
    ----------
    x : Tensor of shape (n, D), float; rows are L2-normalised here.
    labels : Tensor of shape (n,), int64 in [0, n_clusters).
    n_clusters : k.

    Returns
    -------
    float in [-1, 1]; rows alone in their cluster count 0 (scikit-learn's convention).
    Cost: O(n^2 D) in chunks of 1,024 rows; meant for a bounded sample.
    """
    x = F.normalize(x.double(), dim=1)
    labels = labels.to(x.device)
    onehot = F.one_hot(labels, n_clusters).double()  # (n, k)
    sizes = onehot.sum(dim=0)  # (k,)
    total = 0.0
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        dist = (1.0 - x[rows] @ x.T).clamp_min(0.0)  # (c, n)
        sums = dist @ onehot  # (c, k): summed distance to each cluster's rows
        own = labels[rows]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp_min(1.0)
        other = sums / sizes.clamp_min(1.0)
        other.scatter_(1, own[:, None], float("inf"))
        other[:, sizes == 0] = float("inf")
        b = other.min(dim=1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        s = torch.where(own_size > 1, s, torch.zeros_like(s))
        total += float(s.sum())
    return total / x.shape[0]


@torch.no_grad()
def neighbour_agreement(
    x: torch.Tensor, labels: torch.Tensor, n_neighbors: int = N_NEIGHBORS
) -> float:
    """Fraction of each row's ``n_neighbors`` nearest rows (cosine) in its own cluster.

    Parameters
    ----------
    x : Tensor of shape (n, D), float; rows are L2-normalised here. n > n_neighbors.
    labels : Tensor of shape (n,), int64.

    Returns
    -------
    float in [0, 1], averaged over rows. Cost: O(n^2 D) in chunks of 1,024 rows.
    """
    x = F.normalize(x.float(), dim=1)
    labels = labels.to(x.device)
    same = 0.0
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        sims = x[start : start + _CHUNK_ROWS] @ x.T  # (c, n)
        own = torch.arange(start, start + sims.shape[0], device=x.device)
        sims[torch.arange(sims.shape[0], device=x.device), own] = -float("inf")
        neighbours = sims.topk(n_neighbors, dim=1).indices  # (c, m)
        same += float((labels[neighbours] == labels[own, None]).float().sum())
    return same / (x.shape[0] * n_neighbors)


def encoder_verdict(
    x_sample: torch.Tensor,
    learned_labels: torch.Tensor,
    identity_labels: torch.Tensor,
    n_clusters: int,
) -> dict[str, float | bool | int | str]:
    """Compare the learned partition with the identity (k-means) partition of the same rows.

    Parameters
    ----------
    x_sample : Tensor (n, D), the rows as given to the model (flattened).
    learned_labels, identity_labels : Tensors (n,), int64, the two partitions.
    n_clusters : k.

    Returns
    -------
    dict with ``agreement_learned``, ``agreement_identity`` (neighbour agreement),
    ``silhouette_learned``, ``silhouette_identity`` (reported, not judged on), ``helped``
    (learned agreement >= identity's + :data:`HELPED_MARGIN`), ``reading`` (what ``helped``
    does and does not say, one line), ``rows`` and ``how`` (a one-line description).
    """
    flat = x_sample.reshape(x_sample.shape[0], -1)
    learned = neighbour_agreement(flat, learned_labels)
    identity = neighbour_agreement(flat, identity_labels)
    helped = learned >= identity + HELPED_MARGIN
    return {
        "agreement_learned": learned,
        "agreement_identity": identity,
        "silhouette_learned": cosine_silhouette(flat, learned_labels, n_clusters),
        "silhouette_identity": cosine_silhouette(flat, identity_labels, n_clusters),
        "helped": bool(helped),
        "reading": _reading(helped),
        "rows": int(flat.shape[0]),
        "how": f"share of each row's {N_NEIGHBORS} nearest neighbours (cosine, input space) in "
        "its cluster: learned encoder vs identity encoder (spherical k-means) on the same sample",
    }


def _reading(helped: bool) -> str:
    """One line on what the verdict means: a confirmed gain, or no confirmation."""
    if helped:
        return (
            "helped: the learned clusters follow the input's own neighbourhoods better than "
            "k-means's"
        )
    return (
        "not confirmed: the input's neighbourhoods show no gain over k-means; a learned "
        "encoder can still have helped (on pixel data this check misses most gains: "
        "docs/DEFAULTS.md), so compare on labelled rows if you have some"
    )


__all__ = [
    "HELPED_MARGIN",
    "VERDICT_SAMPLE_ROWS",
    "cosine_silhouette",
    "encoder_verdict",
    "neighbour_agreement",
    "verdict_rows",
]
