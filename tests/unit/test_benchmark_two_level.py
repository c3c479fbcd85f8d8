"""The two-level benchmark (issue #14), at a tiny size."""

import json

import torch

from bench import runner
from bench import two_level as bench


def test_two_level_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "two-level.json"
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            ["--rows", "3000", "--dim", "8", "--k", "64", "--file-rows", "1000",
             "--sample-rows", "500", "--threads", "1", "--fine-processes", "2",
             "--workdir", str(tmp_path / "work"),
             "--out", str(out)]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert runner.load_benchmark("two_level") is bench.main
    assert json.loads(out.read_text()) == result
    (row,), routing = result["tables"].values()
    assert (row["k"], row["n_coarse"], row["generating_k"]) == (64, 8, 64)
    assert row["fine_centers_used"] == 64 and 0.9 < row["over_floor"] < 1.3
    assert 0.0 <= row["disagreement"] <= 1.0 and row["disagreement_rows"] == 500
    assert row["peak_rss_mib"] > 0 and row["fit_s"] >= row["fine_fit_s"]
    assert row["fine_processes"] == 2 and row["fine_process_peak_rss_mib"] > 0
    assert [r["n_probe"] for r in routing] == [1, 2, 3, 4]
    assert routing[0]["disagreement"] == row["disagreement"]
    assert routing[0]["over_floor"] == row["over_floor"]
    rates = [r["disagreement"] for r in routing]
    assert rates == sorted(rates, reverse=True)  # more groups searched: never worse
    assert all(r["routed_rows_per_s"] > 0 and r["exact_rows_per_s"] > 0 for r in routing)
    assert not (tmp_path / "work" / "data").exists()  # the Parquet files are removed
