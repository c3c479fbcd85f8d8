"""README command one, ``tell demo``, through the real CLI (issue #5).

The installed ``tell`` console script runs in its own process on scikit-learn's digits, with a
few epochs, and joins this module's local Ray cluster through ``RAY_ADDRESS`` (starting a
second cluster would cost more than the demo itself). It must exit 0 and END with its table:
where the data, model, assignments, report and JSON summary went, then ACC/NMI/ARI of the
learned encoder beside the identity encoder (k-means), and every path it names must exist.
Its stderr (issue 12) is one line per stage or epoch: at most 40 lines, none of Ray's own,
and the path of the full log, which holds what Ray said.
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

# A short mlp run (the demo's default encoder; its default length takes minutes).
ARGS = ("--encoder", "mlp", "--pretrain-epochs", "3", "--epochs", "4")
TIMEOUT_S = 400  # the machine may be loaded; here the run takes about 60 s
# Digits, k=10, identity encoder (k-means on raw pixels): ACC ~0.8 after 20 epochs (chance:
# ~0.1); the floors leave room for other seeds' and platforms' k-means++ draws. The short
# mlp run only has to beat chance clearly.
FLOORS = {"acc": 0.6, "nmi": 0.55, "ari": 0.4}
TELL_FLOORS = {"acc": 0.3, "nmi": 0.25, "ari": 0.1}
MAX_STDERR_LINES = 40
NUMBER = r"(-?[0-9.]+(?:e[-+]?\d+)?)"
METRIC = re.compile(rf"^(acc|nmi|ari|inertia)\s+{NUMBER}(?:\s+{NUMBER})?$")
RAY_CHATTER = ("TrainingReport", "Checkpoint successfully created", "WARNING", "Deprecat",
               "Execution plan", "Running Dataset", "core_worker", "(raylet)")  # fmt: skip
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
        [*_tell(), "demo", "--dataset", "digits", "--workdir", str(workdir), *ARGS],
        capture_output=True, text=True, env=_ray_env(ray_cluster), cwd=root, timeout=TIMEOUT_S,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    stages = re.findall(r"<== (\w+ done in [0-9.]+ s)", done.stderr)
    print(f"tell demo took {wall_s:.1f} s ({', '.join(stages)})\n{done.stdout[-1500:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, done.stdout, done.stderr


def _table(stdout: str) -> tuple[dict[str, str], dict[str, float], list[str]]:
    places, metrics, _, table = _table_with_identity(stdout)
    return places, metrics, table


def _table_with_identity(stdout: str):
    """(places, TELL's metrics, identity's metrics, the table's lines)."""
    lines = [line.rstrip() for line in stdout.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    start = max(i for i, line in enumerate(lines) if line.startswith("data "))
    table = lines[start:]
    places = {m.group(1): m.group(2) for m in map(PLACE.match, table) if m}
    rows = [m for m in map(METRIC.match, table) if m]
    metrics = {m.group(1): float(m.group(2)) for m in rows}
    identity = {m.group(1): float(m.group(3)) for m in rows if m.group(3)}
    return places, metrics, identity, table


def test_demo_ends_with_where_everything_went_and_the_metrics(demo):
    _, stdout, stderr = demo
    places, metrics, identity, table = _table_with_identity(stdout)
    # The table is the end of the output: it closes with the metric rows, no JSON after them.
    assert METRIC.match(table[-1]), stdout[-2000:]
    header = next(line for line in table if line.startswith("metric "))
    assert header.split() == ["metric", "TELL", "mlp", "identity", "(k-means)"], header
    assert table[table.index(header) :] == table[-len(metrics) - 1 :]
    assert "{" not in "\n".join(table)
    assert set(places) == {"data", "model", "assignments", "report", "summary"}, table
    assert {"acc", "nmi", "ari"} <= set(metrics) and {"acc", "nmi", "ari"} == set(identity)
    for name, floor in TELL_FLOORS.items():
        assert floor <= metrics[name] <= 1.0, (name, metrics)
    for name, floor in FLOORS.items():  # identity beside it, on the same rows
        assert floor <= identity[name] <= 1.0, (name, identity)
    assert metrics.get("inertia", 0.0) >= 0.0
    assert "==> train" in stderr and "<== explain done" in stderr  # progress on the way


def test_stderr_is_one_line_per_stage_or_epoch_and_names_the_full_log(demo):
    """Issue 12: a quiet console. Every stderr line is the demo's own (``tell demo: ...``),
    at most 40 of them, with an epoch line; Ray's chatter went to the log file it names."""
    _, _, stderr = demo
    lines = [line for line in stderr.splitlines() if line.strip()]
    print(f"tell demo wrote {len(lines)} lines to stderr")
    assert len(lines) <= MAX_STDERR_LINES, stderr
    strays = [line for line in lines if not line.startswith("tell demo: ")]
    assert strays == [], strays
    assert not [line for line in lines if any(word in line for word in RAY_CHATTER)], stderr
    assert any(re.search(r"epoch \d+/\d+ .*rows/s", line) for line in lines), stderr
    log = Path(lines[-1].split("full log: ", 1)[1])
    text = log.read_text()
    assert "==> train" in text and "Started a local Ray instance" not in stderr
    assert re.search(r"epoch \d+/\d+", text)  # every epoch line, also those not shown


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
    _, _, identity, _ = _table_with_identity(stdout)
    for name, value in identity.items():
        assert summary["identity_metrics"][name] == pytest.approx(value, abs=1e-4)
