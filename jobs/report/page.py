"""The explain report: one self-contained HTML page built from in-memory arrays.

No Ray and no I/O here: :func:`build_report` takes the sample's features and assignments
and returns the page as a string. Plots are PNG images embedded as ``data:`` URIs (no
external URL anywhere), and every piece of text that comes from data or metadata is
HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

from jobs.report import figures as figs
from jobs.report.html import CSS, img, metadata_table, section, table
from tell.errors import TellDataError
from tell.metrics import clustering_scores

MAX_TILES = 100  # prototypes drawn at most (the largest clusters when k is bigger)
MAX_GRID_ROWS = 20  # clusters in the "prototype + nearest members" image grid
MAX_TEXT_CHARS = 240


def _check(n: int, **arrays: Any) -> None:
    for name, arr in arrays.items():
        if arr is not None and len(arr) != n:
            raise TellDataError(f"build_report: {name!r} has {len(arr)} entries, expected {n}.")


def _shown_clusters(sizes: np.ndarray, limit: int) -> np.ndarray:
    """Cluster ids to detail: all of them by id when k <= limit, else the largest ``limit``."""
    if len(sizes) <= limit:
        return np.arange(len(sizes))
    return np.sort(np.argsort(-sizes, kind="stable")[:limit])


def _prototype_section(
    sizes: np.ndarray,
    prototypes: np.ndarray | None,
    nearest_rows: Sequence[Sequence[dict[str, Any]]] | None,
) -> str:
    parts: list[str] = []
    k = len(sizes)
    if prototypes is not None:
        ids = _shown_clusters(sizes, MAX_TILES)
        titles = [f"{j} · n={int(sizes[j])}" for j in ids]
        parts.append(
            '<p class="note">Each center drawn as an image: what a typical member '
            "of the cluster looks like (cluster id and rows in the sample).</p>"
        )
        parts.append(img(figs.prototype_tiles_png(prototypes[ids], titles), "decoded centers"))
    has_images = bool(nearest_rows) and any(
        r.get("image") is not None for rows in nearest_rows for r in rows
    )
    if has_images:
        ids = _shown_clusters(sizes, MAX_GRID_ROWS)
        width = max(len(nearest_rows[j]) for j in ids)
        grid = [
            ([prototypes[j]] if prototypes is not None else [])
            + [r.get("image") for r in nearest_rows[j]]
            + [None] * (width - len(nearest_rows[j]))
            for j in ids
        ]
        cols = (["center"] if prototypes is not None else []) + [
            f"nearest {i + 1}" for i in range(width)
        ]
        parts.append('<p class="note">The real rows of the sample nearest to each center.</p>')
        parts.append(
            img(
                figs.image_grid_png(grid, [f"cluster {j}" for j in ids], cols),
                "nearest rows per cluster",
            )
        )
    elif nearest_rows:
        ids = _shown_clusters(sizes, MAX_TILES)
        with_text = any(r.get("text") is not None for j in ids for r in nearest_rows[j])
        header = ["cluster", "rank", "id", "distance"] + (["text"] if with_text else [])
        rows = []
        for j in ids:
            for rank, r in enumerate(nearest_rows[j], start=1):
                text = r.get("text")
                text = "" if text is None else str(text)
                text = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"
                rows.append(
                    [j if rank == 1 else "", rank, r.get("id"), f"{float(r['distance']):.4f}"]
                    + ([text] if with_text else [])
                )
        parts.append(
            '<p class="note">The real rows of the sample nearest to each center '
            "stand in for the center itself.</p>"
        )
        parts.append(table(header, rows, {0, 1, 3}))
    if len(_shown_clusters(sizes, MAX_TILES)) < k:
        parts.append(f'<p class="note">Showing the {MAX_TILES} largest of {k} clusters.</p>')
    return "".join(parts) or '<p class="note">No prototypes: the model has no decoder.</p>'


def _per_cluster(labels, distance, margin, sizes, y_true) -> tuple[str, dict[str, float] | None]:
    k, n = len(sizes), len(labels)
    counts = np.bincount(labels, minlength=k)
    mean_d = np.bincount(labels, weights=distance, minlength=k) / np.maximum(counts, 1)
    finite = np.isfinite(margin)  # +inf: no runner-up (a two-level group of one center)
    with_runner_up = np.bincount(labels[finite], minlength=k)
    mean_m = np.bincount(labels[finite], weights=margin[finite], minlength=k) / np.maximum(
        with_runner_up, 1
    )
    header = ["cluster", "rows", "share", "mean distance", "mean margin"]
    scores = table_png = None
    if y_true is not None:
        names, y_idx = np.unique(np.asarray(y_true), return_inverse=True)
        contingency = np.zeros((k, len(names)), dtype=np.int64)
        np.add.at(contingency, (labels, y_idx), 1)
        majority = contingency.argmax(axis=1)
        purity = contingency.max(axis=1) / np.maximum(counts, 1)
        header += ["majority label", "purity"]
        scores = clustering_scores(y_idx, labels)
        used = np.flatnonzero(counts)
        if len(used) <= 60 and len(names) <= 60:
            order = used[np.lexsort((-purity[used], majority[used]))]
            table_png = figs.contingency_png(contingency[order], order, [str(x) for x in names])
    rows = []
    for j in _shown_clusters(sizes, MAX_TILES):
        row = [
            j,
            int(counts[j]),
            f"{counts[j] / max(n, 1):.1%}",
            f"{mean_d[j]:.4f}",
            f"{mean_m[j]:.4f}" if with_runner_up[j] else "–",
        ]
        if y_true is not None:
            row += [names[majority[j]] if counts[j] else "–", f"{purity[j]:.1%}"]
        rows.append(row)
    body = table(header, rows, {0, 1, 2, 3, 4} | ({6} if y_true is not None else set()))
    if table_png is not None:
        body += img(table_png, "contingency of clusters and labels")
    return body, scores


@dataclass(frozen=True)
class CoarseLevel:
    """What the report shows of a two-level model's coarse level (``tell.two_level``).

    labels : array of shape (n,), int, the coarse group of each sample row's fine center.
    shares : array of shape (k1,), int, fine centers per coarse group (sum k).
    n_probe : int, coarse groups searched per row.
    check_rows : int, sample rows also searched exactly (all k fine centers).
    differs : int, of those, rows whose routed fine center is not the exact nearest one.
    """

    labels: np.ndarray
    shares: np.ndarray
    n_probe: int
    check_rows: int
    differs: int


def _coarse_section(coarse: CoarseLevel, fine_labels: np.ndarray) -> str:
    k1, n = len(coarse.shares), len(coarse.labels)
    counts = np.bincount(coarse.labels, minlength=k1)
    used = np.bincount(coarse.labels[np.unique(fine_labels, return_index=True)[1]], minlength=k1)
    rate = coarse.differs / max(coarse.check_rows, 1)
    note = (
        f'<p class="note">{k1:,} coarse centers split the {int(coarse.shares.sum()):,} fine '
        f"centers into groups; each row is assigned within the groups of its {coarse.n_probe} "
        f"nearest coarse center(s). On {coarse.check_rows:,} sample rows searched exactly as "
        f"well, the routed center is not the nearest of all fine centers for {coarse.differs:,}"
        f" ({rate:.2%}).</p>"
    )
    rows = [
        [c, int(counts[c]), f"{counts[c] / max(n, 1):.1%}", int(coarse.shares[c]), int(used[c])]
        for c in _shown_clusters(counts, MAX_TILES)
    ]
    header = ["coarse", "rows", "share", "fine centers", "fine centers used"]
    return (
        note
        + img(figs.sizes_png(counts), "coarse group sizes")
        + table(header, rows, {0, 1, 2, 3, 4})
    )


def build_report(
    *,
    z_sample: np.ndarray,
    labels: np.ndarray,
    distance: np.ndarray,
    margin: np.ndarray,
    centers: np.ndarray,
    cluster_sizes: np.ndarray,
    prototypes: np.ndarray | None = None,
    nearest_rows: Sequence[Sequence[dict[str, Any]]] | None = None,
    y_true: np.ndarray | None = None,
    title: str = "TELL clustering report",
    metadata: dict[str, Any] | None = None,
    history: Sequence[dict[str, Any]] | None = None,
    coarse: CoarseLevel | None = None,
) -> str:
    """Render the explain report as one self-contained HTML page.

    Parameters
    ----------
    z_sample : array of shape (n, d), float, unit L2 norm per row: features of the sample.
    labels : array of shape (n,), int, the assigned cluster of each sample row, in [0, k).
    distance : array of shape (n,), float, squared distance to the assigned center, in [0, 4].
    margin : array of shape (n,), float, runner-up distance minus distance (>= 0; +inf
        for a row with no runner-up, left out of the margin statistics).
    centers : array of shape (k, d), float, unit centers.
    cluster_sizes : array of shape (k,), int, rows per cluster (of the sample or of all data).
    prototypes : array of shape (k, H, W, C) in [0, 1], the decoded centers, or None.
    nearest_rows : k lists of dicts with keys ``id``, ``distance``, ``text`` (str or None) and
        optionally ``image`` ((H, W, C) in [0, 1]): the sample rows nearest to each center.
    y_true : array of shape (n,), ground-truth labels (any type) for per-cluster metrics, or None.
    title : page title.
    metadata : model metadata shown in a table (values may be nested JSON-like data).
    history : the model's per-epoch training summaries (``metadata["history"]``), plotted as
        training curves; None or empty: no such section.
    coarse : a two-level model's coarse level (:class:`CoarseLevel`), or None.

    Returns
    -------
    str
        The HTML document; it references no external resource.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    distance, margin = np.asarray(distance, np.float64), np.asarray(margin, np.float64)
    centers, sizes = np.asarray(centers), np.asarray(cluster_sizes).astype(np.int64)
    n, k = len(labels), len(centers)
    _check(n, z_sample=z_sample, distance=distance, margin=margin, y_true=y_true)
    _check(k, cluster_sizes=sizes, prototypes=prototypes, nearest_rows=nearest_rows)
    if n == 0:
        raise TellDataError("build_report: the sample has no rows.")
    if labels.min() < 0 or labels.max() >= k:
        raise TellDataError(f"build_report: 'labels' must be in [0, {k}).")
    cluster_body, scores = _per_cluster(labels, distance, margin, sizes, y_true)
    finite_margin = margin[np.isfinite(margin)]
    cards = [
        ("sample rows", f"{n:,}"),
        ("clusters", f"{k:,}"),
        ("clusters used", f"{int((sizes > 0).sum()):,}"),
        ("median distance", f"{np.median(distance):.3f}"),
        ("median margin", f"{np.median(finite_margin):.3f}" if finite_margin.size else "–"),
    ]
    if coarse is not None:
        _check(n, coarse_labels=coarse.labels)
        cards.insert(2, ("coarse centers", f"{len(coarse.shares):,}"))
    if scores is not None:
        cards += [(name.upper(), f"{value:.3f}") for name, value in scores.items()]
    sections = [
        ("sizes", "Cluster sizes", img(figs.sizes_png(sizes), "cluster sizes")),
        (
            "prototypes",
            "Centers as prototypes",
            _prototype_section(sizes, prototypes, nearest_rows),
        ),
        (
            "projection",
            "2-D projection of the sample (PCA)",
            img(figs.projection_png(z_sample, labels, centers), "2-D projection with centers"),
        ),
        (
            "distributions",
            "Distance and margin",
            '<p class="note">Small margins mark rows that sit between two clusters.</p>'
            + img(
                figs.distributions_png(distance, finite_margin), "distance and margin histograms"
            ),
        ),
        (
            "clusters",
            "Per-cluster metrics" + (" against labels" if scores else ""),
            (
                ""
                if scores is None
                else '<p class="note">Overall, on the sample: '
                + ", ".join(f"{m.upper()} {v:.4f}" for m, v in scores.items())
                + ".</p>"
            )
            + cluster_body,
        ),
        ("model", "Model", metadata_table(metadata or {})),
    ]
    if coarse is not None:
        sections.insert(1, ("coarse", "Coarse level", _coarse_section(coarse, labels)))
    if history:
        curves = img(figs.history_png(list(history)), "training curves by epoch")
        note = (
            '<p class="note">Per epoch: the loss parts, the inertia per row, the centers found '
            "dead and the centers moved by the repair, and the rows trained per second.</p>"
        )
        sections.insert(1, ("training", "Training curves", note + curves))
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in sections)
    card_html = "".join(
        f"<div class='card'><b>{escape(v)}</b><span>{escape(c)}</span></div>" for c, v in cards
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>{escape(title)}</h1><div class="sub">'
        f"{n:,} sampled rows · {k} clusters · generated {stamp}</div><nav>{nav}</nav>"
        f'</div></header><main class="wrap"><div class="cards">{card_html}</div>'
        + "".join(section(a, t, b) for a, t, b in sections)
        + "</main><footer>tell explain · TELL interpretable neural clustering</footer>"
        "</body></html>"
    )
