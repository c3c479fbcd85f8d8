"""The training benchmark (issue #3): the parts that need no Ray, at a tiny size."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bench import runner as benchmark
from bench import train as bench


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train.json"
    argv = ["--quick", "--sections", "converge", "--rows", "1200", "--mbk-n-init", "1",
            "--tell-configs", "2:256:600", "--out", str(out)]  # fmt: skip
    return bench.main(argv), out


def test_dispatcher_finds_the_train_benchmark():
    assert benchmark.load_benchmark("train") is bench.main


def test_json_written_and_equal_to_returned_result(smoke):
    result, out = smoke
    assert json.loads(out.read_text()) == result
    assert result["benchmark"] == "train" and "--quick" in result["command"]
    assert "throughput" not in result and "memory" not in result  # no Ray in this section


def test_converge_compares_three_methods_on_the_same_rows(smoke):
    result, _ = smoke
    conv = result["converge"]
    assert (conv["rows"], conv["dim"], conv["k"]) == (1200, 16, 16)
    methods = [r["method"] for r in conv["runs"]]
    assert methods == ["faiss k-means", "MiniBatchKMeans n_init=1", "TELL estimator"]
    for run in conv["runs"]:
        assert run["fit_s"] > 0 and run["total_s"] >= run["fit_s"] and run["cpu_s"] >= 0
        assert 0.0 < run["acc"] <= 1.0 and run["inertia"] > 0
        # partition inertia can't beat the optimum by much: the true partition is near it
        assert 0.9 < run["inertia_vs_true"] < 2.0
    faiss_run, _, tell_run = conv["runs"]
    assert faiss_run["time_vs_faiss"] == 1.0
    assert faiss_run["params"]["max_points_per_centroid"] == 256
    assert faiss_run["params"]["train_rows"] == 1200  # < 256 * k: faiss keeps every row
    assert tell_run["params"] == {"epochs": 2, "batch_size": 256, "init_sample_rows": 600,
                                  "seed": 0}  # fmt: skip
    assert set(tell_run["goal"]) == {"inertia", "time", "met"}
    summary = conv["summary"]
    best = min(conv["runs"][:2], key=lambda r: r["inertia"])
    assert summary["best_baseline"] == best["method"]
    assert min(r["inertia_vs_best_baseline"] for r in conv["runs"][:2]) == 1.0
    assert "1.01x" in summary["goal"]


def test_tables_print(smoke):
    result, _ = smoke
    table = bench.format_converge(result)
    assert "faiss k-means" in table and "TELL estimator e=2 b=256 s=600" in table
    assert "subsample" in bench.__doc__ and "256" in table


def test_goal_logic_on_made_up_runs():
    X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)

    def run(method, inertia, total_s, **kw):
        return {"method": method, "inertia": inertia, "total_s": total_s, "fit_s": total_s,
                "cpu_s": total_s, "params": {"epochs": 1, "batch_size": 2,
                                             "init_sample_rows": 8}, **kw}  # fmt: skip

    runs = [
        run("faiss k-means", 10.0, 100.0, fit_cpu_s=80.0),
        run("MiniBatchKMeans n_init=1", 9.0, 50.0),
        run("TELL estimator", 9.05, 90.0),  # within 1.01x of 9.0, faster than faiss
        run("TELL estimator", 9.5, 10.0),  # fast but too high
        run("TELL job workers=2", 9.0, 90.0),  # the job is held to faiss's fit time (100)
    ]
    summary = bench.compare(runs, X, y)
    assert summary["best_baseline"] == "MiniBatchKMeans n_init=1"
    assert [r["goal"]["met"] for r in runs[2:]] == [True, False, True]
    assert runs[3]["goal"] == {"inertia": False, "time": True, "met": False}
    assert summary["true_partition_inertia"] > 0
    assert runs[1]["inertia_vs_true"] == pytest.approx(9.0 / summary["true_partition_inertia"])


def test_file_rows_divide_every_size():
    assert bench.file_rows_for([1_000_000, 4_000_000]) == 125_000
    assert bench.file_rows_for([500_000, 2_000_000]) == 62_500
    rows = bench.file_rows_for([3000, 6000])
    assert 3000 % rows == 0 and 3000 // rows >= 8


def test_process_roles_from_ray_titles():
    assert bench.classify(["python x.py"], is_root=True) == "driver"
    worker = ["python default_worker.py", "ray::IDLE", "ray::RayTrainWorker.run_train_fn"]
    assert bench.classify(worker, False) == "train worker"
    read = ["python default_worker.py", "ray::ReadFilesParquetV2->MapBatches(FeatureBatches)"]
    assert bench.classify(read, False) == "data task"
    assert bench.classify(["ray::SplitCoordinator"], False) == "data task"
    assert bench.classify(["ray::scan_file"], False) == "data task"
    assert bench.classify(["python default_worker.py", "ray::IDLE"], False) == "idle worker"
    assert bench.classify(["raylet --foo"], False) == "ray system"
    assert bench.classify(["ray::TrainController.run"], False) == "train controller"


def test_sampler_sees_a_child_process_and_its_peak():
    code = "import time; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                             f"subprocess.run([sys.executable, '-c', {code!r}])"])  # fmt: skip
    with bench.ProcessSampler(proc.pid, interval=0.05) as sampler:
        proc.wait()
    report = sampler.report()
    assert report["samples"] >= 2
    roles = {p["role"] for p in report["processes"]}
    assert "driver" in roles and len(report["processes"]) == 2
    child = max(report["processes"], key=lambda p: p["peak_rss_mib"])
    assert child["peak_rss_mib"] >= 80 and child["peak_private_mib"] >= 70


def test_epoch_metrics_come_from_the_newest_checkpoints_history(tmp_path):
    """The job keeps two checkpoints; the newest one's history holds every epoch."""
    history = [{"epoch": e, "rows": 10, "epoch_s": 1.0 + e, "extra": "x"} for e in range(3)]
    for epoch in (1, 2):
        folder = tmp_path / f"checkpoint_{epoch}"
        folder.mkdir()
        meta = {"epoch": epoch, "history": history[: epoch + 1]}
        (folder / "metadata.json").write_text(json.dumps(meta))
    metrics = bench.read_epoch_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert [m["epoch_s"] for m in metrics] == [1.0, 2.0, 3.0] and "extra" not in metrics[0]
    assert bench.read_epoch_metrics(tmp_path / "missing") == []


def test_job_split_table_shows_fixed_costs():
    runs = [{"name": "conv-w1", "job_wall_s": 40.0, "scan_s": 6.0, "fit_s": 31.0,
             "epochs_s": 8.0}]  # fmt: skip
    table = bench.format_job_split(runs)
    assert "conv-w1" in table and table.splitlines()[-1].split()[1:] == [
        "40.0", "6.0", "31.0", "8.0", "23.0"
    ]  # fmt: skip


def test_job_configs_parse_and_quick_default():
    args = bench.parse_args(["--quick", "--job-configs", "2:512:1000"])
    assert args.job_configs == [{"epochs": 2, "batch_size": 512, "init_sample_rows": 1000}]
    assert bench.parse_args(["--quick"]).job_configs == [
        {"epochs": 1, "batch_size": 256, "init_sample_rows": 1000}
    ]
