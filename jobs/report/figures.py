"""The explain report's figures: matplotlib (Agg, no pyplot state) rendered to PNG bytes.

Every function takes plain numpy arrays and returns PNG bytes; :mod:`jobs.report.page` embeds
them as ``data:`` URIs. Figures are sized for a laptop screen (about 1000 px wide).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

_DPI = 100
_INK = "#1f2937"
_ACCENT = "#2563eb"
_MAX_LABELLED_CLUSTERS = 40
_MAX_PLOTTED_CENTERS = 5000  # above this many centers the projection draws only the used ones


def _png(fig: Figure, tight: bool = False) -> bytes:
    """PNG bytes; ``tight`` crops to the drawn content (one more draw pass, so only for
    figures whose margins cannot be set by hand)."""
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=_DPI, facecolor="white", bbox_inches="tight" if tight else None
    )
    return buf.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=_INK, labelsize=9)
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)


def cluster_colors(labels: np.ndarray, k: int) -> np.ndarray:
    """RGBA colors (n, 4) for cluster ids in [0, k): tab10/tab20 for small k, turbo above."""
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"](labels % 10)
    if k <= 20:
        return colormaps["tab20"](labels % 20)
    return colormaps["turbo"]((labels + 0.5) / k)


def sizes_png(sizes: np.ndarray) -> bytes:
    """Bar chart of rows per cluster, shape (k,); by id for small k, sorted for large k."""
    k = len(sizes)
    fig = Figure(figsize=(10, 3.2))
    fig.subplots_adjust(left=0.07, right=0.99, top=0.95, bottom=0.17)
    ax = fig.add_subplot()
    if k <= _MAX_LABELLED_CLUSTERS:
        ax.bar(np.arange(k), sizes, color=cluster_colors(np.arange(k), k), edgecolor="none")
        ax.set_xticks(np.arange(k))
        ax.set_xlabel("cluster")
    else:
        # one artist for any k (a bar per cluster costs ~1.5 ms each)
        ax.stairs(np.sort(sizes)[::-1], np.arange(k + 1) - 0.5, fill=True, color=_ACCENT)
        ax.set_xlabel(f"clusters, largest first ({k} in all)")
    ax.axhline(sizes.sum() / max(k, 1), color=_INK, linestyle="--", linewidth=1, label="mean")
    ax.set_ylabel("rows")
    ax.legend(frameon=False, fontsize=9)
    _style(ax)
    return _png(fig)


def pca_2d(z: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project rows z (n, d) and centers (k, d) on the sample's first two principal axes.

    Returns (z_2d (n, 2), centers_2d (k, 2), explained variance ratio (2,)).
    """
    z = np.asarray(z, dtype=np.float64)
    mean = z.mean(axis=0)
    zc = z - mean
    cov = zc.T @ zc / max(len(z) - 1, 1)  # (d, d)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:2]
    axes = eigvec[:, order]  # (d, <=2)
    if axes.shape[1] < 2:  # d == 1: pad a zero axis
        axes = np.hstack([axes, np.zeros((axes.shape[0], 2 - axes.shape[1]))])
    total = float(eigval.sum()) or 1.0
    ratio = np.array([max(float(eigval[i]), 0.0) / total for i in order] + [0.0])[:2]
    return zc @ axes, (np.asarray(centers, np.float64) - mean) @ axes, ratio


def projection_png(z: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> bytes:
    """Scatter of the sample z (n, d) colored by cluster, with the k centers marked."""
    k = len(centers)
    if k > _MAX_PLOTTED_CENTERS:  # the centers that hold sample rows: the others are no help
        centers = centers[np.unique(labels)]
    z2, c2, ratio = pca_2d(z, centers)
    fig = Figure(figsize=(7.5, 6))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.98, bottom=0.09)
    ax = fig.add_subplot()
    ax.scatter(z2[:, 0], z2[:, 1], s=6, c=cluster_colors(labels, k), alpha=0.55, linewidths=0)
    ax.scatter(
        c2[:, 0],
        c2[:, 1],
        s=90,
        marker="X",
        c="white",
        edgecolors=_INK,
        linewidths=1.2,
        label="centers",
        zorder=3,
    )
    if k <= _MAX_LABELLED_CLUSTERS:  # then every center is drawn, in order
        for j, (x, y) in enumerate(c2):
            ax.annotate(str(j), (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    ax.legend(frameon=False, fontsize=9, loc="best")
    _style(ax)
    ax.grid(True, color="#f3f4f6")
    return _png(fig)


def distributions_png(distance: np.ndarray, margin: np.ndarray) -> bytes:
    """Histograms of the distance to the assigned center and of the margin to the runner-up."""
    fig = Figure(figsize=(10, 3.2))
    fig.subplots_adjust(left=0.07, right=0.99, top=0.95, bottom=0.17, wspace=0.22)
    for i, (values, name, color) in enumerate(
        ((distance, "distance to own center", _ACCENT), (margin, "margin to runner-up", "#059669"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        if values.size == 0:  # no row has a runner-up (two-level groups of one center)
            ax.set_xlabel(f"{name}: none in the sample")
            _style(ax)
            continue
        counts, edges = np.histogram(values, bins=50)
        ax.stairs(counts, edges, fill=True, color=color, alpha=0.85)
        ax.axvline(
            float(np.median(values)),
            color=_INK,
            linestyle="--",
            linewidth=1,
            label=f"median {np.median(values):.3f}",
        )
        ax.set_xlabel(f"{name} (squared Euclidean, unit sphere)")
        ax.set_ylabel("rows")
        ax.legend(frameon=False, fontsize=9)
        _style(ax)
    return _png(fig)


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) with C in {1, 3, 4} (or (H, W)) in [0, 1] -> (H, W, 3) float32."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _mosaic(cells: list[list[np.ndarray | None]], pad_x: int, pad_y: int) -> np.ndarray:
    """Paste (H, W, C) images into one white (rows*(H+pad_y), cols*(W+pad_x), 3) canvas.

    One imshow of a mosaic is ~50x faster than one matplotlib axes per image.
    """
    first = next(c for row in cells for c in row if c is not None)
    h, w = first.shape[:2]
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    canvas = np.ones((n_rows * (h + pad_y), n_cols * (w + pad_x), 3), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            if image is not None:
                y, x = r * (h + pad_y), c * (w + pad_x)
                canvas[y : y + h, x : x + w] = _rgb(image)
    return canvas


def image_grid_png(
    rows: list[list[np.ndarray | None]], row_titles: list[str], col_titles: list[str] | None = None
) -> bytes:
    """A grid of (H, W, C) images in [0, 1]; ``None`` cells stay empty.

    rows : one list per grid row; row_titles label each row on the left, col_titles the
        columns on top.
    """
    first = next(c for row in rows for c in row if c is not None)
    h, w = first.shape[:2]
    pad = max(1, round(0.12 * max(h, w)))
    canvas = _mosaic(rows, pad, pad)
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(1.0 * n_cols + 1.0, 1.0 * n_rows * h / w + 0.4))
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(n_rows)], row_titles, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xticks(
        [c * (w + pad) + w / 2 for c in range(n_cols)], col_titles or [""] * n_cols, fontsize=8
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _png(fig, tight=True)


def prototype_tiles_png(images: np.ndarray, titles: list[str], n_cols: int = 10) -> bytes:
    """Tiles of prototypes (m, H, W, C) in [0, 1], a title under each, ``n_cols`` per row."""
    m = len(images)
    n_cols = max(1, min(n_cols, m))
    n_rows = -(-m // n_cols)
    h, w = images.shape[1:3]
    pad_x, pad_y = max(1, round(0.12 * w)), max(2, round(0.3 * h))
    cells = [list(images[r * n_cols : (r + 1) * n_cols]) for r in range(n_rows)]
    fig = Figure(figsize=(1.1 * n_cols, 1.1 * n_rows * (h + pad_y) / (w + pad_x) + 0.1))
    ax = fig.add_subplot()
    ax.imshow(_mosaic(cells, pad_x, pad_y), interpolation="nearest")
    for i, title in enumerate(titles):
        r, c = divmod(i, n_cols)
        ax.text(
            c * (w + pad_x) + w / 2,
            r * (h + pad_y) + h + 0.1 * pad_y,
            title,
            ha="center",
            va="top",
            fontsize=8,
            color=_INK,
        )
    ax.axis("off")
    return _png(fig, tight=True)


def contingency_png(table: np.ndarray, cluster_ids: np.ndarray, label_names: list[str]) -> bytes:
    """Heatmap of the row-normalised contingency table (clusters x labels)."""
    shares = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(min(1.0 + 0.45 * len(label_names), 10), 1.0 + 0.28 * len(table)))
    ax = fig.add_subplot()
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(len(label_names)), label_names, fontsize=8, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(table)), [str(c) for c in cluster_ids], fontsize=8)
    ax.set_xlabel("true label")
    ax.set_ylabel("cluster")
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the cluster")
    return _png(fig, tight=True)


_CURVES = (  # (panel title, [(history key, label)], log scale)
    ("loss parts", [("clu_loss", "L_clu"), ("rec_loss", "L_rec")], True),
    ("inertia per row", [("inertia_per_row", "inertia / row")], False),
    ("centers repaired", [("dead_centers", "dead"), ("moved", "moved")], False),
    ("throughput", [("rows_per_s", "rows/s")], False),
)


def history_png(history: list[dict]) -> bytes:
    """Training curves from a model's per-epoch history (``metadata["history"]``): loss
    parts, inertia per row, dead and moved centers, rows/s, by epoch; pretraining epochs
    shaded. Missing or non-numeric values are left out of their curve."""
    epochs = np.array([int(h.get("epoch", i)) + 1 for i, h in enumerate(history)])
    pretrain = [e for e, h in zip(epochs, history, strict=True) if h.get("phase") == "pretrain"]
    fig = Figure(figsize=(10, 5.6))
    fig.subplots_adjust(left=0.08, right=0.99, top=0.94, bottom=0.1, hspace=0.45, wspace=0.2)
    for i, (title, keys, log) in enumerate(_CURVES):
        ax = fig.add_subplot(2, 2, i + 1)
        drawn = False
        for key, label in keys:
            values = np.array(
                [h.get(key) if isinstance(h.get(key), (int, float)) else np.nan for h in history],
                dtype=np.float64,
            )
            keep = np.isfinite(values) & (values > 0 if log else True)
            if not keep.any():
                continue
            ax.plot(epochs[keep], values[keep], marker="o", markersize=2.5, linewidth=1.4,
                    label=label)  # fmt: skip
            drawn = True
        if pretrain:
            ax.axvspan(min(pretrain) - 0.5, max(pretrain) + 0.5, color="#f3f4f6", zorder=0)
        if log and drawn:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10, color=_INK)
        if drawn and len(keys) > 1:
            ax.legend(frameon=False, fontsize=8)
        if i >= 2:
            ax.set_xlabel("epoch" + (" (shaded: autoencoder pretraining)" if pretrain else ""))
        _style(ax)
    return _png(fig)
