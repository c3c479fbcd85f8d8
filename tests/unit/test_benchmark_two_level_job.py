"""The two-level job benchmark (issue #14), at a tiny size: one real ``tell train --levels 2``
in a child process per row count."""

import json

import pytest

from bench import runner
from bench import two_level_job as bench


@pytest.mark.integration
def test_two_level_job_benchmark_reports_the_driver_and_the_tasks(tmp_path):
    out = tmp_path / "two-level-job.json"
    result = bench.main(
        ["--rows", "12000", "--dim", "8", "--k", "64", "--workers", "1",
         "--sample-interval", "0.05", "--out", str(out)]
    )  # fmt: skip
    assert runner.load_benchmark("two_level_job") is bench.main
    assert json.loads(out.read_text()) == result
    ((row,),) = result["tables"].values()
    assert (row["k"], row["n_coarse"], row["partitions"]) == (64, 8, 2)
    assert row["fine_centers_used"] == 64 and 0.9 < row["over_floor"] < 1.3
    assert 0.0 <= row["disagreement"] <= 1.0
    # a partition task here runs for well under the default 0.5 s between samples, hence
    # --sample-interval 0.05; a split task this small may still end unsampled
    for role in ("driver", "partition_task"):
        assert row[f"{role}_peak_rss_mib"] > 0, role
    assert row["job_wall_s"] >= row["fine_fit_s"] > 0
