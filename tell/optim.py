"""The autoencoder's optimizer: one home for the names the config accepts and how each is built.

The centers never go through this optimizer: their update is the explicit normalised step
of :meth:`tell.layer.ClusterLayer.step_`.
"""

from __future__ import annotations

import torch
from torch import nn

from tell.choices import OPTIMIZERS
from tell.errors import TellConfigError


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer | None:
    """Optimizer over the autoencoder's parameters (never the centers); None if there are none.

    ``model`` is a :class:`tell.model.TELLNet`; its clustering layer's parameters (names
    starting with ``cluster.``) are left out.
    """
    params = [p for n, p in model.named_parameters() if not n.startswith("cluster.")]
    if not params:
        return None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise TellConfigError(f"The 'optimizer' must be one of {list(OPTIMIZERS)}. Got {name!r}.")


__all__ = ["OPTIMIZERS", "make_optimizer"]
