"""``tell train --levels 2``: the two-level model (:mod:`tell.two_level`) on a Ray cluster.

The driver never holds the rows; it holds a sample, the centers and per-group counts:

1. **scan** (:func:`jobs.input.scan.scan_input`): every row checked, a uniform sample drawn;
2. **coarse**: :func:`tell.two_level.fit_coarse` on the driver, on at most
   :data:`tell.two_level.COARSE_ROWS_PER_CENTER` sample rows per coarse center;
3. **split** (:func:`jobs.train.split.split_input`): split tasks label every row with its
   coarse center and leave the rows in the object store, in partitions of whole groups;
4. **shares**: one task per partition counts each group's distinct rows, and
   :func:`tell.two_level.share_out` gives every group its share of the k fine centers (in
   proportion to its rows, at most its distinct rows), as :func:`tell.two_level.fit_two_level`
   does in memory;
5. **fine**: one task per partition fits its groups' shares (:func:`tell.two_level.fit_fine`,
   group g's seed ``seed + 1 + g`` as in the library), ``workers`` tasks at once of
   ``cpus_per_worker`` CPUs each (so fractional clusters run them);
6. the routed-vs-exact disagreement (routing as ``tell assign`` does by default) on a
   bounded sample (:func:`tell.two_level.disagreement_rows`), and the model published as
   ``<out>/<name>/model`` (:func:`jobs.model.publish_two_level`).

The object store holds one copy of the features from the split to the end of the fine fits
(Ray spills what does not fit to disk); a partition task holds its partition's rows (about
:data:`jobs.train.split.PARTITION_BYTES`, more when a single group is larger).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from jobs import progress, runtime, storage, watchdog
from jobs.config import TrainJob
from jobs.faults import fine_fault, hold_fine_fit, spec_from_env
from jobs.input.inspect import InputSet
from jobs.input.scan import require_clean, scan_input
from jobs.model import publish_two_level
from jobs.train.split import (
    PartitionWork,
    Split,
    n_partitions,
    partition_of,
    run_partition,
    split_input,
    unit_rows,
)
from tell.config import TrainConfig
from tell.errors import TellError
from tell.two_level import (
    COARSE_ROWS_PER_CENTER,
    DEFAULT_N_PROBE,
    TwoLevelModel,
    check_params,
    disagreement_rows,
    fit_coarse,
    share_out,
)

_TELL_NAMES = {"epochs": "max_iter"}  # TrainConfig key -> TELL parameter, where they differ
_NOT_TELL = ("k", "seed", "encoder")  # set by the two-level fit itself


def tell_params(cfg: TrainConfig) -> dict[str, Any]:
    """The :class:`tell.TELL` parameters of both levels, from the job's model config."""
    return {_TELL_NAMES.get(k, k): v for k, v in cfg.to_dict().items() if k not in _NOT_TELL}


def run_partition_with_fault(
    spec: str | None, work: PartitionWork, threads: int, *pieces: Any
) -> list:
    """:func:`jobs.train.split.run_partition` after the ``fine`` fault ``spec`` (None: none):
    a fine-fit task marks its node and waits, the first time only; counting tasks run as
    they are."""
    if spec is not None and work.fits:
        hold_fine_fit(spec, work.part)
    return run_partition(work, threads, *pieces)


class PartitionRunner:
    """Runs :func:`jobs.train.split.run_partition` over partitions as Ray tasks of
    ``cpus`` CPUs, at most ``in_flight`` at once, and yields their results in order, with
    ``beat(f"{verb} {n} of {total} partitions")`` as each arrives (and that as a live
    progress line, kept about every tenth of the way off a terminal). A failed task is one
    line: the TellError behind it (exit 2), a Ray failure as
    :class:`jobs.runtime.ClusterError`, anything else as RuntimeError (an internal error).
    ``fault`` (tests): a ``fine`` spec of :mod:`jobs.faults` applied in each task."""

    def __init__(
        self, cpus: float, in_flight: int, beat: Callable[[str], None], fault: str | None = None
    ) -> None:
        self.cpus, self.in_flight, self.beat = cpus, max(1, in_flight), beat
        self.fault = fault

    def __call__(
        self, works: Iterable[PartitionWork], split: Split, verb: str
    ) -> Iterator[list[Any]]:
        import ray

        remote = ray.remote(run_partition_with_fault).options(num_cpus=self.cpus)
        threads = max(1, int(self.cpus))
        works = list(works)
        todo = iter(works)
        pending: deque[tuple[PartitionWork, Any]] = deque()
        stride = progress.epoch_stride(len(works))
        started = time.perf_counter()
        try:
            for done in range(1, len(works) + 1):
                for work in todo:
                    pieces = split.pieces[work.part]
                    pending.append((work, remote.remote(self.fault, work, threads, *pieces)))
                    if len(pending) >= self.in_flight:
                        break
                work, ref = pending.popleft()
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise _task_error(exc, work, verb) from None
                self.beat(f"{verb} {done} of {len(works)} partitions")
                progress.emit(
                    f"{verb} {done} of {len(works)} partitions in "
                    f"{time.perf_counter() - started:.1f} s",
                    live=True,
                    keep=done % stride == 0 or done == len(works),
                )
                yield result
        finally:
            for _, ref in pending:
                ray.cancel(ref, force=True)


def _task_error(exc: BaseException, work: PartitionWork, verb: str) -> Exception:
    found = runtime.user_error(exc)
    if found is not None:
        return type(found)(runtime.one_line(found))
    what = f"Partition {work.part} ({len(work.groups)} coarse groups; {verb})"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not isinstance(cause, TellError):
        return RuntimeError(f"{what} failed: {type(cause).__name__}: {runtime.one_line(cause)}")
    return runtime.ClusterError(f"{what} failed on the cluster: {runtime.one_line(exc)}")


def fit_split(
    split: Split,
    coarse_centers: Any,
    k: int,
    seed: int,
    params: dict[str, Any],
    run: PartitionRunner,
    count: PartitionRunner,
) -> tuple[TwoLevelModel, dict[str, Any]]:
    """Steps 4 and 5 of the module docstring: the shares, then the fine fits. Groups
    without rows are dropped and the rest renumbered 0..G-1 (as in the library); returns
    the model (its fit_info without timings) and the step timings."""
    started = time.perf_counter()
    kept = np.flatnonzero(split.counts > 0)  # coarse centers that kept rows, ascending
    index = {int(c): g for g, c in enumerate(kept)}  # coarse center -> group number
    owner = partition_of(kept, split.n_parts)
    members = [kept[owner == p].tolist() for p in range(split.n_parts)]
    parts = [p for p in range(split.n_parts) if members[p]]
    distinct = np.zeros(len(kept), np.int64)
    counting = (PartitionWork(p, tuple(members[p])) for p in parts)
    for p, found in zip(parts, count(counting, split, "counted distinct rows of"), strict=True):
        distinct[[index[c] for c in members[p]]] = found
    counts = split.counts[kept]
    shares = share_out(counts, distinct, k)
    shared = time.perf_counter()
    fits = (
        PartitionWork(
            p,
            tuple(members[p]),
            shares=tuple(int(shares[index[c]]) for c in members[p]),
            all_distinct=tuple(bool(shares[index[c]] == distinct[index[c]]) for c in members[p]),
            seeds=tuple(seed + 1 + index[c] for c in members[p]),
            params=params,
        )
        for p in parts
    )
    fine: list[Any] = [None] * len(kept)
    run.beat("started the fine fits")
    for p, centers in zip(parts, run(fits, split, "fitted"), strict=True):
        for c, part in zip(members[p], centers, strict=True):
            fine[index[c]] = part
    info = {
        "coarse_dropped": int(split.counts.size - kept.size),
        "group_rows_min": int(counts.min()),
        "group_rows_max": int(counts.max()),
        "share_min": int(shares.min()),
        "share_max": int(shares.max()),
        "partitions": split.n_parts,
    }
    model = TwoLevelModel.from_groups(coarse_centers[kept], fine, info)
    fine_s = time.perf_counter() - shared
    timings = {"shares_s": round(shared - started, 3), "fine_fit_s": round(fine_s, 3)}
    return model, timings


def main(job: TrainJob, info: InputSet, cfg: TrainConfig) -> dict[str, Any]:
    """Fit and publish the two-level model of ``job`` (Ray is running; ``info`` and
    ``cfg`` come from :func:`jobs.train.driver.plan`); returns the job's summary."""
    out = storage.resolve(job.out)
    started = time.perf_counter()
    params = tell_params(cfg)
    k1 = check_params(info.num_rows, cfg.k, job.n_coarse, params)
    coarse_rows = min(info.num_rows, COARSE_ROWS_PER_CENTER * k1)
    check_rows = disagreement_rows(info.num_rows, cfg.k)
    with watchdog.watch(job.stall_timeout_s, "train") as beat:
        scan = scan_input(info, max(coarse_rows, check_rows), cfg.seed, keep=False, beat=beat)
        require_clean(scan, info)
        # zero rows are left out of the sample; the split names the first one's file and row
        sample = scan.sample[np.linalg.norm(scan.sample, axis=1) > 0]
        sample = unit_rows(sample, "the sample")
        scan_s = time.perf_counter() - started
        progress.line(f"scanned {scan.rows:,} rows x {info.dim} in {scan_s:.1f} s")
        with watchdog.beating(beat, "fitting the coarse level"):
            coarse = fit_coarse(sample, k1, min(coarse_rows, len(sample)), cfg.seed, params)
        coarse_s = time.perf_counter() - started - scan_s
        n_parts = n_partitions(info.num_rows, info.dim, k1, job.workers)
        split = split_input(info, coarse, n_parts, beat)
        split_s = time.perf_counter() - started - scan_s - coarse_s
        progress.line(
            f"split {scan.rows:,} rows by {k1} coarse centers into {n_parts} partitions in "
            f"{coarse_s + split_s:.1f} s"
        )
        count = PartitionRunner(0.0, 2 * job.workers, beat)  # light: a sort per partition
        fault = fine_fault(spec_from_env())
        fit = PartitionRunner(job.cpus_per_worker, job.workers, beat, fault)
        model, timings = fit_split(split, coarse, cfg.k, cfg.seed, params, fit, count)
        del split  # the object store's copy of the rows
        fit_s = time.perf_counter() - started - scan_s
        model.fit_info.update(
            seed=cfg.seed, tell_params=params, n_rows=scan.rows, coarse_sample_rows=coarse_rows,
            coarse_fit_s=round(coarse_s, 3), split_s=round(split_s, 3), **timings,
        )  # fmt: skip
        n_probe = min(DEFAULT_N_PROBE, model.n_coarse)  # as tell assign routes by default
        checked = sample[np.random.default_rng(cfg.seed).permutation(len(sample))[:check_rows]]
        rate = model.disagreement(checked, n_probe=n_probe)
    facts = model.fit_info
    progress.line(
        f"two-level model: {model.n_coarse} coarse x {model.n_clusters:,} fine centers in "
        f"{fit_s:.1f} s (coarse {facts['coarse_fit_s']} s, split {facts['split_s']} s, fine "
        f"{facts['fine_fit_s']} s); routed differs from exact on {rate:.2%} of "
        f"{len(checked):,} rows"
    )
    disagreement = {"rate": rate, "rows": len(checked), "n_probe": n_probe}
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
        "rows": scan.rows,
        "wall_s": round(time.perf_counter() - started, 2),
        "scan_s": round(scan_s, 2),
        "fit_s": round(fit_s, 2),
        "fit_info": facts,
    }
