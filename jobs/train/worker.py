"""The per-worker loop of ``tell train`` (:func:`train_loop_per_worker`): one process per
Ray Train worker, importable and runnable on its own (tests run it on a local cluster).

Every rank runs the same number of steps per epoch (agreed by an all-reduce, so uneven
shards never deadlock), gradients are all-reduced by DDP inside backward, then every rank
normalises the same summed center gradient, steps and re-projects: the centers stay
identical on all ranks. Rank 0 reports a checkpoint every ``checkpoint_every`` epochs (not
sooner than ``checkpoint_min_interval_s`` after the previous one) and after the final epoch;
the other epochs report nothing to Ray Train (their metrics are in the checkpoint's history);
a restarted run resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jobs import progress
from jobs.faults import maybe_inject_fault
from jobs.watchdog import Beater, beating
from tell import checkpoint
from tell.config import TrainConfig, from_mapping
from tell.encoders import EncoderSpec
from tell.engine import run_epoch
from tell.init import initial_centers
from tell.model import TELLNet
from tell.optim import make_optimizer
from tell.schedule import PRETRAIN, EpochSchedule, batch_size_for, epoch_rows_for

logger = logging.getLogger("tell.train")


def _collectives(world: int):
    """(all_reduce SUM, all_gather along dim 0) for this world size."""
    if world == 1:
        return (lambda t: None), (lambda t: t)

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    return (lambda t: dist.all_reduce(t)), all_gather


def replica_divergence(weight: torch.Tensor, world: int) -> float:
    """How far the ranks' centers drifted apart: the spread (max - min over ranks) of two
    fingerprints of ``weight`` (k, d), its sum and a fixed random bilinear form of it, in
    float64. Exactly 0 when every rank holds the same weights. Two all-reduces of two
    numbers each, whatever k is (an all-gather of the weights would move world x k x d)."""
    if world == 1:
        return 0.0
    w = weight.double()
    generator = torch.Generator().manual_seed(0)
    rows, cols = (torch.rand(n, generator=generator, dtype=w.dtype).to(w.device) for n in w.shape)
    prints = torch.stack((w.sum(), (w @ cols) @ rows))
    high, low = prints.clone(), prints.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())


def local_batch_rows(batch_size: int, world: int, rows_per_worker: int) -> int:
    """Rows per step on each rank: the global ``batch_size`` shared by ``world`` ranks, but
    never more than a rank's shard (a batch larger than the shard still trains)."""
    return max(1, min(batch_size // world, rows_per_worker))


def agreed_batches(
    batches: Iterable[dict],
    max_steps: int,
    world: int,
    all_reduce_fn,
    device: torch.device,
    beat: Callable[[str], None] | None = None,
    what: str = "",
) -> Iterator[torch.Tensor]:
    """Yield feature batches while EVERY rank still has one, at most ``max_steps``.

    Each step all-reduces a 'have a batch' flag: ranks whose shard ran out make all ranks
    stop together instead of leaving the others hanging in DDP's all-reduce. ``beat``
    (the job's watchdog heartbeat) hears of every step, as "WHAT, step S".
    """
    iterator = iter(batches)
    for step in range(max_steps):
        batch = next(iterator, None)
        have = torch.tensor([0 if batch is None else 1], device=device)
        all_reduce_fn(have)
        if int(have.item()) < world:
            return
        if beat is not None:
            beat(f"{what}, step {step}")
        yield batch["x"]


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
    cadence = CheckpointCadence(config["checkpoint_every"], config["checkpoint_min_interval_s"])
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            loaded, meta = checkpoint.load(directory, optimizer=optimizer)
        net.load_state_dict(loaded.state_dict())
        history = list(meta.get("history", []))
        cadence.epochs = list(meta.get("checkpoint_epochs", []))
        # the epochs at which this run restarted from a checkpoint (observable resumption)
        resumed_at = [*meta.get("resumed_at", []), len(history)]
    model = ray.train.torch.prepare_model(net)
    all_reduce, all_gather = _collectives(world)
    beat = Beater(config.get("heartbeat"))
    # The driver pads the input to a multiple of the world size, so Ray Train's equal split
    # gives every rank exactly rows_per_worker rows and drops none; every rank then takes
    # the same number of batches, the last one partial (no row is left out of any epoch).
    local_batch = local_batch_rows(batch_size_for(cfg), world, config["rows_per_worker"])
    all_steps = math.ceil(config["rows_per_worker"] / local_batch)  # a whole shard
    # A clustering epoch may train on fewer rows (tell.schedule.epoch_rows_for): the first
    # ones of this epoch's order (Ray Data reshuffles the blocks every epoch, the shard
    # iterator its rows), so every epoch trains on a different subset.
    epoch_rows = epoch_rows_for(cfg, config["rows"])
    cluster_steps = min(all_steps, math.ceil(epoch_rows / world / local_batch))
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
            with beating(beat, f"seeding {cfg.k} centers ({cfg.init}, rank {rank})"):
                _init_centers(
                    net, config["sample"], cfg, cfg.seed + schedule.restarts, rank, world, device
                )
        started = time.perf_counter()
        batches = shard.iter_torch_batches(
            batch_size=local_batch,
            drop_last=False,
            local_shuffle_buffer_size=min(8 * local_batch, 200_000),
            local_shuffle_seed=cfg.seed * 100_003 + epoch * 7 + rank,
            device=device,
        )
        steps = all_steps if plan.phase == PRETRAIN else cluster_steps
        batches = maybe_inject_fault(
            agreed_batches(
                batches, steps, world, all_reduce, device, beat, f"epoch {epoch} rank {rank}"
            ),
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
        divergence = replica_divergence(net.cluster.weight.detach(), world)
        entry = schedule.record(
            {
                **summary,
                "rows_per_s": summary["rows"] / max(elapsed, 1e-9),
                # rows this epoch did not reach: none, or those beyond epoch_rows
                "rows_skipped": max(0, config["rows_per_worker"] * world - summary["rows"]),
                "epoch_s": elapsed,
                "replica_divergence": divergence,
                "min_cluster_size": min(summary["cluster_sizes"]),
                "max_cluster_size": max(summary["cluster_sizes"]),
            }
        )
        metrics = {k: v for k, v in entry.items() if k != "cluster_sizes"}
        final = schedule.next_epoch() is None
        if rank == 0:
            logger.info("epoch %d/%d %s", epoch + 1, schedule.total_epochs, _format(metrics))
            total = schedule.total_epochs
            progress.emit(
                progress.epoch_line(epoch, total, schedule.history),
                live=True,
                keep=final or epoch == 0 or (epoch + 1) % progress.epoch_stride(total) == 0,
            )
        # Only checkpoint epochs report: Ray Train holds one unconsumed report per worker, so
        # a report blocks until the controller's next poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S),
        # which cost every epoch about that long (0.45 s of a 0.5 s epoch measured on 6,000
        # rows). Every rank must make the same reports: rank 0's cadence (it keeps the clock)
        # is agreed by an all-reduce.
        due = torch.tensor([int(rank == 0 and cadence.due(epoch, final=final))], device=device)
        all_reduce(due)
        if not int(due.item()):
            continue
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            continue
        meta = {
            **config["metadata"],
            "epoch": epoch,
            "metrics": entry,
            "history": schedule.history,  # every epoch: older checkpoints are deleted
            "resumed_at": resumed_at,
            "checkpoint_epochs": cadence.epochs,
            "outcome": schedule.outcome(),
        }
        with tempfile.TemporaryDirectory() as directory:
            checkpoint.save(net, directory, meta, optimizer=optimizer)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


class CheckpointCadence:
    """When rank 0 writes a checkpoint: after every ``every``-th epoch, but not sooner than
    ``min_interval_s`` seconds after the previous one, and always after the final epoch
    (what the model is published from). ``epochs`` lists the epochs checkpointed so far."""

    def __init__(self, every: int, min_interval_s: float) -> None:
        self.every, self.min_interval_s = max(1, int(every)), float(min_interval_s)
        self.epochs: list[int] = []
        self._last = time.monotonic()

    def due(self, epoch: int, *, final: bool) -> bool:
        now = time.monotonic()
        wanted = final or (
            (epoch + 1) % self.every == 0 and now - self._last >= self.min_interval_s
        )
        if wanted:
            self.epochs.append(epoch)
            self._last = now
        return wanted


def _init_centers(
    net: TELLNet, sample: np.ndarray, cfg: TrainConfig, seed: int, rank: int, world: int, device
) -> None:
    """k-means++ (or random) on the encoded sample on rank 0, broadcast to all ranks."""
    centers = torch.empty(cfg.k, net.cluster.weight.shape[1])
    if rank == 0:
        started = time.perf_counter()
        logger.info("seeding %d centers (%s) on %d sample rows", cfg.k, cfg.init, len(sample))
        centers = initial_centers(cfg.init, net.encode_all(sample).cpu(), cfg.k, seed)
        logger.info("seeded %d centers in %.1f s", cfg.k, time.perf_counter() - started)
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
