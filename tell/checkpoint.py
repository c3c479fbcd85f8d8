"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint is two blobs, ``model.safetensors`` and ``metadata.json``. This module turns a
model into those bytes and back, validating that the tensors match what the metadata says;
the jobs move the bytes to and from object storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tell.encoders import EncoderSpec
from tell.errors import TellCheckpointError, TellConfigError
from tell.model import TELLNet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
_OPTIMIZER_PREFIX = "optimizer/"
_PICKLE_MAGIC = (
    b"\x80\x02",
    b"\x80\x03",
    b"\x80\x04",
    b"\x80\x05",
    b"PK\x03\x04",
)  # pickle, torch.save zip


def dump(
    model: TELLNet,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[bytes, bytes]:
    """Serialise ``model`` (and optionally its optimizer state) to (safetensors, JSON) bytes.

    ``metadata`` is free-form JSON-serialisable data (config, seeds, epoch, metrics,
    input schema); the model's own description (encoder spec, k, alpha, format version)
    is added under fixed keys.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if optimizer is not None:
        tensors.update(_optimizer_tensors(optimizer))
    meta = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "encoder": model.spec.to_dict(),
        "n_clusters": model.cluster.n_clusters,
        "alpha": model.cluster.alpha,
    }
    return st_save(tensors), json.dumps(meta, indent=2, sort_keys=True).encode()


def restore(
    weights: bytes,
    metadata: bytes,
    optimizer: torch.optim.Optimizer | None = None,
    source: str = "checkpoint",
) -> tuple[TELLNet, dict[str, Any]]:
    """Rebuild the model from (safetensors, JSON) bytes after validating both.

    Raises TellCheckpointError when the weights are a pickle, corrupt, from a newer format
    or disagree with the metadata (``source`` names the checkpoint in messages).
    """
    meta = parse_metadata(metadata, source)
    tensors = load_tensors(weights, source)
    try:
        spec = EncoderSpec.from_dict(meta["encoder"])
        model = TELLNet(spec, int(meta["n_clusters"]), float(meta["alpha"]))
    except (KeyError, TypeError, ValueError, TellConfigError) as exc:
        raise TellCheckpointError(
            f"{source}: metadata does not describe a model ({exc})."
        ) from None
    state = {k: v for k, v in tensors.items() if not k.startswith(_OPTIMIZER_PREFIX)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise TellCheckpointError(
            f"{source}: tensors disagree with the metadata "
            f"(missing {missing[:3]}, unexpected {extra[:3]})."
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise TellCheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} but the metadata "
                f"implies {tuple(expected[name].shape)}."
            )
    model.load_state_dict(state)
    if optimizer is not None:
        _load_optimizer_tensors(optimizer, tensors)
    return model, meta


def parse_metadata(metadata: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """Parse and version-check the JSON metadata."""
    try:
        meta = json.loads(metadata)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TellCheckpointError(f"{source}: {METADATA_FILE} is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise TellCheckpointError(f"{source}: {METADATA_FILE} has no integer 'format_version'.")
    if meta["format_version"] > FORMAT_VERSION:
        raise TellCheckpointError(
            f"{source}: checkpoint format version {meta['format_version']} is newer than this "
            f"version of tell supports ({FORMAT_VERSION}); upgrade tell-ray."
        )
    return meta


def save(
    model: TELLNet,
    directory: str | Path,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``model.safetensors`` and ``metadata.json`` into a local directory."""
    write_files(directory, *dump(model, metadata, optimizer))


def load(
    directory: str | Path, optimizer: torch.optim.Optimizer | None = None
) -> tuple[TELLNet, dict[str, Any]]:
    """Read a checkpoint written by :func:`save` from a local directory."""
    weights, meta = read_files(directory)
    return restore(weights, meta, optimizer, source=str(directory))


def write_files(directory: str | Path, weights: bytes, metadata: bytes) -> None:
    """Write the two blobs as ``model.safetensors`` and ``metadata.json`` into a local
    directory (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / WEIGHTS_FILE).write_bytes(weights)
    (directory / METADATA_FILE).write_bytes(metadata)


def read_files(directory: str | Path) -> tuple[bytes, bytes]:
    """(weights, metadata) bytes of a local directory written by :func:`write_files`."""
    directory = Path(directory)
    try:
        return (directory / WEIGHTS_FILE).read_bytes(), (directory / METADATA_FILE).read_bytes()
    except OSError as exc:
        raise TellCheckpointError(f"Cannot read checkpoint {directory}: {exc.strerror}.") from None


def load_tensors(weights: bytes, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Decode safetensors bytes into named CPU tensors, refusing pickles and corrupt files
    with a TellCheckpointError that names ``source``. Also used by :mod:`tell.two_level`."""
    header_len = int.from_bytes(weights[:8], "little") if len(weights) >= 8 else -1
    looks_safetensors = 0 < header_len <= len(weights) - 8 and weights[8:9] == b"{"
    if not looks_safetensors and weights.startswith(_PICKLE_MAGIC):
        raise TellCheckpointError(
            f"{source}: {WEIGHTS_FILE} is a pickle/torch.save file; only safetensors "
            "checkpoints are accepted (pickles can run code and are never loaded)."
        )
    try:
        return st_load(weights)
    except (SafetensorError, ValueError, OSError) as exc:
        raise TellCheckpointError(
            f"{source}: {WEIGHTS_FILE} is not a valid safetensors file ({exc})."
        ) from None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat named tensors."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{_OPTIMIZER_PREFIX}{index}/{key}"] = tensor.detach().cpu().contiguous()
    return out


def _load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith(_OPTIMIZER_PREFIX):
            index, key = name[len(_OPTIMIZER_PREFIX) :].split("/", 1)
            state.setdefault(int(index), {})[key] = tensor
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
