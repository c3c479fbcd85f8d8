"""The epoch plan of a TELL run: the one home of "what happens in epoch e".

Both the in-memory estimator (:class:`tell.TELL`) and the Ray train loop
(``jobs/train``) drive their epochs with :class:`EpochSchedule`, so they follow the same
plan for the same config:

1. **pretrain** (models with a decoder): ``pretrain_epochs`` autoencoder-only epochs;
2. **initialise the centers** on the encoded sample, right before the first clustering epoch;
3. **alternate** (the reference code's schedule): even clustering epochs train the centers
   on detached features, odd ones pull the features toward frozen centers; the identity
   encoder has no features to train, so every epoch trains centers;
4. **repair window**: dead and redundant centers are moved after every centers epoch but
   those of the last :data:`SETTLE_EPOCHS` epochs, which let moved centers settle;
5. **stop** after ``epochs`` clustering epochs, or earlier when the inertia of two
   consecutive centers epochs changed by at most :func:`tol_for` (relative): the run then
   stops at once if that epoch moved no center, else after :data:`SETTLE_EPOCHS` more
   epochs without repair; or when the collapse guard gives up
   (:attr:`EpochSchedule.stop_reason`).

**Automatic settings** (a config field left at None; docs/DEFAULTS.md has the
measurements): :func:`batch_size_for` (the identity encoder's batch follows k: about two
rows per center per step, 256 to 2048), :func:`epoch_rows_for` (the identity encoder's
epoch is 256 rows per center, at least 65,536, a fresh random subset each epoch),
:func:`tol_for` (the identity encoder stops when an epoch improves the inertia by at most
:data:`AUTO_TOL`) and
:func:`init_sample_rows_for` (the seeding sample follows k, ``tell.init.sample_rows_for``).

The **collapse guard** watches two label-free signals of every clustering epoch of a model
that learns its features (see :func:`collapse_signals`): the spread of the unit features
(``1 - ||mean z||^2``: 0 when every row sits in one spot of the sphere) and the effective
number of clusters (``exp`` of the entropy of the cluster sizes). When either falls to or
below :data:`COLLAPSE_FRACTION` of its value in the first clustering epoch, the run restarts its
clustering from the pretrained autoencoder with a ten times smaller cluster weight, at most
:data:`MAX_RESTARTS` times; after that it stops with ``stop_reason == "collapsed"`` and the
caller refuses the model (the estimator raises, the job fails with one line).

The schedule is a pure function of the config and the epoch summaries recorded so far, so a
resumed Ray run rebuilds it from the history stored in its checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tell.init import sample_rows_for

if TYPE_CHECKING:
    from tell.config import TrainConfig

PRETRAIN = "pretrain"  # phase: autoencoder only, centers untouched
CENTERS = "centers"  # phase: L_clu trains the centers only (features detached)
FEATURES = "features"  # phase: centers frozen, L_clu pulls features toward them

SETTLE_EPOCHS = 3
COLLAPSE_FRACTION = 0.25
MAX_RESTARTS = 2
RESTART_WEIGHT_FACTOR = 0.1

# Automatic pretraining length: the same optimizer steps whatever the size of the set (an
# autoencoder converges in steps, not epochs): MNIST 70k (274 steps per epoch) 22 epochs,
# digits (8 steps per epoch) 750 for conv. The most passes differ by encoder: the conv
# autoencoder (76k weights on digits) kept improving its features up to the 6,000 steps
# (digits, 5 seeds: 100 epochs 0.808 mean ACC, 300 0.839, 750 0.877), the mlp one (2.6M
# weights on digits' 64 inputs) memorises a small set passed over too often (100 epochs
# 0.892 / 0.884 on seeds 0 / 1, 750: 0.874 / 0.793), so it keeps the cap of 100 passes it
# was measured with. The floor keeps very large sets at 10 passes. docs/DEFAULTS.md has the
# measurements.
PRETRAIN_STEPS = 6000
PRETRAIN_MIN_EPOCHS = 10
PRETRAIN_MAX_EPOCHS = {"mlp": 100, "conv": 1000}

# Automatic batch size. A learned encoder's batch is its optimizer's setting (Adam at 1e-3
# was measured with 256, docs/DEFAULTS.md). The identity encoder has no optimizer: its
# batch only sets how many rows each center's normalised step averages and how many steps
# an epoch takes. Measured (200k x 64, 1 thread, bench/scale_k.py): two rows per center per
# step converge in the fewest epochs at k <= 1024 (k=256: 4 epochs at batch 512, 8 at
# 2048); with few rows per center a larger batch gives each center fewer updates per epoch
# (k=4096, 10 epochs: batch 2048 1.0121x the floor, 4096 1.0157x, 8192 1.0244x), and below
# 2048 the per-step work on all k centers grows (k=16384: batch 512 took 1.19x the time of
# 2048 for the same inertia).
LEARNED_BATCH_SIZE = 256
ROWS_PER_CENTER_STEP = 2
MIN_BATCH_SIZE = 256
MAX_BATCH_SIZE = 2048

# Automatic epoch length (identity encoder): with many rows per center an epoch over all of
# them repeats what the centers already know (each center's step is an exponential average
# that forgets after ~10 updates). faiss trains on at most 256 rows per center for the same
# reason. Measured at 1M x 128, k=1024 (977 rows per center): 6 full epochs took 2.4x
# faiss's time at 1.0005x the floor (bench-results/scale-k.json, before this rule).
EPOCH_ROWS_PER_CENTER = 256
# ... but never fewer rows than this: the stop rule compares the inertia of two epochs, and
# the mean over m rows has a sampling error of about CV / sqrt(m) (CV ~0.3-0.5 for squared
# distances): 0.1-0.2% at 65,536 rows, below AUTO_TOL. (k=10 would otherwise train epochs of
# 2,560 rows, 1-2% apart by chance.)
MIN_EPOCH_ROWS = 65_536

# Automatic stopping (identity encoder): an epoch that improves the inertia by at most this
# fraction ends the run (after SETTLE_EPOCHS more if it moved centers). The per-epoch gains
# shrink roughly geometrically (by 0.6-0.8 from one epoch to the next in bench/scale_k.py), so
# what the stop leaves is a few times AUTO_TOL. Measured at k=4096 on 200k x 64: tol 0.002
# ran 17 epochs to 1.0044x the floor, 0.003 14 epochs to 1.0064x (17% less time), 0.005 12
# to 1.0084x. A learned encoder's features move every epoch, so its inertia change measures
# the representation learning, not the centers: it runs its ``epochs``.
AUTO_TOL = 3e-3


def phase_for_epoch(epoch: int, has_decoder: bool) -> str:
    """Phase of clustering epoch ``epoch`` (0-based, pretraining not counted).

    The reference code's alternation: even epochs train centers, odd epochs features. A
    model without an autoencoder (identity) has no features to train: always centers.
    """
    return CENTERS if (not has_decoder or epoch % 2 == 0) else FEATURES


def batch_size_for(cfg: TrainConfig) -> int:
    """Rows per optimizer step (global batch): ``cfg.batch_size`` when set; otherwise (None)
    :data:`LEARNED_BATCH_SIZE` for mlp and conv, and for identity ``ROWS_PER_CENTER_STEP * k``
    clipped to [:data:`MIN_BATCH_SIZE`, :data:`MAX_BATCH_SIZE`].

    >>> from tell.config import TrainConfig
    >>> [batch_size_for(TrainConfig(k=k)) for k in (10, 256, 1024, 4096, 65536)]
    [256, 512, 2048, 2048, 2048]
    """
    if cfg.batch_size is not None:
        return cfg.batch_size
    if cfg.encoder != "identity":
        return LEARNED_BATCH_SIZE
    return min(max(ROWS_PER_CENTER_STEP * cfg.k, MIN_BATCH_SIZE), MAX_BATCH_SIZE)


def epoch_rows_for(cfg: TrainConfig, n_rows: int) -> int:
    """Rows one clustering epoch trains on: ``cfg.epoch_rows`` when set; otherwise (None)
    all ``n_rows`` for mlp and conv (their epochs learn the representation), and for identity
    at most :data:`EPOCH_ROWS_PER_CENTER` x k rows (faiss's training sample per center) but
    at least :data:`MIN_EPOCH_ROWS`, a fresh random subset each epoch. Never more than
    ``n_rows``.

    >>> from tell.config import TrainConfig
    >>> [epoch_rows_for(TrainConfig(k=k), 10**6) for k in (10, 256, 1024, 4096)]
    [65536, 65536, 262144, 1000000]
    """
    if cfg.epoch_rows is not None:
        return min(cfg.epoch_rows, n_rows)
    if cfg.encoder != "identity":
        return n_rows
    return min(n_rows, max(EPOCH_ROWS_PER_CENTER * cfg.k, MIN_EPOCH_ROWS))


def tol_for(cfg: TrainConfig) -> float:
    """Relative inertia change that ends the run: ``cfg.tol`` when set; otherwise (None)
    :data:`AUTO_TOL` for identity and 0 (never stop early) for learned encoders."""
    if cfg.tol is not None:
        return cfg.tol
    return AUTO_TOL if cfg.encoder == "identity" else 0.0


def init_sample_rows_for(cfg: TrainConfig, n_rows: int) -> int:
    """Rows of the seeding sample: ``cfg.init_sample_rows`` when set (at most ``n_rows``);
    otherwise (None) :func:`tell.init.sample_rows_for` (k, n_rows), which follows k."""
    if cfg.init_sample_rows is not None:
        return min(cfg.init_sample_rows, n_rows)
    return sample_rows_for(cfg.k, n_rows)


def pretrain_epochs_for(cfg: TrainConfig, n_rows: int, has_decoder: bool) -> int:
    """Autoencoder-only epochs before the centers start.

    ``cfg.pretrain_epochs`` when set; otherwise (None) ``PRETRAIN_STEPS`` optimizer steps
    of :func:`batch_size_for` rows over ``n_rows`` rows, clipped to
    [``PRETRAIN_MIN_EPOCHS``, ``PRETRAIN_MAX_EPOCHS[cfg.encoder]``]. Zero for a model
    without a decoder.

    >>> from tell.config import TrainConfig
    >>> mlp, conv = TrainConfig(k=10, encoder="mlp"), TrainConfig(k=10, encoder="conv",
    ...                                                          image_shape=(8, 8, 1))
    >>> pretrain_epochs_for(mlp, 1_797, True), pretrain_epochs_for(conv, 1_797, True)
    (100, 750)
    """
    if not has_decoder:
        return 0
    if cfg.pretrain_epochs is not None:
        return cfg.pretrain_epochs
    steps_per_epoch = max(1, math.ceil(n_rows / batch_size_for(cfg)))
    wanted = math.ceil(PRETRAIN_STEPS / steps_per_epoch)
    return min(max(wanted, PRETRAIN_MIN_EPOCHS), PRETRAIN_MAX_EPOCHS[cfg.encoder])


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch does.

    Attributes
    ----------
    index : position in the run, pretraining included (the checkpoint's ``epoch``).
    phase : PRETRAIN, CENTERS or FEATURES.
    init_centers : initialise the centers on the encoded sample before this epoch.
    restart : with ``init_centers``: the collapse guard restarts the clustering; restore
        the autoencoder saved before the first clustering epoch, then initialise.
    repair : move dead and redundant centers after this epoch (CENTERS epochs only).
    cluster_weight : lambda, the weight of L_clu in this epoch.
    """

    index: int
    phase: str
    init_centers: bool
    restart: bool
    repair: bool
    cluster_weight: float


def effective_clusters(cluster_sizes: list[int] | list[float]) -> float:
    """``exp`` of the entropy of the size distribution: k for equal sizes, 1 for one cluster."""
    total = float(sum(cluster_sizes))
    if total <= 0:
        return 0.0
    entropy = -sum((c / total) * math.log(c / total) for c in cluster_sizes if c > 0)
    return math.exp(entropy)


def collapse_signals(summary: dict[str, Any]) -> dict[str, float]:
    """The guard's label-free signals of one epoch summary (see the module docstring)."""
    return {
        "feature_spread": float(summary["feature_spread"]),
        "effective_clusters": effective_clusters(summary["cluster_sizes"]),
    }


class EpochSchedule:
    """The plan of one run, advanced epoch by epoch.

    Call :meth:`next_epoch` for the next :class:`EpochPlan` (None when the run is over),
    train that epoch, then :meth:`record` its summary (what :func:`tell.engine.run_epoch`
    returns). ``history`` replays summaries already recorded (a resumed run).

    Parameters
    ----------
    cfg : the run's config.
    n_rows : rows per epoch (sizes the automatic pretraining).
    has_decoder : whether the model learns its features (mlp, conv).
    history : summaries recorded by an earlier part of this run, in order.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        n_rows: int,
        has_decoder: bool,
        history: list[dict[str, Any]] | tuple = (),
    ) -> None:
        self.cfg = cfg
        self.has_decoder = has_decoder
        self.pretrain_epochs = pretrain_epochs_for(cfg, n_rows, has_decoder)
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.restarts = 0
        self.guard_events: list[dict[str, Any]] = []
        self._cluster_weight = cfg.cluster_weight
        self._clustering_start = self.pretrain_epochs  # index of the current attempt's epoch 0
        self._end = cfg.epochs  # clustering epochs of this attempt (convergence shortens it)
        self._settling = False  # converged; the last moved centers settle until _end
        self._reference: dict[str, float] | None = None
        self._restart_pending = False
        for summary in history:
            self.record(summary)

    # ------------------------------------------------------------------ plan
    def next_epoch(self) -> EpochPlan | None:
        """The plan of the next epoch, or None when the run is over."""
        if self.stop_reason is not None:
            return None
        index = len(self.history)
        if index < self.pretrain_epochs:
            return EpochPlan(index, PRETRAIN, False, False, False, self._cluster_weight)
        epoch = index - self._clustering_start  # clustering epoch of this attempt
        if epoch >= self._end:
            return None
        phase = phase_for_epoch(epoch, self.has_decoder)
        repair = self.cfg.repair and phase == CENTERS and epoch < self._end - SETTLE_EPOCHS
        return EpochPlan(
            index=index,
            phase=phase,
            init_centers=epoch == 0,
            restart=epoch == 0 and self.restarts > 0,
            repair=repair,
            cluster_weight=self._cluster_weight,
        )

    @property
    def total_epochs(self) -> int:
        """Epochs of the run as planned now (restarts add epochs; early stops remove some)."""
        return self._clustering_start + self._end

    # ---------------------------------------------------------------- record
    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Append an epoch's summary (annotated with the plan's fields and the guard's
        signals) to :attr:`history`; decide restarts and stops. Returns the annotated copy."""
        plan = self.next_epoch()
        if plan is None:
            raise RuntimeError("record() called after the schedule ended")
        entry = {
            **summary,
            "epoch": plan.index,
            "phase": plan.phase,
            "repair": plan.repair,
            "cluster_weight": plan.cluster_weight,
        }
        if plan.phase != PRETRAIN and "cluster_sizes" in summary:
            entry.update(collapse_signals(summary))
        self.history.append(entry)
        if plan.phase == PRETRAIN:
            return entry
        if self.has_decoder and self.cfg.collapse_guard and self._collapsed(plan, entry):
            return entry
        epoch = plan.index - self._clustering_start
        if self._settling and epoch + 1 >= self._end:
            self.stop_reason = "converged"  # the last settling epoch after convergence
        elif self._converged(plan, entry):
            if entry.get("moved", 0) == 0:
                self.stop_reason = "converged"
            else:  # centers just moved: let them settle, without repair, then stop
                self._end = min(self._end, epoch + 1 + SETTLE_EPOCHS)
                self._settling = True
            entry["converged"] = True
        return entry

    def _collapsed(self, plan: EpochPlan, entry: dict[str, Any]) -> bool:
        signals = {k: entry[k] for k in ("feature_spread", "effective_clusters")}
        if plan.init_centers:
            self._reference = signals
            return False
        assert self._reference is not None
        low = {k: v for k, v in signals.items() if v <= COLLAPSE_FRACTION * self._reference[k]}
        if not low:
            return False
        event = {
            "epoch": plan.index,
            "signals": signals,
            "reference": dict(self._reference),
            "cluster_weight": plan.cluster_weight,
        }
        self.guard_events.append(event)
        if self.restarts >= MAX_RESTARTS:
            self.stop_reason = "collapsed"
            return True
        self.restarts += 1
        self._cluster_weight = plan.cluster_weight * RESTART_WEIGHT_FACTOR
        self._clustering_start = len(self.history)
        self._end, self._settling = self.cfg.epochs, False
        entry["guard"] = "restart"
        return True

    def _converged(self, plan: EpochPlan, entry: dict[str, Any]) -> bool:
        """Whether this centers epoch changed the inertia by at most :func:`tol_for`
        (relative to the previous centers epoch of this attempt), for the first time."""
        tol = tol_for(self.cfg)
        if tol <= 0 or plan.phase != CENTERS or self._settling:
            return False
        previous = [h for h in self.history[self._clustering_start : -1] if h["phase"] == CENTERS]
        if not previous:
            return False
        before, now = previous[-1]["inertia_per_row"], entry["inertia_per_row"]
        return abs(before - now) <= tol * max(before, 1e-12)

    # --------------------------------------------------------------- outcome
    def collapse_message(self) -> str:
        """One line for a run the guard stopped (``stop_reason == "collapsed"``)."""
        last = self.guard_events[-1]
        s, r = last["signals"], last["reference"]
        return (
            f"The {self.cfg.encoder} encoder's features collapsed {len(self.guard_events)} "
            f"times (feature spread {s['feature_spread']:.3g} vs {r['feature_spread']:.3g} at "
            f"the first clustering epoch, effective clusters {s['effective_clusters']:.3g} vs "
            f"{r['effective_clusters']:.3g}), even with cluster_weight "
            f"{last['cluster_weight']:.3g}. Try more pretrain_epochs, a smaller "
            "cluster_weight, or encoder: identity."
        )

    def outcome(self) -> dict[str, Any]:
        """What the guard did, for the model metadata: restarts, events, stop reason."""
        outcome = {
            "stop_reason": self.stop_reason or "completed",
            "restarts": self.restarts,
            "guard_events": self.guard_events,
            "pretrain_epochs": self.pretrain_epochs,
        }
        if self.stop_reason == "collapsed":
            outcome["message"] = self.collapse_message()
        return outcome


__all__ = [
    "CENTERS",
    "FEATURES",
    "PRETRAIN",
    "EpochPlan",
    "EpochSchedule",
    "batch_size_for",
    "collapse_signals",
    "effective_clusters",
    "epoch_rows_for",
    "init_sample_rows_for",
    "phase_for_epoch",
    "pretrain_epochs_for",
    "tol_for",
]
