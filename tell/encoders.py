"""Encoder/decoder pairs. Every model takes and reconstructs flat rows of shape (B, D).

- ``identity``: no parameters, the feature is the L2-normalised input (raw embeddings;
  only the clustering layer learns: the billion-row path).
- ``mlp``: fully connected autoencoder for embeddings (the paper's FC AE shape).
- ``conv``: the paper's convolutional autoencoder for images of any H x W x C. Images
  arrive flattened in H, W, C order (as stored in Parquet) with pixels in [0, 1].

Encoders return the *unnormalised* latent; :class:`tell.model.TELLNet` normalises it.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tell.choices import ENCODERS
from tell.errors import TellConfigError


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder/decoder pair (stored in checkpoints).

    Attributes
    ----------
    kind : "identity" | "mlp" | "conv"
    input_dim : int, D, the length of a flat input row.
    latent_dim : int, size of the feature z (ignored by identity, where it equals D).
    hidden_dims : tuple of int, widths of the MLP's hidden layers.
    image_shape : (H, W, C) for conv, else None.
    """

    kind: str
    input_dim: int
    latent_dim: int = 10
    hidden_dims: tuple[int, ...] = field(default=(500, 500, 2000))
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODERS:
            raise TellConfigError(
                f"The 'encoder' must be one of {list(ENCODERS)}. Got {self.kind!r}."
            )
        if self.input_dim < 1:
            raise TellConfigError(f"The input dimension must be >= 1. Got {self.input_dim}.")
        if self.latent_dim < 1:
            raise TellConfigError(f"The 'latent_dim' must be >= 1. Got {self.latent_dim}.")
        if any(h < 1 for h in self.hidden_dims):
            raise TellConfigError(
                f"Every 'hidden_dims' entry must be >= 1. Got {self.hidden_dims}."
            )
        if self.kind == "conv":
            if self.image_shape is None or len(self.image_shape) != 3:
                raise TellConfigError(
                    f"The conv encoder needs 'image_shape' = (H, W, C). Got {self.image_shape!r}."
                )
            h, w, c = self.image_shape
            if h * w * c != self.input_dim:
                raise TellConfigError(
                    f"'image_shape' {tuple(self.image_shape)} has {h * w * c} values per row, "
                    f"but the input rows have {self.input_dim}."
                )

    @property
    def feature_dim(self) -> int:
        """Dimension of the unit feature z on which the centers live."""
        return self.input_dim if self.kind == "identity" else self.latent_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["image_shape"] = list(self.image_shape) if self.image_shape else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSpec:
        image_shape = d.get("image_shape")
        return cls(
            kind=d["kind"],
            input_dim=int(d["input_dim"]),
            latent_dim=int(d.get("latent_dim", 10)),
            hidden_dims=tuple(int(h) for h in d.get("hidden_dims", (500, 500, 2000))),
            image_shape=tuple(int(s) for s in image_shape) if image_shape else None,
        )


def _mlp(widths: list[int], final_activation: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


def _conv_out(size: int, stride: int) -> int:
    """Output size of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


class ConvEncoder(nn.Module):
    """conv(16,s1)-conv(32,s2)-conv(32,s1)-conv(16,s2), each BN-ReLU, fc(256)-ReLU, fc(latent).

    Input (B, H*W*C) flat in H, W, C order; output (B, latent_dim).
    """

    channels = (16, 32, 32, 16)
    strides = (1, 2, 1, 2)

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        super().__init__()
        h, w, c = image_shape
        self.image_shape = image_shape
        blocks: list[nn.Module] = []
        in_ch = c
        self.sizes = [(h, w)]  # spatial size before each conv, then after the last
        for out_ch, stride in zip(self.channels, self.strides, strict=True):
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
            in_ch = out_ch
            h, w = _conv_out(h, stride), _conv_out(w, stride)
            self.sizes.append((h, w))
        self.conv = nn.Sequential(*blocks)
        self.fc = nn.Sequential(
            nn.Linear(in_ch * h * w, 256), nn.ReLU(), nn.Linear(256, latent_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = self.image_shape
        images = x.view(-1, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.fc(self.conv(images).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder` with transposed convolutions and a sigmoid output.

    Input (B, latent_dim); output (B, H*W*C) flat in H, W, C order, in (0, 1).
    """

    def __init__(self, encoder: ConvEncoder, latent_dim: int) -> None:
        super().__init__()
        self.image_shape = encoder.image_shape
        self.sizes = list(reversed(encoder.sizes))  # from the bottleneck back to (H, W)
        channels = list(reversed(encoder.channels))  # 16, 32, 32, 16
        out_channels = [*channels[1:], encoder.image_shape[2]]  # 32, 32, 16, C
        strides = list(reversed(encoder.strides))
        h, w = self.sizes[0]
        self.bottleneck = (channels[0], h, w)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, channels[0] * h * w)
        )
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=s, padding=1)
            for c_in, c_out, s in zip(channels, out_channels, strides, strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in out_channels[:-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.fc(z).view(-1, *self.bottleneck)
        for i, deconv in enumerate(self.deconvs):
            y = deconv(y, output_size=self.sizes[i + 1])
            y = torch.sigmoid(y) if i == len(self.deconvs) - 1 else F.relu(self.norms[i](y))
        return y.permute(0, 2, 3, 1).flatten(1)  # (B, H*W*C)


def build_autoencoder(spec: EncoderSpec) -> tuple[nn.Module, nn.Module | None]:
    """Return ``(encoder, decoder)`` for ``spec``; identity has no decoder (None)."""
    if spec.kind == "identity":
        return nn.Identity(), None
    if spec.kind == "mlp":
        widths = [spec.input_dim, *spec.hidden_dims, spec.latent_dim]
        return _mlp(widths, None), _mlp(widths[::-1], None)
    encoder = ConvEncoder(spec.image_shape, spec.latent_dim)
    return encoder, ConvDecoder(encoder, spec.latent_dim)
