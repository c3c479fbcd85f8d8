"""When the Ray train loop writes a checkpoint (jobs.train.worker.CheckpointCadence, issue 12):
every ``every``-th epoch, not sooner than ``min_interval_s`` after the previous one, and
always after the final epoch. The clock is monkeypatched, so the interval is exact."""

import pytest

from jobs.train import worker
from jobs.train.worker import CheckpointCadence


@pytest.fixture
def clock(monkeypatch):
    """A settable monotonic clock for the worker module: ``clock.now`` seconds."""

    class Clock:
        now = 0.0

    monkeypatch.setattr(worker.time, "monotonic", lambda: Clock.now)
    return Clock


def _run(cadence: CheckpointCadence, clock, epochs: int, epoch_s: float) -> list[int]:
    for epoch in range(epochs):
        clock.now += epoch_s
        cadence.due(epoch, final=epoch == epochs - 1)
    return cadence.epochs


def test_every_fifth_epoch_and_the_final_one(clock):
    assert _run(CheckpointCadence(5, 0), clock, 30, 1.0) == [4, 9, 14, 19, 24, 29]
    assert _run(CheckpointCadence(5, 0), clock, 12, 1.0) == [4, 9, 11]


def test_a_minimum_interval_thins_the_cadence_but_keeps_the_final_one(clock):
    # 12 epochs of 1 s: the cadence alone would write 4, 9 and 11; an hour apart, only 11
    assert _run(CheckpointCadence(5, 3600), clock, 12, 1.0) == [11]
    # epochs of 400 s, at least 1,000 s apart: every 5th epoch comes 2,000 s after the last
    # checkpoint and passes; with every=2, epoch 1 comes 800 s after the start (too soon), so
    # 3 is the first, then 5 is too soon again and the final 7 is written anyway
    assert _run(CheckpointCadence(5, 1000), clock, 15, 400.0) == [4, 9, 14]
    assert _run(CheckpointCadence(2, 1000), clock, 8, 400.0) == [3, 7]


def test_every_below_one_means_every_epoch(clock):
    assert _run(CheckpointCadence(0, 0), clock, 3, 1.0) == [0, 1, 2]
