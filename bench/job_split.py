"""The Ray job's time beside the estimator's, at the default settings (issue #14).

``python -m bench job_split [--sets 200000x64:1024,4096] [--out bench-results/job-split.json]``

For every ``ROWSxDIM:K,...`` set and k, on the same rows (``make_spherical_blobs``, written
once as Parquet for the job): ``tell.TELL(n_clusters=k)`` in this process, every parameter
at its default, on one thread; then ``tell train`` (``jobs.train.driver.main``, identity
encoder, every model setting at its default, 1 worker of 1 CPU, so one thread too) in a fresh
process (:func:`bench.train.run_job`). The job's wall time is split into Ray's start-up
(``ray.init``), the scan pass over the input (row count and the seeding sample), the
training (Ray Train's worker group, seeding, epochs, checkpoints) and the rest of the driver;
``epochs_s`` sums the epochs' own times from the run's history; ``job_process_s`` is the
driver process from start to exit (Python imports and ``ray.shutdown`` included), and
``job_minus_estimator_s`` is Ray's start-up plus the job's wall time minus the estimator's.
Both partitions are scored on all rows over the floor (:func:`tell.metrics.partition_inertia`).
The claim to check: the job's extra time over the estimator is fixed start-up, not
per-epoch cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.machine import finish, machine_info
from bench.scale_k import parse_set

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "job-split.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench job_split", description=__doc__.split("\n")[0]
    )
    p.add_argument("--sets", type=parse_set, nargs="+", default=[parse_set("200000x64:1024,4096")])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def write_parquet(X: np.ndarray, root: Path, files: int = 4) -> Path:
    import pyarrow.parquet as pq

    from tell.io import embeddings_to_table

    root.mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(X)), files)):
        table = embeddings_to_table(X[rows], ids=rows.astype(np.int64))
        pq.write_table(table, root / f"part-{i:05d}.parquet")
    return root


def one_k(X: np.ndarray, y: np.ndarray, k: int, data_dir: Path, work: Path, seed: int) -> dict:
    import torch

    from bench.train import job_labels, run_job
    from tell import TELL
    from tell.metrics import partition_inertia

    floor = partition_inertia(X, y)
    torch.set_num_threads(1)
    started = time.perf_counter()
    est = TELL(n_clusters=k, random_state=seed).fit(X)
    est_s = time.perf_counter() - started
    args = SimpleNamespace(
        k=k, seed=seed, dim=X.shape[1], cpus_per_worker=1.0, sample_interval=0.5,
        job_timeout=3600.0,
    )  # fmt: skip
    job = run_job(args, data_dir, len(X), 1, {}, f"split-k{k}", work)
    labels = job_labels(job["model"], X)
    fixed = job["job_wall_s"] - job["fit_s"] - job["scan_s"]
    return {
        "k": k,
        "estimator_s": round(est_s, 2),
        "estimator_over_floor": round(partition_inertia(X, est.labels_) / floor, 4),
        "estimator_epochs": est.n_iter_,
        "job_process_s": job["e2e_s"],
        "ray_init_s": job["ray_init_s"],
        "job_wall_s": job["job_wall_s"],
        "scan_s": job["scan_s"],
        "train_s": job["fit_s"],
        "epochs_s": job["epochs_s"],
        "train_minus_epochs_s": round(job["fit_s"] - job["epochs_s"], 2),
        "driver_rest_s": round(fixed, 2),
        "job_epochs": len(job["epoch_metrics"]),
        "job_over_floor": round(partition_inertia(X, labels) / floor, 4),
        "job_minus_estimator_s": round(job["ray_init_s"] + job["job_wall_s"] - est_s, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from tell.datasets import make_spherical_blobs

    machine = machine_info()
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tell-job-split-") as tmp:
        for rows, dim, ks in args.sets:
            for k in ks:
                data = make_spherical_blobs(rows, dim, k, seed=args.seed)
                work = Path(tmp) / f"{rows}x{dim}-k{k}"
                data_dir = write_parquet(data.X, work / "data")
                row = {"data": f"{rows:,} x {dim}", **one_k(
                    data.X, data.y, k, data_dir, work, args.seed)}  # fmt: skip
                print(row, flush=True)
                rows_out.append(row)
    finish(machine)
    load = f"load {machine['load_avg_start'][0]}-{machine['load_avg_end'][0]}"
    result = {
        "benchmark": "job_split",
        "machine": machine,
        "args": {"sets": [list(s) for s in args.sets], "seed": args.seed},
        "tables": {f"tell train (1 worker, 1 CPU) beside the estimator (1 thread), every "
                   f"setting at its default ({load})": rows_out},
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result
