"""``tell train``: Ray Data streams the Parquet input, Ray Train runs DDP over TELL.

The driver reads forward once through each artifact: :func:`plan` opens the input
(:func:`jobs.input.inspect.open_input`) and preflights the output before Ray starts; then
one scan pass (:func:`jobs.input.scan.scan_input`: validates every row, draws the k-means++
sample and, when the features fit in the object store, keeps them there);
``TorchTrainer.fit()`` over :func:`jobs.train.worker.train_loop_per_worker`; finally the
last checkpoint is published as ``<out>/<name>/model`` (:func:`jobs.model.publish`) for
``tell assign``. ``--levels 2`` fits the two-level model instead (:mod:`jobs.train.two_level`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from jobs import faults, progress, runtime, storage, watchdog
from jobs.config import TrainJob
from jobs.input.inspect import InputSet, open_input
from jobs.input.scan import require_clean, scan_input
from tell.config import TrainConfig
from tell.errors import TellConfigError, TellDataError
from tell.io import screen_rows

if TYPE_CHECKING:
    from tell.encoders import EncoderSpec
    from tell.model import TELLNet

logger = logging.getLogger("tell.train")


def plan(job: TrainJob) -> tuple[InputSet, TrainConfig, EncoderSpec]:
    """Validate input, storage and config against each other before Ray starts."""
    cfg = job.config
    if cfg.n_init != 1:
        raise TellConfigError(
            f"The 'n_init' must be 1 for distributed training (got {cfg.n_init}); restarts are "
            "supported by the in-memory estimator tell.TELL. Run several seeds instead."
        )
    # The input's preflight (one request) comes first, then its listing and footers; then
    # the output's preflight.
    info = open_input(job.data, job.column)
    storage.check_access(storage.resolve(job.out), write=True)
    if cfg.k > info.num_rows:
        raise TellDataError(
            f"k={cfg.k} is larger than the number of rows in {job.data} ({info.num_rows})."
        )
    if cfg.encoder == "conv" and cfg.image_shape is None:
        if info.image_shape is None:
            raise TellDataError(
                f"The conv encoder needs the image shape: {job.data} does not record it; "
                "set image_shape: [H, W, C]."
            )
        cfg = dataclasses.replace(cfg, image_shape=info.image_shape)
    spec = cfg.encoder_spec(info.dim)
    return info, cfg, spec


class FeatureBatches:
    """Read transform: an Arrow batch -> {"x": (B, d) float32} of valid rows.

    Raises TellDataError on a bad row: training refuses data with bad rows (the scan pass
    reports them before any worker starts; this guards against data changing mid-run).
    """

    def __init__(self, column: str, dim: int) -> None:
        self.column, self.dim = column, dim

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        screen = screen_rows(batch, self.column, self.dim)
        if not screen.valid.all():
            first = int(np.flatnonzero(~screen.valid)[0])
            raise TellDataError(
                f"Column {self.column!r} has an unusable row ({screen.reasons[first]})."
            )
        return {"x": screen.matrix}


def padding_rows(rows: int, workers: int) -> int:
    """Copies of sampled rows that make ``rows`` a multiple of ``workers`` (< workers)."""
    return -rows % workers


def _fits_in_object_store(n_bytes: int, share: float = 0.25) -> bool:
    """Whether ``n_bytes`` of features take at most ``share`` of the cluster's object store."""
    import ray

    return n_bytes <= share * ray.cluster_resources().get("object_store_memory", 0)


def main(job: TrainJob) -> dict[str, Any]:
    """Run the training job; returns a summary (model location, final metrics)."""
    info, cfg, spec = plan(job)
    # torch and the training modules load only now: a refused input costs the user a
    # fraction of a second, not the ~2 s of importing them.
    from jobs.model import publish
    from jobs.train import two_level
    from jobs.train.worker import train_loop_per_worker
    from tell.schedule import init_sample_rows_for

    runtime.ensure_ray()
    runtime.require_shared_paths({"data": job.data, "out": job.out}, job.shared_filesystem)
    if job.levels == 2:
        return two_level.main(job, info, cfg)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = storage.resolve(job.out)
    started = time.perf_counter()
    materialized = job.materialize == "always" or (
        job.materialize == "auto" and _fits_in_object_store(info.num_rows * info.dim * 4)
    )
    # No progress for stall_timeout_s (no file scanned, no batch trained): one line naming
    # what the cluster waits for, instead of a run that hangs (jobs/watchdog.py).
    with watchdog.watch(job.stall_timeout_s, "train") as beat:
        # One read validates every row and draws the k-means++ sample; when the features fit,
        # it also keeps them decoded in the object store, so epochs never re-read the files.
        sample_rows = init_sample_rows_for(cfg, info.num_rows)
        scan = scan_input(info, sample_rows, cfg.seed, keep=materialized, beat=beat)
        scan_s = time.perf_counter() - started
        progress.line(
            f"scanned {scan.rows:,} rows ({scan.bad_rows} bad) and drew {len(scan.sample):,} "
            f"sample rows in {scan_s:.1f} s"
            + ("; features kept in the object store" if materialized else "")
        )
        require_clean(scan, info)
        import ray.data
        from ray.data.block import BlockAccessor

        # Ray Train's equal split drops the rows beyond a multiple of the world size (the same
        # rows every epoch): pad with copies of as many sampled rows, so no row is left out.
        padding = padding_rows(scan.rows, job.workers)
        pad = [
            BlockAccessor.batch_to_block({"x": np.resize(scan.sample, (padding, info.dim))})
            for _ in range(padding > 0)
        ]
        if materialized:
            dataset = ray.data.from_arrow_refs([*scan.blocks, *map(ray.put, pad)])
        else:
            from jobs.input.read import read_dataset

            dataset = read_dataset(
                info,
                [job.column],
                transform=FeatureBatches(job.column, info.dim),
                concurrency=max(2, job.workers),
            )
            if pad:
                dataset = dataset.union(ray.data.from_arrow(pad))
        dataset = dataset.randomize_block_order(seed=cfg.seed)
        # Each epoch re-executes this dataset. From memory an epoch takes seconds and the job
        # logs a line per epoch, so Ray Data's progress would only repeat itself (hundreds of
        # lines per run); a streaming epoch reads the whole input and keeps its progress output.
        dataset.context.enable_progress_bars = progress.verbose() and not materialized
        metadata = {
            "run_name": job.name,
            "config": cfg.to_dict(),
            "seeds": {"seed": cfg.seed},
            "input": {
                "uri": job.data,
                "column": job.column,
                "type": str(info.column_type),
                "dim": info.dim,
                "rows": info.num_rows,
                "files": len(info.files),
            },
            "workers": job.workers,
        }
        use_gpu = job.gpus_per_worker > 0
        resources = {
            "CPU": job.cpus_per_worker,
            **({"GPU": job.gpus_per_worker} if use_gpu else {}),
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "model": cfg.to_dict(),
                "spec": spec.to_dict(),
                "rows": scan.rows,
                "rows_per_worker": (scan.rows + padding) // job.workers,
                "sample": scan.sample,
                "metadata": metadata,
                "fault": faults.spec_from_env(),
                "threads_per_worker": max(1, int(job.cpus_per_worker)),
                "heartbeat": beat.handle,
                "checkpoint_every": job.checkpoint_every,
                "checkpoint_min_interval_s": job.checkpoint_min_interval_s,
            },
            scaling_config=ScalingConfig(
                num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=job.name,
                storage_path=out.join("runs").path,
                storage_filesystem=out.filesystem,
                failure_config=FailureConfig(max_failures=job.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
            datasets={"train": dataset},
        )
        fit_started = time.perf_counter()
        result = trainer.fit()
    fit_s = time.perf_counter() - fit_started
    progress.line(f"training finished in {fit_s:.1f} s")
    if result.checkpoint is None:
        raise TellDataError(f"Training run {job.name!r} finished without a checkpoint.")
    with result.checkpoint.as_directory() as directory:
        model_uri, meta = publish(
            directory, out, job.name, annotate=lambda net, _: _verdict(net, scan.sample, cfg)
        )
    inertia = meta["metrics"].get("inertia_per_row")
    progress.line(
        f"model {model_uri}: {int(meta['epoch']) + 1} epochs over {scan.rows:,} rows"
        + (f", inertia/row {inertia:.4g}" if isinstance(inertia, float) else "")
        + f", {len(meta.get('checkpoint_epochs', []))} checkpoint(s)"
    )
    return {
        "model": model_uri,
        "run": str(out.join("runs", job.name)),
        "epochs": int(meta["epoch"]) + 1,
        "rows": scan.rows,
        "padding_rows": padding,
        "materialized": materialized,
        "wall_s": round(time.perf_counter() - started, 2),
        "scan_s": round(scan_s, 2),
        "fit_s": round(fit_s, 2),
        "metrics": {k: v for k, v in meta["metrics"].items() if k != "cluster_sizes"},
        "outcome": {k: v for k, v in meta.get("outcome", {}).items() if k != "guard_events"},
        "verdict": meta.get("verdict"),
    }


def _verdict(net: TELLNet, sample: np.ndarray, cfg: TrainConfig) -> dict[str, Any]:
    """The label-free verdict (``tell.verdict``) of a learned encoder on the k-means++
    sample the scan drew; ``{"verdict": None}`` for the identity encoder."""
    import torch

    from tell.estimator import judge_encoder
    from tell.verdict import verdict_rows

    if not net.has_decoder:
        return {"verdict": None}
    rows = torch.tensor(sample[: verdict_rows(cfg.k)])  # copies the read-only view
    return {"verdict": judge_encoder(net, rows, cfg.seed)}
