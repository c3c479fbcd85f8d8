"""README.md's results section is generated from bench-results/*.json, never typed (issue #5).

``scripts/render_results.py --check`` exits 1 with a one-line summary when the README's
section differs from what the JSON files render to. No Ray, no network: a second or so.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render_results.py"


def _module():
    spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_readme_results_match_the_benchmark_json():
    """Fails when a bench-results/*.json changed without `python scripts/render_results.py`."""
    done = _check()
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_check_reports_a_stale_section_in_one_line_and_writes_nothing(tmp_path):
    render = _module()
    current = render.rendered_readme((ROOT / "README.md").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(current)
    assert _check("--readme", str(readme)).returncode == 0

    stale = current.replace("**Distributed training", "**Old heading", 1)
    assert stale != current
    readme.write_text(stale)
    done = _check("--readme", str(readme))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("README.md results section is stale: ")
    assert "1 line(s) out, 1 in" in lines[0] and "Old heading" in lines[0]
    assert readme.read_text() == stale  # --check never writes


def test_each_train_json_renders_under_its_own_heading_and_command():
    render = _module()
    text = render.render()
    for name in ("train.json", "train-memory.json"):
        path = ROOT / "bench-results" / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        heading = f"**Distributed training, `{name}`**"
        assert text.count(heading) == 1, heading
        if data.get("command"):
            line = next(line for line in text.splitlines() if line.startswith(heading))
            assert f"`{data['command']}`" in line
