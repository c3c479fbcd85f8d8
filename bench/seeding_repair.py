"""Seeding time and center-repair time as functions of k (issue #14): linear, not quadratic.

``python -m bench seeding_repair [--ks 256 1024 4096 16384 65536] [--rows 131072] ...``

1. Seeding, on one fixed sample of ``--rows`` unit rows (d = ``--dim``) drawn by
   :func:`tell.datasets.make_spherical_blobs` with k generating clusters: the time and the
   seeded inertia over the floor (the inertia of the generating clusters' means) of

   * :func:`tell.init.two_level_kmeans_parallel`, the seeding of ``init="k-means++"``
     (one-level k-means|| up to ``LEAF_CENTERS`` centers, then in groups),
   * :func:`tell.init.kmeans_parallel` in one level (up to ``--one-level-max-k``),
   * scikit-learn's greedy ``kmeans_plusplus``, the seeding before issue #14 (float64, as
     it was called; up to ``--sklearn-max-k``).

   ``ns_per_center_row`` = seconds / (k x rows) x 1e9: flat when the cost is linear in k.
2. Repair, on synthetic epoch statistics of k centers (Poisson(``--rows-per-center``)
   rows each, 1 % dead, spread and margins varying per center): one
   :func:`tell.engine.repair_centers_` (plan, exchange, move) against the loop it replaced
   (the reference kept in tests/unit/test_repair.py), both with max_moves = k // 10, and
   the bytes one epoch's reduce and repair exchange per process at world size 8, before
   (a (world, k, 1 + d) float32 all_gather) and after.

Runs with ``--threads`` torch/BLAS threads (default 1: the machine is shared) under
whatever else runs: the load average is recorded at the start and the end. Prints a table
and writes JSON (default ``bench-results/seeding-repair.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bench.machine import finish, machine_info
from tell.assign import nearest
from tell.datasets import make_spherical_blobs
from tell.encoders import EncoderSpec
from tell.engine import EpochStats, repair_centers_
from tell.init import LEAF_CENTERS, kmeans_parallel, two_level_kmeans_parallel
from tell.metrics import partition_inertia
from tell.model import TELLNet

DEFAULT_OUT = "bench-results/seeding-repair.json"
REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "unit" / "test_repair.py"
WORLD = 8  # the world size of the exchange sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench seeding_repair", description=__doc__)
    p.add_argument("--ks", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=64, help="feature width d")
    p.add_argument("--rows", type=int, default=131_072, help="seeding sample rows (fixed)")
    p.add_argument("--one-level-max-k", type=int, default=4096)
    p.add_argument("--sklearn-max-k", type=int, default=1024)
    p.add_argument("--rows-per-center", type=float, default=32.0, help="repair statistics")
    p.add_argument("--reference-max-k", type=int, default=65536, help="old repair loop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=DEFAULT_OUT)
    return p


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _sklearn_seeding(z: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(z.numpy().astype(np.float64), k, random_state=seed)
    return torch.from_numpy(centers.astype(np.float32))


def bench_seeding(args: argparse.Namespace, k: int) -> list[dict[str, Any]]:
    data = make_spherical_blobs(args.rows, args.dim, k, seed=0)
    z = torch.from_numpy(data.X)
    floor = partition_inertia(data.X, data.y)
    methods = {"two_level_kmeans_parallel (default)": two_level_kmeans_parallel}
    if k <= args.one_level_max_k:
        methods["kmeans_parallel (one level)"] = kmeans_parallel
    if k <= args.sklearn_max_k:
        methods["sklearn kmeans_plusplus (before)"] = _sklearn_seeding
    rows = []
    for name, seeding in methods.items():
        seconds, centers = _timed(lambda seeding=seeding: seeding(z, k, 0))
        inertia = float(nearest(z, centers)[1].double().sum())
        rows.append(
            {
                "k": k,
                "rows": args.rows,
                "method": name,
                "seconds": round(seconds, 3),
                "ns_per_center_row": round(seconds / (k * args.rows) * 1e9, 3),
                "seeded_over_floor": round(inertia / floor, 4),
            }
        )
        print(_seeding_line(rows[-1]), flush=True)
    return rows


def _synthetic_stats(k: int, d: int, rows_per_center: float) -> EpochStats:
    """Epoch statistics of k centers after a reduce, without the data behind them."""
    g = torch.Generator().manual_seed(0)
    stats = EpochStats(k, d)
    counts = torch.poisson(torch.full((k,), rows_per_center), generator=g)
    counts[torch.rand(k, generator=g) < 0.01] = 0.0
    stats.counts.copy_(counts)
    spread = (0.6 + 0.1 * torch.randn(k, generator=g)).clamp_min(0.1)
    stats.sq_dist_sums.copy_(counts * spread)
    stats.margin_sums.copy_(counts * 0.3 * torch.rand(k, generator=g))
    stats.farthest_sq_dist = torch.where(counts > 0, 2.0 * spread, -1.0)
    stats.farthest_z = F.normalize(torch.randn(k, d, generator=g), dim=1)
    stats.movable = stats.farthest_sq_dist > 0
    return stats


def _reference_plan():
    spec = importlib.util.spec_from_file_location("_test_repair_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_plan


def bench_repair(args: argparse.Namespace, k: int) -> dict[str, Any]:
    stats = _synthetic_stats(k, args.dim, args.rows_per_center)
    net = TELLNet(EncoderSpec("identity", args.dim), k)
    seconds, moved = _timed(lambda: repair_centers_(net, stats))
    d, m = args.dim, len(moved)
    row: dict[str, Any] = {
        "k": k,
        "moves": m,
        "repair_s": round(seconds, 4),
        "us_per_center": round(seconds / k * 1e6, 3),
        "exchange_bytes_before": WORLD * k * (1 + d) * 4 + (3 + 4 * k) * 8,
        "exchange_bytes_after": (3 + d + 4 * k) * 8 + WORLD * m * 4 + m * (d + 1) * 4,
    }
    if k <= args.reference_max_k:
        reference = _reference_plan()
        ref_s, ref_moves = _timed(
            lambda: reference(
                stats.counts, stats.sq_dist_sums, stats.margin_sums, stats.movable, k // 10
            )
        )
        row["loop_before_s"] = round(ref_s, 4)
        row["same_moves"] = [donor for donor, _ in ref_moves] == moved
    print(_repair_line(row), flush=True)
    return row


def _seeding_line(r: dict[str, Any]) -> str:
    return (
        f"seeding k={r['k']:>6} rows={r['rows']} {r['method']:<38} {r['seconds']:>9.2f} s "
        f"{r['ns_per_center_row']:>7.3f} ns/(k*row)  seeded/floor {r['seeded_over_floor']:.4f}"
    )


def _repair_line(r: dict[str, Any]) -> str:
    before = f"loop before {r['loop_before_s']:.4f} s" if "loop_before_s" in r else ""
    return (
        f"repair  k={r['k']:>6} moves={r['moves']:>6} {r['repair_s']:>8.4f} s "
        f"({r['us_per_center']:.2f} us/center) {before} "
        f"exchange {r['exchange_bytes_before'] / 2**20:.2f} -> "
        f"{r['exchange_bytes_after'] / 2**20:.2f} MiB/process/epoch (world {WORLD})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(args.threads):
            result = run(args)
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    machine = result["machine"]
    print(f"load average {machine['load_avg_start']} -> {machine['load_avg_end']}")
    print(f"wrote {out}")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts at every k of ``args.ks``; the result as written to JSON."""
    machine = machine_info(device="cpu")
    repair = [bench_repair(args, k) for k in args.ks]
    seeding = [row for k in args.ks for row in bench_seeding(args, k)]
    finish(machine)
    return {
        "benchmark": "seeding_repair",
        "machine": machine,
        "args": vars(args),
        "leaf_centers": LEAF_CENTERS,
        "tables": _tables(args, machine, seeding, repair),
    }


def _tables(
    args: argparse.Namespace, machine: dict[str, Any], seeding: list[dict], repair: list[dict]
) -> dict[str, list[dict]]:
    """The two tables under titles that say what they measured (README renders them)."""
    load = f"load {machine['load_avg_start'][0]}-{machine['load_avg_end'][0]}"
    where = f"{args.threads} thread(s), {machine['cpu_count']} CPUs, {load}"
    return {
        f"Seeding vs k ({args.rows} sample rows, d={args.dim}, {where})": seeding,
        f"Center repair per epoch vs k (synthetic statistics, max_moves k/10, exchange at "
        f"world {WORLD}, {where})": repair,
    }


if __name__ == "__main__":
    main()
