"""One training step of TELL, the per-epoch alternation, epoch statistics and dead-center repair.

Nothing here iterates a data source or knows about processes: the estimator and the Ray
train loop feed batches and inject the collective operations (``all_reduce_fn``), so the
same code runs in one process and under DDP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tell.layer import DEFAULT_GRAD_FRACTION
from tell.losses import DEFAULT_CLUSTER_WEIGHT, cluster_loss, reconstruction_loss
from tell.model import TELLNet
from tell.schedule import CENTERS, PRETRAIN, EpochPlan

if TYPE_CHECKING:
    from tell.config import TrainConfig

AllReduceFn = Callable[[torch.Tensor], None]
AllGatherFn = Callable[[torch.Tensor], torch.Tensor]


def noop_all_reduce(tensor: torch.Tensor) -> None:
    """In-place SUM over processes; the single-process default does nothing."""


def local_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (1, ...) from every process along dim 0; single process: itself."""
    return tensor


def unwrap(model: nn.Module) -> TELLNet:
    """The TELLNet inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class StepStats:
    """What one step measured on its local batch (tensors, so reading them does not sync).

    rec_loss, clu_loss : scalar tensors, batch means.
    labels : (B,) int64 assignments.
    z : (B, d) unit features (detached).
    sq_dist : (B,) squared distance of each row to its center.
    margin : (B,) squared distance to the runner-up center minus ``sq_dist``.
    """

    rec_loss: torch.Tensor
    clu_loss: torch.Tensor
    labels: torch.Tensor
    z: torch.Tensor
    sq_dist: torch.Tensor
    margin: torch.Tensor


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    phase: str,
    *,
    cluster_weight: float = DEFAULT_CLUSTER_WEIGHT,
    center_lr: float = 1.0,
    grad_fraction: float = DEFAULT_GRAD_FRACTION,
) -> StepStats:
    """One step of L = L_rec + L_clu on a batch ``x`` of shape (B, D).

    Order: forward -> backward (DDP all-reduces every gradient here) -> centers: row-normalise
    the (summed) gradient, SGD step, re-project (phase "centers") or keep them fixed
    (phase "features") -> the optimizer steps the autoencoder.
    ``model`` may be a DDP wrapper; its single forward() returns all the loss needs.
    """
    net = unwrap(model)
    layer = net.cluster
    out = model(x, detach_features=(phase == CENTERS))
    clu = cluster_loss(out.picked, layer.n_clusters, layer.alpha, cluster_weight)
    rec = reconstruction_loss(out.x_hat, out.x_in) if out.x_hat is not None else clu.new_zeros(())
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    layer.weight.grad = None
    # In pretraining L_clu enters with weight 0 so every parameter still gets a gradient
    # (DDP expects one for each) while only the autoencoder learns.
    (rec + (clu * 0.0 if phase == PRETRAIN else clu)).backward()
    if phase == CENTERS:
        layer.step_(center_lr, grad_fraction)
    if optimizer is not None:
        optimizer.step()
    with torch.no_grad():
        top2 = layer.distances(out.top2_scores)  # (B, 2)
    return StepStats(
        rec.detach(), clu.detach(), out.labels, out.z.detach(), top2[:, 0], top2[:, 1] - top2[:, 0]
    )


class EpochStats:
    """Per-center sums of step statistics over an epoch, reducible across processes.

    ``counts``, ``sq_dist_sums`` and ``margin_sums`` are (k,): rows, summed squared
    distance and summed margin of the rows assigned to each center. ``farthest_z`` (k, d)
    holds, for each center, its assigned row farthest from it (``farthest_sq_dist``, -1 when
    none): the candidates for moving centers. ``z_sum`` (d,) is the sum of the unit
    features, for their spread ``1 - ||mean z||^2`` (the collapse guard's signal).
    """

    def __init__(self, n_clusters: int, n_features: int, device: torch.device | str = "cpu"):
        self._losses = torch.zeros(3, dtype=torch.float64, device=device)  # rec, clu, steps
        self.z_sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_clusters, dtype=torch.float64, device=device)
        self.sq_dist_sums = torch.zeros_like(self.counts)
        self.margin_sums = torch.zeros_like(self.counts)
        self.farthest_sq_dist = torch.full((n_clusters,), -1.0, device=device)
        self.farthest_z = torch.zeros(n_clusters, n_features, device=device)

    def add(self, step: StepStats) -> None:
        n_rows = step.labels.shape[0]
        self._losses[0] += step.rec_loss.double() * n_rows
        self._losses[1] += step.clu_loss.double() * n_rows
        self._losses[2] += 1.0
        self.z_sum += step.z.double().sum(dim=0)
        labels = step.labels
        self.counts.index_add_(0, labels, torch.ones_like(step.sq_dist, dtype=torch.float64))
        self.sq_dist_sums.index_add_(0, labels, step.sq_dist.double())
        self.margin_sums.index_add_(0, labels, step.margin.double())
        self._offer_farthest(labels, step.z, step.sq_dist)

    def _offer_farthest(self, labels: torch.Tensor, z: torch.Tensor, sq_dist: torch.Tensor) -> None:
        batch_max = torch.full_like(self.farthest_sq_dist, -1.0)
        batch_max.scatter_reduce_(0, labels, sq_dist, reduce="amax")
        rows = torch.nonzero(sq_dist == batch_max[labels]).flatten()
        centers = labels[rows]
        better = sq_dist[rows] > self.farthest_sq_dist[centers]
        rows, centers = rows[better], centers[better]
        self.farthest_sq_dist[centers] = sq_dist[rows]
        self.farthest_z[centers] = z[rows].to(self.farthest_z)

    def reduce(self, all_reduce_fn: AllReduceFn, all_gather_fn: AllGatherFn) -> None:
        """SUM the statistics over processes; keep the farthest row per center over all."""
        for tensor in (self._losses, self.z_sum, self.counts, self.sq_dist_sums, self.margin_sums):
            all_reduce_fn(tensor)
        packed = torch.cat([self.farthest_sq_dist[:, None], self.farthest_z], dim=1)
        gathered = all_gather_fn(packed[None])  # (world, k, 1 + d)
        best = gathered[:, :, 0].argmax(dim=0)  # (k,)
        winner = gathered[best, torch.arange(best.shape[0], device=best.device)]
        self.farthest_sq_dist, self.farthest_z = winner[:, 0], winner[:, 1:]

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum().item())

    def summary(self) -> dict[str, float | int | list[int]]:
        rec, clu, n_steps = self._losses.tolist()
        n_rows = max(float(self.counts.sum()), 1.0)
        mean_z = self.z_sum / n_rows
        return {
            "rec_loss": rec / n_rows,
            "clu_loss": clu / n_rows,
            "inertia_per_row": float(self.sq_dist_sums.sum()) / n_rows,
            "rows": int(self.counts.sum().item()),  # 0 for an epoch that saw no row
            "steps": int(n_steps),
            "dead_centers": int((self.counts == 0).sum().item()),
            "feature_spread": 1.0 - float(mean_z.square().sum()),
            "cluster_sizes": [int(c) for c in self.counts.tolist()],
        }


@torch.no_grad()
def repair_centers_(model: TELLNet, stats: EpochStats, max_moves: int | None = None) -> list[int]:
    """Move dead and redundant centers into the worst-fitted clusters (after a reduce).

    * A dead center (no row this epoch) moves to the farthest row of the cluster with the
      largest excess inertia.
    * A live center j whose removal would cost little moves too: removing it sends its rows
      to their runner-up, which raises the inertia by exactly ``margin_sums[j]``. It moves
      when that cost is below half the *excess* inertia of the target cluster c,
      ``sq_dist_sums[c] - counts[c] * median mean-squared-distance``: what a cluster that
      holds two true clusters carries beyond a typical one. This undoes the two local
      minima a fixed-step k-means cannot leave (two clusters under one center, one cluster
      split in two).

    The statistics are identical on every process after :meth:`EpochStats.reduce`, so
    every process makes the same moves. Returns the moved centers.
    """
    k = stats.counts.shape[0]
    max_moves = max(1, k // 10) if max_moves is None else max_moves
    alive = stats.counts > 0
    if not bool(alive.any()):
        return []
    mean_sq = stats.sq_dist_sums[alive] / stats.counts[alive]
    typical = mean_sq.median()
    excess = stats.sq_dist_sums - stats.counts * typical  # (k,)
    excess[stats.farthest_sq_dist <= 0] = -1.0  # no row to move to
    cost = torch.where(alive, stats.margin_sums, torch.zeros_like(stats.margin_sums))
    targets = torch.argsort(excess, descending=True).tolist()
    donors = torch.argsort(cost).tolist()
    used: set[int] = set()
    moves: list[tuple[int, int]] = []
    for target in targets:
        if len(moves) >= max_moves or excess[target] <= 0:
            break
        if target in used:
            continue
        for donor in donors:
            if donor in used or donor == target:
                continue
            if alive[donor] and cost[donor] >= 0.5 * excess[target]:
                break
            moves.append((donor, target))
            used.update((donor, target))
            break
    if moves:
        weight = model.cluster.weight.detach().clone()
        for donor, target in moves:
            weight[donor] = stats.farthest_z[target].to(weight)
        model.cluster.set_centers_(weight)
    return [donor for donor, _ in moves]


def run_epoch(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    plan: EpochPlan,
    cfg: TrainConfig,
    *,
    all_reduce_fn: AllReduceFn = noop_all_reduce,
    all_gather_fn: AllGatherFn = local_all_gather,
) -> dict:
    """Train one epoch of ``plan`` (see :mod:`tell.schedule`) on ``batches``, then repair.

    ``batches`` are (B, D) tensors on the model's device; under DDP every process must pass
    the same number of them. The phase and the cluster weight come from ``plan``; when
    ``plan.repair`` is set, dead and redundant centers move afterwards (see
    :func:`repair_centers_`). Returns the epoch summary (:meth:`EpochStats.summary`) plus
    ``phase`` and ``moved`` (centers moved).
    """
    net = unwrap(model)
    weight = net.cluster.weight
    stats = EpochStats(net.cluster.n_clusters, weight.shape[1], weight.device)
    net.train()
    for x in batches:
        step = train_step(
            model,
            x,
            optimizer,
            plan.phase,
            cluster_weight=plan.cluster_weight,
            center_lr=cfg.center_lr,
            grad_fraction=cfg.grad_fraction,
        )
        stats.add(step)
    stats.reduce(all_reduce_fn, all_gather_fn)
    moved = repair_centers_(net, stats) if (plan.repair and plan.phase == CENTERS) else []
    return {**stats.summary(), "phase": plan.phase, "moved": len(moved)}
