"""Every row trains (issue 13): an input smaller than a batch is trained on, and Ray Train's
split leaves no row out of an epoch, with 1, 2 and 3 workers.

The rows carry their index in their first feature; the ``record`` instrumentation of
``jobs/faults.py`` writes the first feature of every row each rank trained on, per
epoch, so the test sees exactly which rows each epoch saw. Tiny inputs go through the
installed ``tell`` command, whose stdout must be nothing but the JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import TrainJob
from jobs.train import driver as train
from tell.config import TrainConfig

pytestmark = pytest.mark.integration

N_ROWS, DIM, EPOCHS = 1001, 8, 3  # 1001 = 7 x 11 x 13: a remainder for 2 and 3 workers


def _write_rows(directory: Path, n: int, dim: int, n_files: int, seed: int = 0) -> np.ndarray:
    """``n`` rows whose first feature is the row's index; returns the features."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    x[:, 0] = np.arange(n, dtype=np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(n), n_files)):
        values = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), dim)
        table = pa.table({"id": pa.array(rows, pa.int64()), "embedding": values})
        pq.write_table(table, directory / f"part-{i:05d}.parquet")
    return x


@pytest.fixture(scope="module")
def indexed_rows(tmp_path_factory):
    directory = tmp_path_factory.mktemp("indexed")
    _write_rows(directory, N_ROWS, DIM, n_files=3)
    return directory


@pytest.mark.parametrize("materialize", ["auto", "never"])
def test_an_epoch_of_epoch_rows_trains_a_fresh_subset_each_epoch(
    ray_cluster, indexed_rows, tmp_path, monkeypatch, materialize
):
    """tell.schedule.epoch_rows_for (issue 14): an identity epoch may train on fewer rows than
    the input (at most 256 per center by default); both ranks stop after the same step, the
    next epoch starts cleanly, and the subsets differ from epoch to epoch."""
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("TELL_FAULT_INJECT", f"record:dir={record}")
    cfg = TrainConfig(k=4, epochs=EPOCHS, batch_size=128, epoch_rows=384, seed=0, tol=0.0)
    job = TrainJob(
        data=str(indexed_rows), out=str(tmp_path / "out"), name=f"subset-{materialize}",
        workers=2, materialize=materialize, config=cfg,
    )  # fmt: skip
    summary = train.main(job)
    assert summary["epochs"] == EPOCHS and summary["metrics"]["rows"] == 384
    assert summary["metrics"]["rows_skipped"] == N_ROWS + 1 - 384
    subsets = []
    for epoch in range(EPOCHS):
        seen = np.concatenate([np.load(f) for f in record.glob(f"epoch-{epoch}-rank-*.npy")])
        assert len(seen) == 384  # 3 steps of 64 rows on each of 2 ranks
        subsets.append(frozenset(seen.astype(np.int64).tolist()))
    assert len(set(subsets)) == EPOCHS, "every epoch trained on the same rows"


@pytest.mark.parametrize(
    ("workers", "materialize"), [(1, "auto"), (2, "auto"), (3, "never")]
)  # 3 workers stream the files every epoch: the padding rows are a second dataset there
def test_every_row_is_trained_in_every_epoch(
    ray_cluster, indexed_rows, tmp_path, monkeypatch, workers, materialize
):
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("TELL_FAULT_INJECT", f"record:dir={record}")
    cfg = TrainConfig(k=4, epochs=EPOCHS, batch_size=128, seed=0, tol=0.0)
    job = TrainJob(
        data=str(indexed_rows), out=str(tmp_path / "out"), name=f"rows-{workers}",
        workers=workers, materialize=materialize, config=cfg,
    )  # fmt: skip
    summary = train.main(job)
    padding = -N_ROWS % workers
    assert summary["padding_rows"] == padding and summary["epochs"] == EPOCHS
    assert summary["materialized"] == (materialize == "auto")
    assert summary["metrics"]["rows"] == N_ROWS + padding
    assert summary["metrics"]["rows_skipped"] == 0
    for epoch in range(EPOCHS):
        files = sorted(record.glob(f"epoch-{epoch}-rank-*.npy"))
        assert len(files) == workers, files
        seen = np.concatenate([np.load(f) for f in files]).astype(np.int64)
        assert len(seen) == N_ROWS + padding  # every rank took its share, the pad included
        missing = sorted(set(range(N_ROWS)) - set(seen.tolist()))
        assert missing == [], f"epoch {epoch}: rows never trained: {missing[:20]}"
    print(f"\n{workers} worker(s): {N_ROWS} rows + {padding} padding rows every epoch")


def _tell(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("tell")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("n_rows", "dim", "k", "workers"),
    [(3, 8, 2, 2), (40, 4096, 2, 1)],  # 2 workers for 3 rows: each rank holds one or two
    ids=["3-rows-k2-2-workers", "40-rows-d4096"],
)
def test_an_input_smaller_than_a_batch_trains_on_every_row(
    ray_cluster, tmp_path, n_rows, dim, k, workers
):
    """The 3 rows with k=2 and the 40 rows at d=4096 of issue 13 used to "finish" having
    trained on nothing (rows 1, both centers dead); through the command, with its JSON
    summary piped to ``python -m json.tool``."""
    data = tmp_path / "data"
    _write_rows(data, n_rows, dim, n_files=1)
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith("AWS_")}
    env.update(RAY_ADDRESS=ray_cluster.address_info["gcs_address"], RAY_USAGE_STATS_ENABLED="0")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--k", str(k),
            "--epochs", "2", "--workers", str(workers), "--batch-size", "256"]  # fmt: skip
    done = _tell(argv, env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    pretty = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=done.stdout, capture_output=True, text=True
    )
    assert pretty.returncode == 0, f"stdout is not one JSON document:\n{done.stdout[:2000]}"
    summary = json.loads(done.stdout)
    assert summary["rows"] == n_rows
    assert summary["metrics"]["rows"] == n_rows + summary["padding_rows"]
    assert summary["metrics"]["rows_skipped"] == 0
    assert summary["metrics"]["dead_centers"] < k
    assert summary["metrics"]["inertia_per_row"] > 0
