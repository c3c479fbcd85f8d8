"""The scale-in-k benchmark (issue #14), at a tiny size."""

import json

from bench import runner
from bench import scale_k as bench


def test_scale_k_benchmark_runs_every_method_and_checks_the_goal(tmp_path):
    out = tmp_path / "scale-k.json"
    result = bench.main(["--sets", "3000x8:16,32", "--threads", "1", "--out", str(out)])
    assert runner.load_benchmark("scale_k") is bench.main
    assert json.loads(out.read_text()) == result
    (rows,) = result["tables"].values()
    assert [(r["k"], r["method"]) for r in rows] == [
        (k, m) for k in (16, 32) for m in ("faiss niter=25", "TELL defaults", "MiniBatchKMeans")
    ]
    tell_rows = [r for r in rows if r["method"] == "TELL defaults"]
    assert all(r["over_floor"] < 1.2 and r["clusters_used"] == r["k"] for r in tell_rows)
    assert all(r["time_vs_faiss"] > 0 for r in rows)
    (goal,) = result["goals"]
    assert goal["met"] == all(
        r["over_floor"] <= 1.05 and r["time_vs_faiss"] <= 1.0 for r in tell_rows
    )
    assert bench.parse_set("10x2:3,4") == (10, 2, [3, 4])
