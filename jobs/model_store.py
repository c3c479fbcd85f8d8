"""Trained models on object storage: a directory with model.safetensors + metadata.json."""

from __future__ import annotations

from typing import Any

from jobs import storage
from tell import checkpoint
from tell.errors import TellCheckpointError
from tell.model import TELLNet


def save_model(uri: str, model: TELLNet, metadata: dict[str, Any]) -> None:
    """Write the model (without optimizer state) under ``uri``; metadata.json goes last so a
    reader never sees metadata without its weights."""
    weights, meta = checkpoint.dump(model, metadata)
    loc = storage.resolve(uri)
    storage.write_bytes(loc.join(checkpoint.WEIGHTS_FILE), weights)
    storage.write_bytes(loc.join(checkpoint.METADATA_FILE), meta)


def load_model(uri: str) -> tuple[TELLNet, dict[str, Any]]:
    """Read and validate a model directory (never unpickles).

    Returns (model in eval mode, metadata).
    """
    loc = storage.resolve(uri)
    if loc.is_s3:
        # The endpoint, credentials and bucket first, with one LIST: the HEADs below get
        # bare 403s (no error code), which cannot tell rejected credentials from denied
        # access. (write=True: a missing model is reported below, with its own hint.)
        storage.check_access(loc, write=True)
    files = {}
    for name in (checkpoint.METADATA_FILE, checkpoint.WEIGHTS_FILE):
        path = loc.join(name)
        if not storage.exists(path):
            raise TellCheckpointError(
                f"No {name} under model location {uri}; pass the 'model' directory that "
                "'tell train' wrote."
            )
        files[name] = storage.read_bytes(path)
    model, meta = checkpoint.restore(
        files[checkpoint.WEIGHTS_FILE], files[checkpoint.METADATA_FILE], source=uri
    )
    return model.eval(), meta


def model_id(metadata: dict[str, Any]) -> str:
    """A stable identifier of a trained model for manifests (run name and epoch)."""
    return f"{metadata.get('run_name', 'model')}@epoch{metadata.get('epoch', '?')}"
