"""The TELL clustering layer: k-means written as one linear layer on the unit sphere.

With unit-norm features ``z`` and centers ``Omega_j``, the squared distance is
``||z - Omega_j||^2 = 2 - 2 Omega_j . z``, so the scores ``W z`` with
``W = 2 * alpha * Omega`` rank the centers exactly like the distances do (argmax of the
score = nearest center). ``alpha`` is the reference code's scale (0.001): rows of ``W``
are kept at norm ``2 * alpha``.

The center update is explicit (it never goes through the encoder's optimizer):
``backward -> (all-reduce under DDP) -> normalize_center_grads_ -> step_ -> project_``.
Each nonzero gradient row is rescaled to ``grad_fraction * ||W_j||`` so that one step moves
a center by a fixed fraction of its norm toward the mean of the points assigned to it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_ALPHA = 0.001
DEFAULT_GRAD_FRACTION = 0.1


class ClusterLayer(nn.Module):
    """k cluster centers held as the weight of a bias-free linear layer.

    Parameters
    ----------
    n_clusters : int
        Number of centers k.
    n_features : int
        Dimension d of the (unit-norm) features.
    alpha : float
        Scale of the weights: every row of ``weight`` has L2 norm ``2 * alpha``.

    Attributes
    ----------
    weight : nn.Parameter
        Tensor of shape (k, d), float32, each row at L2 norm ``2 * alpha``.
    size_cap : buffer
        Scalar tensor, float64: the most rows (of this process, per epoch) the balanced
        training assignment gives one center (see :func:`tell.engine.run_epoch`); inf
        until a balanced epoch measured it. Not persistent: checkpoints do not carry it.

    Examples
    --------
    >>> layer = ClusterLayer(3, 4)
    >>> torch.allclose(layer.centers.norm(dim=1), torch.ones(3))
    True
    """

    def __init__(self, n_clusters: int, n_features: int, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.weight = nn.Parameter(torch.randn(n_clusters, n_features))
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        self.register_buffer("size_cap", inf, persistent=False)
        self.project_()

    @property
    def n_clusters(self) -> int:
        return self.weight.shape[0]

    @property
    def centers(self) -> torch.Tensor:
        """Unit centers ``Omega_hat = W / (2 alpha)``, shape (k, d), detached."""
        return self.weight.detach() / (2.0 * self.alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Scores ``W z`` of shape (B, k) for unit features ``z`` of shape (B, d)."""
        return F.linear(z, self.weight)

    def distances(self, scores: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (B, k) in [0, 4] recovered from scores (B, k)."""
        return (2.0 - scores / self.alpha).clamp_min(0.0)

    @torch.no_grad()
    def set_centers_(self, centers: torch.Tensor) -> None:
        """Load centers of shape (k, d) (any nonzero norm) and project them."""
        self.weight.copy_(centers.to(self.weight))
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """Re-project every row of ``weight`` onto the sphere of radius ``2 * alpha``."""
        norm = self.weight.norm(dim=1, keepdim=True).clamp_min_(1e-12)  # (k, 1)
        self.weight.mul_((2.0 * self.alpha) / norm)

    @torch.no_grad()
    def normalize_center_grads_(self, grad_fraction: float = DEFAULT_GRAD_FRACTION) -> None:
        """Rescale each nonzero gradient row j to norm ``grad_fraction * ||W_j||``.

        Rows whose gradient is exactly zero (no point assigned in the batch) stay zero.
        """
        grad = self.weight.grad
        if grad is None:
            return
        grad_norm = grad.norm(dim=1, keepdim=True)  # (k, 1)
        target = grad_fraction * self.weight.norm(dim=1, keepdim=True)
        # A zero row stays zero: 0 * (target / 1e-30) = 0.
        grad.mul_(target.div_(grad_norm.clamp_min_(1e-30)))

    @torch.no_grad()
    def step_(self, lr: float = 1.0, grad_fraction: float = DEFAULT_GRAD_FRACTION) -> None:
        """One explicit center update: normalise the gradient, SGD step, re-project."""
        if self.weight.grad is None:
            return
        self.normalize_center_grads_(grad_fraction)
        self.weight.add_(self.weight.grad, alpha=-lr)
        self.project_()
