"""``tell train --levels 2``: the two-level model (:mod:`tell.two_level`) on a Ray cluster.

The driver scans the input once (:func:`jobs.input.scan.scan_input`, keeping the decoded
rows in the object store), gathers them into one (n, d) array, normalises them and calls
:func:`tell.two_level.fit_two_level`: the coarse fit and the split run on the driver, and
every coarse group's fine fit is a Ray task (:class:`RayMap`: ``workers`` at once, each
asking for ``cpus_per_worker`` CPUs, so fractional clusters run them; results in group
order). The routed-vs-exact disagreement (routing as ``tell assign`` does by default) is
measured on a bounded uniform sample of the rows (:func:`tell.two_level.disagreement_rows`), and the
model is published as ``<out>/<name>/model`` (:func:`jobs.model.publish_two_level`).

Every row is held by the driver, so the input must fit: its features may take at most
:data:`ROWS_SHARE` of the object store and of the driver's available memory
(:func:`check_rows_fit`, before the scan).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs import progress, runtime, storage, watchdog
from jobs.config import TrainJob
from jobs.input.inspect import InputSet
from jobs.input.scan import require_clean, scan_input
from jobs.model import publish_two_level
from tell.config import TrainConfig
from tell.errors import TellDataError, TellError
from tell.two_level import DEFAULT_N_PROBE, FineTask, disagreement_rows, fit_two_level

# The driver holds every row (X, and its share of the gathered groups) and the scan keeps
# them in the object store first: each may give the features at most this share.
ROWS_SHARE = 0.25
_TELL_NAMES = {"epochs": "max_iter"}  # TrainConfig key -> TELL parameter, where they differ
_NOT_TELL = ("k", "seed", "encoder")  # set by fit_two_level itself


def check_rows_fit(
    n_bytes: int, object_store_bytes: float, available_bytes: float, uri: str
) -> None:
    """Refuse (TellDataError) features of ``n_bytes`` that take more than ``ROWS_SHARE`` of
    the object store or of the driver's available memory (both in bytes)."""
    for what, total in (("object store", object_store_bytes), ("driver's memory", available_bytes)):
        if n_bytes > ROWS_SHARE * total:
            raise TellDataError(
                f"levels: 2 holds every row on the driver, but the features of {uri} take "
                f"{n_bytes / 2**30:.2f} GiB, more than {ROWS_SHARE:.0%} of the {what} "
                f"({total / 2**30:.2f} GiB available); use a driver with more memory or a "
                "sample of the rows."
            )


def available_memory() -> int:
    """Bytes of memory this process can still take (``MemAvailable``; physical pages free
    where /proc/meminfo is missing)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def tell_params(cfg: TrainConfig) -> dict[str, Any]:
    """The :class:`tell.TELL` parameters of both levels, from the job's model config."""
    return {_TELL_NAMES.get(k, k): v for k, v in cfg.to_dict().items() if k not in _NOT_TELL}


def call_in_task(fn: Callable[[FineTask], np.ndarray], task: FineTask, threads: int) -> np.ndarray:
    """The body of a Ray task: ``fn(task)`` (a fine fit) on ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return fn(task)


class RayMap:
    """``map_fn`` of :func:`fit_two_level`: every ``fn(task)`` a Ray task of ``cpus`` CPUs, at
    most ``in_flight`` submitted at once, results yielded in task order; ``beat`` as each
    one arrives. ``on_start`` runs when the first task is submitted (the driver's own work,
    the coarse fit and the split, is over). A failed task is one line naming its group:
    the TellError behind it (exit 2), a Ray failure as :class:`jobs.runtime.ClusterError`,
    anything else as RuntimeError (an internal error)."""

    def __init__(
        self,
        cpus: float,
        in_flight: int,
        beat: Callable[[str], None],
        on_start: Callable[[], None] = lambda: None,
    ) -> None:
        self.cpus, self.in_flight = cpus, max(1, in_flight)
        self.beat, self.on_start = beat, on_start

    def __call__(
        self, fn: Callable[[FineTask], np.ndarray], tasks: Iterable[FineTask]
    ) -> Iterator[np.ndarray]:
        import ray

        remote = ray.remote(call_in_task).options(num_cpus=self.cpus)
        threads = max(1, int(self.cpus))
        tasks = iter(enumerate(tasks))
        pending: deque[tuple[int, FineTask, Any]] = deque()
        done = 0
        self.on_start()
        self.beat("started the fine fits")
        try:
            while True:
                while len(pending) < self.in_flight:
                    group, task = next(tasks, (None, None))
                    if task is None:
                        break
                    pending.append((group, task, remote.remote(fn, task, threads)))
                if not pending:
                    return
                group, task, ref = pending.popleft()
                try:
                    centers = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise _task_error(exc, group, task) from None
                done += 1
                self.beat(f"fitted {done} fine groups")
                yield centers
        finally:
            for _, _, ref in pending:
                ray.cancel(ref, force=True)


def _task_error(exc: BaseException, group: int, task: FineTask) -> Exception:
    what = f"The fine fit of group {group} ({len(task.rows)} rows into {task.n_centers} centers)"
    found = runtime.user_error(exc)
    if found is not None:
        return type(found)(f"{what} failed: {runtime.one_line(found)}")
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not isinstance(cause, TellError):
        return RuntimeError(f"{what} failed: {type(cause).__name__}: {runtime.one_line(cause)}")
    return runtime.ClusterError(f"{what} failed on the cluster: {runtime.one_line(exc)}")


def gather_rows(blocks: list[Any], n_rows: int, dim: int) -> np.ndarray:
    """The kept feature blocks of the scan as one (n_rows, dim) float32 array, unit rows
    (normalised as the identity encoder does), fetched a block at a time."""
    import ray
    from ray.data.block import BlockAccessor

    X = np.empty((n_rows, dim), np.float32)
    start = 0
    for ref in blocks:
        part = BlockAccessor.for_block(ray.get(ref)).to_numpy("x")  # (b, dim)
        X[start : start + len(part)] = part
        start += len(part)
    if start != n_rows:
        raise TellDataError(f"The scan kept {start} rows, expected {n_rows}; re-run the job.")
    return unit_rows(X, "the input")


def unit_rows(X: np.ndarray, where: str) -> np.ndarray:
    """``X`` (n, d) float32 with unit rows (in place); a zero row is refused (no direction)."""
    norms = np.linalg.norm(X, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise TellDataError(
            f"{zero.size} rows of {where} are zero vectors (first: row {int(zero[0])}), which "
            "have no direction to cluster by; remove them for levels: 2."
        )
    X /= norms[:, None]
    return X


def main(job: TrainJob, info: InputSet, cfg: TrainConfig) -> dict[str, Any]:
    """Fit and publish the two-level model of ``job`` (Ray is running; ``info`` and
    ``cfg`` come from :func:`jobs.train.driver.plan`); returns the job's summary."""
    import ray

    out = storage.resolve(job.out)
    started = time.perf_counter()
    check_rows_fit(
        info.num_rows * info.dim * 4,
        ray.cluster_resources().get("object_store_memory", 0),
        available_memory(),
        job.data,
    )
    sample_rows = disagreement_rows(info.num_rows, cfg.k)
    with watchdog.watch(job.stall_timeout_s, "train") as beat:
        scan = scan_input(info, sample_rows, cfg.seed, keep=True, beat=beat)
        require_clean(scan, info)
        X = gather_rows(scan.blocks, scan.rows, info.dim)
        del scan.blocks[:]  # the driver's copy is the one used from here on
        scan_s = time.perf_counter() - started
        progress.line(f"scanned {scan.rows:,} rows x {info.dim} in {scan_s:.1f} s")
        with contextlib.ExitStack() as driver_work:  # beats until the first fine task
            driver_work.enter_context(watchdog.beating(beat, "fitting the coarse level"))
            model = fit_two_level(
                X,
                cfg.k,
                n_coarse=job.n_coarse,
                seed=cfg.seed,
                map_fn=RayMap(job.cpus_per_worker, job.workers, beat, driver_work.close),
                **tell_params(cfg),
            )
        fit_s = time.perf_counter() - started - scan_s
        sample = unit_rows(scan.sample.copy(), "the disagreement sample")
        n_probe = min(DEFAULT_N_PROBE, model.n_coarse)  # as tell assign routes by default
        rate = model.disagreement(sample, n_probe=n_probe)
    facts = model.fit_info
    progress.line(
        f"two-level model: {model.n_coarse} coarse x {model.n_clusters:,} fine centers in "
        f"{fit_s:.1f} s (coarse {facts['coarse_fit_s']} s, fine {facts['fine_fit_s']} s); "
        f"routed differs from exact on {rate:.2%} of {len(sample):,} rows"
    )
    disagreement = {"rate": rate, "rows": len(sample), "n_probe": n_probe}
    uri, _ = publish_two_level(
        model,
        out,
        job.name,
        {
            "run_name": job.name,
            "levels": 2,
            "config": cfg.to_dict(),
            "seeds": {"seed": cfg.seed},
            "input": {"uri": job.data, "column": job.column, "type": str(info.column_type),
                      "dim": info.dim, "rows": info.num_rows, "files": len(info.files)},
            "disagreement": disagreement,
            "workers": job.workers,
        },
    )  # fmt: skip
    progress.line(f"model {uri}")
    return {
        "model": uri,
        "levels": 2,
        "k": model.n_clusters,
        "n_coarse": model.n_coarse,
        "disagreement": disagreement,
        "rows": int(X.shape[0]),
        "wall_s": round(time.perf_counter() - started, 2),
        "scan_s": round(scan_s, 2),
        "fit_s": round(fit_s, 2),
        "fit_info": facts,
    }
