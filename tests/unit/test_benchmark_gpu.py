"""The prepared GPU run (issues #14 and #11), on the CPU at a tiny size: CI has no GPU, so
this is what keeps the script working for the session that gets one."""

import json

import torch

from bench import gpu as bench
from bench import runner


def test_gpu_benchmark_runs_its_parts_on_cpu_and_checks_the_goals(tmp_path, monkeypatch):
    import tell.datasets

    monkeypatch.setattr(tell.datasets, "mnist_available", lambda *a, **kw: False)
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--ks", "16,64", "--rows", "3000", "--reps", "1",
            "--fit-rows", "4000", "--fit-k", "8", "--out", str(out)]  # fmt: skip
    result = bench.main(argv)
    assert runner.load_benchmark("gpu") is bench.main
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert [r["k"] for r in result["assign"]] == [16, 64]
    assert all(r["fp32_rows_per_min"] > 0 and r["tf32_rows_per_min"] > 0 for r in result["assign"])
    assert result["fit"]["k"] == 8 and result["fit"]["clusters_used"] == 8
    assert result["fit"]["met"] == (result["fit"]["over_floor"] <= 1.05)
    assert "not cached" in result["mnist_conv"]["skipped"]  # never a download
    assign_goal, fit_goal = result["goals"]
    assert assign_goal["met"] is False  # no k=1024 row here
    assert fit_goal["met"] == result["fit"]["met"]
    assert len(result["tables"]) == 2
    assert not torch.backends.cuda.matmul.allow_tf32  # restored


def test_gpu_benchmark_refuses_without_a_gpu_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        bench.main(["--device", "cuda"])
    except SystemExit as exit_:
        assert "no CUDA device" in str(exit_.code)
    else:
        raise AssertionError("expected SystemExit")
