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

from tell.encoders import EncoderSpec, build_autoencoder
from tell.layer import DEFAULT_ALPHA, ClusterLayer


class TELLOutput(NamedTuple):
    """What one forward pass returns.

    z : Tensor (B, d_z), float32, unit L2 norm per row (the feature space of the centers).
    scores : Tensor (B, k), ``W z``; argmax = nearest center.
    labels : Tensor (B,), int64, hard assignment (argmax of scores); carries no gradient.
    x_hat : Tensor (B, D) reconstruction g(z), or None for the identity encoder.
    """

    z: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
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
        scores = self.cluster(z.detach() if detach_features else z)
        labels = scores.detach().argmax(dim=1)
        x_hat = self.decoder(z) if self.decoder is not None else None
        return TELLOutput(z, scores, labels, x_hat)
