"""README command one, ``tell demo``, through the real CLI (issue #5).

The installed ``tell`` console script runs in its own process on scikit-learn's digits, with a
few epochs, and joins this module's local Ray cluster through ``RAY_ADDRESS`` (starting a
second cluster would cost more than the demo itself). It must exit 0 and END with its table:
where the data, model, assignments, report and JSON summary went, then ACC/NMI/ARI, and every
path it names must exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EPOCHS = 3
TIMEOUT_S = 300  # the machine may be loaded; here the run takes about 30 s
# Digits, k=10, identity encoder (k-means on raw pixels): ACC ~0.8 after 3 epochs here
# (chance: ~0.1); the floors leave room for other seeds' and platforms' k-means++ draws.
FLOORS = {"acc": 0.6, "nmi": 0.55, "ari": 0.4}
METRIC = re.compile(r"^(acc|nmi|ari|inertia)\s+(-?[0-9.]+(?:e[-+]?\d+)?)$")
PLACE = re.compile(r"^(data|model|assignments|report|summary)\s+(\S+)")


def _tell() -> list[str]:
    script = Path(sys.executable).with_name("tell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


def _ray_env(ray_cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(
        RAY_ADDRESS=ray_cluster.address_info["gcs_address"],
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("RAY_AUTH_MODE"):  # set by ray.init for the cluster it started
        env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    return env


@pytest.fixture(scope="module")
def demo(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    workdir = root / "work"
    started = time.monotonic()
    done = subprocess.run(
        [*_tell(), "demo", "--dataset", "digits", "--workdir", str(workdir),
         "--epochs", str(EPOCHS)],
        capture_output=True, text=True, env=_ray_env(ray_cluster), cwd=root, timeout=TIMEOUT_S,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    stages = re.findall(r"<== (\w+ done in [0-9.]+ s)", done.stderr)
    print(f"tell demo took {wall_s:.1f} s ({', '.join(stages)})\n{done.stdout[-1500:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, done.stdout, done.stderr


def _table(stdout: str) -> tuple[dict[str, str], dict[str, float], list[str]]:
    lines = [line.rstrip() for line in stdout.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    start = max(i for i, line in enumerate(lines) if line.startswith("data "))
    table = lines[start:]
    places = {m.group(1): m.group(2) for m in map(PLACE.match, table) if m}
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC.match, table) if m}
    return places, metrics, table


def test_demo_ends_with_where_everything_went_and_the_metrics(demo):
    _, stdout, stderr = demo
    places, metrics, table = _table(stdout)
    # The table is the end of the output: it closes with the metric rows, no JSON after them.
    assert METRIC.match(table[-1]), stdout[-2000:]
    assert table[table.index("metric  value") :] == table[-len(metrics) - 1 :]
    assert "{" not in "\n".join(table)
    assert set(places) == {"data", "model", "assignments", "report", "summary"}, table
    assert {"acc", "nmi", "ari"} <= set(metrics), table
    for name, floor in FLOORS.items():
        assert floor <= metrics[name] <= 1.0, (name, metrics)
    assert metrics.get("inertia", 0.0) >= 0.0
    assert "==> train" in stderr and "<== explain done" in stderr  # progress on the way


def test_everything_is_where_the_table_says(demo):
    workdir, stdout, _ = demo
    places, metrics, _ = _table(stdout)
    root = workdir.resolve()
    for name, path in places.items():
        assert Path(path).is_relative_to(root), (name, path)
    assert sorted(Path(places["data"]).glob("*.parquet")), places["data"]
    assert (Path(places["model"]) / "model.safetensors").is_file()
    assert (Path(places["model"]) / "metadata.json").is_file()
    manifest = json.loads((Path(places["assignments"]) / "_SUCCESS").read_text())
    assert manifest["rows"] == {"input": 1797, "assigned": 1797, "rejected": 0}
    report = Path(places["report"])
    assert report.name == "report.html" and report.stat().st_size > 10_000
    assert "<img " in report.read_text(encoding="utf-8")
    summary = json.loads(Path(places["summary"]).read_text())
    assert {k: summary[k] for k in ("model", "assignments", "report")} == {
        k: places[k] for k in ("model", "assignments", "report")
    }
    for name, value in metrics.items():
        assert summary["metrics"][name] == pytest.approx(value, abs=1e-4)
