"""TELLNet: an autoencoder plus the clustering layer behind ONE forward().

Under DDP only what goes through the wrapped module's forward() is synchronised, so
forward() returns everything the loss needs: features, scores, hard labels and the
reconstruction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from tell.assign import top2
from tell.encoders import EncoderSpec, build_autoencoder
from tell.layer import DEFAULT_ALPHA, ClusterLayer


class TELLOutput(NamedTuple):
    """What one forward pass returns.

    z : Tensor (B, d_z), float32, unit L2 norm per row (the feature space of the centers).
    scores : Tensor (B, k), ``W z`` without gradient; argmax = nearest center.
    labels : Tensor (B,), int64, hard assignment (argmax of scores).
    top2_scores : Tensor (B, 2), scores of the nearest and the second-nearest center.
    picked : Tensor (B,), ``W_c(i) . z_i``, the score of each row's own center, WITH gradient
        (to W, and to z unless features are detached): all that L_clu needs.
    x_hat : Tensor (B, D) reconstruction g(z), or None for the identity encoder.
    """

    z: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    top2_scores: torch.Tensor
    picked: torch.Tensor
    x_hat: torch.Tensor | None


class TELLNet(nn.Module):
    """Encoder f, decoder g and :class:`ClusterLayer` trained end to end.

    Parameters
    ----------
    spec : EncoderSpec
        Which encoder/decoder pair to build and its dimensions.
    n_clusters : int
        k.
    alpha : float
        Scale of the clustering layer's weights.
    """

    def __init__(self, spec: EncoderSpec, n_clusters: int, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__()
        self.spec = spec
        self.encoder, self.decoder = build_autoencoder(spec)
        self.cluster = ClusterLayer(n_clusters, spec.feature_dim, alpha)

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit features (B, d_z) of inputs (B, D). Not for training under DDP."""
        return F.normalize(self.encoder(x), dim=1)

    def forward(self, x: torch.Tensor, detach_features: bool = False) -> TELLOutput:
        """Run the whole model on a batch (B, D).

        ``detach_features=True`` (the even epochs of the reference schedule) computes the
        scores on ``z.detach()`` so the clustering loss trains only the centers.
        """
        z = F.normalize(self.encoder(x), dim=1)
        z_clu = z.detach() if detach_features else z
        with torch.no_grad():
            scores = self.cluster(z_clu)  # (B, k)
            labels, _, best, second = top2(scores)
        # Only the assigned center's score enters L_clu (the hard one-hot of the reference
        # code), so its gradient is a sparse row update instead of a second (B, k) GEMM.
        picked = (self.cluster.weight[labels] * z_clu).sum(dim=1)  # (B,)
        x_hat = self.decoder(z) if self.decoder is not None else None
        return TELLOutput(z, scores, labels, torch.stack((best, second), 1), picked, x_hat)
