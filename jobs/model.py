"""Trained models on object storage: a directory with model.safetensors + metadata.json.

The one owner of the model artifact between the stages: ``tell train`` publishes it
(:func:`publish`: the ``<out>/<name>/model`` rule), ``tell assign`` and ``tell explain``
load it (:func:`load_model`), and manifests name it (:func:`model_id`, and the default run
id of an assignment, :func:`assignment_run_id`). Bytes in, bytes out: the (de)serialisation
is :mod:`tell.checkpoint`'s; nothing here unpickles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobs import storage
from tell import checkpoint
from tell.errors import TellCheckpointError, TellCollapseError, TellDataError
from tell.model import TELLNet

MODEL_DIR = "model"


def model_uri(out: str | storage.Location, name: str) -> str:
    """Where the model of training run ``name`` is published: ``<out>/<name>/model``."""
    root = out if isinstance(out, storage.Location) else storage.resolve(out)
    return root.join(name, MODEL_DIR).uri


def publish(
    checkpoint_dir: str | Path,
    out: str | storage.Location,
    name: str,
    annotate: Callable[[TELLNet, dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Publish the model of a local training checkpoint as ``<out>/<name>/model``.

    The optimizer state stays behind. A run whose collapse guard gave up
    (``tell.schedule``) is refused with the guard's message instead: a collapsed model is
    never published. ``annotate(net, meta)`` returns metadata to add (the train driver's
    label-free verdict). Returns (the model's URI, its metadata).
    """
    net, meta = checkpoint.load(checkpoint_dir)
    outcome = meta.get("outcome", {})
    if outcome.get("stop_reason") == "collapsed":
        raise TellCollapseError(outcome["message"])
    _refuse_untrained(name, meta, net.cluster.n_clusters)
    if annotate is not None:
        meta = {**meta, **annotate(net, meta)}
    uri = model_uri(out, name)
    save_model(uri, net, meta)
    return uri, meta


def _refuse_untrained(name: str, meta: dict[str, Any], k: int) -> None:
    """A run that never trained is not a model: an epoch that saw no rows, or a last epoch
    whose centers are all dead (the model would be its initial centers)."""
    empty = [h["epoch"] for h in meta.get("history", []) if h.get("rows", 1) == 0]
    dead = meta.get("metrics", {}).get("dead_centers", 0)
    if empty or dead >= k:
        what = f"epoch(s) {empty} saw no rows" if empty else f"all {k} centers are dead"
        raise TellDataError(
            f"Training run {name!r} did not train: {what}, so its model would be its "
            "initial centers; nothing was published. Use more rows or a smaller batch_size."
        )


def save_model(uri: str, model: TELLNet, metadata: dict[str, Any]) -> None:
    """Write the model (without optimizer state) under ``uri``; metadata.json goes last so a
    reader never sees metadata without its weights. The model's own description (encoder,
    k, alpha, format version) is :func:`tell.checkpoint.dump`'s, whatever ``metadata`` holds."""
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


def assignment_run_id(
    metadata: dict[str, Any], model: str, data: str, column: str, id_columns: Sequence[str]
) -> str:
    """A stable run id from the model, data and column: re-running the same assignment
    replaces its own output instead of adding a new run."""
    key = "\n".join([model_id(metadata), model, data, column, *id_columns])
    return "assign-" + hashlib.sha256(key.encode()).hexdigest()[:12]
