"""Trained models on object storage: a directory with model.safetensors + metadata.json.

The one owner of the model artifact between the stages: ``tell train`` publishes it
(:func:`publish`, or :func:`publish_two_level` for ``--levels 2``: the
``<out>/<name>/model`` rule), ``tell explain`` loads a TELL model (:func:`load_model`),
``tell assign`` either kind (:func:`load_assignable`; metadata ``"model": "two_level"``
marks a :class:`tell.two_level.TwoLevelModel`), and manifests name it (:func:`model_id`,
:func:`routing`, and the default run id of an assignment, :func:`assignment_run_id`).
Bytes in, bytes out: the (de)serialisation is :mod:`tell.checkpoint`'s and
:mod:`tell.two_level`'s; nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobs import storage
from tell import checkpoint
from tell.errors import TellCheckpointError, TellCollapseError, TellConfigError, TellDataError
from tell.model import TELLNet
from tell.two_level import DEFAULT_N_PROBE, TwoLevelModel
from tell.two_level import MODEL_KIND as TWO_LEVEL

MODEL_DIR = "model"
AnyModel = TELLNet | TwoLevelModel


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
    _write(uri, *checkpoint.dump(model, metadata))


def publish_two_level(
    model: TwoLevelModel, out: str | storage.Location, name: str, metadata: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Publish a two-level model as ``<out>/<name>/model`` with ``metadata`` beside the
    model's own description (:meth:`TwoLevelModel.dump`: kind, sizes, fit_info, format
    version; those win over ``metadata``). Returns (the model's URI, its metadata)."""
    weights, own = model.dump()
    meta = {**metadata, **json.loads(own)}
    uri = model_uri(out, name)
    _write(uri, weights, json.dumps(meta, indent=2, sort_keys=True).encode())
    return uri, meta


def _write(uri: str, weights: bytes, meta: bytes) -> None:
    """metadata.json goes last, so a reader never sees metadata without its weights."""
    loc = storage.resolve(uri)
    storage.write_bytes(loc.join(checkpoint.WEIGHTS_FILE), weights)
    storage.write_bytes(loc.join(checkpoint.METADATA_FILE), meta)


def is_two_level(metadata: dict[str, Any]) -> bool:
    """Whether a model's metadata describes a :class:`TwoLevelModel`."""
    return metadata.get("model") == TWO_LEVEL


def load_model(uri: str) -> tuple[TELLNet, dict[str, Any]]:
    """Read and validate a TELL model directory (never unpickles); a two-level model is
    refused with one line (:func:`load_assignable` reads either kind).

    Returns (model in eval mode, metadata).
    """
    weights, metadata = _read(uri)
    if is_two_level(checkpoint.parse_metadata(metadata, uri)):
        raise TellCheckpointError(
            f"{uri} is a two-level model (tell train --levels 2), not a TELL model; read "
            "it with jobs.model.load_assignable."
        )
    model, meta = checkpoint.restore(weights, metadata, source=uri)
    return model.eval(), meta


def load_assignable(uri: str) -> tuple[AnyModel, dict[str, Any]]:
    """Read and validate either kind of model directory (never unpickles): a TELL model in
    eval mode or a :class:`TwoLevelModel` (on the CPU), and its metadata."""
    weights, metadata = _read(uri)
    meta = checkpoint.parse_metadata(metadata, uri)
    if is_two_level(meta):
        return TwoLevelModel.restore(weights, metadata, source=uri), meta
    model, meta = checkpoint.restore(weights, metadata, source=uri)
    return model.eval(), meta


def model_shape(model: AnyModel) -> tuple[int, int]:
    """(values per input row, k fine centers) of either kind of model."""
    if isinstance(model, TwoLevelModel):
        return model.n_features, model.n_clusters
    return model.spec.input_dim, model.cluster.n_clusters


def routing(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a manifest records of how rows were routed: ``{"levels": 1}``, or for a
    two-level model its coarse centers and the routed-vs-exact disagreement measured at
    training (``{"levels": 2, "n_coarse": ..., "disagreement": {"rate", "rows", "n_probe"}}``;
    an assignment run adds its own measure, ``routing_check``)."""
    if not is_two_level(metadata):
        return {"levels": 1}
    return {
        "levels": 2,
        "n_coarse": metadata.get("n_coarse"),
        "disagreement": metadata.get("disagreement"),
    }


def routed_probes(model: AnyModel, n_probe: int | None, uri: str) -> int | None:
    """The coarse groups a two-level model searches per row: ``n_probe``, else
    ``DEFAULT_N_PROBE`` (at most the model's coarse centers); None for a one-level model
    (``uri``), which has no coarse level to set it for."""
    if not isinstance(model, TwoLevelModel):
        if n_probe is not None:
            raise TellConfigError(
                f"The 'n_probe' applies to two-level models (tell train --levels 2); "
                f"{uri} has one level. Drop n_probe."
            )
        return None
    if n_probe is None:
        return min(DEFAULT_N_PROBE, model.n_coarse)
    if n_probe > model.n_coarse:
        raise TellConfigError(
            f"The 'n_probe' must be at most the model's {model.n_coarse} coarse centers. "
            f"Got {n_probe}."
        )
    return n_probe


def routing_check(n_probe: int, rows: int, differs: int) -> dict[str, Any]:
    """What a manifest, a summary or a report records of a two-level model's routing check
    (:meth:`TwoLevelModel.routing_check`): the groups searched, the rows also searched
    exactly, how many of those the routing missed and that rate (None when no row was
    checked)."""
    return {"n_probe": n_probe, "rows": rows, "differs": differs,
            "rate": differs / rows if rows else None}  # fmt: skip


def _read(uri: str) -> tuple[bytes, bytes]:
    """(weights, metadata) bytes of the model directory ``uri``."""
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
    return files[checkpoint.WEIGHTS_FILE], files[checkpoint.METADATA_FILE]


def model_id(metadata: dict[str, Any]) -> str:
    """A stable identifier of a trained model for manifests: run name and epoch, or run
    name and sizes for a two-level model (it has no epochs)."""
    run = metadata.get("run_name", "model")
    if is_two_level(metadata):
        return f"{run}@two_level-k{metadata.get('n_clusters', '?')}"
    return f"{run}@epoch{metadata.get('epoch', '?')}"


def assignment_run_id(
    metadata: dict[str, Any], model: str, data: str, column: str, id_columns: Sequence[str]
) -> str:
    """A stable run id from the model, data and column: re-running the same assignment
    replaces its own output instead of adding a new run."""
    key = "\n".join([model_id(metadata), model, data, column, *id_columns])
    return "assign-" + hashlib.sha256(key.encode()).hexdigest()[:12]
