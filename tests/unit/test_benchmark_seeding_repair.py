"""The seeding and repair benchmark (issue #14), at a tiny size."""

import json

from bench import runner
from bench import seeding_repair as bench


def test_seeding_repair_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "seeding-repair.json"
    result = bench.main(["--ks", "16", "64", "--rows", "2048", "--dim", "8", "--out", str(out)])
    assert runner.load_benchmark("seeding_repair") is bench.main
    assert json.loads(out.read_text()) == result
    seeding, repair = result["tables"].values()
    assert {r["k"] for r in seeding} == {16, 64}
    assert len(seeding) == 6  # three seedings at each k
    assert all(r["same_moves"] for r in repair)
    assert all(r["exchange_bytes_after"] < r["exchange_bytes_before"] for r in repair)
    assert result["machine"]["load_avg_end"] is not None
