"""``tell train``: Ray Data streams the Parquet input, Ray Train runs DDP over TELL.

Driver: inspect the input and storage, one scan pass (validates every row, draws the
k-means++ sample and, when the features fit in the object store, keeps them there), then
``TorchTrainer.fit()``; finally the last checkpoint is copied to ``<out>/<name>/model``
for ``tell assign``.

Workers (:func:`train_loop_per_worker`): every rank runs the same number of steps per epoch
(agreed by an all-reduce, so uneven shards never deadlock), gradients are all-reduced by
DDP inside backward, then every rank normalises the same summed center gradient, steps and
re-projects: the centers stay identical on all ranks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jobs import ray_runtime, storage
from jobs.config import TrainJob
from jobs.data import FeatureBatches, InputInfo, inspect_input, read_dataset
from jobs.faults import maybe_inject_fault
from jobs.model_store import save_model
from jobs.scan import scan_input
from tell import checkpoint
from tell.config import TrainConfig, from_mapping
from tell.encoders import EncoderSpec
from tell.engine import run_epoch
from tell.errors import TellCollapseError, TellConfigError, TellDataError
from tell.init import initial_centers
from tell.model import TELLNet
from tell.optim import make_optimizer
from tell.schedule import EpochSchedule

logger = logging.getLogger("tell.train")


# ----------------------------------------------------------------------------- workers


def _collectives(world: int):
    """(all_reduce SUM, all_gather along dim 0) for this world size."""
    if world == 1:
        return (lambda t: None), (lambda t: t)

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    return (lambda t: dist.all_reduce(t)), all_gather


def agreed_batches(
    batches: Iterable[dict], max_steps: int, world: int, all_reduce_fn, device: torch.device
) -> Iterator[torch.Tensor]:
    """Yield feature batches while EVERY rank still has one, at most ``max_steps``.

    Each step all-reduces a 'have a batch' flag: ranks whose shard ran out make all ranks
    stop together instead of leaving the others hanging in DDP's all-reduce.
    """
    iterator = iter(batches)
    for _ in range(max_steps):
        batch = next(iterator, None)
        have = torch.tensor([0 if batch is None else 1], device=device)
        all_reduce_fn(have)
        if int(have.item()) < world:
            return
        yield batch["x"]


def _encode_sample(net: TELLNet, sample: np.ndarray, device: torch.device) -> torch.Tensor:
    net.eval()
    with torch.no_grad():  # torch.tensor copies: the sample is a read-only object-store view
        z = torch.cat(
            [
                net.encode(torch.tensor(sample[i : i + 8192], device=device))
                for i in range(0, len(sample), 8192)
            ]
        )
    net.train()
    return z.cpu()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's loop: one process per worker; see the module docstring."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_mapping(TrainConfig, config["model"], "train config")
    spec = EncoderSpec.from_dict(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    torch.manual_seed(cfg.seed)
    net = TELLNet(spec, cfg.k, cfg.alpha)
    net.fit_input_scaling_(torch.tensor(config["sample"]))  # same sample on every rank
    optimizer = make_optimizer(net, cfg.optimizer, cfg.lr)
    history, resumed_at = [], []
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            loaded, meta = checkpoint.load(directory, optimizer=optimizer)
        net.load_state_dict(loaded.state_dict())
        history = list(meta.get("history", []))
        # the epochs at which this run restarted from a checkpoint (observable resumption)
        resumed_at = [*meta.get("resumed_at", []), len(history)]
    model = ray.train.torch.prepare_model(net)
    all_reduce, all_gather = _collectives(world)
    local_batch = max(1, cfg.batch_size // world)
    max_steps = max(1, config["rows"] // world // local_batch)
    # The epoch plan (tell/schedule.py) is the estimator's; a resumed run replays its history.
    schedule = EpochSchedule(cfg, config["rows"], net.has_decoder, history=history)
    pretrained: dict[str, torch.Tensor] | None = None
    shard = ray.train.get_dataset_shard("train")
    while (plan := schedule.next_epoch()) is not None:
        epoch = plan.index
        if plan.init_centers:
            if plan.restart and pretrained is not None:  # the collapse guard's restart
                net.load_state_dict(pretrained)
            pretrained = pretrained or {k: v.clone() for k, v in net.state_dict().items()}
            _init_centers(
                net, config["sample"], cfg, cfg.seed + schedule.restarts, rank, world, device
            )
        started = time.perf_counter()
        batches = shard.iter_torch_batches(
            batch_size=local_batch,
            drop_last=True,
            local_shuffle_buffer_size=min(8 * local_batch, 200_000),
            local_shuffle_seed=cfg.seed * 100_003 + epoch * 7 + rank,
            device=device,
        )
        batches = maybe_inject_fault(
            agreed_batches(batches, max_steps, world, all_reduce, device),
            config.get("fault"),
            rank=rank,
            epoch=epoch,
        )
        summary = run_epoch(
            model,
            batches,
            optimizer,
            plan,
            cfg,
            all_reduce_fn=all_reduce,
            all_gather_fn=all_gather,
        )
        elapsed = time.perf_counter() - started
        weights = net.cluster.weight.detach()[None]
        divergence = float((all_gather(weights) - weights).abs().max())
        entry = schedule.record(
            {
                **summary,
                "rows_per_s": summary["rows"] / max(elapsed, 1e-9),
                "epoch_s": elapsed,
                "replica_divergence": divergence,
                "min_cluster_size": min(summary["cluster_sizes"]),
                "max_cluster_size": max(summary["cluster_sizes"]),
            }
        )
        metrics = {k: v for k, v in entry.items() if k != "cluster_sizes"}
        if rank == 0:
            logger.info("epoch %d/%d %s", epoch + 1, schedule.total_epochs, _format(metrics))
            meta = {
                **config["metadata"],
                "epoch": epoch,
                "metrics": entry,
                "history": schedule.history,  # every epoch: older checkpoints are deleted
                "resumed_at": resumed_at,
                "outcome": schedule.outcome(),
            }
            with tempfile.TemporaryDirectory() as directory:
                checkpoint.save(net, directory, meta, optimizer=optimizer)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics, checkpoint=None)


def _init_centers(
    net: TELLNet, sample: np.ndarray, cfg: TrainConfig, seed: int, rank: int, world: int, device
) -> None:
    """k-means++ (or random) on the encoded sample on rank 0, broadcast to all ranks."""
    centers = torch.empty(cfg.k, net.cluster.weight.shape[1])
    if rank == 0:
        centers = initial_centers(cfg.init, _encode_sample(net, sample, device), cfg.k, seed)
    centers = centers.to(device)
    if world > 1:
        dist.broadcast(centers, src=0)
    net.cluster.set_centers_(centers)


def _format(metrics: dict[str, Any]) -> str:
    keys = ("phase", "clu_loss", "rec_loss", "inertia_per_row", "dead_centers", "rows_per_s")
    return " ".join(
        f"{k}={metrics[k]:.5g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
        for k in keys
    )


# ------------------------------------------------------------------------------ driver


def plan(job: TrainJob, cfg: TrainConfig) -> tuple[InputInfo, TrainConfig, EncoderSpec]:
    """Validate input, storage and config against each other before Ray starts."""
    if cfg.n_init != 1:
        raise TellConfigError(
            f"The 'n_init' must be 1 for distributed training (got {cfg.n_init}); restarts are "
            "supported by the in-memory estimator tell.TELL. Run several seeds instead."
        )
    # Both locations first (one request each), then every input footer.
    storage.check_access(storage.resolve(job.data), write=False)
    storage.check_access(storage.resolve(job.out), write=True)
    info = inspect_input(job.data, job.column)
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


def _fits_in_object_store(n_bytes: int, share: float = 0.25) -> bool:
    """Whether ``n_bytes`` of features take at most ``share`` of the cluster's object store."""
    import ray

    return n_bytes <= share * ray.cluster_resources().get("object_store_memory", 0)


def main(job: TrainJob, cfg: TrainConfig) -> dict[str, Any]:
    """Run the training job; returns a summary (model location, final metrics)."""
    info, cfg, spec = plan(job, cfg)
    ray_runtime.ensure_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = storage.resolve(job.out)
    started = time.perf_counter()
    materialized = job.materialize == "always" or (
        job.materialize == "auto" and _fits_in_object_store(info.num_rows * info.dim * 4)
    )
    # One read validates every row and draws the k-means++ sample; when the features fit,
    # it also keeps them decoded in the object store, so epochs never re-read the files.
    scan = scan_input(info, cfg.init_sample_rows, cfg.seed, keep=materialized)
    scan_s = time.perf_counter() - started
    logger.info(
        "scanned %d rows (%d bad) and drew %d sample rows in %.1f s%s",
        scan.rows,
        scan.bad_rows,
        len(scan.sample),
        scan_s,
        "; features kept in the object store" if materialized else "",
    )
    if scan.bad_rows:
        raise TellDataError(
            f"{scan.bad_rows} of {scan.rows} rows of column {job.column!r} in {job.data} "
            f"cannot be used for training (first: {scan.first_reason}); clean the data "
            "(tell assign quarantines such rows instead)."
        )
    if materialized:
        import ray.data

        dataset = ray.data.from_arrow_refs(scan.blocks)
    else:
        dataset = read_dataset(info, [job.column]).map_batches(
            FeatureBatches(job.column, info.dim), batch_format="pyarrow"
        )
    dataset = dataset.randomize_block_order(seed=cfg.seed)
    # Each epoch re-executes this dataset. From memory an epoch takes seconds and the job
    # logs a line per epoch, so Ray Data's progress would only repeat itself (hundreds of
    # lines per run); a streaming epoch reads the whole input and keeps its progress output.
    dataset.context.enable_progress_bars = not materialized
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
    resources = {"CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": cfg.to_dict(),
            "spec": spec.to_dict(),
            "rows": scan.rows,
            "sample": scan.sample,
            "metadata": metadata,
            "fault": os.environ.get("TELL_FAULT_INJECT"),
            "threads_per_worker": max(1, int(job.cpus_per_worker)),
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
    logger.info("training finished in %.1f s", fit_s)
    if result.checkpoint is None:
        raise TellDataError(f"Training run {job.name!r} finished without a checkpoint.")
    with result.checkpoint.as_directory() as directory:
        net, meta = checkpoint.load(directory)
    outcome = meta.get("outcome", {})
    if outcome.get("stop_reason") == "collapsed":  # never publish a collapsed model
        raise TellCollapseError(outcome["message"])
    model_uri = str(out.join(job.name, "model"))
    save_model(
        model_uri,
        net,
        {
            k: v
            for k, v in meta.items()
            if k not in ("encoder", "n_clusters", "alpha", "format_version")
        },
    )
    return {
        "model": model_uri,
        "run": str(out.join("runs", job.name)),
        "epochs": int(meta["epoch"]) + 1,
        "rows": scan.rows,
        "materialized": materialized,
        "wall_s": round(time.perf_counter() - started, 2),
        "scan_s": round(scan_s, 2),
        "fit_s": round(fit_s, 2),
        "metrics": {k: v for k, v in meta["metrics"].items() if k != "cluster_sizes"},
        "outcome": {k: v for k, v in outcome.items() if k != "guard_events"},
    }
