"""One training step of TELL, the per-epoch alternation, epoch statistics and dead-center repair.

Nothing here iterates a data source or knows about processes: the estimator and the Ray
train loop feed batches and inject the collective operations (``all_reduce_fn``), so the
same code runs in one process and under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

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
    excluded: torch.Tensor | None = None,
) -> StepStats:
    """One step of L = L_rec + L_clu on a batch ``x`` of shape (B, D).

    Order: forward -> backward (DDP all-reduces every gradient here) -> centers: row-normalise
    the (summed) gradient, SGD step, re-project (phase "centers") or keep them fixed
    (phase "features") -> the optimizer steps the autoencoder.
    ``model`` may be a DDP wrapper; its single forward() returns all the loss needs.
    ``excluded`` (k,) bool: centers the rows may not be assigned to in this step (see
    :func:`capacity_mask`); the step's margins are then to the runner-up among the others.
    """
    net = unwrap(model)
    layer = net.cluster
    out = model(x, detach_features=(phase == CENTERS), excluded=excluded)
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

    ``counts``, ``sq_dist_sums`` and ``margin_sums`` are (k,) float64: rows, summed squared
    distance and summed margin of the rows assigned to each center. ``farthest_z`` (k, d)
    holds, for each center, this process's assigned row farthest from it
    (``farthest_sq_dist`` (k,), -1 when none): the candidates for moving centers. After
    :meth:`reduce` the sums cover all processes and ``movable`` (k,) bool tells which
    centers have a row at a positive distance on some process; the farthest rows stay
    local until :meth:`farthest_rows` exchanges the few that repair needs.
    ``z_sum`` (d,) is the sum of the unit features, for their spread ``1 - ||mean z||^2``
    (the collapse guard's signal).
    """

    def __init__(self, n_clusters: int, n_features: int, device: torch.device | str = "cpu"):
        self._losses = torch.zeros(3, dtype=torch.float64, device=device)  # rec, clu, steps
        self.z_sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        # One (3, k) block, filled by one index_add per step: counts, distances, margins.
        self._per_center = torch.zeros(3, n_clusters, dtype=torch.float64, device=device)
        self.farthest_sq_dist = torch.full((n_clusters,), -1.0, device=device)
        self.farthest_z = torch.zeros(n_clusters, n_features, device=device)
        self.movable = torch.zeros(n_clusters, dtype=torch.bool, device=device)  # set by reduce

    @property
    def counts(self) -> torch.Tensor:
        """(k,) float64 rows per center (a view: write into it, do not rebind it)."""
        return self._per_center[0]

    @property
    def sq_dist_sums(self) -> torch.Tensor:
        """(k,) float64 summed squared distance per center (a view)."""
        return self._per_center[1]

    @property
    def margin_sums(self) -> torch.Tensor:
        """(k,) float64 summed margin per center (a view)."""
        return self._per_center[2]

    def add(self, step: StepStats) -> None:
        labels = step.labels
        n_rows = float(labels.shape[0])
        ones = torch.ones_like(step.sq_dist)
        one_step = ones[0]
        self._losses += torch.stack((step.rec_loss * n_rows, step.clu_loss * n_rows, one_step))
        self.z_sum += step.z.sum(dim=0, dtype=torch.float64)
        per_row = torch.stack((ones, step.sq_dist, step.margin)).double()  # (3, B)
        self._per_center.index_add_(1, labels, per_row)
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
        """SUM the statistics over processes in one all_reduce of 3 + d + 4k float64 values.

        ``all_gather_fn`` is not used here (the interface of :func:`run_epoch`): the
        farthest rows are exchanged by :meth:`farthest_rows`, for the moved centers only.
        """
        k = self.counts.shape[0]
        packed = torch.cat(
            [
                self._losses,
                self.z_sum,
                self._per_center.flatten(),
                (self.farthest_sq_dist > 0).double(),
            ]
        )
        all_reduce_fn(packed)
        d = self.z_sum.shape[0]
        self._losses, self.z_sum = packed[:3], packed[3 : 3 + d]
        self._per_center = packed[3 + d : 3 + d + 3 * k].view(3, k)
        self.movable = packed[3 + d + 3 * k :] > 0

    def farthest_rows(
        self, centers: torch.Tensor, all_reduce_fn: AllReduceFn, all_gather_fn: AllGatherFn
    ) -> torch.Tensor:
        """The row farthest from each of ``centers`` over all processes (after :meth:`reduce`).

        Exchanges (world, m) distances and one (m, d + 1) sum, m = ``len(centers)``: bounded
        by the number of moves, not by k. Every process must pass the same ``centers``.

        Parameters
        ----------
        centers : Tensor of shape (m,), int64, centers that are ``movable``.
        all_reduce_fn, all_gather_fn : the collectives of :func:`run_epoch`.

        Returns
        -------
        Tensor of shape (m, d), float32: rows of the data, unit norm. Where processes tie
        for the farthest distance, the mean of their rows (renormalised).
        """
        local = self.farthest_sq_dist[centers]  # (m,)
        best = all_gather_fn(local[None].contiguous()).amax(dim=0)  # (m,)
        mine = (local == best) & (best > 0)  # this process holds the farthest row
        packed = torch.cat([self.farthest_z[centers], torch.ones_like(local)[:, None]], dim=1)
        packed = packed * mine[:, None]  # (m, d + 1): the row and a count of 1, or zeros
        all_reduce_fn(packed)
        return F.normalize(packed[:, :-1] / packed[:, -1:].clamp_min(1.0), dim=1)

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
            "size_imbalance": float(self.counts.max()) * self.counts.shape[0] / n_rows,
            "feature_spread": 1.0 - float(mean_z.square().sum()),
            "cluster_sizes": [int(c) for c in self.counts.tolist()],
        }


def plan_moves(
    counts: torch.Tensor,
    sq_dist_sums: torch.Tensor,
    margin_sums: torch.Tensor,
    movable: torch.Tensor,
    max_moves: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which centers move where: the rule of :func:`repair_centers_`, without a loop over k.

    Targets are the centers of positive excess inertia that have a row to move to, in
    decreasing excess; donors are all centers in increasing removal cost (dead ones cost
    0). Repeatedly the first target not used yet takes the first donor not used yet (and
    not itself); it moves when the donor is dead or costs less than half the target's
    excess, else nothing more moves but for one case: the refused target itself may still
    be the donor of the next target. Ties in excess or cost go to the lower center index.

    The greedy pairing runs in vectorised rounds: a round pairs the i-th remaining target
    with the i-th remaining donor for every i up to the first pair that a center shares
    with an earlier pair or that is refused; that pair is then decided exactly. Rounds are
    one more than the centers that are both an early target and an early donor (a
    cluster with large excess whose rows sit close to their runner-up): few.

    Parameters
    ----------
    counts, sq_dist_sums, margin_sums : Tensors of shape (k,), float64, reduced over
        processes (see :class:`EpochStats`).
    movable : Tensor of shape (k,), bool: the center has a row at a positive distance.
    max_moves : int, the most moves.

    Returns
    -------
    (donors, targets) : Tensors of shape (m,), int64, m <= max_moves: donor ``donors[i]``
        moves to the farthest row of cluster ``targets[i]``; each center appears once.
    """
    device = counts.device
    none = torch.empty(0, dtype=torch.int64, device=device)
    alive = counts > 0
    if not bool(alive.any()):
        return none, none
    typical = (sq_dist_sums[alive] / counts[alive]).median()
    excess = torch.where(movable, sq_dist_sums - counts * typical, -1.0)  # (k,)
    cost = torch.where(alive, margin_sums, 0.0)  # (k,) inertia added by removing a center
    half = 0.5 * excess
    by_excess = torch.argsort(excess, descending=True, stable=True)
    targets = by_excess[excess[by_excess] > 0]
    donors = torch.argsort(cost, stable=True)
    used = torch.zeros(counts.shape[0], dtype=torch.bool, device=device)
    chosen_donors: list[torch.Tensor] = []
    chosen_targets: list[torch.Tensor] = []
    n_moves = 0

    def take(d: torch.Tensor, t: torch.Tensor) -> None:
        nonlocal n_moves
        chosen_donors.append(d)
        chosen_targets.append(t)
        used[d] = True
        used[t] = True
        n_moves += d.numel()

    while n_moves < max_moves:
        free_targets, free_donors = targets[~used[targets]], donors[~used[donors]]
        if free_targets.numel() == 0:
            break
        n_pairs = min(free_targets.numel(), free_donors.numel(), max_moves - n_moves)
        t, d = free_targets[:n_pairs], free_donors[:n_pairs]
        stop = _first_unsafe_pair(t, d, cost, half)
        if stop > 0:
            take(d[:stop], t[:stop])
        if stop == n_pairs:
            continue
        # Pair `stop` shares a center with an earlier pair or is refused: decide it exactly.
        free_targets, free_donors = targets[~used[targets]], donors[~used[donors]]
        if free_targets.numel() == 0:
            break
        target = free_targets[0]
        # A donor other than the target is left: at most half the live centers lie above
        # the median (the targets), and each move uses one target.
        donor = free_donors[:2][free_donors[:2] != target][0]
        if bool(cost[donor] < half[target]):
            take(donor[None], target[None])
            continue
        # Refused: every donor left costs at least as much except the target itself,
        # which the next target (with a smaller excess) may still take.
        if n_moves < max_moves and free_targets.numel() > 1:
            after = free_targets[1]
            if bool(cost[target] < half[after]):
                take(target[None], after[None])
        break
    if not chosen_donors:
        return none, none
    return torch.cat(chosen_donors), torch.cat(chosen_targets)


def _first_unsafe_pair(
    targets: torch.Tensor, donors: torch.Tensor, cost: torch.Tensor, half: torch.Tensor
) -> int:
    """Index of the first pair i (targets[i], donors[i]) (both (m,) int64) that shares a
    center with a pair j <= i, or whose donor costs at least half its target's excess;
    m when none. Pairs before it are exactly what the one-at-a-time greedy would choose."""
    m = targets.numel()
    order = torch.arange(m, device=targets.device)
    as_donor = torch.full_like(cost, m, dtype=torch.int64)  # (k,) position among donors
    as_donor[donors] = order
    as_target = torch.full_like(as_donor, m)
    as_target[targets] = order
    unsafe = (as_donor[targets] <= order) | (as_target[donors] <= order)
    unsafe |= cost[donors] >= half[targets]
    return int(torch.argmax(unsafe.int())) if bool(unsafe.any()) else m


@torch.no_grad()
def repair_centers_(
    model: TELLNet,
    stats: EpochStats,
    max_moves: int | None = None,
    *,
    all_reduce_fn: AllReduceFn = noop_all_reduce,
    all_gather_fn: AllGatherFn = local_all_gather,
) -> list[int]:
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

    At most ``max_moves`` (default k // 10, at least 1) centers move; each center is a
    donor or a target once (see :func:`plan_moves`). The statistics are identical on every
    process after :meth:`EpochStats.reduce`, so every process plans the same moves; the
    targets' farthest rows are then exchanged with the collectives (see
    :meth:`EpochStats.farthest_rows`). Returns the moved centers.
    """
    k = stats.counts.shape[0]
    max_moves = max(1, k // 10) if max_moves is None else max_moves
    donors, targets = plan_moves(
        stats.counts, stats.sq_dist_sums, stats.margin_sums, stats.movable, max_moves
    )
    if donors.numel() == 0:
        return []
    rows = stats.farthest_rows(targets, all_reduce_fn, all_gather_fn)  # (m, d)
    weight = model.cluster.weight.detach().clone()
    weight[donors] = rows.to(weight)
    model.cluster.set_centers_(weight)
    return donors.tolist()


def capacity_mask(counts: torch.Tensor, size_cap: torch.Tensor) -> torch.Tensor:
    """The centers that hold ``size_cap`` rows or more, (k,) bool, from ``counts`` (k,)
    float64, this process's rows per center so far in the epoch. When every center is full
    (an epoch longer than the one that set the cap), none is excluded."""
    full = counts >= size_cap  # (k,)
    return full & (full.sum() < full.shape[0])


def epoch_size_cap(max_imbalance: float, local_rows: float, n_clusters: int) -> float:
    """``max_imbalance`` x the mean cluster size of an epoch of ``local_rows`` rows on
    this process: the cap of each center in the next balanced epoch."""
    return max_imbalance * local_rows / n_clusters


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
    :func:`repair_centers_`).

    With ``cfg.max_imbalance`` set, the training assignment is balanced: a center that
    already holds ``max_imbalance`` x the mean cluster size of the previous epoch (rows of
    this process) takes no more rows this epoch, which go to the nearest center that is not
    full. The first training epoch measures the cap; from the second one no cluster grows
    past it by more than one batch. Rows pushed out of a dense region pull the neighbouring
    centers in, so over epochs the centers themselves spread in proportion to the rows and
    the plain nearest-center prediction is balanced too (prediction never uses the cap).

    Returns the epoch summary (:meth:`EpochStats.summary`) plus ``phase`` and ``moved``
    (centers moved).
    """
    net = unwrap(model)
    layer = net.cluster
    stats = EpochStats(layer.n_clusters, layer.weight.shape[1], layer.weight.device)
    balanced = cfg.max_imbalance is not None and plan.phase != PRETRAIN
    # Checked on the CPU once per epoch (not per step): the cap is a host-side number.
    capped = balanced and math.isfinite(float(layer.size_cap))
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
            excluded=capacity_mask(stats.counts, layer.size_cap) if capped else None,
        )
        stats.add(step)
    if balanced:
        local_rows = float(stats.counts.sum())
        layer.size_cap.fill_(epoch_size_cap(cfg.max_imbalance, local_rows, layer.n_clusters))
    stats.reduce(all_reduce_fn, all_gather_fn)
    moved = []
    if plan.repair and plan.phase == CENTERS:
        moved = repair_centers_(
            net, stats, all_reduce_fn=all_reduce_fn, all_gather_fn=all_gather_fn
        )
    return {**stats.summary(), "phase": plan.phase, "moved": len(moved)}
