"""TELLNet: an autoencoder plus the clustering layer behind ONE forward().

Under DDP only what goes through the wrapped module's forward() is synchronised, so
forward() returns everything the loss needs: features, scores, hard labels and the
reconstruction.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tell.assign import top2_nearest
from tell.encoders import EncoderSpec, build_autoencoder
from tell.layer import DEFAULT_ALPHA, ClusterLayer

ENCODE_CHUNK_ROWS = 8192  # rows per encoder pass at inference: bounds the activations


class TELLOutput(NamedTuple):
    """What one forward pass returns.

    z : Tensor (B, d_z), float32, unit L2 norm per row (the feature space of the centers).
    labels : Tensor (B,), int64, hard assignment: the nearest center (of those not
        ``excluded``).
    top2_scores : Tensor (B, 2), scores ``W z`` (no gradient) of the nearest and the
        second-nearest center; an excluded center scores ``-2 alpha`` (distance 4).
    picked : Tensor (B,), ``W_c(i) . z_i``, the score of each row's own center, WITH gradient
        (to W, and to z unless features are detached): all that L_clu needs.
    x_hat : Tensor (B, D) reconstruction g(z), or None for the identity encoder.
    x_in : Tensor (B, D), the encoder's input after :class:`InputScaling`: the target of the
        reconstruction.
    """

    z: torch.Tensor
    labels: torch.Tensor
    top2_scores: torch.Tensor
    picked: torch.Tensor
    x_hat: torch.Tensor | None
    x_in: torch.Tensor


class InputScaling(nn.Module):
    """``x -> (x - shift) / scale``: the mlp autoencoder's input, standardised.

    ``shift`` (D,) is the per-feature mean and ``scale`` (a scalar) the root mean square of
    the centred entries, both measured on a sample (:meth:`fit_`) and kept as buffers, so
    checkpoints carry them and DDP broadcasts them. One scalar (not one per feature) keeps
    the geometry of the input: unit-norm embeddings (per-entry variance ~1/D) and raw pixels
    alike reach per-entry variance 1, so L_rec starts near 1 whatever the data and the
    clustering weight means the same on every data set. Before ``fit_`` it is the identity.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    @torch.no_grad()
    def fit_(self, x: torch.Tensor) -> None:
        """Measure shift and scale on a sample ``x`` of shape (n, D)."""
        x = x.to(self.shift.device, torch.float64)
        shift = x.mean(dim=0)
        scale = (x - shift).square().mean().sqrt().clamp_min(1e-12)
        self.shift.copy_(shift)
        self.scale.copy_(scale)


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
        # conv keeps pixels in [0, 1] (its decoder ends in a sigmoid); identity clusters
        # the rows as they are.
        self.input_scaling = InputScaling(spec.input_dim) if spec.kind == "mlp" else None

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input (B, D): ``x`` standardised (mlp) or as it is."""
        return self.input_scaling(x) if self.input_scaling is not None else x

    def fit_input_scaling_(self, x_sample: torch.Tensor) -> None:
        """Measure the input standardisation on rows (n, D) (mlp only; else a no-op)."""
        if self.input_scaling is not None:
            self.input_scaling.fit_(x_sample)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit features (B, d_z) of inputs (B, D). Not for training under DDP."""
        return F.normalize(self.encoder(self.scale_input(x)), dim=1)

    @torch.no_grad()
    def encode_all(
        self, x: torch.Tensor | np.ndarray, chunk_rows: int = ENCODE_CHUNK_ROWS
    ) -> torch.Tensor:
        """Unit features (n, d_z) float32 of inputs (n, D) for inference: in eval mode (batch
        norm uses its running statistics; the mode is restored after), without gradients, in
        chunks of ``chunk_rows`` rows moved to the model's device one at a time. A numpy
        input is copied chunk by chunk (it may be a read-only object-store view)."""
        device = self.cluster.weight.device
        was_training = self.training
        self.eval()
        try:
            parts = [self.cluster.weight.new_empty(0, self.cluster.weight.shape[1])]
            for start in range(0, len(x), chunk_rows):
                chunk = x[start : start + chunk_rows]
                chunk = torch.tensor(chunk) if isinstance(chunk, np.ndarray) else chunk
                parts.append(self.encode(chunk.to(device)))
            return torch.cat(parts)
        finally:
            self.train(was_training)

    def forward(
        self,
        x: torch.Tensor,
        detach_features: bool = False,
        excluded: torch.Tensor | None = None,
    ) -> TELLOutput:
        """Run the whole model on a batch (B, D).

        ``detach_features=True`` (the even epochs of the reference schedule) computes the
        scores on ``z.detach()`` so the clustering loss trains only the centers.
        ``excluded`` (k,) bool (the balanced training assignment) takes centers out of the
        assignment: their ``scores`` read ``-2 alpha`` (distance 4, the farthest), so
        ``labels`` and ``top2_scores`` are the nearest centers among the others.
        """
        x_in = self.scale_input(x)
        z = F.normalize(self.encoder(x_in), dim=1)
        z_clu = z.detach() if detach_features else z
        # The assignment in cache-sized chunks of rows (tell.assign): no (B, k) scores held.
        labels, _, best, second = top2_nearest(z_clu.detach(), self.cluster.centers, excluded)
        # Only the assigned center's score enters L_clu (the hard one-hot of the reference
        # code), so its gradient is a sparse row update instead of a second (B, k) GEMM.
        picked = (self.cluster.weight[labels] * z_clu).sum(dim=1)  # (B,)
        x_hat = self.decoder(z) if self.decoder is not None else None
        top2_scores = torch.stack((best, second), 1) * (2.0 * self.cluster.alpha)  # W z
        return TELLOutput(z, labels, top2_scores, picked, x_hat, x_in)
