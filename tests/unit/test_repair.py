"""Center repair that scales in k (issue #14): the vectorised plan equals the loop it
replaced, and the statistics reduced over two processes equal one process on all rows."""

import threading

import pytest
import torch
from torch.nn import functional as F

from tell.encoders import EncoderSpec
from tell.engine import EpochStats, StepStats, plan_moves, repair_centers_
from tell.model import TELLNet


def reference_plan(counts, sq_dist_sums, margin_sums, movable, max_moves):
    """The loop of tell.engine.repair_centers_ before issue #14, on the reduced statistics
    (``movable`` is its ``farthest_sq_dist > 0``). One change: stable sorts, so ties go to
    the lower center index (the loop's argsort left their order unspecified)."""
    alive = counts > 0
    if not bool(alive.any()):
        return []
    mean_sq = sq_dist_sums[alive] / counts[alive]
    typical = mean_sq.median()
    excess = sq_dist_sums - counts * typical  # (k,)
    excess[~movable] = -1.0  # no row to move to
    cost = torch.where(alive, margin_sums, torch.zeros_like(margin_sums))
    targets = torch.argsort(excess, descending=True, stable=True).tolist()
    donors = torch.argsort(cost, stable=True).tolist()
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
    return moves


def random_stats(generator: torch.Generator, k: int):
    """Statistics of k centers with dead ones, zero margins, ties and shared extremes;
    the share of dead centers and the scale of the margins vary, so that some cases move
    every center and others refuse early."""
    dead_share, margin_scale = torch.rand(2, generator=generator).tolist()
    counts = torch.randint(1, 6, (k,), generator=generator).double()
    counts[torch.rand(k, generator=generator) < 0.5 * dead_share] = 0.0
    per_row = torch.randint(1, 5, (k,), generator=generator).double() / 4  # ties
    sq_dist_sums = counts * per_row
    margins = torch.randint(0, 6, (k,), generator=generator).double() * 2 * margin_scale
    margin_sums = counts * margins
    movable = (counts > 0) & (torch.rand(k, generator=generator) < 0.9)
    return counts, sq_dist_sums, margin_sums, movable


def test_vectorised_plan_equals_the_loop_on_many_random_cases():
    generator = torch.Generator().manual_seed(0)
    n_moved = 0
    for case in range(3000):
        k = int(torch.randint(2, 40, (1,), generator=generator))
        stats = random_stats(generator, k)
        max_moves = int(torch.randint(1, k + 2, (1,), generator=generator))
        expected = reference_plan(*stats, max_moves)
        donors, targets = plan_moves(*stats, max_moves)
        assert list(zip(donors.tolist(), targets.tolist(), strict=True)) == expected, case
        n_moved += len(expected)
    assert n_moved > 3000  # the cases move centers, not only refuse


def test_refused_target_can_still_donate_to_the_next_target():
    # Center 0: the largest excess, but its cheapest donor (1) costs too much; 0 itself is
    # the cheapest center and donates to the next target (2), as the loop did.
    counts = torch.tensor([4.0, 4.0, 4.0, 4.0, 4.0])
    sq_dist_sums = torch.tensor([10.0, 1.0, 8.0, 1.0, 1.0])  # median mean 0.25: excess 9, 7
    margin_sums = torch.tensor([0.5, 6.0, 7.0, 6.5, 6.6])
    movable = torch.ones(5, dtype=torch.bool)
    stats = (counts, sq_dist_sums, margin_sums, movable)
    assert reference_plan(*stats, 5) == [(0, 2)]
    donors, targets = plan_moves(*stats, 5)
    assert (donors.tolist(), targets.tolist()) == ([0], [2])


def test_dead_centers_move_to_the_worst_clusters_first():
    counts = torch.tensor([0.0, 10.0, 10.0, 0.0, 10.0, 10.0])
    sq_dist_sums = torch.tensor([0.0, 9.0, 1.0, 0.0, 6.0, 2.0])  # median mean 0.2: excess 7, 4
    margin_sums = torch.tensor([0.0, 50.0, 50.0, 0.0, 50.0, 50.0])  # live donors too dear
    movable = counts > 0
    donors, targets = plan_moves(counts, sq_dist_sums, margin_sums, movable, 10)
    assert (donors.tolist(), targets.tolist()) == ([0, 3], [1, 4])


class ThreadGroup:
    """Collectives of ``world`` threads (each thread one rank): SUM and gather along dim 0."""

    def __init__(self, world: int) -> None:
        self.world = world
        self._barrier = threading.Barrier(world)
        self._slots: list[torch.Tensor | None] = [None] * world

    def collectives(self, rank: int):
        def exchange(tensor: torch.Tensor) -> list[torch.Tensor]:
            self._slots[rank] = tensor.clone()
            self._barrier.wait()
            parts = list(self._slots)
            self._barrier.wait()
            return parts

        def all_reduce(tensor: torch.Tensor) -> None:
            parts = exchange(tensor)
            tensor.copy_(sum(parts[1:], parts[0]))

        def all_gather(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat(exchange(tensor))

        return all_reduce, all_gather

    def run(self, fn):
        """``fn(rank, all_reduce, all_gather)`` on every rank; their results in rank order."""
        results: list = [None] * self.world
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = fn(rank, *self.collectives(rank))
            except BaseException as error:  # re-raised in the test's thread
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def _steps(k: int, d: int, seed: int) -> tuple[torch.Tensor, list[StepStats]]:
    """Centers and 8 steps of 64 rows assigned to them, with their statistics; centers
    0-2 get no row (dead) and two clusters are loose (large excess)."""
    generator = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(k, d, generator=generator), dim=1)
    steps = []
    for _ in range(8):
        labels = torch.randint(3, k, (64,), generator=generator)
        spread = torch.where(labels < 5, 0.8, 0.2)[:, None]
        z = F.normalize(centers[labels] + spread * torch.randn(64, d, generator=generator), 1)
        scores = z @ centers.t()
        top = scores.topk(2, dim=1).values
        sq = (2 - 2 * (z * centers[labels]).sum(1)).clamp_min(0)
        margin = (2 - 2 * top[:, 1]).clamp_min(0) - (2 - 2 * top[:, 0]).clamp_min(0)
        loss = torch.zeros(())
        steps.append(StepStats(loss, loss, labels, z, sq, margin.clamp_min(0)))
    return centers, steps


def _model(centers: torch.Tensor) -> TELLNet:
    net = TELLNet(EncoderSpec("identity", centers.shape[1]), centers.shape[0])
    net.cluster.set_centers_(centers)
    return net


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_ranks_reduce_and_repair_like_one_process_on_all_rows(seed):
    k, d = 24, 8
    centers, steps = _steps(k, d, seed)
    single = EpochStats(k, d)
    for step in steps:
        single.add(step)
    single.reduce(lambda t: None, lambda t: t)
    one = _model(centers)
    moved_single = repair_centers_(one, single, max_moves=6)

    def rank_work(rank, all_reduce, all_gather):
        stats = EpochStats(k, d)
        for step in steps[rank::2]:
            stats.add(step)
        stats.reduce(all_reduce, all_gather)
        net = _model(centers)
        moved = repair_centers_(
            net, stats, max_moves=6, all_reduce_fn=all_reduce, all_gather_fn=all_gather
        )
        return stats, moved, net.cluster.weight.detach().clone()

    results = ThreadGroup(2).run(rank_work)
    assert len(moved_single) >= 3  # the dead centers 0-2 at least
    for stats, moved, weight in results:
        assert torch.equal(stats.counts, single.counts)
        torch.testing.assert_close(stats.sq_dist_sums, single.sq_dist_sums)
        torch.testing.assert_close(stats.margin_sums, single.margin_sums)
        assert torch.equal(stats.movable, single.movable)
        assert stats.summary()["steps"] == single.summary()["steps"]
        assert moved == moved_single
        torch.testing.assert_close(weight, one.cluster.weight.detach(), atol=1e-7, rtol=0)


def test_exchange_is_bounded_by_the_moves_not_by_k():
    k, d = 24, 8
    centers, steps = _steps(k, d, 0)
    sizes: list[int] = []

    def rank_work(rank, all_reduce, all_gather):
        def counting_reduce(t):
            sizes.append(t.numel()) if rank == 0 else None
            all_reduce(t)

        def counting_gather(t):
            sizes.append(t.numel()) if rank == 0 else None
            return all_gather(t)

        stats = EpochStats(k, d)
        for step in steps[rank::2]:
            stats.add(step)
        stats.reduce(counting_reduce, counting_gather)
        net = _model(centers)
        return repair_centers_(
            net, stats, max_moves=4, all_reduce_fn=counting_reduce, all_gather_fn=counting_gather
        )

    m = len(ThreadGroup(2).run(rank_work)[0])
    assert m >= 3
    # one (3 + d + 4k) reduce, then a (1, m) gather and an (m, d + 1) reduce: no k x d tensor
    assert sizes == [3 + d + 4 * k, m, m * (d + 1)]
