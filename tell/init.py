"""Center initialisation: the paper's random init, greedy k-means++ and k-means||, in torch.

All return unit centers of shape (k, d), float32, on the sample's device (a GPU when the
sample is there), k distinct rows of the sample for the seedings. The jobs draw the sample
through Ray Data and broadcast the result; this module only sees an in-memory array.

Cost, with n sample rows of d features and L = 2 + log k candidates per greedy step:

* greedy k-means++ (scikit-learn's algorithm): k sequential steps, each scoring L
  candidates against all n rows, so O(k n L d) in thin matrix products;
* k-means|| (Bahmani et al. 2012, Spark MLlib's and cuML's default): ``rounds`` passes
  that each draw about ``oversampling * k`` candidates at once (one wide matrix product
  per pass, O(rounds * oversampling * k n d) in all), then greedy k-means++ on the
  candidates weighted by the rows nearest to each (O(k C L d), C ~ rounds * oversampling
  * k candidates).

Both are linear in k x n for a fixed sample, but the k-means|| reduction is O(k^2) as
its candidates grow with k; above ``LEAF_CENTERS`` centers :func:`two_level_kmeans_parallel`
splits the rows into groups by a coarse k-means|| and seeds each group on its own, which
keeps the whole linear in k. Memory is bounded by a fixed score buffer per chunk of rows
(plus O(n) per-row distances), never (n, k).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from tell.assign import nearest

logger = logging.getLogger(__name__)

ROWS_PER_CENTER = 64  # seeding sample rows per center (faiss samples up to 256 per center)
MIN_SAMPLE_ROWS = 10_000  # ... but at least this many rows (small k)
MAX_SAMPLE_ROWS = 1_000_000  # ... and at most this many (the default cap)
# k-means|| passes: Spark MLlib's default (Bahmani et al. use 5). Measured at k=4096 on 200k
# rows (bench/seeding_repair.py): 5 rounds cost 5x as much for an inertia 0.1% lower after
# a 4-epoch fit; greedy k-means++ on all rows, 14x the time, 0.5% lower.
KMEANS_PARALLEL_ROUNDS = 2
KMEANS_PARALLEL_OVERSAMPLING = 2.0  # candidates drawn per round, in units of k
LEAF_CENTERS = 2048  # above this many centers, k-means|| runs in groups (two levels)
_SCORE_BYTES = 16 << 20  # float32 candidate scores held at once by a greedy step
_LOG_EVERY_S = 5.0


def sample_rows_for(n_clusters: int, n_rows: int, cap: int = MAX_SAMPLE_ROWS) -> int:
    """Rows of the data to sample for seeding ``n_clusters`` centers.

    The rule: ``ROWS_PER_CENTER`` (64) rows per center, at least ``MIN_SAMPLE_ROWS``
    (10,000), at most ``cap`` and the ``n_rows`` there are, and never fewer than
    ``n_clusters`` (seeding needs k rows). faiss uses up to 256 rows per center for its
    whole k-means; a seeding only has to place the centers in the right basins, which the
    training then refines on all rows. Measured (k=4096, 200k x 64 spherical blobs, k-means||
    on a sample, then 4 epochs on all rows): 1.0366x the floor from 16 rows per center,
    1.0331x from 32, 1.0308x from all 49; the seeding's cost grows with the sample.

    Parameters
    ----------
    n_clusters : int, k >= 1.
    n_rows : int, rows in the data, >= k.
    cap : int, the most rows to sample (memory: ``cap * d * 4`` bytes for the sample).

    Returns
    -------
    int, in [k, n_rows].

    Examples
    --------
    >>> sample_rows_for(100, 10**9), sample_rows_for(4096, 10**9), sample_rows_for(4096, 50_000)
    (10000, 262144, 50000)
    """
    rows = min(max(ROWS_PER_CENTER * n_clusters, MIN_SAMPLE_ROWS), cap, n_rows)
    return max(rows, min(n_clusters, n_rows))


def random_centers(n_clusters: int, n_features: int, seed: int) -> torch.Tensor:
    """Unit centers (k, d) drawn uniformly on the sphere (the paper's initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_clusters, n_features, generator=generator), dim=1)


def _sq_dist_to(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Squared distances (len(rows), n), float32 in [0, 4], between unit rows ``z[rows]``
    and every row of ``z`` (n, d)."""
    return (2.0 - 2.0 * (z[rows] @ z.t())).clamp_min_(0.0)


def _draw(cumulative: torch.Tensor, n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``n_draws`` indices drawn with probability proportional to the increments of the
    float64 running sum ``cumulative`` (n,); indices with a zero increment are never drawn."""
    total = cumulative[-1]
    # (1 - u) lies in (0, 1]: the first index whose running sum reaches it has a
    # positive increment.
    u = torch.rand(n_draws, generator=generator, dtype=torch.float64, device=cumulative.device)
    return torch.searchsorted(cumulative, (1.0 - u) * total).clamp_(max=cumulative.shape[0] - 1)


def _progress(last: float, message: str, *args: object) -> float:
    """Log ``message % args`` at INFO if ``_LOG_EVERY_S`` passed since ``last`` (a
    ``time.perf_counter()``); returns the time of the last log line."""
    now = time.perf_counter()
    if now - last < _LOG_EVERY_S:
        return last
    logger.info(message, *args)
    return now


@torch.no_grad()
def kmeans_plusplus(
    z: np.ndarray | torch.Tensor,
    n_clusters: int,
    seed: int,
    n_local_trials: int | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding (scikit-learn's algorithm, in torch on ``z``'s device).

    Each step draws ``n_local_trials`` candidate rows with probability proportional to
    weight x squared distance to the nearest center so far, and keeps the one that lowers
    the weighted potential most. Chosen rows get distance 0, so they are never drawn again;
    if the potential reaches 0 (fewer than k distinct rows), the remaining centers are the
    first rows not chosen yet.

    Parameters
    ----------
    z : array of shape (n, d), float32, unit rows; n >= k. Inputs are assumed validated.
    n_clusters : int, k.
    seed : int, random seed.
    n_local_trials : int or None, candidates per step (None: 2 + int(log k)).
    sample_weight : Tensor of shape (n,), float64, positive, on ``z``'s device, or None
        (all 1). k-means|| passes the number of rows each candidate stands for.

    Returns
    -------
    Tensor of shape (k, d), float32, unit rows, on ``z``'s device: k distinct rows of ``z``.
    """
    z = _as_unit_tensor(z)
    n = z.shape[0]
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    weight = torch.ones(n, dtype=torch.float64, device=z.device)
    if sample_weight is not None:
        weight = sample_weight.to(z.device, torch.float64)
    generator = torch.Generator(z.device).manual_seed(seed)
    chosen = torch.empty(n_clusters, dtype=torch.int64, device=z.device)
    chosen[0] = _draw(torch.cumsum(weight, 0), 1, generator)[0]
    closest = _sq_dist_to(z, chosen[:1])[0]  # (n,) float32
    closest[chosen[0]] = 0.0
    weight32 = weight.float()
    chunk = max(1, _SCORE_BYTES // (4 * trials))  # rows of z scored per product
    started = last = time.perf_counter()
    for step in range(1, n_clusters):
        cumulative = torch.cumsum(weight * closest, 0)  # (n,) float64
        if not bool(cumulative[-1] > 0):
            _fill_distinct(chosen, step, n)
            break
        candidates = _draw(cumulative, trials, generator)  # (L,)
        rows = z[candidates]  # (L, d)
        potentials = torch.zeros(trials, dtype=torch.float64, device=z.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            d2 = (rows @ z[start:stop].t()).mul_(-2.0).add_(2.0).clamp_(min=0.0)  # (L, m)
            torch.minimum(d2, closest[None, start:stop], out=d2)
            potentials += (d2 @ weight32[start:stop]).double()
        best = candidates[int(torch.argmin(potentials))]
        torch.minimum(closest, _sq_dist_to(z, best[None])[0], out=closest)
        closest[best] = 0.0
        chosen[step] = best
        last = _progress(
            last,
            "k-means++: %d/%d centers after %.0f s",
            step + 1,
            n_clusters,
            time.perf_counter() - started,
        )
    return z[chosen].clone()


@torch.no_grad()
def kmeans_parallel(
    z: np.ndarray | torch.Tensor,
    n_clusters: int,
    seed: int,
    rounds: int = KMEANS_PARALLEL_ROUNDS,
    oversampling: float = KMEANS_PARALLEL_OVERSAMPLING,
    reduce_trials: int | None = None,
) -> torch.Tensor:
    """k-means|| seeding (Bahmani et al. 2012), in torch on ``z``'s device.

    One row drawn uniformly, then ``rounds`` passes each drawing every row independently
    with probability ``min(1, oversampling * k * closest / potential)``, where ``closest``
    is its squared distance to the candidates so far; then each candidate is weighted by
    the rows nearest to it and greedy :func:`kmeans_plusplus` picks k of them. When the
    rounds draw fewer than k distinct candidates, greedy k-means++ runs on all rows.

    Parameters
    ----------
    z : array of shape (n, d), float32, unit rows; n >= k. Inputs are assumed validated.
    n_clusters : int, k.
    seed : int, random seed.
    rounds : int, oversampling passes over the rows (>= 1).
    oversampling : float, expected candidates per pass, in units of k.

    Returns
    -------
    Tensor of shape (k, d), float32, unit rows, on ``z``'s device: k distinct rows of ``z``.
    """
    z = _as_unit_tensor(z)
    n = z.shape[0]
    generator = torch.Generator(z.device).manual_seed(seed)
    is_candidate = torch.zeros(n, dtype=torch.bool, device=z.device)
    first = torch.randint(n, (1,), generator=generator, device=z.device)
    is_candidate[first] = True
    closest = _sq_dist_to(z, first)[0]  # (n,) float32, to the nearest candidate
    closest[first] = 0.0
    owner = first.expand(n).clone()  # (n,) int64, that candidate's row
    started = last = time.perf_counter()
    for r in range(rounds):
        potential = closest.double().sum()
        if not bool(potential > 0):
            break
        p = (oversampling * n_clusters * closest.double() / potential).clamp_(max=1.0)
        drawn = torch.rand(n, generator=generator, dtype=torch.float64, device=z.device) < p
        new = torch.nonzero(drawn & ~is_candidate).flatten()
        if new.numel() == 0:
            continue
        is_candidate[new] = True
        labels, d2 = nearest(z, z[new])
        closer = d2 < closest
        closest = torch.where(closer, d2, closest)
        owner = torch.where(closer, new[labels], owner)
        closest[new] = 0.0
        owner[new] = new
        last = _progress(
            last,
            "k-means||: round %d/%d, %d candidates for %d centers after %.0f s",
            r + 1,
            rounds,
            int(is_candidate.sum()),
            n_clusters,
            time.perf_counter() - started,
        )
    candidates = torch.nonzero(is_candidate).flatten()  # (C,) sorted rows
    if candidates.numel() < n_clusters:
        return kmeans_plusplus(z, n_clusters, seed)
    # Each candidate weighs the rows nearest to it (itself included, so at least 1).
    weight = torch.bincount(owner, minlength=n)[candidates].double()
    return kmeans_plusplus(z[candidates], n_clusters, seed, reduce_trials, weight)


@torch.no_grad()
def two_level_kmeans_parallel(
    z: np.ndarray | torch.Tensor,
    n_clusters: int,
    seed: int,
    leaf_centers: int = LEAF_CENTERS,
) -> torch.Tensor:
    """k-means|| in groups, for large k: linear in k where one level is quadratic.

    k-means|| picks its k centers from about 4k candidates by greedy k-means++, k
    sequential passes over the candidates: O(k^2) at large k whatever the sample. Here
    ``ceil(k / leaf_centers)`` coarse centers (k-means|| on all rows) split the rows into
    groups, each group gets a share of the k centers in proportion to its rows (largest
    remainders), and k-means|| seeds each group on its own rows: O(leaf_centers x n) for
    the groups plus O(k / leaf_centers x n) for the split. With at most ``leaf_centers``
    centers this is :func:`kmeans_parallel`.

    Parameters
    ----------
    z : array of shape (n, d), float32, unit rows; n >= k. Inputs are assumed validated.
    n_clusters : int, k.
    seed : int, random seed.
    leaf_centers : int, the most centers seeded in one k-means|| (>= 1).

    Returns
    -------
    Tensor of shape (k, d), float32, unit rows, on ``z``'s device: k distinct rows of ``z``.
    """
    z = _as_unit_tensor(z)
    n_groups = math.ceil(n_clusters / leaf_centers)
    if n_groups == 1:
        return kmeans_parallel(z, n_clusters, seed)
    groups, _ = nearest(z, kmeans_parallel(z, n_groups, seed))
    rows_per_group = torch.bincount(groups, minlength=n_groups)  # (G,)
    exact = n_clusters * rows_per_group.double() / z.shape[0]
    shares = exact.floor().long()
    rest = torch.argsort(exact - shares, descending=True, stable=True)
    shares[rest[: n_clusters - int(shares.sum())]] += 1  # each share <= its rows as k <= n
    members = torch.argsort(groups, stable=True).split(rows_per_group.tolist())
    parts = [
        kmeans_parallel(z[rows], int(share), seed + 1 + g)
        for g, (rows, share) in enumerate(zip(members, shares.tolist(), strict=True))
        if share > 0
    ]
    return torch.cat(parts)


def _as_unit_tensor(z: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``z`` as a contiguous float32 tensor (on its device; numpy arrays on the CPU)."""
    tensor = z.detach() if isinstance(z, torch.Tensor) else torch.from_numpy(np.asarray(z))
    return tensor.to(torch.float32).contiguous()


def _fill_distinct(chosen: torch.Tensor, start: int, n: int) -> None:
    """Set ``chosen[start:]`` to the first rows of range(n) not in ``chosen[:start]``."""
    taken = torch.zeros(n, dtype=torch.bool, device=chosen.device)
    taken[chosen[:start]] = True
    free = torch.nonzero(~taken).flatten()
    chosen[start:] = free[: chosen.shape[0] - start]


# Restarts of the seeding, each refined by Lloyd iterations on the sample, the lowest inertia
# kept: DEC and IDEC initialise from the best of 20 k-means runs on the pretrained features.
# With one seeding, TELL's clustering inherits its local minimum: digits, identity, 5 seeds of
# one k-means++ each: ACC 0.761 mean, 0.70-0.86 (bench-results/quality-digits.json, before).
# The cost is restarts x LLOYD_ITERATIONS x n x k x d on at most LLOYD_ROWS_PER_CENTER rows per
# center; restarts fall with k (RESTART_BUDGET // k: 10 up to k = 20, 1 from k = 101) so it
# stays linear in k. The budget: with many centers a bad basin costs a few of them, which the
# training's repair moves, while the restarts' Lloyd passes cost more than the epochs (200k x 64,
# 5 seeds, bench-results/seeding-restarts.json: k=256, 3 restarts 1.83 s mean, 1.0005x the
# floor; 1 restart 1.36 s, 0.9997x; k=100, 10 restarts 2.28 s, 0.9998x; 2 restarts 1.45 s,
# 1.0005x).
MAX_RESTARTS = 10
RESTART_BUDGET = 200
LLOYD_ITERATIONS = 10
LLOYD_ROWS_PER_CENTER = 256  # faiss's default maximum of training rows per center


def restarts_for(n_clusters: int) -> int:
    """Seeding restarts for k centers: 10 up to k = 20, then 200 // k, 1 from k = 101."""
    return max(1, min(MAX_RESTARTS, RESTART_BUDGET // n_clusters))


@torch.no_grad()
def lloyd_(z: torch.Tensor, centers: torch.Tensor, n_iter: int) -> float:
    """Refine unit ``centers`` (k, d) in place by spherical Lloyd iterations on unit rows
    ``z`` (n, d): assign to the nearest center, move each center to its rows' normalised
    mean (a center without rows stays). Returns the final inertia (sum of squared
    distances) of ``z``."""
    k = centers.shape[0]
    for _ in range(n_iter):
        labels, _ = nearest(z, centers)
        sums = torch.zeros_like(centers).index_add_(0, labels, z)  # (k, d)
        counts = torch.bincount(labels, minlength=k)
        moved = counts > 0
        centers[moved] = F.normalize(sums[moved], dim=1)
    _, sq_dist = nearest(z, centers)
    return float(sq_dist.double().sum())


def initial_centers(
    init: str, z_sample: np.ndarray | torch.Tensor, n_clusters: int, seed: int
) -> torch.Tensor:
    """Dispatch on ``init``; returns unit centers (k, d), float32.

    "k-means++": :func:`restarts_for` (k) runs of :func:`two_level_kmeans_parallel`
    (k-means|| with greedy k-means++ on its candidates, in groups of at most
    :data:`LEAF_CENTERS` centers), each refined by :data:`LLOYD_ITERATIONS` spherical
    Lloyd iterations on at most :data:`LLOYD_ROWS_PER_CENTER` rows per center of the sample;
    the run with the lowest inertia is kept. With one restart (k > 100) the seeding of the
    whole sample is returned as it is: no Lloyd pass, whose cost would grow with k^2.
    "random" draws :func:`random_centers` on the CPU (the paper's). ``z_sample`` (n, d) has
    unit rows, n >= k (see :func:`sample_rows_for` for n).
    """
    if init == "random":
        return random_centers(n_clusters, z_sample.shape[1], seed)
    z = _as_unit_tensor(z_sample)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(z.shape[0], generator=generator)[: LLOYD_ROWS_PER_CENTER * n_clusters]
    z_fit = z[rows.to(z.device)]
    restarts = restarts_for(n_clusters)
    if restarts == 1:  # nothing to compare: the training epochs refine the centers anyway
        return two_level_kmeans_parallel(z, n_clusters, seed)
    best: tuple[float, torch.Tensor] | None = None
    for restart in range(restarts):
        centers = two_level_kmeans_parallel(z_fit, n_clusters, seed + 1_000_003 * restart)
        inertia = lloyd_(z_fit, centers, LLOYD_ITERATIONS)
        if best is None or inertia < best[0]:
            best = (inertia, centers)
    assert best is not None
    return best[1]
