"""The two-level model at very large k (issue #14): k = 1,048,576 on 10M x 64 from Parquet.

``python -m bench two_level [--rows 10000000] [--dim 64] [--k 1048576] [--generating-k K]
[--n-coarse K1] [--threads 2] [--workdir DIR] [--out bench-results/two-level.json]``

1. **data**: :func:`tell.datasets.iter_spherical_blobs` (rows, dim, generating k, default k)
   written chunk by chunk to Parquet files in ``--workdir`` (id, embedding, label), then
   read back file by file into one float32 array (rows x dim x 4 bytes: 2.5 GB at the
   default size) and the generating labels;
2. **floor**: the inertia of the generating partition (each generating cluster at its
   mean, :class:`tell.metrics.PartitionInertia` over chunks: never a float64 copy of X);
3. **fit**: :func:`tell.two_level.fit_two_level` (library defaults), its time split into
   coarse fit, split (coarse assignment of every row, the shares) and fine fits; the fine
   fits run one after another in this process, or with ``--fine-processes N`` in a pool of
   N spawned processes of ``--threads`` threads each (its ``map_fn``);
4. **evaluation**: the routed fine center of every row (:meth:`TwoLevelModel.predict`, in
   chunks), the partition inertia of those labels (each fine cluster at its mean) over the
   floor and the fine centers used; then the routed-vs-exact disagreement on
   ``--sample-rows`` rows (exact = nearest of all k fine centers);
5. **routing**: the same evaluation with each ``--probes`` value as ``n_probe`` (the
   groups of that many nearest coarse centers searched): the disagreement, the floor
   ratio and the rows per second of the routed search, beside the exact search's rows per
   second on the sample: what more probes buy and cost (a second table).

Peak resident memory (``ru_maxrss``) of this process is recorded after every step, and that
of the largest fine-fit process when there is a pool. Prints a table and writes JSON
(default ``bench-results/two-level.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.machine import finish, import_psutil, machine_info
from tell.datasets import iter_spherical_blobs
from tell.io import embeddings_to_table, table_to_matrix
from tell.metrics import PartitionInertia
from tell.two_level import FineTask, TwoLevelModel, fit_fine, fit_two_level

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench-results" / "two-level.json"
EVAL_CHUNK_ROWS = 1 << 20  # rows per predict call of the evaluation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench two_level", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=1_048_576, help="fine centers")
    p.add_argument("--generating-k", type=int, default=None, help="default: --k")
    p.add_argument("--n-coarse", type=int, default=None, help="default: round(sqrt(k))")
    p.add_argument("--sample-rows", type=int, default=20_000, help="disagreement sample")
    p.add_argument("--probes", default="1,2,3,4", help="n_probe values of the routing table")
    p.add_argument("--file-rows", type=int, default=1_000_000, help="rows per Parquet file")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    p.add_argument("--fine-processes", type=int, default=1, help="processes of the fine fits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="Parquet files (default: a temp dir)")
    p.add_argument("--keep-data", action="store_true", help="leave the Parquet files")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _init_fine_process(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _fit_in_child(task: FineTask) -> tuple[np.ndarray, float]:
    """:func:`fit_fine` in a pool process, with that process's peak RSS so far (MiB)."""
    return fit_fine(task), own_peak_rss_mib()


class FineMap:
    """The ``map_fn`` of :func:`fit_two_level`: the builtin ``map`` for one process, else a
    pool of spawned processes (``imap``: results in task order, tasks drawn as workers free
    up, so the groups' rows are not all copied at once). ``peak_rss_mib``: the largest peak
    RSS a pool process reported (0 without a pool)."""

    def __init__(self, pool: Any | None) -> None:
        self.pool, self.peak_rss_mib = pool, 0.0

    def __call__(self, fn: Callable, tasks: Iterable[FineTask]) -> Iterator[np.ndarray]:
        if self.pool is None:
            yield from map(fn, tasks)
            return
        for centers, rss_mib in self.pool.imap(_fit_in_child, tasks):
            self.peak_rss_mib = max(self.peak_rss_mib, rss_mib)
            yield centers


@contextlib.contextmanager
def fine_map(processes: int, threads: int) -> Iterator[FineMap]:
    """A :class:`FineMap` over ``processes`` processes of ``threads`` threads each."""
    if processes <= 1:
        yield FineMap(None)
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch's threads started can hang
    with ctx.Pool(processes, initializer=_init_fine_process, initargs=(threads,)) as pool:
        yield FineMap(pool)


def own_peak_rss_mib() -> float:
    """This process's own peak resident memory (MiB): VmHWM of /proc/self/status, which a
    spawned process does not inherit from its parent (``ru_maxrss`` does, across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def write_blobs(args: argparse.Namespace, folder: Path, generating_k: int) -> list[Path]:
    """The synthetic rows as Parquet files of ``--file-rows`` rows each, in row order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    chunks = iter_spherical_blobs(
        args.rows, args.dim, generating_k, seed=args.seed, chunk_rows=args.file_rows
    )
    for i, chunk in enumerate(chunks):
        ids = np.arange(start, start + chunk.n_samples)
        paths.append(folder / f"part-{i:05d}.parquet")
        pq.write_table(embeddings_to_table(chunk.X, ids=ids, labels=chunk.y), paths[-1])
        start += chunk.n_samples
    return paths


def read_blobs(paths: list[Path], rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All rows (rows, dim) float32 and their generating labels (rows,) int64, read back
    one file at a time into preallocated arrays."""
    X = np.empty((rows, dim), dtype=np.float32)
    y = np.empty(rows, dtype=np.int64)
    start = 0
    for path in paths:
        table = pq.read_table(path, columns=["embedding", "label"])
        stop = start + table.num_rows
        X[start:stop] = table_to_matrix(table, "embedding")
        y[start:stop] = table.column("label").to_numpy()
        start = stop
    return X, y


def _chunks(n: int, size: int = EVAL_CHUNK_ROWS) -> Iterator[slice]:
    return (slice(s, min(s + size, n)) for s in range(0, n, size))


def partition_inertia_of(X: np.ndarray, labels: np.ndarray, n_clusters: int) -> float:
    """:func:`tell.metrics.partition_inertia` of (X, labels), streamed over chunks."""
    acc = PartitionInertia(n_clusters, X.shape[1])
    for part in _chunks(X.shape[0]):
        acc.add(X[part], labels[part])
    return acc.value


def routed_labels(model: TwoLevelModel, X: np.ndarray, n_probe: int = 1) -> np.ndarray:
    """The routed fine center (n,) int64 of every row, in chunks."""
    labels = np.empty(X.shape[0], dtype=np.int64)
    for part in _chunks(X.shape[0]):
        labels[part] = model.predict(X[part], n_probe=n_probe)[0].numpy()
    return labels


def routing_row(
    model: TwoLevelModel, X: np.ndarray, sample: np.ndarray, floor: float, n_probe: int
) -> dict[str, Any]:
    """The routed search with ``n_probe`` groups on every row of ``X`` (rows per second,
    inertia over ``floor``, fine centers used) and its disagreement on ``sample``."""
    started = time.perf_counter()
    labels = routed_labels(model, X, n_probe)
    seconds = time.perf_counter() - started
    return {
        "n_probe": n_probe,
        "routed_rows_per_s": round(X.shape[0] / seconds),
        "scores_per_row": model.n_coarse + n_probe * model.n_clusters // model.n_coarse,
        "over_floor": round(partition_inertia_of(X, labels, model.n_clusters) / floor, 4),
        "fine_centers_used": int(np.unique(labels).size),
        "disagreement": round(model.disagreement(sample, n_probe=n_probe), 5),
        "check_share": model.check_share(n_probe),
    }


def exact_rows_per_s(model: TwoLevelModel, sample: np.ndarray) -> float:
    """Rows per second of the exact search (all k fine centers) over ``sample``."""
    started = time.perf_counter()
    model.predict(sample, routed=False)
    return sample.shape[0] / (time.perf_counter() - started)


class Steps:
    """Wall seconds and the peak RSS after each named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, int] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self.peak_rss_mib[name] = round(peak_rss_mib())
        self._last = now
        print(f"  {name:<13} {self.seconds[name]:9.2f} s  peak RSS {self.peak_rss_mib[name]} MiB")


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every step of the module docstring; returns the result row and the routing rows."""
    generating_k = args.generating_k or args.k
    steps = Steps()
    paths = write_blobs(args, workdir / "data", generating_k)
    steps.done("write_parquet")
    X, y = read_blobs(paths, args.rows, args.dim)
    steps.done("read_parquet")
    floor = partition_inertia_of(X, y, generating_k)
    del y
    steps.done("floor")
    with fine_map(args.fine_processes, args.threads) as map_fn:
        model = fit_two_level(X, args.k, n_coarse=args.n_coarse, seed=args.seed, map_fn=map_fn)
    steps.done("fit")
    fine_process_peak = map_fn.peak_rss_mib
    labels = routed_labels(model, X)
    inertia = partition_inertia_of(X, labels, args.k)
    used = int(np.unique(labels).size)
    del labels
    steps.done("evaluate")
    rng = np.random.default_rng(args.seed)
    sample = X[np.sort(rng.choice(args.rows, min(args.sample_rows, args.rows), replace=False))]
    disagreement = model.disagreement(sample)
    steps.done("disagreement")
    exact_rate = exact_rows_per_s(model, sample)
    probes = [int(p) for p in args.probes.split(",") if int(p) <= model.n_coarse]
    routing = [
        {**routing_row(model, X, sample, floor, p), "exact_rows_per_s": round(exact_rate)}
        for p in probes
    ]
    steps.done("routing")
    info = model.fit_info
    row = {
        "data": f"{args.rows:,} x {args.dim}",
        "generating_k": generating_k,
        "k": model.n_clusters,
        "n_coarse": model.n_coarse,
        "rows_per_center": round(args.rows / args.k, 2),
        "coarse_fit_s": info["coarse_fit_s"],
        "split_s": info["split_s"],
        "fine_fit_s": info["fine_fit_s"],
        "fine_fit_ms_per_group": round(1000 * info["fine_fit_s"] / model.n_coarse, 1),
        "evaluate_s": steps.seconds["evaluate"],
        "fit_s": steps.seconds["fit"],
        "over_floor": round(inertia / floor, 4),
        "fine_centers_used": used,
        "disagreement": round(disagreement, 5),
        "disagreement_rows": sample.shape[0],
        "disagreement_s": steps.seconds["disagreement"],
        "peak_rss_mib": max(steps.peak_rss_mib.values()),
        "fine_processes": args.fine_processes,
        "fine_process_peak_rss_mib": round(fine_process_peak),
        "group_rows": f"{info['group_rows_min']}-{info['group_rows_max']}",
        "shares": f"{info['share_min']}-{info['share_max']}",
        "coarse_sample_rows": info["coarse_sample_rows"],
        "coarse_dropped": info["coarse_dropped"],
        "steps_s": json.dumps(steps.seconds, separators=(",", ":")),
        "peak_rss_mib_after": json.dumps(steps.peak_rss_mib, separators=(",", ":")),
    }
    return row, routing


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info(device="cpu")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tell-bench-two-level-"))
    try:
        with threadpool_limits(args.threads):
            row, routing = run(args, workdir)
    finally:
        if not args.keep_data:
            shutil.rmtree(workdir / "data", ignore_errors=True)
    finish(machine)
    machine["memory_available_gib_end"] = round(
        import_psutil().virtual_memory().available / (1 << 30), 1
    )
    load = f"load {machine['load_avg_start'][0]}-{machine['load_avg_end'][0]}"
    title = (
        f"Two-level model, spherical blobs streamed from Parquet ({args.threads} thread(s), "
        f"{machine['cpu_count']} CPUs, {load})"
    )
    routing_title = (
        f"Routing through n_probe coarse groups vs the exact search, k={row['k']:,}, "
        f"{row['data']} ({load})"
    )
    result = {
        "benchmark": "two_level",
        "machine": machine,
        "args": vars(args),
        "tables": {title: [row], routing_title: routing},
    }
    print(_line(row))
    for r in routing:
        print(
            f"  n_probe {r['n_probe']}: disagreement {r['disagreement']:.2%}, "
            f"{r['over_floor']:.4f}x floor, {r['routed_rows_per_s']:,} rows/s routed "
            f"(exact {r['exact_rows_per_s']:,})"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"load average {machine['load_avg_start']} -> {machine['load_avg_end']}")
    print(f"wrote {out}")
    return result


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['data']} k={r['k']} (k1={r['n_coarse']}): fit {r['fit_s']:.1f} s (coarse "
        f"{r['coarse_fit_s']:.1f}, split {r['split_s']:.1f}, fine {r['fine_fit_s']:.1f}), "
        f"{r['over_floor']:.4f}x floor, {r['fine_centers_used']}/{r['k']} used, "
        f"disagreement {r['disagreement']:.4%} on {r['disagreement_rows']} rows, "
        f"peak RSS {r['peak_rss_mib']} MiB"
    )


if __name__ == "__main__":
    main()
