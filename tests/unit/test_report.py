"""The explain report (issue #5): sections, self-contained images, escaping, input checks."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from jobs.report.page import MAX_TILES, build_report
from tell.errors import TellDataError

EVIL = "<script>alert('x')</script>&"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self.scripts = 0
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "script":
            self.scripts += 1
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def _history(n_pretrain: int = 3, n_clustering: int = 6) -> list[dict]:
    """A model's per-epoch history as the train loop records it (tell/schedule.py)."""
    rows = []
    for e in range(n_pretrain + n_clustering):
        pre = e < n_pretrain
        rows.append({
            "epoch": e, "phase": "pretrain" if pre else ("centers" if e % 2 else "features"),
            "clu_loss": None if pre else 1.0 / (e + 1), "rec_loss": 0.5 / (e + 1),
            "inertia_per_row": None if pre else 0.4 - 0.01 * e, "dead_centers": 0 if pre else e % 2,
            "moved": 0, "rows_per_s": 1000.0 + e,
        })  # fmt: skip
    return rows


def _inputs(seed: int, n: int = 240, d: int = 5, k: int = 4, images: bool = True, text=EVIL):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    z = centers[labels] + 0.3 * rng.standard_normal((n, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    distance = ((z - centers[labels]) ** 2).sum(axis=1)
    nearest = [
        [
            {
                "id": int(i),
                "text": text,
                "distance": float(distance[i]),
                **({"image": rng.random((6, 5, 1))} if images else {}),
            }
            for i in np.flatnonzero(labels == j)[:3]
        ]
        for j in range(k)
    ]
    return {
        "z_sample": z,
        "labels": labels,
        "distance": distance,
        "margin": rng.random(n),
        "centers": centers,
        "cluster_sizes": np.bincount(labels, minlength=k),
        "prototypes": rng.random((k, 6, 5, 1)) if images else None,
        "nearest_rows": nearest,
        "y_true": np.where(labels == 0, EVIL, labels.astype(str)),  # a hostile label value
    }


@pytest.fixture(scope="module")
def page():
    """One full report (images, text, labels), built once for the module (seed 0)."""
    return build_report(
        **_inputs(0),
        title=f"Report {EVIL}",
        metadata={"run_name": EVIL, EVIL: {"nested": [EVIL]}},
        history=_history(),
    )


def test_every_section_is_present(page):
    parsed = _Collector()
    parsed.feed(page)
    assert {"sizes", "training", "prototypes", "projection", "distributions", "clusters",
            "model"} <= parsed.ids  # fmt: skip
    for heading in (
        "Training curves",
        "Cluster sizes",
        "Centers as prototypes",
        "2-D projection",
        "Distance and margin",
        "Per-cluster metrics against labels",
    ):
        assert heading in page
    for metric in ("<span>ACC</span>", "<span>NMI</span>", "<span>ARI</span>", "purity"):
        assert metric in page


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(page):
    parsed = _Collector()
    parsed.feed(page)
    # sizes, training curves, tiles, nearest grid, projection, distributions, contingency
    assert len(parsed.imgs) == 7
    for img in parsed.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    assert all(link.startswith("#") for link in parsed.links)  # only in-page anchors
    assert not re.search(r"https?://|url\(|@import", page)
    assert parsed.scripts == 0


def test_text_from_data_and_metadata_is_escaped(page):
    assert "<script>" not in page
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;"
    assert page.count(escaped) >= 3  # title, metadata key and value, label in the table


@pytest.fixture(scope="module")
def plain_page():
    """Embeddings with text, no labels, more clusters than are detailed: built once."""
    inputs = _inputs(1, n=600, k=MAX_TILES + 20, images=False, text="a gloss about <cats>")
    inputs["y_true"] = None
    inputs["nearest_rows"][5] = [{**r, "text": None} for r in inputs["nearest_rows"][5]]
    return build_report(**inputs)


def test_embeddings_get_a_table_of_nearest_rows_with_their_text(plain_page):
    assert "<th>text</th>" in plain_page and "a gloss about &lt;cats&gt;" in plain_page
    assert plain_page.count("<img") == 3  # sizes, projection, distributions; no labels: no heatmap


def test_without_labels_there_are_no_label_metrics(plain_page):
    assert "against labels" not in plain_page and "purity" not in plain_page
    assert "<span>ACC</span>" not in plain_page


def test_many_clusters_show_only_the_largest(plain_page):
    assert f"Showing the {MAX_TILES} largest of {MAX_TILES + 20} clusters" in plain_page
    assert "<span>ACC</span>" not in plain_page


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"distance": np.zeros(3)}, "'distance' has 3 entries, expected 240"),
        ({"cluster_sizes": np.zeros(2)}, "'cluster_sizes' has 2 entries, expected 4"),
        ({"labels": np.full(240, 9)}, r"'labels' must be in \[0, 4\)"),
    ],
)
def test_inconsistent_inputs_are_refused(change, match):
    inputs = {**_inputs(4, images=False), **change}
    with pytest.raises(TellDataError, match=match):
        build_report(**inputs)


def test_training_curves_only_with_a_history(plain_page):
    """Issue 12: the per-epoch history is plotted (a PNG with four panels); a model without
    one (in-memory, older) gets no such section; identity runs (no rec_loss) still plot."""
    from jobs.report.figures import history_png

    assert 'id="training"' not in plain_page
    identity = [{**h, "rec_loss": None, "phase": "centers"} for h in _history(0, 4)]
    for history in (_history(), identity):
        png = history_png(history)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
