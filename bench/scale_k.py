"""Scale in k (issue #14): TELL's default settings beside faiss and MiniBatchKMeans.

``python -m bench scale_k [--sets 200000x64:256,1024,4096,16384 1000000x128:1024,4096]
[--threads 2] [--out bench-results/scale-k.json]``

For every ``ROWSxDIM:K1,K2,...`` set and every k, one run per method on the same rows, side
by side in one process (a shared machine is noisy: compare the ratios):

* data: :func:`tell.datasets.make_spherical_blobs` (rows, dim, k) with ``k`` generating
  clusters; the **floor** is the inertia of the generating partition (every row with its
  generating cluster, each cluster at its mean): what a k-means that found the true clusters
  would score. Below 1.0 is possible (a partition better than the generating one).
* ``faiss.Kmeans(niter=25)`` (it trains on at most 256 rows per center, then labels every
  row with ``index.search``), timed to the labels of every row;
* ``sklearn.cluster.MiniBatchKMeans`` (n_init=1, batch 4096, its defaults otherwise) up to
  ``--mbk-max-k`` (its k-means++ init is quadratic in k);
* ``tell.TELL(n_clusters=k)`` with **every other parameter at its default** (the identity
  encoder, the automatic batch, seeding sample and stop of ``tell.schedule``), timed to the
  labels of every row (``fit`` computes ``labels_``).

Every partition is scored the same way: :func:`tell.metrics.partition_inertia` on all rows
(each cluster at its mean, so unit centers and mean centers compare fairly), over the floor.
The goal (issue #14): TELL <= 1.05x the floor in <= 1.0x faiss's time at every k.
All libraries get the same number of threads (``--threads``). ``process_peak_rss_mib`` is
the process's high-water mark so far, so it describes the first method of a run (run
``--no-faiss --mbk-max-k 0`` for TELL's own peak, e.g. at k=65,536).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import finish, machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "scale-k.json"
DEFAULT_SETS = ["200000x64:256,1024,4096,16384", "1000000x128:1024,4096"]
FLOOR_GOAL = 1.05
TIME_GOAL = 1.0


def parse_set(text: str) -> tuple[int, int, list[int]]:
    """``"200000x64:256,1024"`` -> (200000, 64, [256, 1024])."""
    try:
        shape, ks = text.split(":")
        rows, dim = (int(v) for v in shape.lower().split("x"))
        return rows, dim, [int(k) for k in ks.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxDIM:K1,K2,... got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench scale_k", description=__doc__.split("\n")[0])
    p.add_argument(
        "--sets", type=parse_set, nargs="+", default=[parse_set(s) for s in DEFAULT_SETS]
    )
    p.add_argument("--threads", type=int, default=2, help="threads of every library")
    p.add_argument("--faiss-niter", type=int, default=25)
    p.add_argument("--mbk-max-k", type=int, default=4096, help="largest k for MiniBatchKMeans")
    p.add_argument("--mbk-batch", type=int, default=4096)
    p.add_argument("--no-faiss", action="store_true", help="TELL (and MiniBatchKMeans) only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


class Timer:
    """Wall seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_faiss(X: np.ndarray, k: int, niter: int, seed: int) -> tuple[np.ndarray, dict]:
    import faiss

    km = faiss.Kmeans(X.shape[1], k, niter=niter, seed=seed, verbose=False)
    km.train(X)
    _, index = km.index.search(X, 1)
    return index.ravel(), {"niter": niter, "train_rows": min(len(X), 256 * k)}


def run_minibatch(X: np.ndarray, k: int, batch: int, seed: int) -> tuple[np.ndarray, dict]:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=batch, random_state=seed).fit(X)
    return km.labels_, {"batch_size": batch, "steps": int(km.n_steps_)}


def run_tell(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, dict]:
    from tell import TELL
    from tell.schedule import batch_size_for, init_sample_rows_for

    model = TELL(n_clusters=k, random_state=seed).fit(X)
    cfg = model._config()
    return model.labels_, {
        "epochs": model.n_iter_,
        "stop": model.outcome_["stop_reason"],
        "batch_size": batch_size_for(cfg),
        "init_sample_rows": init_sample_rows_for(cfg, len(X)),
        "moved": sum(h.get("moved", 0) for h in model.history_),
    }


def bench_k(args: argparse.Namespace, rows: int, dim: int, k: int) -> list[dict[str, Any]]:
    """One row per method on ``make_spherical_blobs(rows, dim, k)``."""
    from tell.datasets import make_spherical_blobs
    from tell.metrics import partition_inertia

    data = make_spherical_blobs(rows, dim, k, seed=args.seed)
    floor = partition_inertia(data.X, data.y)
    methods = [("TELL defaults", lambda: run_tell(data.X, k, args.seed))]
    if not args.no_faiss:
        methods.insert(0, ("faiss niter=25", lambda: run_faiss(data.X, k, args.faiss_niter, 0)))
    if k <= args.mbk_max_k:
        methods.append(
            ("MiniBatchKMeans", lambda: run_minibatch(data.X, k, args.mbk_batch, args.seed))
        )
    out, seconds = [], []
    for name, fit in methods:
        with Timer() as timer:
            labels, params = fit()
        out.append(
            {
                "data": f"{rows:,} x {dim}",
                "k": k,
                "rows_per_center": round(rows / k, 1),
                "method": name,
                "seconds": round(timer.wall, 2),
                "over_floor": round(partition_inertia(data.X, labels) / floor, 4),
                "clusters_used": int(np.unique(labels).size),
                "process_peak_rss_mib": round(peak_rss_mib()),
                "params": json.dumps(params, separators=(",", ":")),
            }
        )
        seconds.append(timer.wall)
        print(_line(out[-1]), flush=True)
    faiss_s = None if args.no_faiss else seconds[0]
    for r, wall in zip(out, seconds, strict=True):
        r["time_vs_faiss"] = round(wall / faiss_s, 3) if faiss_s else None
    return out


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['data']:>14} k={r['k']:<6} {r['method']:<16} {r['seconds']:8.2f} s "
        f"{r['over_floor']:.4f}x floor  {r['clusters_used']} used  {r['params']}"
    )


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goal, checked at every (data, k) where faiss ran."""
    tell_rows = [
        r for r in rows if r["method"] == "TELL defaults" and r["time_vs_faiss"] is not None
    ]
    if not tell_rows:
        return []
    measured = "; ".join(
        f"{r['data']} k={r['k']}: {r['over_floor']}x floor, {r['time_vs_faiss']}x faiss"
        for r in tell_rows
    )
    met = all(r["over_floor"] <= FLOOR_GOAL and r["time_vs_faiss"] <= TIME_GOAL for r in tell_rows)
    return [
        {
            "goal": f"TELL defaults <= {FLOOR_GOAL}x the floor in <= {TIME_GOAL}x faiss's time "
            "at every k",
            "measured": measured,
            "met": met,
        }
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info(device="cpu")
    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        rows = [r for n, d, ks in args.sets for k in ks for r in bench_k(args, n, d, k)]
    finish(machine)
    load = f"load {machine['load_avg_start'][0]}-{machine['load_avg_end'][0]}"
    title = (
        f"TELL defaults beside faiss and MiniBatchKMeans, spherical blobs with k clusters "
        f"({args.threads} thread(s), {machine['cpu_count']} CPUs, {load})"
    )
    result = {
        "benchmark": "scale_k",
        "machine": machine,
        "args": {**vars(args), "sets": [list(s) for s in args.sets]},
        "tables": {title: rows},
        "goals": goals(rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for goal in result["goals"]:
        print(f"goal: {goal['goal']}: {'met' if goal['met'] else 'NOT met'}")
    print(f"load average {machine['load_avg_start']} -> {machine['load_avg_end']}")
    print(f"wrote {out}")
    return result
