"""Two-level spherical clustering for very large k (issue #14).

One TELL over a million centers is out of reach (every step scores every row against every
center); two levels keep each fit small, as faiss's ``contrib.clustering.two_level_clustering``
and ssl-data-curation's split step do:

1. **coarse**: :class:`tell.TELL` with ``n_coarse`` centers (default ``round(sqrt(k))``) on a
   sample of at most :data:`COARSE_ROWS_PER_CENTER` rows per coarse center;
2. **split**: every row goes to its nearest coarse center (:func:`tell.assign.nearest`);
   coarse centers that no row chose are dropped; each group gets a share of the k fine
   centers proportional to its rows (:func:`allocate_shares`: at least 1, at most its
   distinct rows, the shares sum to k), so that every fine center can own a row;
3. **fine**: each group's share is fitted on that group's rows alone by :func:`fit_fine`
   (:class:`tell.TELL`; a share of 1 is the group's normalised mean, a share equal to the
   group's distinct rows is those rows). The fits are independent: ``map_fn`` runs them
   (the builtin ``map`` here, Ray tasks in the job).

The fine centers are stored grouped by coarse center, group ``c`` holding
``fine_centers[offsets[c]:offsets[c + 1]]``. :meth:`TwoLevelModel.predict` routes a row to
its nearest coarse center, then to the nearest fine center of that group (``k1 + k / k1``
scores per row instead of k); ``routed=False`` searches all k fine centers (exact), and
:meth:`TwoLevelModel.disagreement` measures how often the two differ.

>>> from tell.datasets import make_spherical_blobs
>>> X = make_spherical_blobs(2000, 8, 16, seed=0).X
>>> model = fit_two_level(X, 16, seed=0)
>>> model.n_clusters, model.n_coarse, model.fine_centers.shape
(16, 4, torch.Size([16, 8]))
>>> labels, coarse = model.predict(X[:5])
>>> bool((coarse == model.coarse_of(labels)).all())
True
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import save as st_save

from tell import checkpoint
from tell._validation import check_enough_rows, check_matrix
from tell.assign import assign, nearest
from tell.errors import TellCheckpointError, TellConfigError, TellDataError
from tell.estimator import TELL

MODEL_KIND = "two_level"  # metadata["model"] of a saved two-level model
COARSE_ROWS_PER_CENTER = 1024  # the coarse fit's sample: faiss's two-level clustering trains
# its coarse level on at most 2000 rows per centroid; the coarse level only has to split the
# rows into groups, and TELL reaches its floor ratio from a few hundred rows per center.
UNIT_TOLERANCE = 1e-3  # |norm - 1| accepted for a "unit" row (float32 data normalised elsewhere)
_CHECK_CHUNK_ROWS = 1 << 20  # rows per chunk of the unit-norm check
_PROBE_SCORES = 1 << 20  # row x coarse-center scores per chunk of the n_probe search (4 MiB)
DISAGREEMENT_MAX_ROWS = 20_000  # rows of a disagreement sample, at most ...
DISAGREEMENT_SCORES = 1 << 32  # ... and at most this many row x center scores (exact search)
DEFAULT_N_PROBE = 1  # coarse groups an assignment searches per row: see docs/DEFAULTS.md
EXACT_CHECK_COST = 0.1  # an assignment run's exact check of its routing costs at most this
# share of the routed search: enough rows to measure the disagreement within a point at a
# million rows, a bounded slowdown at any k (TwoLevelModel.check_share)
_RESERVED_PARAMS = ("n_clusters", "random_state", "encoder")


# --------------------------------------------------------------------------- shares


def allocate_shares(
    counts: np.ndarray | Iterable[int], n_clusters: int, caps: np.ndarray | None = None
) -> np.ndarray:
    """Split ``n_clusters`` centers over groups in proportion to their rows.

    The shares are the integer vector nearest (in L2) to the exact quotas
    ``n_clusters * counts / counts.sum()`` among those with every share in [1, caps] and
    summing to ``n_clusters``: the continuous nearest point ``clip(quota - mu, 1, caps)``
    (``mu`` by bisection), rounded down, then the centers left over go one each to the
    largest remainders (Hamilton's largest-remainder method; ties to the lower group index).

    Parameters
    ----------
    counts : array of shape (G,), int, rows per group, each >= 1.
    n_clusters : int, k, in [G, caps.sum()].
    caps : array of shape (G,), int, optional: the most centers each group may get, each
        >= 1 (default ``counts``: never more centers than rows).

    Returns
    -------
    ndarray of shape (G,), int64, in [1, caps], summing to ``n_clusters``.

    Examples
    --------
    >>> allocate_shares([50, 30, 20], 10).tolist(), allocate_shares([5, 1, 1], 6).tolist()
    ([5, 3, 2], [4, 1, 1])
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    caps = counts if caps is None else np.asarray(caps, dtype=np.int64).ravel()
    if counts.size == 0 or caps.shape != counts.shape or (counts < 1).any() or (caps < 1).any():
        raise TellDataError(
            "allocate_shares needs one or more groups, each with >= 1 row and a cap >= 1. "
            f"Got counts {counts[:8].tolist()} and caps {caps[:8].tolist()}."
        )
    if not counts.size <= n_clusters <= int(caps.sum()):
        raise TellDataError(
            f"Cannot give {n_clusters} centers to {counts.size} groups of at most "
            f"{int(caps.sum())} centers in all with at least 1 each; n_clusters must be in "
            f"[{counts.size}, {int(caps.sum())}]."
        )
    quota = n_clusters * counts / counts.sum()  # (G,) float64, the exact proportional shares
    low, high = float(quota.min() - caps.max()), float(quota.max() - 1.0)  # sums >= k, <= k
    for _ in range(200):  # sum(clip(quota - mu, 1, caps)) decreases with mu
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if np.clip(quota - mid, 1, caps).sum() > n_clusters:
            low = mid
        else:
            high = mid
    target = np.clip(quota - high, 1, caps)  # (G,) sums to <= k
    shares = np.floor(target).astype(np.int64)
    by_remainder = np.argsort(-(target - shares), kind="stable")
    left = n_clusters - int(shares.sum())
    while left > 0:  # one pass in exact arithmetic; more only to absorb rounding
        open_groups = by_remainder[shares[by_remainder] < caps[by_remainder]][:left]
        shares[open_groups] += 1
        left -= open_groups.size
    return shares


def disagreement_rows(n_rows: int, k: int) -> int:
    """Rows of a sample to measure the routed-vs-exact disagreement on: at most
    DISAGREEMENT_MAX_ROWS, at most DISAGREEMENT_SCORES / k (the exact answer scores every
    center), at least 1000, at most ``n_rows``. k = 1,048,576 gives 4,096 rows (standard
    error <= 0.8 points)."""
    return min(n_rows, max(1000, min(DISAGREEMENT_MAX_ROWS, DISAGREEMENT_SCORES // k)))


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)
class FineTask:
    """One group's fine fit: the unit of work that ``map_fn`` distributes.

    Attributes
    ----------
    rows : ndarray of shape (m, d), float32, unit rows: the group's rows.
    n_centers : int, the group's share, in [1, distinct rows].
    all_distinct : bool, the share equals the group's distinct rows (the centers are them).
    seed : int, the fit's random seed.
    params : dict, :class:`tell.TELL` parameters (besides n_clusters and random_state).
    """

    rows: np.ndarray
    n_centers: int
    all_distinct: bool
    seed: int
    params: dict[str, Any] = field(default_factory=dict)


def fit_fine(task: FineTask) -> np.ndarray:
    """The fine centers of one group: ndarray of shape (task.n_centers, d), float32, unit rows.

    One center: the group's normalised mean; as many centers as distinct rows: those rows;
    otherwise ``TELL(task.n_centers, random_state=task.seed, **task.params)`` on the rows.
    """
    if task.n_centers == 1:
        return _mean_direction(task.rows)[None]
    if task.all_distinct:
        return np.unique(task.rows, axis=0).astype(np.float32)
    model = TELL(task.n_centers, random_state=task.seed, **task.params).fit(task.rows)
    return model.cluster_centers_


def _mean_direction(rows: np.ndarray) -> np.ndarray:
    """The normalised mean (d,) float32 of unit rows (m, d); their first row if they cancel."""
    mean = rows.astype(np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 1e-12 else rows[0]).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Split:
    """The rows grouped by their nearest coarse center (step 2 of :func:`fit_two_level`).

    Attributes
    ----------
    coarse_centers : Tensor of shape (k1, d), float32, unit rows: the coarse centers that
        kept rows, in their original order.
    order : ndarray of shape (n,), int64, row indices sorted by group, ascending in each.
    counts : ndarray of shape (k1,), int64, rows per group (>= 1).
    starts : ndarray of shape (k1 + 1,), int64, where each group starts in ``order``.
    shares : ndarray of shape (k1,), int64, fine centers per group (sum k).
    all_distinct : ndarray of shape (k1,), bool, the share is all the group's distinct rows.
    dropped : int, coarse centers without rows, left out.
    """

    coarse_centers: torch.Tensor
    order: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    shares: np.ndarray
    all_distinct: np.ndarray
    dropped: int

    def rows_of(self, group: int) -> np.ndarray:
        """Indices (counts[group],) int64 of the rows of ``group``."""
        return self.order[self.starts[group] : self.starts[group + 1]]


def split_rows(X: np.ndarray, coarse_centers: torch.Tensor, n_clusters: int) -> Split:
    """Group the unit rows ``X`` (n, d) by nearest coarse center and share out the k fine
    centers (:func:`allocate_shares` in proportion to the rows, each share capped by the
    group's distinct rows). Inputs are assumed validated, n >= k."""
    labels = nearest(torch.from_numpy(X), coarse_centers)[0].numpy()  # (n,), in chunks
    counts = np.bincount(labels, minlength=coarse_centers.shape[0])
    kept = counts > 0
    renumber = np.cumsum(kept) - 1  # old coarse index -> index among the kept
    labels = renumber[labels]
    counts = counts[kept]
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    distinct = np.array(
        [distinct_rows(X[order[starts[g] : starts[g + 1]]]) for g in range(counts.size)]
    )  # (k1,) int64
    shares = share_out(counts, distinct, n_clusters)
    return Split(
        coarse_centers=coarse_centers[torch.from_numpy(np.flatnonzero(kept))],
        order=order,
        counts=counts,
        starts=starts,
        shares=shares,
        all_distinct=shares == distinct,
        dropped=int((~kept).sum()),
    )


def distinct_rows(rows: np.ndarray) -> int:
    """Distinct rows (bitwise) of ``rows`` (m, d): one sort of m byte strings."""
    rows = np.ascontiguousarray(rows)
    return int(np.unique(rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1])))).size)


def share_out(counts: np.ndarray, distinct: np.ndarray, n_clusters: int) -> np.ndarray:
    """The fine centers of each group (G,) int64, summing to k: :func:`allocate_shares` in
    proportion to the rows ``counts`` (G,), each share capped by the group's ``distinct``
    rows (G,) so that every fine center can own a row; TellDataError if the groups have
    fewer distinct rows than k in all."""
    if int(np.sum(distinct)) < n_clusters:
        raise TellDataError(
            f"X has fewer distinct rows than n_clusters={n_clusters} (at most "
            f"{int(np.sum(distinct))}); use fewer clusters or remove duplicate rows."
        )
    return allocate_shares(counts, n_clusters, distinct)


def fine_tasks(
    X: np.ndarray, split: Split, seed: int, params: dict[str, Any]
) -> Iterator[FineTask]:
    """One :class:`FineTask` per group of ``split``, in group order; each group's rows are
    gathered only when its task is drawn (memory: one group at a time with a lazy map)."""
    for g in range(split.counts.size):
        yield FineTask(
            rows=X[split.rows_of(g)],
            n_centers=int(split.shares[g]),
            all_distinct=bool(split.all_distinct[g]),
            seed=seed + 1 + g,
            params=params,
        )


def fit_two_level(
    X: np.ndarray,
    n_clusters: int,
    *,
    n_coarse: int | None = None,
    coarse_sample_rows: int | None = None,
    seed: int = 0,
    map_fn: Callable[[Callable[[FineTask], np.ndarray], Iterable[FineTask]], Iterable] = map,
    **tell_params: Any,
) -> TwoLevelModel:
    """Fit a two-level model of ``n_clusters`` unit centers to the unit rows of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32, unit L2 norm per row (|norm - 1| <= 1e-3); n >= k.
    n_clusters : int, k >= 2, the fine centers.
    n_coarse : int, optional, k1 in [1, k]: the coarse centers (default ``round(sqrt(k))``).
    coarse_sample_rows : int, optional: rows the coarse level is fitted on (default
        ``COARSE_ROWS_PER_CENTER * k1``), at most n, at least k1.
    seed : int, the coarse fit's seed; group g's fine fit uses ``seed + 1 + g``.
    map_fn : callable like the builtin ``map`` (the default): ``map_fn(fit_fine, tasks)``
        returns the fine centers of every task, in task order. The Ray job passes one that
        runs the fits as Ray tasks.
    **tell_params : :class:`tell.TELL` parameters for both levels (identity encoder; the
        library defaults otherwise). Unknown names are refused.

    Returns
    -------
    TwoLevelModel, on the CPU; ``fit_info`` holds the wall seconds of each step
    (``coarse_fit_s``, ``split_s``, ``fine_fit_s``) and the group sizes.
    """
    X = check_matrix(X)
    _check_unit_rows(X)
    k1 = check_params(X.shape[0], n_clusters, n_coarse, tell_params)
    sample_rows = min(X.shape[0], coarse_sample_rows or COARSE_ROWS_PER_CENTER * k1)
    if sample_rows < k1:
        raise TellConfigError(
            f"coarse_sample_rows must be at least n_coarse={k1}. Got {coarse_sample_rows}."
        )
    started = time.perf_counter()
    coarse = fit_coarse(X, k1, sample_rows, seed, tell_params)
    coarse_done = time.perf_counter()
    split = split_rows(X, coarse, n_clusters)
    split_done = time.perf_counter()
    parts = list(map_fn(fit_fine, fine_tasks(X, split, seed, tell_params)))
    fine_done = time.perf_counter()
    info = {
        "seed": seed,
        "tell_params": tell_params,
        "n_rows": int(X.shape[0]),
        "coarse_sample_rows": sample_rows,
        "coarse_dropped": split.dropped,
        "group_rows_min": int(split.counts.min()),
        "group_rows_max": int(split.counts.max()),
        "share_min": int(split.shares.min()),
        "share_max": int(split.shares.max()),
        "coarse_fit_s": round(coarse_done - started, 3),
        "split_s": round(split_done - coarse_done, 3),
        "fine_fit_s": round(fine_done - split_done, 3),
    }
    return TwoLevelModel.from_groups(split.coarse_centers, parts, info)


def fit_coarse(
    X: np.ndarray, n_coarse: int, sample_rows: int, seed: int, params: dict[str, Any]
) -> torch.Tensor:
    """The coarse centers (k1, d), float32, unit rows: ``TELL(k1)`` on ``sample_rows`` rows
    of ``X`` drawn with ``seed`` (k1 = 1: the normalised mean of the sample)."""
    sample = X
    if sample_rows < X.shape[0]:
        rows = np.random.default_rng(seed).choice(X.shape[0], size=sample_rows, replace=False)
        sample = X[np.sort(rows)]  # (sample_rows, d)
    if n_coarse == 1:
        return torch.from_numpy(_mean_direction(sample)[None])
    model = TELL(n_coarse, random_state=seed, **params).fit(sample)
    return torch.from_numpy(model.cluster_centers_)


def check_params(
    n_rows: int, n_clusters: int, n_coarse: int | None, tell_params: dict[str, Any]
) -> int:
    """Validate the parameters of :func:`fit_two_level` for ``n_rows`` rows; returns k1
    (``n_coarse``, default ``round(sqrt(n_clusters))``)."""
    if not _is_int(n_clusters) or n_clusters < 2:
        raise TellConfigError(
            f"The 'n_clusters' parameter must be an int >= 2. Got {n_clusters!r}."
        )
    check_enough_rows(n_rows, n_clusters)
    k1 = round(math.sqrt(n_clusters)) if n_coarse is None else n_coarse
    if not _is_int(k1) or not 1 <= k1 <= n_clusters:
        raise TellConfigError(
            f"The 'n_coarse' parameter must be an int in [1, n_clusters={n_clusters}]. "
            f"Got {n_coarse!r}."
        )
    valid = set(TELL().get_params()) - set(_RESERVED_PARAMS)
    unknown = sorted(set(tell_params) - valid)
    if unknown:
        raise TellConfigError(
            f"Unknown TELL parameter(s) {unknown} for fit_two_level; valid: {sorted(valid)} "
            f"({list(_RESERVED_PARAMS)} are set by fit_two_level: identity encoder, one seed "
            "per fit)."
        )
    return int(k1)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_unit_rows(X: np.ndarray) -> None:
    """Refuse rows whose L2 norm is not 1 (within :data:`UNIT_TOLERANCE`), chunk by chunk."""
    for start in range(0, X.shape[0], _CHECK_CHUNK_ROWS):
        norms = np.linalg.norm(X[start : start + _CHECK_CHUNK_ROWS], axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)
        if bad.size:
            row = start + int(bad[0])
            raise TellDataError(
                f"X must have unit rows (L2 norm 1 within {UNIT_TOLERANCE}); row {row} has "
                f"norm {norms[bad[0]]:.6g}. Normalise first: "
                "X / np.linalg.norm(X, axis=1, keepdims=True)."
            )


# --------------------------------------------------------------------------- the model


def _nearest_coarse(z: torch.Tensor, coarse_centers: torch.Tensor, n_probe: int) -> torch.Tensor:
    """The ``n_probe`` nearest coarse centers of each unit row, nearest first: (n, n_probe)
    int64. One argmax pass per probe over cache-sized score chunks, each best masked for
    the next (numpy's argmax: several times faster than torch's topk at small n_probe)."""
    if n_probe == 1:
        return nearest(z, coarse_centers)[0][:, None]
    out = np.empty((z.shape[0], n_probe), dtype=np.int64)
    centers_t = coarse_centers.T.contiguous()  # (d, k1)
    chunk = max(1, _PROBE_SCORES // coarse_centers.shape[0])
    for start in range(0, z.shape[0], chunk):
        scores = (z[start : start + chunk] @ centers_t).numpy()  # (m, k1)
        rows = np.arange(scores.shape[0])
        for j in range(n_probe):
            best = np.argmax(scores, axis=1)
            out[start : start + scores.shape[0], j] = best
            scores[rows, best] = -np.inf
    return torch.from_numpy(out)


class TwoLevelAssignment(NamedTuple):
    """Per-row routed assignment and explanation (all tensors of shape (n,), on the CPU).

    labels : int64, the fine center (the nearest one of the routed group).
    coarse_labels : int64, the nearest coarse center (the routed group).
    distance : float32, squared Euclidean distance to the fine center, in [0, 4].
    runner_up : int64, the second-nearest fine center of the group; -1 in a group of one.
    margin : float32, runner-up distance minus distance (>= 0); +inf in a group of one.
    """

    labels: torch.Tensor
    coarse_labels: torch.Tensor
    distance: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor


@dataclass(frozen=True, eq=False)
class TwoLevelModel:
    """k fine unit centers grouped under k1 coarse unit centers.

    Attributes
    ----------
    coarse_centers : Tensor of shape (k1, d), float32, unit rows.
    fine_centers : Tensor of shape (k, d), float32, unit rows, grouped by coarse center:
        group c is ``fine_centers[offsets[c]:offsets[c + 1]]``.
    offsets : Tensor of shape (k1 + 1,), int64: 0, then strictly increasing to k.
    fit_info : dict, JSON-serialisable facts of the fit (see :func:`fit_two_level`).
    """

    coarse_centers: torch.Tensor
    fine_centers: torch.Tensor
    offsets: torch.Tensor
    fit_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_groups(
        cls, coarse_centers: torch.Tensor, fine: Sequence[np.ndarray], fit_info: dict[str, Any]
    ) -> TwoLevelModel:
        """The model of ``coarse_centers`` (k1, d) whose group c holds the fine centers
        ``fine[c]`` (share_c, d), float32 unit rows, share_c >= 1."""
        shares = [len(part) for part in fine]
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(shares)]).astype(np.int64))
        centers = torch.from_numpy(np.concatenate(fine).astype(np.float32, copy=False))
        return cls(coarse_centers.contiguous(), centers.contiguous(), offsets, fit_info)

    @property
    def n_clusters(self) -> int:
        """k, the fine centers."""
        return int(self.fine_centers.shape[0])

    @property
    def n_coarse(self) -> int:
        """k1, the coarse centers."""
        return int(self.coarse_centers.shape[0])

    @property
    def n_features(self) -> int:
        """d, values per row."""
        return int(self.fine_centers.shape[1])

    def coarse_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The coarse center (n,) int64 whose group holds each fine center of ``labels`` (n,)."""
        return torch.searchsorted(self.offsets, labels, right=True) - 1

    def predict(
        self, z: np.ndarray | torch.Tensor, routed: bool = True, n_probe: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine labels, coarse labels), each (n,) int64, of the unit rows ``z`` (n, d).

        ``routed``: the ``n_probe`` nearest coarse centers, then the nearest fine center of
        their groups (k1 + n_probe * k/k1 scores per row); the coarse label is the group
        that center belongs to. Otherwise the nearest of all k fine centers (exact, in
        :func:`tell.assign.nearest`'s bounded chunks) and the coarse center of its group.
        """
        z = self._rows(z)
        if routed:
            result = self._route(z, explain=False, n_probe=self._probes(n_probe))
            return result.labels, result.coarse_labels
        labels, _ = nearest(z, self.fine_centers)
        return labels, self.coarse_of(labels)

    def explain(self, z: np.ndarray | torch.Tensor, n_probe: int = 1) -> TwoLevelAssignment:
        """The routed assignment of the unit rows ``z`` (n, d) with distances and margins;
        the runner-up is the second-nearest fine center of the ``n_probe`` probed groups."""
        return self._route(self._rows(z), explain=True, n_probe=self._probes(n_probe))

    def disagreement(self, z_sample: np.ndarray | torch.Tensor, n_probe: int = 1) -> float:
        """Fraction of the rows of ``z_sample`` (n, d) whose routed fine center (``n_probe``
        groups probed) is not their exact nearest fine center, in [0, 1]. Costs n x k
        scores: pass a sample."""
        routed, _ = self.predict(z_sample, routed=True, n_probe=n_probe)
        exact, _ = self.predict(z_sample, routed=False)
        return float((routed != exact).double().mean()) if routed.numel() else 0.0

    def check_share(self, n_probe: int = 1) -> float:
        """Share of an assignment's rows that may also be searched exactly (all k fine
        centers) for :meth:`routing_check` at :data:`EXACT_CHECK_COST` of the routed search:
        ``EXACT_CHECK_COST * (k1 + n_probe * largest group) / k``, at most 1."""
        largest = int(self.offsets.diff().max())
        routed = self.n_coarse + self._probes(n_probe) * largest  # scores per routed row
        return min(1.0, EXACT_CHECK_COST * routed / self.n_clusters)

    def routing_check(
        self, z: torch.Tensor, labels: torch.Tensor, checked: torch.Tensor
    ) -> torch.Tensor:
        """Whether each routed label differs from the exact nearest fine center, on the
        ``checked`` rows only: (n,) int8, 1 differs, 0 agrees, -1 not checked.

        ``z`` (n, d) unit rows, ``labels`` (n,) int64 their routed fine centers, ``checked``
        (n,) bool the rows to search exactly (a sample: each costs k scores).
        """
        out = torch.full((z.shape[0],), -1, dtype=torch.int8)
        rows = torch.nonzero(checked).squeeze(1)
        if rows.numel():
            exact, _ = nearest(self._rows(z)[rows], self.fine_centers)
            out[rows] = (exact != labels[rows]).to(torch.int8)
        return out

    def _probes(self, n_probe: int) -> int:
        if not _is_int(n_probe) or not 1 <= n_probe <= self.n_coarse:
            raise TellConfigError(
                f"n_probe must be an int in [1, n_coarse={self.n_coarse}]. Got {n_probe!r}."
            )
        return int(n_probe)

    def _rows(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``z`` as a contiguous float32 CPU tensor (n, d), or TellDataError."""
        tensor = z if isinstance(z, torch.Tensor) else torch.from_numpy(check_matrix(z, name="z"))
        if tensor.ndim != 2 or tensor.shape[1] != self.n_features:
            raise TellDataError(
                f"z must have shape (n, {self.n_features}) for this model. "
                f"Got {tuple(tensor.shape)}."
            )
        return tensor.to(torch.float32).contiguous()

    @torch.no_grad()
    def _route(self, z: torch.Tensor, explain: bool, n_probe: int) -> TwoLevelAssignment:
        """Search the groups of each row's ``n_probe`` nearest coarse centers: each (row,
        probe) pair is a query of its group, one GEMM per group; its best (and with
        ``explain`` its second) fine center is a candidate of the row. The answer is the
        row's nearest candidate, the runner-up the next one."""
        n = z.shape[0]
        group = _nearest_coarse(z, self.coarse_centers, n_probe).reshape(-1)  # (n * p,)
        row = torch.arange(n).repeat_interleave(n_probe)  # (n * p,) each pair's row
        width = 2 if explain else 1
        labels = torch.full((n * n_probe, width), -1, dtype=torch.int64)  # candidates
        distance = torch.full((n * n_probe, width), math.inf, dtype=torch.float32)
        bounds = self.offsets.tolist()
        counts = torch.bincount(group, minlength=self.n_coarse).tolist()
        for c, pairs in enumerate(torch.argsort(group, stable=True).split(counts)):
            if pairs.numel() == 0:
                continue
            lo, hi = bounds[c], bounds[c + 1]
            zc, centers = z[pairs if n_probe == 1 else row[pairs]], self.fine_centers[lo:hi]
            if explain and hi - lo >= 2:
                a = assign(zc, centers)
                labels[pairs, 0], distance[pairs, 0] = a.labels + lo, a.distance
                labels[pairs, 1], distance[pairs, 1] = a.runner_up + lo, a.distance + a.margin
            else:
                local, distance[pairs, 0] = nearest(zc, centers)
                labels[pairs, 0] = local + lo
        labels = labels.reshape(n, n_probe * width)  # a row's candidates, nearest group first
        distance = distance.reshape(n, n_probe * width)
        ranked_labels, ranked = labels, distance  # one group: its best, then its second
        if n_probe > 1:
            order = torch.argsort(distance, dim=1, stable=True)[:, :2]  # (n, 2) candidates
            ranked_labels, ranked = labels.gather(1, order), distance.gather(1, order)
        winner, d_best = ranked_labels[:, 0].contiguous(), ranked[:, 0].contiguous()
        runner_up = torch.full((n,), -1, dtype=torch.int64)
        margin = torch.full((n,), math.inf, dtype=torch.float32)
        if explain and ranked.shape[1] > 1:
            found = torch.isfinite(ranked[:, 1])  # a second candidate exists
            runner_up[found] = ranked_labels[found, 1]
            margin[found] = (ranked[:, 1] - d_best)[found]
        return TwoLevelAssignment(winner, self.coarse_of(winner), d_best, runner_up, margin)

    # ------------------------------------------------------------- persistence
    def dump(self) -> tuple[bytes, bytes]:
        """(safetensors, JSON) bytes, named like a TELL checkpoint's (``tell.checkpoint``)."""
        tensors = {
            "coarse_centers": self.coarse_centers.contiguous(),
            "fine_centers": self.fine_centers.contiguous(),
            "offsets": self.offsets.contiguous(),
        }
        meta = {
            "fit_info": self.fit_info,
            "format_version": checkpoint.FORMAT_VERSION,
            "model": MODEL_KIND,
            "n_clusters": self.n_clusters,
            "n_coarse": self.n_coarse,
            "n_features": self.n_features,
        }
        return st_save(tensors), json.dumps(meta, indent=2, sort_keys=True).encode()

    @classmethod
    def restore(cls, weights: bytes, metadata: bytes, source: str = "model") -> TwoLevelModel:
        """Rebuild from :meth:`dump`'s bytes after validating them; TellCheckpointError
        (naming ``source``) for a pickle, corrupt bytes, another kind of model or tensors
        that disagree with the metadata."""
        meta = checkpoint.parse_metadata(metadata, source)
        if meta.get("model") != MODEL_KIND:
            raise TellCheckpointError(
                f"{source}: not a two-level model (metadata 'model' is {meta.get('model')!r}, "
                f"expected {MODEL_KIND!r}); load a TELL model with tell.checkpoint."
            )
        tensors = checkpoint.load_tensors(weights, source)
        try:
            k, k1, d = (int(meta[key]) for key in ("n_clusters", "n_coarse", "n_features"))
        except (KeyError, TypeError, ValueError) as exc:
            raise TellCheckpointError(
                f"{source}: metadata lacks the model's sizes ({exc})."
            ) from None
        expected = {
            "coarse_centers": ((k1, d), torch.float32),
            "fine_centers": ((k, d), torch.float32),
            "offsets": ((k1 + 1,), torch.int64),
        }
        if sorted(tensors) != sorted(expected):
            raise TellCheckpointError(
                f"{source}: tensors {sorted(tensors)} disagree with the metadata "
                f"(expected {sorted(expected)})."
            )
        for name, (shape, dtype) in expected.items():
            if tuple(tensors[name].shape) != shape or tensors[name].dtype != dtype:
                raise TellCheckpointError(
                    f"{source}: tensor {name!r} is {tensors[name].dtype} of shape "
                    f"{tuple(tensors[name].shape)}; the metadata implies {dtype} of shape {shape}."
                )
        offsets = tensors["offsets"]
        if int(offsets[0]) != 0 or int(offsets[-1]) != k or bool((offsets.diff() < 1).any()):
            raise TellCheckpointError(
                f"{source}: 'offsets' must rise strictly from 0 to n_clusters={k} (every coarse "
                "center owns at least one fine center)."
            )
        return cls(
            tensors["coarse_centers"], tensors["fine_centers"], offsets, meta.get("fit_info", {})
        )

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``metadata.json`` into a local directory."""
        checkpoint.write_files(directory, *self.dump())

    @classmethod
    def load(cls, directory: str | Path) -> TwoLevelModel:
        """Read a model written by :meth:`save` from a local directory (never unpickles)."""
        return cls.restore(*checkpoint.read_files(directory), source=str(directory))
