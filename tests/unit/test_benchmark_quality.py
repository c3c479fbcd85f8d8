"""The quality benchmark (issue #2, item 4): JSON and table structure on a tiny digits run."""

import json

import pytest

from bench import quality
from bench import runner as benchmark


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quality-digits.json"
    argv = ["--dataset", "digits", "--seeds", "1", "--subset", "120", "--encoder", "identity",
            "conv", "--epochs", "1", "--pretrain-epochs", "1", "--kmeans-n-init", "1",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    return quality.main(argv), out


def test_json_written_and_equal_to_returned_result(smoke):
    result, out = smoke
    assert json.loads(out.read_text()) == result


def test_runs_per_seed_and_method(smoke):
    result, _ = smoke
    methods = [r["method"] for r in result["runs"]]
    assert methods == ["k-means++ (sklearn, n_init=1)", "TELL identity", "TELL conv"]
    for run in result["runs"]:
        assert run["seed"] == 0
        for key in ("acc", "nmi", "ari"):
            assert 0.0 <= run[key] <= 1.0 or key == "ari"
        assert run["wall_s"] > 0 and run["cpu_s"] >= 0 and run["inertia"] > 0
    conv = result["runs"][2]
    assert conv["epochs"] == 1 and conv["pretrain_epochs"] == 1 and conv["clu_loss"] > 0
    assert [h["phase"] for h in conv["history"]] == ["pretrain", "centers"]
    assert result["runs"][0]["inertia_vs_kmeans"] == 1.0


def test_records_what_ran(smoke):
    result, _ = smoke
    assert result["data"]["rows"] == 120 and result["data"]["n_clusters"] == 10
    assert result["data"]["shape"] == [8, 8, 1]
    assert result["tell_params"]["conv"]["image_shape"] == [8, 8, 1]
    assert result["tell_params"]["conv"]["max_iter"] == 1
    assert "pretrain_epochs" not in result["tell_params"]["identity"]
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert machine["device"] == "cpu"
    assert set(result["summary"]) == {"k-means++ (sklearn, n_init=1)", "TELL identity", "TELL conv"}
    assert result["summary"]["TELL conv"]["lowest_clu_loss_seed"]["seed"] == 0


def test_table_printed(smoke, capsys):
    result, _ = smoke
    row = quality.format_row(result["runs"][1])
    assert "TELL identity" in row and f"{100 * result['runs'][1]['acc']:.2f}" in row
    summary = quality.format_summary(result)
    assert "k-means (DATA.md)" in summary and "goal:" in summary


def test_optimizer_flag_sets_its_default_lr():
    args = quality.build_parser().parse_args(["--dataset", "wordnet", "--optimizer", "adam"])
    info = {"n_clusters": 10, "image_shape": None}
    assert quality.tell_params(args, "mlp", info)["lr"] == 1e-3


def test_dispatcher_reports_missing_benchmark(capsys, monkeypatch):
    monkeypatch.setitem(benchmark.BENCHMARKS, "nosuch", "missing on purpose")
    assert benchmark.main(["nosuch"]) == benchmark.EXIT_USAGE
    assert "bench/nosuch.py does not exist" in capsys.readouterr().err
    assert benchmark.main(["unknown"]) == benchmark.EXIT_USAGE


def test_first_seed_runs_the_seeds_from_there(tmp_path):
    out = tmp_path / "quality-digits.json"
    argv = ["--dataset", "digits", "--seeds", "2", "--first-seed", "3", "--subset", "120",
            "--encoder", "identity", "--epochs", "1", "--kmeans-n-init", "0", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    result = quality.main(argv)
    assert [r["seed"] for r in result["runs"]] == [3, 4]


def test_a_subset_is_held_only_to_the_goal_every_set_shares():
    runs = [
        {"method": "TELL identity", "encoder": "identity", "seed": 0, "acc": 0.55, "nmi": 0.52},
        {"method": "TELL mlp", "encoder": "mlp", "seed": 0, "acc": 0.77, "nmi": 0.68},
    ]
    whole = quality.check_goal("mnist", runs)
    assert whole["met"] is False and not whole["checks"]["mlp mean ACC >= 0.85"]
    subset = quality.check_goal("mnist", runs, subset=True)
    assert subset["met"] is True and subset["goal"] == quality.SUBSET_GOAL
    assert set(subset["checks"]) == {f"{r['method']} seed 0 NMI >= 0.8x identity" for r in runs}
