"""Training benchmark (issue #3): throughput, memory and time-to-converge of the Ray Train job.

``python -m bench train [--rows 1000000] [--dim 128] [--k 1024] [--epochs 3]
[--workers 1 2] [--memory-rows 1000000 4000000] [--quick] [--out bench-results/train.json]``

Everything runs side by side in ONE invocation on the same synthetic data (unit-norm
spherical blobs with known labels, :func:`tell.datasets.iter_spherical_blobs`, written to
Parquet chunk by chunk), because a shared machine is noisy: compare the ratios.

1. Throughput: ``jobs.train.driver.main`` (identity encoder) with 1 and 2 workers. Each run is a
   fresh Python process (the job's driver: import, ``ray.init``, scan pass, TorchTrainer,
   final model). rows/s comes from the steady-state epochs (epoch >= 1) in the per-epoch
   ``history`` of the last checkpoint's metadata (<out>/runs/<name>/checkpoint_*/), divided
   by the worker count for rows/s per worker; end-to-end wall time includes start-up.
   ``--job-configs`` adds 1-worker runs with other epochs/batch settings for part 3, and a
   table splits each job's wall time into scan, epochs and fixed costs.
2. Memory: a background thread samples, every ``--sample-interval`` s, the RSS (and RSS minus
   shared pages) of the driver and of every process of its Ray session (train workers, Ray
   Data tasks and actors, raylet/GCS); peak per process at each size of ``--memory-rows``
   and the ratio largest/smallest per role (flat in N means ~1.0).
3. Convergence on the first ``--rows`` rows, in memory: faiss k-means (``faiss.Kmeans``,
   niter 25; it trains on a random subsample of ``max_points_per_centroid * k`` = 256 k rows
   by default, then ``index.search`` labels every row), scikit-learn ``MiniBatchKMeans``
   (``n_init`` 1 and 3), the in-memory ``tell.TELL(encoder="identity")`` with a few knob
   settings, and the distributed job's final models (from 1.). Every partition is scored
   the same way: :func:`tell.metrics.partition_inertia` on all rows (to each cluster's
   MEAN, so unit centers and mean centers compare fairly) and ACC against the generating
   labels. Goal (issue #3): TELL inertia <= 1.01x the better baseline in <= 1.0x faiss's
   time. In-memory methods are timed to labels of every row (faiss: train + search); the
   job, whose labels come from the separate ``tell assign``, is compared with faiss's
   train time only.

``--sections converge`` runs part 3 without Ray (the unit test does that with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import finish, import_psutil, machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "train.json"
SECTIONS = ("jobs", "converge")
GOAL_INERTIA = 1.01  # x the better of faiss / MiniBatchKMeans
GOAL_TIME = 1.0  # x faiss's time
MIB = 1 << 20
# TELL estimator settings tried by default: "epochs:batch_size:init_sample_rows".
DEFAULT_TELL_CONFIGS = ("1:4096:8192", "2:8192:8192", "3:16384:8192")
# Extra 1-worker job runs for the convergence table: the estimator's best setting.
DEFAULT_JOB_CONFIGS = ("1:4096:8192",)
QUICK = {
    "rows": 3000,
    "dim": 16,
    "k": 16,
    "epochs": 2,
    "batch_size": 256,
    "init_sample_rows": 1000,
    "memory_rows": [3000, 6000],
    "tell_configs": ["3:256:1000", "2:512:1000"],
    "job_configs": ["1:256:1000"],
    "mbk_batch": 256,
}
_FILE_ROWS_CAP = 125_000  # rows per Parquet file (64 MB at d=128)

logger = logging.getLogger("tell.bench.train")


# ------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench train",
        description="Throughput, peak RSS and time-to-converge of the Ray Train job, beside "
        "faiss k-means and scikit-learn MiniBatchKMeans.",
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="rows for throughput/convergence")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs of the job runs (>= 2 for a steady-state epoch)",
    )
    p.add_argument("--batch-size", type=int, default=16384, help="global batch of the job runs")
    p.add_argument("--init-sample-rows", type=int, default=8192, help="k-means++ sample (jobs)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument(
        "--memory-rows",
        type=int,
        nargs="+",
        default=[1_000_000, 4_000_000],
        help="data sizes for the peak-RSS check (run with max(--workers) workers)",
    )
    p.add_argument("--memory-epochs", type=int, default=1, help="epochs of extra memory runs")
    p.add_argument(
        "--memory-materialize", choices=("auto", "always", "never"), default="never",
        help="the memory runs' 'materialize' setting: one code path at every size",
    )  # fmt: skip
    p.add_argument(
        "--tell-configs",
        nargs="*",
        default=list(DEFAULT_TELL_CONFIGS),
        metavar="EPOCHS:BATCH:SAMPLE",
        help="TELL estimator settings (epochs:batch_size:init_sample_rows)",
    )
    p.add_argument(
        "--job-configs",
        nargs="*",
        default=list(DEFAULT_JOB_CONFIGS),
        metavar="EPOCHS:BATCH:SAMPLE",
        help="extra 1-worker job runs for the convergence comparison (section jobs)",
    )
    p.add_argument("--faiss-niter", type=int, default=25)
    p.add_argument("--mbk-n-init", type=int, nargs="*", default=[1, 3])
    p.add_argument("--mbk-batch", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--sample-interval", type=float, default=0.2, help="RSS sampling period (s)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="seconds per job run")
    p.add_argument("--workdir", help="data and runs (default: a temporary directory, removed)")
    p.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    p.add_argument("--out", help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one job from a spec
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # the quick values replace defaults, never explicit flags
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.tell_configs = [parse_tell_config(s) for s in args.tell_configs]
    args.job_configs = [parse_tell_config(s) for s in args.job_configs]
    if args.k > args.rows:
        parser.error(f"--k {args.k} is larger than --rows {args.rows}")
    if "jobs" in args.sections and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def parse_tell_config(text: str | dict) -> dict[str, int]:
    """``"3:16384:8192"`` -> {"epochs": 3, "batch_size": 16384, "init_sample_rows": 8192}."""
    if isinstance(text, dict):
        return text
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"error: wanted EPOCHS:BATCH:SAMPLE, got {text!r}")
    epochs, batch, sample = (int(p) for p in parts)
    return {"epochs": epochs, "batch_size": batch, "init_sample_rows": sample}


# --------------------------------------------------------------------------------- machine


# ----------------------------------------------------------------------------------- data


@dataclass
class BenchData:
    """In-memory rows for the convergence comparison and Parquet directories per size."""

    X: np.ndarray
    y: np.ndarray
    dirs: dict[int, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def file_rows_for(sizes: list[int], cap: int = _FILE_ROWS_CAP) -> int:
    """Rows per Parquet file: divides every size, at most ``cap``, >= 8 files for the smallest."""
    rows = math.gcd(*sizes)
    while (rows > cap or min(sizes) // rows < 8) and rows % 2 == 0:
        rows //= 2
    return rows


def prepare_data(args: argparse.Namespace, workdir: Path | None) -> BenchData:
    """Generate the blobs; with ``workdir``, write Parquet for every size the jobs need.

    The first ``args.rows`` rows are kept in memory: the convergence comparison and the
    job runs at that size see exactly the same rows.
    """
    from tell.datasets import iter_spherical_blobs, make_spherical_blobs

    started = time.perf_counter()
    source = f"iter_spherical_blobs(n, {args.dim}, {args.k}, seed={args.seed})"
    if workdir is None:
        ds = make_spherical_blobs(args.rows, args.dim, args.k, seed=args.seed)
        info = {"source": source, "rows": args.rows, "gen_s": _r(time.perf_counter() - started)}
        return BenchData(ds.X, ds.y, {}, info)
    import pyarrow.parquet as pq

    from tell.io import embeddings_to_table

    sizes = sorted({args.rows, *args.memory_rows})
    per_file = file_rows_for(sizes)
    total = sizes[-1]
    root = workdir / "data"
    full = root / f"rows-{total}"
    full.mkdir(parents=True, exist_ok=True)
    X = np.empty((args.rows, args.dim), np.float32)
    y = np.empty(args.rows, np.int64)
    paths = []
    chunks = iter_spherical_blobs(total, args.dim, args.k, seed=args.seed, chunk_rows=per_file)
    for i, chunk in enumerate(chunks):
        start = i * per_file
        stop = start + len(chunk.y)
        if start < args.rows:
            keep = min(stop, args.rows) - start
            X[start : start + keep], y[start : start + keep] = chunk.X[:keep], chunk.y[:keep]
        table = embeddings_to_table(chunk.X, ids=np.arange(start, stop), labels=chunk.y)
        path = full / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    dirs = {total: full}
    for size in sizes[:-1]:  # smaller sizes: hard links to the first files
        folder = root / f"rows-{size}"
        folder.mkdir(exist_ok=True)
        for path in paths[: size // per_file]:
            os.link(path, folder / path.name)
        dirs[size] = folder
    info = {
        "source": source + f" (n = {total}, first rows of it for smaller sizes)",
        "rows": args.rows,
        "sizes": sizes,
        "rows_per_file": per_file,
        "bytes_on_disk": {
            str(s): sum(p.stat().st_size for p in d.iterdir()) for s, d in dirs.items()
        },
        "gen_s": _r(time.perf_counter() - started),
    }
    return BenchData(X, y, dirs, info)


# ----------------------------------------------------------------------------- RSS sampling


_DATA_MARKERS = (
    "scan_file",
    "Read",
    "MapBatches",
    "Map(",
    "Split",
    "_split",
    "Footer",
    "ListFiles",
    "Materialize",
)


def classify(titles: list[str], is_root: bool) -> str:
    """Role of a process from the titles (command lines) it showed while sampled.

    Ray renames its worker processes ``ray::<Actor>.<method>`` / ``ray::<Task>`` while they
    run something and ``ray::IDLE`` otherwise; processes that never show ``ray::`` are the
    session's daemons (raylet, GCS, dashboard, monitors).
    """
    if is_root:
        return "driver"
    ray_titles = [t for t in titles if t.startswith("ray::")]
    joined = " ".join(ray_titles)
    if "run_partition" in joined:  # the two-level job's tasks (a worker may run both)
        return "partition task"
    if "split_piece" in joined:
        return "split task"
    if "RayTrainWorker" in joined:
        return "train worker"
    if "TrainController" in joined:
        return "train controller"
    if any(marker in joined for marker in _DATA_MARKERS):
        return "data task"
    if not ray_titles:
        return "ray system"
    if all(t.startswith("ray::IDLE") for t in ray_titles):
        return "idle worker"
    return "other ray actor"


class ProcessSampler:
    """Background thread: peak RSS of a process and all its descendants, every ``interval`` s.

    Per pid it keeps the peak RSS, the peak RSS minus shared pages (object-store and file
    mappings; roughly the private heap), the titles seen (Ray renames workers ``ray::...``)
    and the last CPU time; plus the peak of the summed RSS over all processes.
    """

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.procs: dict[int, dict[str, Any]] = {}
        self.peak_total_rss = 0
        self.peak_total_private = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._handles: dict[int, Any] = {}

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        psutil = import_psutil()

        try:
            root = self._handles.setdefault(self.root_pid, psutil.Process(self.root_pid))
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = private_total = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    mem = proc.memory_info()
                    title = " ".join(proc.cmdline())[:160] or proc.name()
                    cpu = proc.cpu_times()
            except psutil.Error:
                continue
            rec = self.procs.setdefault(
                proc.pid, {"peak_rss": 0, "peak_private": 0, "titles": [], "cpu_s": 0.0}
            )
            private = mem.rss - getattr(mem, "shared", 0)
            rec["peak_rss"] = max(rec["peak_rss"], mem.rss)
            rec["peak_private"] = max(rec["peak_private"], private)
            rec["cpu_s"] = max(rec["cpu_s"], cpu.user + cpu.system)
            if title not in rec["titles"] and len(rec["titles"]) < 8:
                rec["titles"].append(title)
            total += mem.rss
            private_total += private
        self.samples += 1
        self.peak_total_rss = max(self.peak_total_rss, total)
        self.peak_total_private = max(self.peak_total_private, private_total)

    def report(self) -> dict[str, Any]:
        """Per-process peaks (MiB) with roles, and the peak per role."""
        processes = []
        for pid, rec in sorted(self.procs.items()):
            processes.append(
                {
                    "pid": pid,
                    "role": classify(rec["titles"], pid == self.root_pid),
                    "peak_rss_mib": _r(rec["peak_rss"] / MIB, 1),
                    "peak_private_mib": _r(rec["peak_private"] / MIB, 1),
                    "cpu_s": _r(rec["cpu_s"]),
                    "titles": [_short_title(t) for t in rec["titles"]],
                }
            )
        by_role: dict[str, dict[str, Any]] = {}
        for p in processes:
            role = by_role.setdefault(
                p["role"], {"count": 0, "max_peak_rss_mib": 0.0, "max_peak_private_mib": 0.0}
            )
            role["count"] += 1
            role["max_peak_rss_mib"] = max(role["max_peak_rss_mib"], p["peak_rss_mib"])
            role["max_peak_private_mib"] = max(role["max_peak_private_mib"], p["peak_private_mib"])
        return {
            "samples": self.samples,
            "interval_s": self.interval,
            "peak_total_rss_mib": _r(self.peak_total_rss / MIB, 1),
            "peak_total_private_mib": _r(self.peak_total_private / MIB, 1),
            "cpu_s_all_processes": _r(sum(p["cpu_s"] for p in processes)),
            "by_role": by_role,
            "processes": processes,
        }


def _short_title(title: str) -> str:
    if title.startswith("ray::"):
        return title.split(" ")[0]
    parts = title.split(" ")
    named = [Path(p).name for p in parts[:3]]
    return " ".join(named)[:80]


# ------------------------------------------------------------------------------- job runs


def _job_config(args: argparse.Namespace, epochs: int) -> dict[str, int]:
    """The job settings of the throughput and memory runs, with ``epochs``."""
    return {
        "epochs": epochs,
        "batch_size": args.batch_size,
        "init_sample_rows": args.init_sample_rows,
    }


def run_job(
    args: argparse.Namespace,
    data_dir: Path,
    rows: int,
    workers: int,
    cfg: dict[str, int],
    name: str,
    workdir: Path,
    materialize: str = "auto",
    extra_job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``jobs.train.driver.main`` in a fresh Python process while sampling its process tree.

    cfg : {"epochs", "batch_size", "init_sample_rows"} of the job.
    extra_job : more :class:`jobs.config.TrainJob` fields (``{"levels": 2}``).
    """
    spec = {
        "job": {
            "data": str(data_dir),
            "out": str(workdir / "out"),
            "column": "embedding",
            "name": name,
            "workers": workers,
            "cpus_per_worker": args.cpus_per_worker,
            "max_failures": 0,
            "materialize": materialize,
            **(extra_job or {}),
        },
        "model": {
            "k": args.k,
            "encoder": "identity",
            **cfg,
            "seed": args.seed,
        },
        "rows": rows,
        "dim": args.dim,
        "result": str(workdir / f"{name}.result.json"),
    }
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{name}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.train", "--child", str(spec_path)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with ProcessSampler(proc.pid, args.sample_interval) as sampler:
            try:
                rc = proc.wait(timeout=args.job_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
    e2e = time.perf_counter() - started
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"job run {name} failed (rc={rc}); log {log_path}:\n{tail}")
    summary = json.loads(Path(spec["result"]).read_text())
    epochs_meta = read_epoch_metrics(workdir / "out" / "runs" / name)
    steady = [m for m in epochs_meta if m["epoch"] >= 1] or epochs_meta
    rows_per_s = float(np.mean([m["rows_per_s"] for m in steady])) if steady else None
    return {
        "name": name,
        "workers": workers,
        "rows": rows,
        **cfg,
        "cpus_per_worker": args.cpus_per_worker,
        "e2e_s": _r(e2e),
        "job_wall_s": summary["wall_s"],
        "scan_s": summary.get("scan_s"),
        "fit_s": summary.get("fit_s"),
        "epochs_s": _r(sum(m["epoch_s"] for m in epochs_meta)),
        "ray_init_s": summary.get("ray_init_s"),
        "materialized": summary.get("materialized"),
        "object_store_mib": summary.get("object_store_mib"),
        "epoch_metrics": epochs_meta,
        "steady_epochs": [m["epoch"] for m in steady],
        "steady_state": any(m["epoch"] >= 1 for m in epochs_meta),
        "rows_per_s": _r(rows_per_s),
        "rows_per_s_per_worker": _r(rows_per_s / workers) if rows_per_s else None,
        "final_metrics": summary.get("metrics"),
        "fit_info": summary.get("fit_info"),
        "disagreement": summary.get("disagreement"),
        "model": summary["model"],
        "memory": sampler.report(),
    }


def read_epoch_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch's metrics, from the ``history`` in the newest checkpoint's metadata."""
    keep = (
        "epoch",
        "rows",
        "rows_per_s",
        "epoch_s",
        "inertia_per_row",
        "dead_centers",
        "moved",
        "replica_divergence",
    )
    metas = [json.loads(f.read_text()) for f in run_dir.glob("checkpoint_*/metadata.json")]
    if not metas:
        return []
    newest = max(metas, key=lambda meta: int(meta["epoch"]))
    return [{k: m.get(k) for k in keep} for m in newest["history"]]


def child_main(spec_path: str) -> int:
    """The job's driver process: ``jobs.train.driver.main`` on the spec, then a JSON summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    from jobs import runtime
    from jobs.config import TrainJob
    from jobs.train import driver
    from tell.config import TrainConfig

    started = time.perf_counter()
    runtime.ensure_ray()  # what main() would do; timed on its own
    ray_init_s = time.perf_counter() - started
    summary = driver.main(TrainJob(**spec["job"], config=TrainConfig(**spec["model"])))
    import ray

    summary["object_store_mib"] = _r(ray.cluster_resources().get("object_store_memory", 0) / MIB, 0)
    summary["ray_init_s"] = _r(ray_init_s)
    ray.shutdown()
    Path(spec["result"]).write_text(json.dumps(summary))
    return 0


def job_labels(model_uri: str, X: np.ndarray) -> np.ndarray:
    """Nearest center of every row under a job's final model (what ``tell assign`` does)."""
    import torch

    from jobs.model import load_model

    net, _ = load_model(model_uri)
    centers = net.cluster.centers
    out = []
    with torch.no_grad():
        for i in range(0, len(X), 65536):
            z = net.encode(torch.from_numpy(X[i : i + 65536]))
            out.append((z @ centers.T).argmax(dim=1))
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------ converge


class Timer:
    """Wall and process CPU seconds (all threads) of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def score(X: np.ndarray, y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from tell.metrics import cluster_accuracy, partition_inertia

    labels = np.asarray(labels).ravel().astype(np.int64)
    return {
        "inertia": partition_inertia(X, labels),
        "acc": cluster_accuracy(y, labels),
        "clusters_used": int(np.unique(labels).size),
    }


def run_faiss(X: np.ndarray, y: np.ndarray, k: int, niter: int, seed: int) -> dict[str, Any]:
    import faiss

    km = faiss.Kmeans(X.shape[1], k, niter=niter, seed=seed, verbose=False)
    with Timer() as fit:
        km.train(X)
    with Timer() as label:
        _, index = km.index.search(X, 1)
    per_centroid = int(km.cp.max_points_per_centroid)
    return {
        "method": "faiss k-means",
        "params": {
            "niter": niter,
            "seed": seed,
            "max_points_per_centroid": per_centroid,
            "train_rows": min(len(X), per_centroid * k),
            "threads": faiss.omp_get_max_threads(),
        },
        "fit_s": fit.wall,
        "label_s": label.wall,
        "total_s": fit.wall + label.wall,
        "cpu_s": fit.cpu + label.cpu,
        "fit_cpu_s": fit.cpu,
        **score(X, y, index.ravel()),
    }


def run_minibatch(
    X: np.ndarray, y: np.ndarray, k: int, n_init: int, batch: int, seed: int
) -> dict[str, Any]:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, n_init=n_init, batch_size=batch, random_state=seed)
    with Timer() as fit:
        km.fit(X)  # labels of every row are computed inside fit (compute_labels=True)
    return {
        "method": f"MiniBatchKMeans n_init={n_init}",
        "params": {
            "n_init": n_init,
            "batch_size": batch,
            "max_iter": km.max_iter,
            "init_size": km._init_size,
            "n_steps": int(km.n_steps_),
            "epochs_run": _r(km.n_steps_ * batch / len(X)),
            "seed": seed,
        },
        "fit_s": fit.wall,
        "label_s": 0.0,
        "total_s": fit.wall,
        "cpu_s": fit.cpu,
        **score(X, y, km.labels_),
    }


def run_tell(X: np.ndarray, y: np.ndarray, k: int, cfg: dict[str, int], seed: int) -> dict:
    from tell import TELL

    model = TELL(
        n_clusters=k,
        encoder="identity",
        max_iter=cfg["epochs"],
        batch_size=cfg["batch_size"],
        init_sample_rows=cfg["init_sample_rows"],
        random_state=seed,
    )
    with Timer() as fit:
        model.fit(X)  # includes k-means++ on the sample and the labels of every row
    epoch_s = [h.get("epoch_s") for h in model.history_]
    return {
        "method": "TELL estimator",
        "params": {**cfg, "seed": seed},
        "fit_s": fit.wall,
        "label_s": 0.0,
        "total_s": fit.wall,
        "cpu_s": fit.cpu,
        "history_inertia_per_row": [_r(h["inertia_per_row"], 5) for h in model.history_],
        "moved": [h.get("moved") for h in model.history_],
        **({"epoch_s": epoch_s} if any(epoch_s) else {}),
        **score(X, y, model.labels_),
    }


def compare(runs: list[dict], X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Ratios against the true partition, the better baseline and faiss's time; the goal."""
    from tell.metrics import partition_inertia

    true_inertia = partition_inertia(X, y)
    baselines = [r for r in runs if r["method"].startswith(("faiss", "MiniBatchKMeans"))]
    best = min(baselines, key=lambda r: r["inertia"]) if baselines else None
    faiss_run = next((r for r in runs if r["method"].startswith("faiss")), None)
    for r in runs:
        r["inertia_vs_true"] = r["inertia"] / true_inertia
        r["inertia_vs_best_baseline"] = r["inertia"] / best["inertia"] if best else None
        if faiss_run:
            # in-memory methods: to labels of every row; the job: training only
            job = r["method"].startswith("TELL job")
            ref = faiss_run["fit_s"] if job else faiss_run["total_s"]
            ref_cpu = faiss_run["fit_cpu_s"] if job else faiss_run["cpu_s"]
            r["time_vs_faiss"] = r["total_s"] / ref
            r["cpu_vs_faiss"] = r["cpu_s"] / ref_cpu if r["cpu_s"] and ref_cpu > 0 else None
        else:
            r["time_vs_faiss"] = r["cpu_vs_faiss"] = None
        if r["method"].startswith("TELL"):
            inertia_ok = r["inertia_vs_best_baseline"] is not None and (
                r["inertia_vs_best_baseline"] <= GOAL_INERTIA
            )
            time_ok = r["time_vs_faiss"] is not None and r["time_vs_faiss"] <= GOAL_TIME
            r["goal"] = {"inertia": inertia_ok, "time": time_ok, "met": inertia_ok and time_ok}
    tell_runs = [r for r in runs if r["method"].startswith("TELL")]
    return {
        "true_partition_inertia": true_inertia,
        "best_baseline": best["method"] if best else None,
        "best_baseline_inertia": best["inertia"] if best else None,
        "goal": f"TELL partition inertia <= {GOAL_INERTIA}x the better of faiss / "
        f"MiniBatchKMeans, in <= {GOAL_TIME}x faiss's time",
        "goal_met_by": [label(r) for r in tell_runs if r["goal"]["met"]],
        "inertia_goal_met_by": [label(r) for r in tell_runs if r["goal"]["inertia"]],
    }


def label(r: dict) -> str:
    p = r.get("params", {})
    if r["method"] == "TELL estimator":
        return f"TELL estimator e={p['epochs']} b={p['batch_size']} s={p['init_sample_rows']}"
    if r["method"].startswith("TELL job"):
        return f"{r['method']} e={p['epochs']} b={p['batch_size']} s={p['init_sample_rows']}"
    return r["method"]


# --------------------------------------------------------------------------------- tables


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _f(value: Any, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_throughput(result: dict) -> str:
    runs = result["throughput"]["runs"]
    lines = [
        "Throughput (identity encoder; rows/s = mean over steady-state epochs >= 1)",
        f"{'workers':>7} {'rows':>9} {'epochs':>6} {'batch':>6} {'rows/s':>9} "
        f"{'rows/s/worker':>13} {'epoch s':>8} {'job s':>7} {'e2e s':>7} {'cpu s':>7}",
    ]
    for r in runs:
        epoch_s = [m["epoch_s"] for m in r["epoch_metrics"] if m["epoch"] in r["steady_epochs"]]
        lines.append(
            f"{r['workers']:>7} {r['rows']:>9} {r['epochs']:>6} {r['batch_size']:>6} "
            f"{_f(r['rows_per_s'], '.0f'):>9} {_f(r['rows_per_s_per_worker'], '.0f'):>13} "
            f"{_f(np.mean(epoch_s) if epoch_s else None):>8} {_f(r['job_wall_s']):>7} "
            f"{_f(r['e2e_s']):>7} {_f(r['memory']['cpu_s_all_processes']):>7}"
        )
    for key, value in result["throughput"].get("ratios", {}).items():
        lines.append(f"  {key}: {_f(value, '.2f')}")
    return "\n".join(lines)


def format_job_split(runs: list[dict]) -> str:
    """Where each job's wall time went: scan, and the trainer's epochs vs its fixed costs."""
    lines = [
        "Job wall time split (s): scan = validate + sample (+ keep features); trainer = "
        "TorchTrainer.fit; other = trainer start-up, k-means++, checkpoints, shutdown",
        f"{'job':<28} {'wall':>6} {'scan':>6} {'trainer':>8} {'epochs':>7} {'other':>6}",
    ]
    for r in runs:
        other = r["fit_s"] - r["epochs_s"] if r["fit_s"] is not None else None
        lines.append(
            f"{r['name']:<28} {r['job_wall_s']:>6.1f} {_f(r['scan_s']):>6} "
            f"{_f(r['fit_s']):>8} {_f(r['epochs_s']):>7} {_f(other):>6}"
        )
    return "\n".join(lines)


def format_memory(result: dict) -> str:
    mem = result["memory"]
    roles = ("driver", "train worker", "data task", "train controller", "ray system")
    lines = [
        "Peak RSS in MiB (private = RSS minus shared pages), per process role (max over "
        "processes of that role)",
        f"{'rows':>9} {'workers':>7} {'materialized':>12} "
        + " ".join(f"{r:>22}" for r in roles)
        + f" {'all procs':>10}",
    ]
    for run in mem["runs"]:
        by_role = run["memory"]["by_role"]
        cells = []
        for role in roles:
            v = by_role.get(role)
            if v is None:
                cells.append(f"{'-':>22}")
            else:
                rss, private = v["max_peak_rss_mib"], v["max_peak_private_mib"]
                cells.append(f"{rss:>9.0f} ({private:>5.0f}) x{v['count']:<3}")
        lines.append(
            f"{run['rows']:>9} {run['workers']:>7} {run['materialized']!s:>12} "
            + " ".join(cells)
            + f" {run['memory']['peak_total_rss_mib']:>10.0f}"
        )
    for role, ratio in mem.get("ratio_largest_vs_smallest", {}).items():
        lines.append(
            f"  {role}: peak RSS x{_f(ratio['rss'], '.2f')}, private x{_f(ratio['private'], '.2f')}"
            f" ({mem['sizes'][-1]} vs {mem['sizes'][0]} rows)"
        )
    return "\n".join(lines)


def format_converge(result: dict) -> str:
    conv = result["converge"]
    lines = [
        f"Convergence on {conv['rows']} x {conv['dim']}, k={conv['k']} "
        f"(inertia = partition_inertia on all rows; true-label partition = "
        f"{conv['summary']['true_partition_inertia']:.6g})",
        f"{'method':<42} {'fit s':>8} {'label s':>7} {'total s':>8} {'cpu s':>8} "
        f"{'inertia/true':>12} {'vs best':>8} {'ACC':>7} {'time/faiss':>10} {'cpu/faiss':>9} goal",
    ]
    for r in conv["runs"]:
        goal = ""
        if "goal" in r:
            goal = (
                "MET"
                if r["goal"]["met"]
                else (
                    "inertia only"
                    if r["goal"]["inertia"]
                    else ("time only" if r["goal"]["time"] else "no")
                )
            )
        lines.append(
            f"{label(r):<42} {r['fit_s']:>8.1f} {r['label_s']:>7.1f} {r['total_s']:>8.1f} "
            f"{_f(r['cpu_s']):>8} {r['inertia_vs_true']:>12.4f} "
            f"{_f(r['inertia_vs_best_baseline'], '.4f'):>8} {100 * r['acc']:>6.2f}% "
            f"{_f(r['time_vs_faiss'], '.2f'):>10} {_f(r.get('cpu_vs_faiss'), '.2f'):>9} {goal}"
        )
    s = conv["summary"]
    lines.append(f"  goal: {s['goal']}")
    lines.append(
        f"  best baseline: {s['best_baseline']}; goal met by: {s['goal_met_by'] or 'none'}"
    )
    faiss_run = next((r for r in conv["runs"] if r["method"].startswith("faiss")), None)
    if faiss_run:
        p = faiss_run["params"]
        lines.append(
            f"  faiss trains on {p['train_rows']} sampled rows (max_points_per_centroid="
            f"{p['max_points_per_centroid']} x k), then labels all rows (label s)."
        )
    lines.append(
        "  time/faiss: in-memory methods to labels of all rows vs faiss fit+label; "
        "TELL job (training only, labels come from `tell assign`) vs faiss fit."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main


def _memory_section(runs: list[dict]) -> dict[str, Any]:
    sizes = sorted({r["rows"] for r in runs})
    out: dict[str, Any] = {"sizes": sizes, "runs": runs}
    if len(sizes) >= 2:
        small = next(r for r in runs if r["rows"] == sizes[0])["memory"]["by_role"]
        large = next(r for r in runs if r["rows"] == sizes[-1])["memory"]["by_role"]
        out["ratio_largest_vs_smallest"] = {
            role: {
                "rss": _r(large[role]["max_peak_rss_mib"] / small[role]["max_peak_rss_mib"], 3),
                "private": _r(
                    large[role]["max_peak_private_mib"]
                    / max(small[role]["max_peak_private_mib"], 1e-9),
                    3,
                ),
            }
            for role in ("driver", "train worker", "data task")
            if role in small and role in large
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        sys.exit(child_main(args.child))
    out_path = Path(args.out) if args.out else DEFAULT_OUT
    run_jobs = "jobs" in args.sections
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tell-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    params = {k: v for k, v in vars(args).items() if k not in ("child", "out", "workdir")}
    result: dict[str, Any] = {
        "benchmark": "train",
        "issue": 3,
        "command": "python -m bench train " + " ".join(argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "params": params,
    }
    try:
        data = prepare_data(args, workdir if run_jobs else None)
        result["data"] = data.info
        print(f"data: {data.info}", flush=True)
        job_runs: list[dict] = []
        if run_jobs:
            for workers in args.workers:
                name = f"tp-w{workers}-{args.rows}"
                print(f"job: {workers} worker(s), {args.rows} rows ...", flush=True)
                cfg = _job_config(args, args.epochs)
                job_runs.append(
                    run_job(args, data.dirs[args.rows], args.rows, workers, cfg, name, workdir)
                )
            result["throughput"] = {"runs": job_runs}
            by_w = {r["workers"]: r for r in job_runs}
            if 1 in by_w and 2 in by_w and by_w[1]["rows_per_s"] and by_w[2]["rows_per_s"]:
                result["throughput"]["ratios"] = {
                    "rows/s per worker, 2 workers vs 1": _r(
                        by_w[2]["rows_per_s_per_worker"] / by_w[1]["rows_per_s_per_worker"], 3
                    ),
                    "total rows/s, 2 workers vs 1": _r(
                        by_w[2]["rows_per_s"] / by_w[1]["rows_per_s"], 3
                    ),
                    "end-to-end wall, 2 workers vs 1": _r(by_w[2]["e2e_s"] / by_w[1]["e2e_s"], 3),
                }
            print(format_throughput(result), flush=True)
            mem_workers = max(args.workers)
            mem_runs = []
            for size in sorted(set(args.memory_rows)):
                reuse = next(
                    (
                        r
                        for r in job_runs
                        if r["rows"] == size
                        and r["workers"] == mem_workers
                        and args.memory_materialize == "auto"
                    ),
                    None,
                )
                if reuse is None:
                    print(f"job: memory run, {mem_workers} worker(s), {size} rows ...", flush=True)
                    reuse = run_job(
                        args,
                        data.dirs[size],
                        size,
                        mem_workers,
                        _job_config(args, args.memory_epochs),
                        f"mem-w{mem_workers}-{size}",
                        workdir,
                        args.memory_materialize,
                    )
                mem_runs.append(reuse)
            result["memory"] = _memory_section(mem_runs)
            print(format_memory(result), flush=True)
            for cfg in args.job_configs:
                name = f"conv-w1-e{cfg['epochs']}-b{cfg['batch_size']}-{args.rows}"
                print(f"job: convergence run {cfg}, 1 worker ...", flush=True)
                conv_run = run_job(args, data.dirs[args.rows], args.rows, 1, cfg, name, workdir)
                result.setdefault("convergence_jobs", []).append(conv_run)
            if args.job_configs:
                print(format_job_split(job_runs + result["convergence_jobs"]), flush=True)
        if "converge" in args.sections:
            runs: list[dict] = []
            print("converge: faiss ...", flush=True)
            runs.append(run_faiss(data.X, data.y, args.k, args.faiss_niter, args.seed))
            for n_init in args.mbk_n_init:
                print(f"converge: MiniBatchKMeans n_init={n_init} ...", flush=True)
                runs.append(
                    run_minibatch(data.X, data.y, args.k, n_init, args.mbk_batch, args.seed)
                )
            for cfg in args.tell_configs:
                print(f"converge: TELL estimator {cfg} ...", flush=True)
                runs.append(run_tell(data.X, data.y, args.k, cfg, args.seed))
            for r in job_runs + result.get("convergence_jobs", []):
                if r["rows"] != args.rows:
                    continue
                with Timer() as t:
                    labels = job_labels(r["model"], data.X)
                runs.append(
                    {
                        "method": f"TELL job workers={r['workers']}",
                        "params": {
                            "epochs": r["epochs"],
                            "batch_size": r["batch_size"],
                            "init_sample_rows": r["init_sample_rows"],
                            "seed": args.seed,
                        },
                        "fit_s": r["job_wall_s"],
                        "label_s": 0.0,
                        "total_s": r["job_wall_s"],
                        "cpu_s": r["memory"]["cpu_s_all_processes"],
                        "e2e_s": r["e2e_s"],
                        "label_in_driver_s": _r(t.wall),
                        **score(data.X, data.y, labels),
                    }
                )
            result["converge"] = {
                "rows": args.rows,
                "dim": args.dim,
                "k": args.k,
                "runs": runs,
                "summary": compare(runs, data.X, data.y),
            }
            print(format_converge(result), flush=True)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    finish(result["machine"])
    result["wall_s"] = _r(time.perf_counter() - started)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    print(f"wrote {out_path} ({result['wall_s']} s)", flush=True)
    return json.loads(out_path.read_text())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


if __name__ == "__main__":
    main()
