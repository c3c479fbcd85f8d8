"""The epoch plan (tell/schedule.py): one plan for the estimator and the Ray loop (issue 10),
and the collapse guard (issue 11)."""

import numpy as np
import pytest
import torch

from tell import TELL
from tell.config import TrainConfig
from tell.datasets import make_spherical_blobs
from tell.errors import TellCollapseError
from tell.schedule import (
    CENTERS,
    FEATURES,
    MAX_RESTARTS,
    PRETRAIN,
    PRETRAIN_MAX_EPOCHS,
    PRETRAIN_MIN_EPOCHS,
    SETTLE_EPOCHS,
    EpochSchedule,
    batch_size_for,
    effective_clusters,
    epoch_rows_for,
    init_sample_rows_for,
    pretrain_epochs_for,
    tol_for,
)


def _summary(spread=0.9, sizes=(10, 10, 10, 10), inertia=0.5, moved=0):
    return {
        "feature_spread": spread,
        "cluster_sizes": list(sizes),
        "inertia_per_row": inertia,
        "moved": moved,
        "clu_loss": 0.0,
        "rec_loss": 0.0,
    }


def _dry_run(schedule, summaries=None):
    """Every plan of ``schedule``, recording ``summaries`` (or a healthy one) per epoch."""
    plans = []
    while (plan := schedule.next_epoch()) is not None:
        plans.append(plan)
        schedule.record(summaries(plan) if summaries else _summary())
    return plans


def test_plan_pretrains_then_initialises_alternates_and_settles():
    cfg = TrainConfig(k=4, encoder="mlp", epochs=6, pretrain_epochs=2)
    plans = _dry_run(EpochSchedule(cfg, n_rows=1000, has_decoder=True))
    assert [p.phase for p in plans] == [PRETRAIN] * 2 + [CENTERS, FEATURES] * 3
    assert [p.init_centers for p in plans] == [False, False, True, *[False] * 5]
    # repair after centers epochs, never in the last 3 (SETTLE_EPOCHS) epochs
    assert [p.repair for p in plans] == [False, False, True, False, True, False, False, False]
    assert [p.index for p in plans] == list(range(8))


def test_identity_trains_centers_every_epoch_and_never_pretrains():
    cfg = TrainConfig(k=4, epochs=4, pretrain_epochs=5, tol=0)
    plans = _dry_run(EpochSchedule(cfg, n_rows=1000, has_decoder=False))
    assert [p.phase for p in plans] == [CENTERS] * 4
    assert plans[0].init_centers and not any(p.init_centers for p in plans[1:])


@pytest.mark.parametrize(
    ("encoder", "n_rows", "expected"),
    [
        ("conv", 1_797, 750),  # 8 steps per epoch (the last one partial): 6000 / 8
        ("conv", 500, PRETRAIN_MAX_EPOCHS["conv"]),  # 2 steps per epoch: capped
        ("mlp", 1_797, PRETRAIN_MAX_EPOCHS["mlp"]),  # the mlp's cap of passes
        ("mlp", 70_000, 22),  # 274 steps per epoch: 6000 / 274 -> 22 epochs
        ("conv", 70_000, 22),
        ("mlp", 10_000_000, PRETRAIN_MIN_EPOCHS),  # huge: the floor
    ],
)
def test_automatic_pretraining_follows_optimizer_steps(encoder, n_rows, expected):
    cfg = TrainConfig(k=4, encoder=encoder, image_shape=(8, 8, 1) if encoder == "conv" else None)
    assert pretrain_epochs_for(cfg, n_rows, has_decoder=True) == expected
    assert pretrain_epochs_for(cfg, n_rows, has_decoder=False) == 0
    explicit = TrainConfig(k=4, encoder="mlp", pretrain_epochs=3)
    assert pretrain_epochs_for(explicit, n_rows, has_decoder=True) == 3


def test_a_resumed_schedule_continues_the_same_plan():
    cfg = TrainConfig(k=4, encoder="mlp", epochs=6, pretrain_epochs=2)
    whole = EpochSchedule(cfg, 1000, True)
    plans = _dry_run(whole)
    for cut in range(len(plans)):
        resumed = EpochSchedule(cfg, 1000, True, history=whole.history[:cut])
        assert _dry_run(resumed) == plans[cut:]


def test_tol_stops_when_inertia_settles_and_no_center_moved():
    cfg = TrainConfig(k=4, epochs=20, tol=0.01, repair=False)
    inertias = iter([0.9, 0.6, 0.5, 0.499, 0.4])
    plans = _dry_run(EpochSchedule(cfg, 1000, False), lambda p: _summary(inertia=next(inertias)))
    assert len(plans) == 4  # 0.5 -> 0.499 is a 0.2% change


def test_convergence_with_moved_centers_settles_without_repair_then_stops():
    """The automatic stop (identity: tol 0.003): an epoch that still moved centers is
    followed by SETTLE_EPOCHS epochs without repair; a resumed run replays the same plan."""
    cfg = TrainConfig(k=4, epochs=20)
    inertias = [0.9, 0.6, 0.5, 0.4995, 0.45, 0.449, 0.44, 0.43, 0.42]
    moved = [5, 3, 2, 1, 0, 0, 0, 0, 0]
    summaries = lambda p: _summary(inertia=inertias[p.index], moved=moved[p.index])  # noqa: E731
    schedule = EpochSchedule(cfg, 1000, False)
    plans = _dry_run(schedule, summaries)
    assert len(plans) == 4 + SETTLE_EPOCHS  # converged at epoch 3 (0.1%), one center moved
    assert [p.repair for p in plans] == [True] * 4 + [False] * SETTLE_EPOCHS
    assert schedule.total_epochs == len(plans) and schedule.history[3]["converged"]
    assert schedule.stop_reason == "converged"
    replayed = EpochSchedule(cfg, 1000, False, history=schedule.history[:5])
    assert [p.repair for p in _dry_run(replayed, summaries)] == [False] * (SETTLE_EPOCHS - 1)
    # a learned encoder runs its epochs: its features move, so inertia says nothing of the centers
    assert tol_for(TrainConfig(k=4, encoder="mlp")) == 0.0 and tol_for(cfg) == 0.003
    assert tol_for(TrainConfig(k=4, tol=0.0)) == 0.0


def test_automatic_batch_and_sample_follow_k():
    """identity: about 2 rows per center per step, 256 to 2048 rows; learned encoders:
    their optimizer's 256. The seeding sample: 64 rows per center; an identity epoch: at
    most 256 rows per center."""
    sizes = {k: batch_size_for(TrainConfig(k=k)) for k in (2, 128, 512, 1024, 65536)}
    assert sizes == {2: 256, 128: 256, 512: 1024, 1024: 2048, 65536: 2048}
    assert epoch_rows_for(TrainConfig(k=1000), 10**6) == 256_000
    assert epoch_rows_for(TrainConfig(k=100), 10**6) == 65_536  # the stop needs a big epoch
    assert epoch_rows_for(TrainConfig(k=100, encoder="mlp"), 10**6) == 10**6
    assert epoch_rows_for(TrainConfig(k=100, epoch_rows=5000), 3000) == 3000
    assert batch_size_for(TrainConfig(k=4096, encoder="mlp")) == 256
    assert batch_size_for(TrainConfig(k=4096, batch_size=100)) == 100
    assert init_sample_rows_for(TrainConfig(k=10), 10**9) == 10_000
    assert init_sample_rows_for(TrainConfig(k=4096), 10**9) == 64 * 4096
    assert init_sample_rows_for(TrainConfig(k=4096), 50_000) == 50_000
    assert init_sample_rows_for(TrainConfig(k=10, init_sample_rows=500), 300) == 300


def test_guard_restarts_with_a_smaller_weight_then_refuses():
    cfg = TrainConfig(k=4, encoder="mlp", epochs=4, pretrain_epochs=1, cluster_weight=1.0)
    schedule = EpochSchedule(cfg, 1000, True)

    def collapsing(plan):  # healthy at each attempt's first epoch, collapsed at its second
        return _summary(spread=0.9 if plan.init_centers else 0.01)

    plans = _dry_run(schedule, collapsing)
    starts = [p for p in plans if p.init_centers]
    assert [p.restart for p in starts] == [False] + [True] * MAX_RESTARTS
    assert [p.cluster_weight for p in starts] == pytest.approx([1.0, 0.1, 0.01])
    assert schedule.stop_reason == "collapsed" and schedule.restarts == MAX_RESTARTS
    assert "collapsed 3 times" in schedule.collapse_message()
    assert schedule.outcome()["message"] == schedule.collapse_message()


def test_guard_watches_the_sizes_too_and_ignores_identity():
    cfg = TrainConfig(k=4, encoder="mlp", epochs=4, pretrain_epochs=0)
    one_cluster = lambda p: _summary(sizes=(10, 10, 10, 10) if p.init_centers else (40, 0, 0, 0))  # noqa: E731
    schedule = EpochSchedule(cfg, 1000, True)
    _dry_run(schedule, one_cluster)
    assert schedule.restarts == MAX_RESTARTS and schedule.stop_reason == "collapsed"
    identity = EpochSchedule(TrainConfig(k=4, epochs=4, tol=0), 1000, False)
    _dry_run(identity, one_cluster)
    assert identity.restarts == 0 and identity.stop_reason is None
    assert effective_clusters([5, 5]) == pytest.approx(2.0)
    assert effective_clusters([10, 0]) == pytest.approx(1.0)


def test_estimator_follows_the_schedule():
    """The estimator's history is the schedule's plan, epoch by epoch (the Ray loop's
    checkpoint history is checked against the same plan in tests/integration/test_train.py)."""
    data = make_spherical_blobs(200, 8, 3, seed=0)
    est = TELL(3, encoder="mlp", hidden_dims=(16,), pretrain_epochs=2, max_iter=5,
               random_state=0).fit(data.X)  # fmt: skip
    planned = _dry_run(EpochSchedule(est._config(), 200, True))
    assert [(h["epoch"], h["phase"], h["repair"], h["cluster_weight"]) for h in est.history_] == [
        (p.index, p.phase, p.repair, p.cluster_weight) for p in planned
    ]
    assert est.outcome_["stop_reason"] == "completed" and est.outcome_["pretrain_epochs"] == 2


def _collapsing_fit(collapse_guard):
    """No pretraining, a huge cluster weight and plain SGD: the features fall into one spot."""
    torch.set_num_threads(1)
    data = make_spherical_blobs(300, 16, 4, seed=0)
    return TELL(4, encoder="mlp", hidden_dims=(32,), pretrain_epochs=0, max_iter=6,
                batch_size=32, optimizer="sgd", lr=0.1, cluster_weight=1e4, repair=False,
                collapse_guard=collapse_guard, random_state=1).fit(data.X)  # fmt: skip


def test_without_the_guard_this_configuration_collapses():
    est = _collapsing_fit(collapse_guard=False)
    last = est.history_[-1]
    assert last["feature_spread"] < 0.1 and last["effective_clusters"] < 1.5
    assert np.unique(est.labels_).size <= 2


def test_the_guard_recovers_or_refuses_with_its_message():
    try:
        est = _collapsing_fit(collapse_guard=True)
    except TellCollapseError as error:
        assert "collapsed" in str(error) and "pretrain_epochs" in str(error)
        return
    assert est.outcome_["restarts"] >= 1 and est.outcome_["guard_events"]
    reference = est.outcome_["guard_events"][-1]["reference"]["feature_spread"]
    assert est.history_[-1]["feature_spread"] >= 0.25 * reference
