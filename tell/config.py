"""Typed, validated hyperparameters of a TELL model and its training.

One schema serves the estimator, the YAML job configs and the CLI: unknown keys, wrong
types and impossible values are refused with the key's name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tell.choices import ENCODERS, INITS, OPTIMIZERS
from tell.errors import TellConfigError

if TYPE_CHECKING:
    from tell.encoders import EncoderSpec


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the model and of its training.

    Attributes
    ----------
    k : number of clusters (>= 2).
    encoder : "identity" (raw embeddings), "mlp" or "conv".
    latent_dim : size of the unit feature for mlp/conv.
    hidden_dims : widths of the MLP's hidden layers.
    image_shape : (H, W, C) for the conv encoder.
    epochs : clustering passes over the data (the reference alternates centers/features
        per epoch).
    pretrain_epochs : autoencoder-only epochs before the centers are initialised; None:
        automatic (see ``tell.schedule.pretrain_epochs_for``).
    batch_size : rows per step (global batch; split across workers in the jobs); None:
        automatic (``tell.schedule.batch_size_for``: 256 for mlp/conv, about 2 rows per
        center for identity).
    epoch_rows : rows one clustering epoch trains on (a fresh random subset each epoch);
        None: automatic (``tell.schedule.epoch_rows_for``: all rows for mlp/conv, at most
        256 per center but at least 65,536 for identity).
    optimizer : the autoencoder's optimizer (the reference: Adadelta, lr 1.0).
    lr : its learning rate.
    alpha : scale of the clustering layer (rows of W at norm 2*alpha).
    cluster_weight : lambda, the weight of L_clu.
    grad_fraction : each center's gradient is rescaled to this fraction of its norm.
    center_lr : multiplier of the normalised center step (1.0 = the reference).
    init : "k-means++" (greedy, on a sample of encoded features) or "random" (the paper).
    repair : move dead and redundant centers into the worst-fitted clusters between epochs.
    init_sample_rows : rows sampled for k-means++; None: automatic
        (``tell.schedule.init_sample_rows_for``: 64 per center, 10,000 to 1,000,000).
    n_init : restarts; the one with the lowest final L_clu wins (the paper picks 5).
    tol : stop when the inertia of two consecutive centers epochs differs by at most this
        fraction (0: never); None: automatic (``tell.schedule.tol_for``: 0.003 for
        identity, 0 for learned encoders).
    collapse_guard : restart (then refuse) a run whose learned features collapse (see
        ``tell.schedule``).
    max_imbalance : bound on max cluster size / mean cluster size during training (>= 1),
        by a size penalty in the training assignment (``tell.balance``); None: off.
    seed : random seed of everything (init, shuffling, weights).
    """

    k: int
    encoder: str = "identity"
    latent_dim: int = 10
    hidden_dims: tuple[int, ...] = (500, 500, 2000)
    image_shape: tuple[int, ...] | None = None
    epochs: int = 20
    pretrain_epochs: int | None = None
    batch_size: int | None = None
    epoch_rows: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    alpha: float = 0.001
    cluster_weight: float = 0.01
    grad_fraction: float = 0.1
    center_lr: float = 1.0
    init: str = "k-means++"
    repair: bool = True
    init_sample_rows: int | None = None
    n_init: int = 1
    tol: float | None = None
    collapse_guard: bool = True
    max_imbalance: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("k", self.k, low=2)
        check_choice("encoder", self.encoder, ENCODERS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("init", self.init, INITS)
        for name in ("latent_dim", "epochs", "n_init"):
            check_range(name, getattr(self, name), low=1)
        for name in ("batch_size", "epoch_rows", "init_sample_rows"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1)
        if self.pretrain_epochs is not None:
            check_range("pretrain_epochs", self.pretrain_epochs, low=0)
        for name in ("lr", "alpha", "cluster_weight", "grad_fraction", "center_lr"):
            check_range(name, getattr(self, name), low=0.0, low_open=True)
        if self.tol is not None:
            check_range("tol", self.tol, low=0.0, high=1.0)
        if self.max_imbalance is not None:
            check_range("max_imbalance", self.max_imbalance, low=1.0)
        if self.encoder == "conv" and (self.image_shape is None or len(self.image_shape) != 3):
            raise TellConfigError(
                f"'image_shape' must be [H, W, C] when encoder is 'conv'. Got {self.image_shape!r}."
            )

    def encoder_spec(self, input_dim: int) -> EncoderSpec:
        """The encoder/decoder to build for inputs of ``input_dim`` values per row."""
        from tell.encoders import EncoderSpec  # torch: only once a model is built

        return EncoderSpec(
            kind=self.encoder,
            input_dim=input_dim,
            latent_dim=self.latent_dim,
            hidden_dims=tuple(self.hidden_dims),
            image_shape=tuple(self.image_shape) if self.image_shape else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["image_shape"] = list(self.image_shape) if self.image_shape else None
        return d


def check_choice(name: str, value: object, choices: typing.Iterable[str]) -> None:
    """Refuse ``value`` unless it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise TellConfigError(f"The {name!r} must be one of {choices}. Got {value!r}.")


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Refuse a number outside [low, high] (or (low, high] with ``low_open``), NaN or inf."""
    bad = not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and value > high)
    if bad:
        left = "(" if low_open else "["
        rule = (
            f"in {left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        )
        raise TellConfigError(f"The {name!r} must be {rule}. Got {value!r}.")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass field annotation; return it in canonical form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TellConfigError(
                f"The {name!r} must be a list. Got {type(value).__name__} {value!r}."
            )
        return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise TellConfigError(f"The {name!r} must be true or false. Got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TellConfigError(
                f"The {name!r} must be an integer. Got {type(value).__name__} {value!r}."
            )
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TellConfigError(
                f"The {name!r} must be a number. Got {type(value).__name__} {value!r}."
            )
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TellConfigError(
                f"The {name!r} must be a string. Got {type(value).__name__} {value!r}."
            )
        return value
    return value


T = typing.TypeVar("T")


def from_mapping(cls: type[T], mapping: dict[str, Any], where: str) -> T:
    """Build the dataclass ``cls`` from a plain mapping (YAML, CLI), checking every key.

    Unknown keys, missing required keys and wrong types raise :class:`TellConfigError`
    naming the key and ``where`` it was found (e.g. "train config").
    """
    if not isinstance(mapping, dict):
        raise TellConfigError(f"The {where} must be a mapping of keys to values. Got {mapping!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise TellConfigError(
            f"Unknown key {unknown[0]!r} in the {where}; valid keys are {sorted(fields)}."
        )
    missing = [
        n
        for n, f in fields.items()
        if n not in mapping
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise TellConfigError(f"The {where} needs the key {missing[0]!r}.")
    values = {n: _coerce(n, v, hints[n]) for n, v in mapping.items()}
    return cls(**values)


__all__ = ["TrainConfig", "check_choice", "check_range", "from_mapping"]
