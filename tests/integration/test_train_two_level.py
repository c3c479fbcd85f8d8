"""``tell train --levels 2`` then ``tell assign`` on a local Ray cluster (issue #14).

The split and the fine fits run as Ray tasks; the assignment writes the routed fine label
and the coarse center of every row, and the manifest records the disagreement measured at
training and the routing check of the run's own rows.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import storage
from jobs.assign import driver as assign
from jobs.commit import reader
from jobs.config import AssignJob, TrainJob
from jobs.model import load_assignable
from jobs.train import driver as train
from tell.config import TrainConfig
from tell.datasets import make_spherical_blobs
from tell.io import embeddings_to_table, write_parquet_files
from tell.two_level import TwoLevelModel

pytestmark = pytest.mark.integration

N_ROWS, DIM, K = 20_000, 16, 256


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """(directory, X, ids): 20,000 x 16 rows around 256 centers, as 4 Parquet files; ids
    that differ from row numbers. The rows are not unit: the jobs normalise them."""
    data = make_spherical_blobs(N_ROWS, DIM, K, seed=5)
    X = data.X * np.random.default_rng(0).uniform(0.5, 2.0, (N_ROWS, 1)).astype(np.float32)
    ids = np.arange(N_ROWS, dtype=np.int64) + 1_000_000
    directory = tmp_path_factory.mktemp("two-level-blobs")
    write_parquet_files(embeddings_to_table(X, ids=ids), directory, n_files=4)
    return directory, X, ids


def test_two_level_train_then_assign(ray_cluster, blobs, tmp_path):
    data_dir, X, ids = blobs
    cfg = TrainConfig(k=K, epochs=5, seed=0)
    trained = train.main(
        TrainJob(data=str(data_dir), out=str(tmp_path), name="two", levels=2, workers=2, config=cfg)
    )
    assert trained["levels"] == 2 and trained["k"] == K and trained["n_coarse"] == 16
    assert trained["rows"] == N_ROWS
    rate, sample_rows = trained["disagreement"]["rate"], trained["disagreement"]["rows"]
    assert sample_rows == N_ROWS  # at most 20,000 sample rows: here every row
    model, meta = load_assignable(trained["model"])
    assert isinstance(model, TwoLevelModel) and meta["levels"] == 2
    assert meta["disagreement"] == trained["disagreement"]
    assert meta["fit_info"]["fine_fit_s"] > 0 and meta["config"]["k"] == K

    summary = assign.main(
        AssignJob(model=trained["model"], data=str(data_dir), out=str(tmp_path / "a"),
                  run_id="two", workers=2, batch_size=4096, min_rows_per_file=6_000)
    )  # fmt: skip
    assert summary["rows"] == summary["assigned"] == N_ROWS and summary["levels"] == 2
    table = reader.read_committed(summary["run"])
    assert table.num_rows == N_ROWS
    order = np.argsort(table["id"].to_numpy())
    np.testing.assert_array_equal(table["id"].to_numpy()[order], ids)  # exactly once
    cluster = table["cluster"].to_numpy()[order]
    coarse = table["coarse_cluster"].to_numpy()[order]
    assert table.schema.field("coarse_cluster").type == "int32"
    assert table.schema.field("cluster").type == "int32"
    assert np.unique(cluster).size == K  # every fine center used
    offsets = model.offsets.numpy()
    assert ((offsets[coarse] <= cluster) & (cluster < offsets[coarse + 1])).all()
    unit = torch.nn.functional.normalize(torch.from_numpy(X), dim=1)
    labels, coarse_labels = model.predict(unit)  # routed
    assert rate == pytest.approx(model.disagreement(unit))  # measured on every row
    np.testing.assert_array_equal(cluster, labels.numpy())
    np.testing.assert_array_equal(coarse, coarse_labels.numpy())
    runner_up = table["runner_up"].to_numpy()[order]
    margin = table["margin"].to_numpy()[order]
    alone = runner_up == -1  # a group of one fine center: no runner-up, margin +inf
    assert np.isinf(margin[alone]).all() and (margin[~alone] >= 0).all()
    manifest = reader.read_manifest(storage.resolve(summary["run"]))
    assert manifest["levels"] == 2 and manifest["n_coarse"] == 16
    assert manifest["disagreement"] == trained["disagreement"]
    check = manifest["routing_check"]  # measured on this run's rows
    assert summary["routing_check"] == check and check["n_probe"] == 1
    differs = cluster != model.predict(unit, routed=False)[0].numpy()
    expected = 0.1 * (16 + int(model.offsets.diff().max())) / K * N_ROWS  # check_share
    assert 0.6 * expected < check["rows"] < 1.4 * expected
    assert check["rate"] == check["differs"] / check["rows"]
    assert abs(check["rate"] - differs.mean()) < 4 * np.sqrt(rate * (1 - rate) / check["rows"])

    probed = assign.main(
        AssignJob(model=trained["model"], data=str(data_dir), out=str(tmp_path / "a"),
                  run_id="probed", workers=2, batch_size=4096, n_probe=16)
    )  # fmt: skip
    assert probed["routing_check"]["n_probe"] == 16 and probed["routing_check"]["differs"] == 0
    table = reader.read_committed(probed["run"])
    order = np.argsort(table["id"].to_numpy())
    exact = model.predict(unit, routed=False)[0].numpy()  # every group probed: exact
    np.testing.assert_array_equal(table["cluster"].to_numpy()[order], exact)
    assert manifest["columns"] == ["id", "cluster", "coarse_cluster", "distance", "runner_up",
                                   "margin"]  # fmt: skip


def test_partition_tasks_come_back_in_order_and_fail_with_one_line(ray_cluster):
    import ray

    from jobs.train.split import PartitionWork, Split, split_rows_of
    from jobs.train.two_level import PartitionRunner
    from tell.errors import TellDataError

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 4)).astype(np.float32)
    coarse = torch.nn.functional.normalize(torch.from_numpy(rows[:6]), dim=1)
    counts, *pieces = split_rows_of(rows, coarse, 3, "rows")
    parts = Split(counts, [[ray.put(piece)] for piece in pieces])
    works = [PartitionWork(p, (p, p + 3)) for p in range(3)]  # count distinct rows
    beats: list[str] = []
    got = list(PartitionRunner(0.5, 2, beats.append)(works, parts, "counted"))
    assert got == [[counts[p], counts[p + 3]] for p in range(3)]  # normal rows: all distinct
    assert beats[-1] == "counted 3 of 3 partitions"
    too_many = int(counts[1]) + 1
    bad = [PartitionWork(1, (1, 4), shares=(too_many, 1), all_distinct=(False, False),
                         seeds=(0, 1))]  # fmt: skip
    with pytest.raises(
        TellDataError, match=rf"^The fine fit of coarse group 1 \({counts[1]} r"
    ) as e:
        list(PartitionRunner(0.5, 2, beats.append)(bad, parts, "fitted"))
    assert "\n" not in str(e.value)
    print(f"\n{e.value}")


def test_fine_fits_no_node_can_host_fail_after_the_stall_timeout(ray_cluster, blobs, tmp_path):
    """Fine fits asking for more CPUs than the cluster has wait forever in Ray: the
    watchdog ends the job with one line naming the pending demand, exit 2; no model.
    Through the command in a subprocess: the watchdog's last resort is a hard exit of the
    driver's process, which must never be the test runner. 15 s: the split tasks' first
    import of torch in fresh workers takes several seconds on a loaded 2-core machine, and
    that wait is rightly no progress."""
    data_dir, _, _ = blobs
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(RAY_ADDRESS=ray_cluster.address_info["gcs_address"], RAY_USAGE_STATS_ENABLED="0")
    script = Path(sys.executable).with_name("tell")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]
    argv = ["train", "--data", str(data_dir), "--out", str(tmp_path), "--name", "stuck",
            "--k", str(K), "--levels", "2", "--cpus-per-worker", "4",
            "--stall-timeout-s", "15"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        [*command, *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    wall_s = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    stalled = r"No progress for \d+ s .*last: started the fine fits.*'CPU': 4\.0"
    assert re.search(stalled, errors[0]), errors[0]
    assert done.stdout == "" and not (tmp_path / "stuck").exists()
    assert wall_s < 120, wall_s
    print(f"\n{wall_s:.0f} s: {errors[0]}")
