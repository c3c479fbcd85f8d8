"""The GPU rows of issues #14 and #11, as one prepared run for a lent GPU machine.

``python -m bench gpu [--device cuda] [--out bench-results/gpu.json]``

Sized to finish in a few minutes on one H200, so one device session (15 minutes, machine
start included) can run it once and rerun it if needed. Three parts, each on ``--device``:

1. **Assignment rate** (#14): :func:`tell.assign.assign` (labels, distance, runner-up,
   margin) on unit rows already on the device, d = ``--dim`` (128), for each k of ``--ks``
   (1,024 and 65,536), fp32 and TF32; rows/min, best of ``--reps``. Goal: >= 1e9 rows/min
   at k=1,024 on an H200.
2. **Estimator to the floor** (#14): ``tell.TELL(n_clusters=k, device=...)`` with every other
   parameter at its default on ``make_spherical_blobs(--fit-rows, 64, k)``, k = ``--fit-k``
   (4,096): wall seconds to the labels of every row and the inertia over the floor (the
   generating partition's), as in ``bench/scale_k.py``. Goal: <= 1.05x the floor.
3. **conv on MNIST** (#11): ``python -m bench quality --dataset mnist --encoder identity
   conv`` on the device, ``--mnist-seeds`` seeds; skipped (and said so in the JSON) when the
   MNIST tarball is not cached on the machine (``tell.datasets.mnist_available``: no
   network there). Goal: every seed >= 0.952 ACC within 150 epochs.

On CPU (``--device cpu``, small sizes) it runs the same code, which is how the tests check
it; the numbers only mean something on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.assign import _best_time, _unit
from bench.machine import finish, machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "gpu.json"
ASSIGN_GOAL_ROWS_PER_MIN = 1e9  # at k=1024, d=128, on an H200
FLOOR_GOAL = 1.05


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dim", type=int, default=128, help="feature width of the assignment part")
    p.add_argument("--ks", default="1024,65536", help="k values of the assignment part")
    p.add_argument("--rows", type=int, default=1 << 23, help="rows of the assignment part")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--fit-rows", type=int, default=200_000)
    p.add_argument("--fit-k", type=int, default=4096)
    p.add_argument("--mnist-seeds", type=int, default=3, help="0 skips the MNIST part")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def bench_assign(device: str, dim: int, k: int, rows: int, reps: int) -> dict[str, Any]:
    """Rows/min of :func:`tell.assign.assign` with the data on ``device``, fp32 and TF32."""
    from tell.assign import assign

    z, centers = _unit(rows, dim, 0, device), _unit(k, dim, 1, device)
    row: dict[str, Any] = {"k": k, "dim": dim, "rows": rows}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        seconds = _best_time(lambda: assign(z, centers), reps, _sync(device))
        row["tf32_rows_per_min" if tf32 else "fp32_rows_per_min"] = rows / seconds * 60
    torch.backends.cuda.matmul.allow_tf32 = False
    return row


def bench_fit(device: str, rows: int, k: int) -> dict[str, Any]:
    """The estimator's defaults on spherical blobs: seconds and inertia over the floor."""
    import numpy as np

    from tell import TELL
    from tell.datasets import make_spherical_blobs
    from tell.metrics import partition_inertia

    data = make_spherical_blobs(rows, 64, k, seed=0)
    floor = partition_inertia(data.X, data.y)
    started = time.perf_counter()
    model = TELL(n_clusters=k, device=device, random_state=0).fit(data.X)
    _sync(device)()
    seconds = time.perf_counter() - started
    over_floor = partition_inertia(data.X, model.labels_) / floor
    return {
        "data": f"{rows:,} x 64",
        "k": k,
        "seconds": round(seconds, 2),
        "over_floor": round(over_floor, 4),
        "epochs": model.n_iter_,
        "clusters_used": int(np.unique(model.labels_).size),
        "met": bool(over_floor <= FLOOR_GOAL),
    }


def bench_mnist_conv(device: str, seeds: int, out_dir: Path) -> dict[str, Any]:
    """The quality benchmark's conv rows on MNIST, or why they were skipped."""
    from tell.datasets import mnist_available

    if seeds == 0:
        return {"skipped": "--mnist-seeds 0"}
    if not mnist_available():
        return {"skipped": "the MNIST tarball is not cached on this machine (no network)"}
    from bench.quality import main as quality_main

    out = out_dir / "quality-mnist-conv-gpu.json"
    argv = ["--dataset", "mnist", "--encoder", "identity", "conv", "--seeds", str(seeds)]
    result = quality_main([*argv, "--device", device, "--kmeans-n-init", "0", "--out", str(out)])
    return {"json": str(out), "goal": result.get("goal")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m bench gpu: no CUDA device here (use --device cpu to try it)")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": machine_info(device=device_name),
        "args": vars(args),
    }
    assign_rows = []
    for k in (int(v) for v in args.ks.split(",")):
        assign_rows.append(bench_assign(args.device, args.dim, k, args.rows, args.reps))
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the previous k's rows and scores
        print(json.dumps(assign_rows[-1]), flush=True)
    fit = bench_fit(args.device, args.fit_rows, args.fit_k)
    print(json.dumps(fit), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["assign"], result["fit"] = assign_rows, fit
    result["mnist_conv"] = bench_mnist_conv(args.device, args.mnist_seeds, out.parent)
    at_1024 = [r for r in assign_rows if r["k"] == 1024]
    result["goals"] = [
        {
            "goal": f"assignment >= {ASSIGN_GOAL_ROWS_PER_MIN:.0e} rows/min at k=1024, d=128",
            "measured": "; ".join(f"{r['fp32_rows_per_min']:.3g} fp32" for r in at_1024),
            "met": bool(at_1024) and at_1024[0]["fp32_rows_per_min"] >= ASSIGN_GOAL_ROWS_PER_MIN,
        },
        {
            "goal": f"estimator at k={args.fit_k} within {FLOOR_GOAL}x the floor",
            "measured": f"{fit['over_floor']}x the floor in {fit['seconds']} s",
            "met": fit["met"],
        },
    ]
    result["tables"] = {
        f"assignment on {device_name} (rows/min, data on the device)": [
            {
                "k": str(r["k"]),
                "d": str(r["dim"]),
                "fp32 rows/min": f"{r['fp32_rows_per_min']:.3g}",
                "TF32 rows/min": f"{r['tf32_rows_per_min']:.3g}",
            }
            for r in assign_rows
        ],
        f"estimator defaults on {device_name}": [
            {key: str(fit[key]) for key in ("data", "k", "seconds", "over_floor", "epochs")}
        ],
    }
    finish(result["machine"])
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result
