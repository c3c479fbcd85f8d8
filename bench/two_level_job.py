"""``tell train --levels 2`` at growing row counts: the driver's memory stays flat in N (issue #14).

``python -m bench two_level_job [--rows 1000000,3000000] [--dim 64] [--k 16384]
[--workers 2] [--out bench-results/two-level-job.json]``

For every row count, on ``make_spherical_blobs(rows, dim, k)`` written as Parquet files of
250,000 rows: ``tell train --levels 2`` (``jobs.train.driver.main``, every model setting at
its default, ``--workers`` fits of ``--cpus-per-worker`` CPUs) in a fresh process whose
process tree is sampled for memory (:class:`bench.train.ProcessSampler`): the driver, the
split tasks and the partition tasks each get their peak RSS. The model is then scored on
all rows, routed as ``tell assign`` does (inertia over the generating partition's floor)
beside the disagreement the job measured. The claim to check: the driver's peak is the
same at every row count (it holds a sample, the centers and counts, never the rows); the
rows live in the object store and in one partition task at a time per worker.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.job_split import write_parquet
from bench.machine import finish, machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "two-level-job.json"
FILE_ROWS = 250_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench two_level_job", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rows", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1_000_000, 3_000_000])  # fmt: skip
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=16_384)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--job-timeout", type=float, default=3600.0)
    # as in bench/train.py; a task shorter than the period may end unsampled
    p.add_argument("--sample-interval", type=float, default=0.5, help="RSS sampling period (s)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def one_size(args: argparse.Namespace, rows: int, work: Path) -> dict[str, Any]:
    import torch

    from bench.train import run_job
    from jobs.model import load_assignable
    from tell.datasets import make_spherical_blobs
    from tell.metrics import partition_inertia

    data = make_spherical_blobs(rows, args.dim, args.k, seed=args.seed)
    data_dir = write_parquet(data.X, work / "data", files=max(1, rows // FILE_ROWS))
    job_args = SimpleNamespace(
        k=args.k, seed=args.seed, dim=args.dim, cpus_per_worker=args.cpus_per_worker,
        sample_interval=args.sample_interval, job_timeout=args.job_timeout,
    )  # fmt: skip
    job = run_job(job_args, data_dir, rows, args.workers, {}, f"two-level-{rows}", work,
                  extra_job={"levels": 2})  # fmt: skip
    model, _ = load_assignable(job["model"])
    labels, _ = model.predict(torch.from_numpy(data.X))
    floor = partition_inertia(data.X, data.y)
    roles = job["memory"]["by_role"]
    info = job["fit_info"]
    return {
        "data": f"{rows:,} x {args.dim}",
        "k": model.n_clusters,
        "n_coarse": model.n_coarse,
        "partitions": info["partitions"],
        "job_wall_s": job["job_wall_s"],
        "scan_s": job["scan_s"],
        "coarse_fit_s": info["coarse_fit_s"],
        "split_s": info["split_s"],
        "shares_s": info["shares_s"],
        "fine_fit_s": info["fine_fit_s"],
        "over_floor": round(partition_inertia(data.X, labels.numpy()) / floor, 4),
        "fine_centers_used": int(np.unique(labels.numpy()).size),
        "disagreement": job["disagreement"]["rate"],
        "features_mib": round(rows * args.dim * 4 / 2**20),
        "driver_peak_rss_mib": roles["driver"]["max_peak_rss_mib"],
        "split_task_peak_rss_mib": roles.get("split task", {}).get("max_peak_rss_mib"),
        "partition_task_peak_rss_mib": roles.get("partition task", {}).get("max_peak_rss_mib"),
        "all_processes_peak_rss_mib": job["memory"]["peak_total_rss_mib"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    table: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tell-two-level-job-") as tmp:
        for rows in args.rows:
            row = one_size(args, rows, Path(tmp) / str(rows))
            print(row, flush=True)
            table.append(row)
    finish(machine)
    load = f"load {machine['load_avg_start'][0]}-{machine['load_avg_end'][0]}"
    title = (
        f"tell train --levels 2 at growing N, k={args.k:,}, {args.workers} workers of "
        f"{args.cpus_per_worker:g} CPU ({load})"
    )
    result = {
        "benchmark": "two_level_job",
        "machine": machine,
        "args": vars(args),
        "tables": {title: table},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result
