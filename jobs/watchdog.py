"""A stalled job fails with one line instead of hanging: the watchdog of ``tell train`` and
``tell assign``.

Ray never gives up on work no node can host: a task asking for more CPU than any node has
free, or the rebuild of an object lost with its node, waits forever without a word. So
every stage beats a :class:`Heartbeat` (a 0-CPU actor on the driver's node) as it makes
progress: the scan as files finish, every training rank per batch and while it seeds the
centers, every assignment actor per batch. A thread of the driver (:func:`watch`) checks
the time since the last beat; after ``stall_timeout_s`` seconds without one it interrupts
the driver, which fails with :class:`jobs.runtime.ClusterError`: one line saying how long
nothing happened, what happened last, and what the cluster waits for (its pending
resource demand and what each node has free, as ``ray status`` shows them). Nothing is
committed: the model is published and ``_SUCCESS`` written only after the stage returns.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from jobs import progress
from jobs.runtime import ClusterError

logger = logging.getLogger("tell.watchdog")

BEAT_EVERY_S = 2.0  # a beater sends at most one beat per this interval
_CHECK_EVERY_S = 2.0  # how often the watchdog reads the heartbeat
_EXIT_GRACE_S = 60.0  # after interrupting the driver: hard exit if it is still stuck
DEMAND_SETTLE_S = 10.0  # how long a stalled job waits for its pending demand to be reported


class Heartbeat:
    """The actor the stages beat: when progress was last made, and what it was."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._what, self._sent_at = "the job started", -math.inf

    def beat(self, what: str, sent_at: float = -math.inf) -> None:
        """Progress now; ``what`` becomes the last thing done unless a beat sent later
        (``sent_at``, the sender's ``time.time()``) already arrived: beats from different
        threads of one process may arrive out of order."""
        self._last = time.monotonic()
        if sent_at >= self._sent_at:
            self._what, self._sent_at = what, sent_at

    def since(self) -> tuple[float, str]:
        """(seconds since the last beat, what it said)."""
        return time.monotonic() - self._last, self._what


class Beater:
    """Sends beats to a heartbeat actor, at most one per ``every_s`` seconds (default
    :data:`BEAT_EVERY_S`; fire-and-forget: a beat never waits, and a lost one is harmless).
    ``handle`` None: beats go nowhere (the watchdog is off)."""

    def __init__(self, handle: Any | None, every_s: float = BEAT_EVERY_S) -> None:
        self.handle, self.every_s = handle, every_s
        self._sent = -math.inf

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        if self.handle is None or now - self._sent < self.every_s:
            return
        self._sent = now
        with contextlib.suppress(Exception):  # the actor is gone: the driver is ending
            self.handle.beat.remote(what, time.time())


@contextlib.contextmanager
def beating(beat: Beater, what: str, log_every_s: float = 30.0) -> Iterator[None]:
    """Beat every :data:`BEAT_EVERY_S` from a thread while the block runs (one long call,
    such as k-means++ seeding, is progress too), and log "still WHAT after N s" every
    ``log_every_s`` so a person watching knows it is not stuck."""
    done = threading.Event()
    started = time.monotonic()

    def run() -> None:
        next_log = log_every_s
        while not done.wait(BEAT_EVERY_S):
            beat(what)
            elapsed = time.monotonic() - started
            if elapsed >= next_log:
                logger.info("still %s after %.0f s", what, elapsed)
                next_log += log_every_s

    thread = threading.Thread(target=run, name="tell-beating", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def watch(stall_timeout_s: float, command: str) -> Iterator[Beater]:
    """Run the block under the watchdog; yields the driver's :class:`Beater`, whose
    ``handle`` goes to the workers (``Beater(handle)`` there).

    ``stall_timeout_s`` 0 disables the watchdog (the beater's handle is None). Raises
    :class:`ClusterError` when the block was interrupted for lack of progress.
    """
    if stall_timeout_s <= 0:
        yield Beater(None)
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    handle = (
        ray.remote(Heartbeat)
        .options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote()
    )
    stalled: list[str] = []
    done = threading.Event()

    def check() -> None:
        while not done.wait(_CHECK_EVERY_S):
            try:
                idle_s, last = ray.get(handle.since.remote(), timeout=30)
            except Exception:  # the driver is shutting down
                return
            if idle_s < stall_timeout_s:
                continue
            stalled.append(
                f"No progress for {idle_s:.0f} s (stall_timeout_s={stall_timeout_s:g}; last: "
                f"{last}): {waiting_for()}. Nothing was committed; add resources or lower "
                "workers / cpus_per_worker, then re-run."
            )
            logger.info("%s", stalled[0])  # the log file; the console gets the error line
            _thread.interrupt_main()
            if not done.wait(_EXIT_GRACE_S):  # the driver did not unwind: end it here
                print(f"tell {command}: error: {stalled[0]}", file=progress.console(), flush=True)
                os._exit(2)
            return

    thread = threading.Thread(target=check, name="tell-watchdog", daemon=True)
    thread.start()
    try:
        yield Beater(handle, every_s=0)  # the driver's beats are few: each one counts
    except BaseException:  # the interrupt, or what a library made of it
        if stalled:
            raise ClusterError(stalled[0]) from None
        raise
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(Exception):
            ray.kill(handle)


def waiting_for() -> str:
    """What the cluster waits for, in words: its pending resource demand (tasks, actors,
    placement groups) and what each node has free.

    The demand reaches the GCS with the raylets' resource reports, seconds after a task or
    placement group asks (longer on a loaded machine): while none is reported, it is read
    again every second for up to :data:`DEMAND_SETTLE_S` seconds before the answer is
    "nothing".
    """
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    deadline = time.monotonic() + DEMAND_SETTLE_S
    while True:
        try:
            status = get_cluster_status(ray.get_runtime_context().gcs_address)
        except Exception as exc:  # an older or unreachable GCS: say so, do not fail on it
            return f"the cluster's pending demand is unknown ({type(exc).__name__})"
        demands = status.resource_demands
        reported = demands.ray_task_actor_demand or demands.placement_group_demand
        if reported or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    pending = [
        f"{request.count} x {request.bundle} ({kind})"
        for kind, group in (
            ("tasks or actors", demands.ray_task_actor_demand),
            ("placement group", demands.placement_group_demand),
        )
        for demand in group
        for request in demand.bundles_by_count
    ]
    free = [
        _short(node.available_resources()) for node in [*status.active_nodes, *status.idle_nodes]
    ]
    wanted = ", ".join(pending) if pending else "nothing (no pending resource demand)"
    return f"the cluster waits for {wanted}; free per node: {', '.join(free) or 'no node'}"


def _short(resources: dict[str, float]) -> str:
    keep = {k: round(v, 2) for k, v in sorted(resources.items()) if k in ("CPU", "GPU")}
    return str(keep)
