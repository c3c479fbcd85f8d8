"""The explain report renders in a real browser (issue #5).

``tell explain`` runs on a small digits data set and an identity model; the report is then
opened in headless Chromium (Debian ``chromium``) with name resolution disabled, so an image
that needed the network would fail to load. A script injected into a copy of the page
records every image's natural size after the load event; ``--dump-dom`` returns it.

Without Chromium the browser tests skip, unless ``TELL_REQUIRE_BROWSER=1`` (CI sets it in
``.ci/run``): then they fail, so CI cannot pass without having rendered the report.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from jobs.config import ExplainJob
from jobs.model import save_model
from jobs.report import explain
from tell.datasets import load_digits
from tell.encoders import EncoderSpec
from tell.io import embeddings_to_table, write_parquet_files
from tell.model import TELLNet

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE_BROWSER = os.environ.get("TELL_REQUIRE_BROWSER") == "1"
_CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify(Array.from(document.images, (img) => ({
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt,
  })));
  document.body.appendChild(out);
});
</script>"""


def _chromium(user_dir, *args: str) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={user_dir}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def chromium():
    """The Chromium executable; skip without it, or fail when TELL_REQUIRE_BROWSER=1."""
    if CHROMIUM is None:
        message = "Debian chromium is not installed (scripts/setup.sh installs it as root)"
        if REQUIRE_BROWSER:
            pytest.fail(f"{message}, and TELL_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """report.html of `tell explain` on 400 digits with a model whose centers are class means."""
    root = tmp_path_factory.mktemp("explain")
    digits = load_digits()
    x, y = digits.X[:400], digits.y[:400]
    write_parquet_files(embeddings_to_table(x, labels=y), root / "data", n_files=2)
    flat = x.reshape(len(x), -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    means = np.stack([flat[y == j].mean(axis=0) for j in range(10)])
    net = TELLNet(EncoderSpec("identity", flat.shape[1]), 10)
    with torch.no_grad():
        net.cluster.weight.copy_(torch.from_numpy(means).float())
        net.cluster.project_()
    save_model(str(root / "model"), net, {"run_name": "digits-<means>", "epoch": 0})
    job = ExplainJob(
        model=str(root / "model"),
        data=str(root / "data"),
        out=str(root / "report"),
        label_column="label",
        sample_rows=300,
    )
    summary = explain.main(job)
    assert summary["sample_rows"] == 300 and summary["sample_scores"]["acc"] > 0.8
    return root, summary["report"]


def test_every_image_of_the_report_loads_in_chromium(chromium, report):
    root, path = report
    page = open(path, encoding="utf-8").read()
    expected = page.count("<img ")
    assert expected >= 6  # sizes, prototypes, nearest rows, projection, histograms, heatmap
    # A negative control: an image from the network must be seen as not loaded.
    control = '<img src="https://example.invalid/x.png" alt="network control">'
    checked = root / "checked.html"
    checked.write_text(page.replace("</body>", control + _CHECK + "</body>"), encoding="utf-8")
    dom = _chromium(root / "profile", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run"
    *images, control_image = json.loads(html.unescape(found.group(1)))
    assert control_image["alt"] == "network control" and control_image["width"] == 0
    assert len(images) == expected
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image


def test_the_report_renders_to_a_non_blank_screenshot(chromium, report):
    from matplotlib.image import imread

    root, path = report
    shot = root / "shot.png"
    _chromium(
        root / "profile-shot", "--window-size=1280,2400", f"--screenshot={shot}", f"file://{path}"
    )
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels[..., :3].std() > 0.05  # not a blank page
