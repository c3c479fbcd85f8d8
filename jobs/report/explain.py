"""``tell explain``: a self-contained HTML report of a trained model on a sample of a data set.

Runs on the driver without Ray: the input is opened (:func:`jobs.input.inspect.open_input`),
a bounded random sample (:mod:`jobs.input.sample`) is encoded and assigned with the model,
the centers are decoded into prototypes when the inputs are images, and
:func:`jobs.report.page.build_report` renders the page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from jobs import progress, storage
from jobs.config import ExplainJob
from jobs.input.inspect import InputSet, open_input
from jobs.input.sample import Sample, read_sample
from jobs.model import AnyModel, load_assignable, model_shape, routed_probes, routing_check
from jobs.report.page import CoarseLevel, build_report
from tell.assign import assign
from tell.errors import TellDataError
from tell.metrics import clustering_scores
from tell.model import TELLNet
from tell.two_level import TwoLevelModel, disagreement_rows

logger = logging.getLogger("tell.explain")

Shape = tuple[int, int, int] | None  # (H, W, C) of image inputs
NEAREST_PER_CLUSTER = 5
ID_COLUMN = "id"
SEED = 0


class Explained(NamedTuple):
    """The sample as the report needs it: unit features z (n, d_z), the assignment of each
    row (labels (n,) int64, distance and margin (n,) float32), the centers (k, d_z), their
    images (k, H, W, C) or None, and a two-level model's coarse level (or None)."""

    z: np.ndarray
    labels: np.ndarray
    distance: np.ndarray
    margin: np.ndarray
    centers: np.ndarray
    prototypes: np.ndarray | None
    coarse: CoarseLevel | None


def explain_one_level(model: TELLNet, x: np.ndarray, image_shape: Shape) -> Explained:
    """Encode the sample x (n, D) and assign it to the model's centers."""
    z = encode(model, x)
    centers = model.cluster.centers
    r = assign(torch.from_numpy(z), centers)
    return Explained(z, r.labels.numpy(), r.distance.numpy(), r.margin.numpy(),
                     centers.numpy(), prototypes(model, image_shape), None)  # fmt: skip


def explain_two_level(
    model: TwoLevelModel, x: np.ndarray, image_shape: Shape, n_probe: int, seed: int = SEED
) -> Explained:
    """Normalise the sample x (n, d) (as ``tell assign`` does), route it through the
    ``n_probe`` nearest coarse groups, and search a bounded share of it exactly
    (:func:`tell.two_level.disagreement_rows`) to count how often routing misses."""
    z = F.normalize(torch.from_numpy(x), dim=1)
    r = model.explain(z, n_probe=n_probe)
    n = len(z)
    checked = torch.zeros(n, dtype=torch.bool)
    picked = np.random.default_rng(seed).choice(
        n, disagreement_rows(n, model.n_clusters), replace=False
    )
    checked[torch.from_numpy(picked)] = True
    check = model.routing_check(z, r.labels, checked)
    coarse = CoarseLevel(
        labels=r.coarse_labels.numpy(),
        shares=model.offsets.diff().numpy(),
        n_probe=n_probe,
        check_rows=int(checked.sum()),
        differs=int((check == 1).sum()),
    )
    images = None if image_shape is None else center_images(model.fine_centers, image_shape)
    return Explained(z.numpy(), r.labels.numpy(), r.distance.numpy(), r.margin.numpy(),
                     model.fine_centers.numpy(), images, coarse)  # fmt: skip


def encode(model: TELLNet, x: np.ndarray) -> np.ndarray:
    """Unit features (n, d_z) float32 of inputs x (n, D) (``TELLNet.encode_all``)."""
    return model.encode_all(x).cpu().numpy()


@torch.no_grad()
def prototypes(model: TELLNet, image_shape: tuple[int, int, int] | None) -> np.ndarray | None:
    """Centers as images (k, H, W, C) in [0, 1], or None when the model's inputs are not images.

    Models with a decoder decode the centers; the identity model's centers live in pixel
    space already and are shown rescaled (each center divided by its largest value).
    """
    if image_shape is None:
        return None
    centers = model.cluster.centers  # (k, d_z)
    if model.decoder is not None:
        images = model.decoder(centers).clamp(0.0, 1.0)
        return images.reshape(len(centers), *image_shape).numpy()
    if model.spec.kind == "identity":
        return center_images(centers, image_shape)
    return None


def center_images(centers: torch.Tensor, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Centers that live in pixel space (k, H*W*C) as images (k, H, W, C) in [0, 1]: each
    divided by its largest value (unit centers are far darker than the images)."""
    images = centers.clamp_min(0.0) / centers.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return images.reshape(len(centers), *image_shape).numpy()


def _image_shape(model: AnyModel, info: InputSet) -> Shape:
    own = None if isinstance(model, TwoLevelModel) else model.spec.image_shape
    shape = own or info.image_shape
    if shape is not None and int(np.prod(shape)) == model_shape(model)[0]:
        return tuple(int(s) for s in shape)
    return None


def _has_nulls(values: np.ndarray) -> bool:
    """Nulls of an Arrow column read with to_numpy: None (object) or NaN (float)."""
    if values.dtype == object:
        return any(v is None for v in values)
    return bool(np.issubdtype(values.dtype, np.floating) and np.isnan(values).any())


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _nearest_rows(
    labels: np.ndarray,
    distance: np.ndarray,
    sample: Sample,
    k: int,
    text_column: str | None,
    image_shape: tuple[int, int, int] | None,
) -> list[list[dict[str, Any]]]:
    ids = sample.columns.get(ID_COLUMN)
    out: list[list[dict[str, Any]]] = []
    order = np.lexsort((distance, labels))  # by cluster, then distance
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for j in range(k):
        rows = []
        for i in order[bounds[j] : bounds[j + 1]][:NEAREST_PER_CLUSTER]:
            row = {
                "id": _plain(ids[i]) if ids is not None else f"sample row {i}",
                "distance": float(distance[i]),
                "text": sample.columns[text_column][i] if text_column else None,
            }
            if image_shape is not None:
                row["image"] = np.clip(sample.x[i].reshape(image_shape), 0.0, 1.0)
            rows.append(row)
        out.append(rows)
    return out


def _check_columns(job: ExplainJob, info: InputSet) -> list[str]:
    extra = []
    for key in ("label_column", "text_column"):
        name = getattr(job, key)
        if name is None:
            continue
        if name not in info.columns:
            raise TellDataError(
                f"The {key} {name!r} is not a column of {job.data}; columns are "
                f"{info.columns}. Set --{key.replace('_', '-')} to one of them or leave it out."
            )
        extra.append(name)
    if ID_COLUMN in info.columns and ID_COLUMN not in extra:
        extra.append(ID_COLUMN)
    return extra


def _write(out: str, html: str) -> str:
    if "://" in out:
        target = storage.resolve(out).join("report.html")
        storage.write_bytes(target, html.encode("utf-8"))
        return str(target)
    path = Path(out).expanduser().resolve() / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return str(path)


def main(job: ExplainJob) -> dict[str, Any]:
    """Load the model, sample the data, and write ``<out>/report.html``.

    Returns a summary: the report's path, rows sampled and dropped, clusters used, and
    ACC/NMI/ARI on the sample when a label column was given.
    """
    model, meta = load_assignable(job.model)
    n_probe = routed_probes(model, job.n_probe, job.model)
    info = open_input(job.data, job.column)
    info.require_width(model_shape(model)[0], job.model)
    sample = read_sample(info, _check_columns(job, info), job.sample_rows, SEED)
    y_true = None
    if job.label_column:
        y_true = sample.columns[job.label_column]
        if _has_nulls(y_true):
            raise TellDataError(
                f"Label column {job.label_column!r} of {job.data} has null values in the sample; "
                "fill them or leave --label-column out."
            )
    image_shape = _image_shape(model, info)
    if isinstance(model, TwoLevelModel):
        e = explain_two_level(model, sample.x, image_shape, n_probe or 1)
    else:
        e = explain_one_level(model, sample.x, image_shape)
    labels, distance, k = e.labels, e.distance, len(e.centers)
    sizes = np.bincount(labels, minlength=k)
    logger.info("explaining %d sampled rows of %s with %d clusters", len(labels), job.data, k)
    html = build_report(
        z_sample=e.z,
        labels=labels,
        distance=distance,
        margin=e.margin,
        centers=e.centers,
        cluster_sizes=sizes,
        prototypes=e.prototypes,
        nearest_rows=_nearest_rows(labels, distance, sample, k, job.text_column, image_shape),
        y_true=y_true,
        title=f"TELL report: {meta.get('run_name', 'model')} on {job.data}",
        history=meta.get("history"),
        metadata={
            "model_uri": job.model,
            "data_uri": job.data,
            "sample_rows": len(labels),
            "dropped_rows": sample.dropped,
            **meta,
        },
        coarse=e.coarse,
    )
    path = _write(job.out, html)
    summary: dict[str, Any] = {
        "report": path,
        "sample_rows": len(labels),
        "dropped_rows": sample.dropped,
        "n_clusters": k,
        "clusters_used": int((sizes > 0).sum()),
    }
    if e.coarse is not None:
        c = e.coarse
        summary.update(levels=2, n_coarse=len(c.shares), routing_check=routing_check(
            c.n_probe, c.check_rows, c.differs))  # fmt: skip
    if y_true is not None:
        summary["sample_scores"] = clustering_scores(y_true, labels)
    progress.line(f"report written to {path}")
    return summary
