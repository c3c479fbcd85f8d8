"""Fault injection and instrumentation for tests, set in the driver's environment as
``TELL_FAULT_INJECT``. Off by default.

- ``kill:rank=R:epoch=E:step=S:marker=PATH``: rank R exits abruptly (``os._exit``) after S
  steps of epoch E, the first time only (the marker file records that it happened), exactly
  like a lost worker.
- ``mark:epoch=E:step=S:marker=PATH[:delay_s=T]``: at step S of epoch E every rank R
  writes the id of its Ray node to ``PATH-rank-R`` (training goes on), so a test knows
  training is under way and where each rank runs, e.g. to remove a node; with ``delay_s``
  every step of that epoch takes T seconds longer, so the fault lands mid-training (the
  first time only: a resumed run, which finds the marker, trains at full speed).
- ``record:dir=PATH``: every rank writes the first feature of every row it trained on to
  ``PATH/epoch-E-rank-R-attempt-N.npy`` at the end of each epoch (which rows each epoch saw).
- ``fine:marker=PATH[:delay_s=T]`` (``--levels 2``): each fine-fit partition task P writes
  the id of its Ray node to ``PATH-part-P`` as it starts, then waits T seconds, the first
  time only (a retried task finds the marker and runs at once), so a test can remove a node
  while a fine fit runs on it.
- ``assign:delay_s=T``: every batch an assignment actor scores takes T seconds longer, so a
  test can remove a node while the actors hold their nodes and parts are being written.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from tell.errors import TellConfigError

if TYPE_CHECKING:
    import torch

ENV = "TELL_FAULT_INJECT"  # the variable the drivers read the spec from

_REQUIRED = {
    "kill": {"rank", "epoch", "step", "marker"},
    "mark": {"epoch", "step", "marker"},
    "record": {"dir"},
    "fine": {"marker"},
    "assign": {"delay_s"},
}
FINE = "fine"  # the two-level job's fault
ASSIGN = "assign"  # the assignment actors'; the others are the train loop's


def spec_from_env() -> str | None:
    """The fault spec this driver was started with (``$TELL_FAULT_INJECT``; None: none). A
    driver reads it and hands it to its workers, whose environment may differ."""
    return os.environ.get(ENV)


def parse_fault(spec: str) -> tuple[str, dict[str, str]]:
    """(kind, fields) of a spec; refuses one that is not one of the module's forms."""
    kind, *fields = spec.split(":")
    values = dict(f.split("=", 1) for f in fields if "=" in f)
    if kind not in _REQUIRED or not _REQUIRED[kind] <= set(values):
        raise TellConfigError(
            f"{ENV} must look like kill:rank=R:epoch=E:step=S:marker=PATH, "
            "mark:epoch=E:step=S:marker=PATH[:delay_s=T], record:dir=PATH, "
            f"fine:marker=PATH[:delay_s=T] or assign:delay_s=T. Got {spec!r}."
        )
    return kind, values


def maybe_inject_fault(
    batches: Iterator[torch.Tensor], spec: str | None, *, rank: int, epoch: int
) -> Iterator[torch.Tensor]:
    """Pass ``batches`` through, applying the configured fault on this rank and epoch."""
    kind, fault = parse_fault(spec) if spec else (None, {})
    if kind in (None, FINE, ASSIGN):  # no fault, or another stage's (not the train loop's)
        yield from batches
        return
    if kind == "record":
        yield from _recorded(batches, fault["dir"], rank, epoch)
        return
    marker = fault["marker"] if kind == "kill" else f"{fault['marker']}-rank-{rank}"
    armed = (
        (kind == "mark" or int(fault["rank"]) == rank)
        and int(fault["epoch"]) == epoch
        and not os.path.exists(marker)
    )
    delay_s = float(fault.get("delay_s", 0)) if armed else 0.0
    for step, batch in enumerate(batches):
        if armed and step == int(fault["step"]):
            if kind == "kill":
                with open(marker, "w") as f:
                    f.write(f"killed rank {rank} at epoch {epoch} step {step}\n")
                os._exit(17)
            _write_node_id(marker)
        if delay_s:
            time.sleep(delay_s)
        yield batch


def fine_fault(spec: str | None) -> str | None:
    """``spec`` when it is the two-level job's ``fine`` fault, else None."""
    return spec if spec and parse_fault(spec)[0] == FINE else None


def hold_fine_fit(spec: str, part: int) -> None:
    """The ``fine`` fault ``spec`` in the task fitting partition ``part``: mark its node and
    wait, the first time only (a retried task finds the marker and runs at once)."""
    fault = parse_fault(spec)[1]
    marker = f"{fault['marker']}-part-{part}"
    if not os.path.exists(marker):
        _write_node_id(marker)
        time.sleep(float(fault.get("delay_s", 0)))


def assign_delay_s(spec: str | None) -> float:
    """Seconds each assignment batch waits under the ``assign`` fault ``spec`` (0: none)."""
    if not spec:
        return 0.0
    kind, fault = parse_fault(spec)
    return float(fault["delay_s"]) if kind == ASSIGN else 0.0


def _write_node_id(path: str) -> None:
    import ray

    with open(path + ".tmp", "w") as f:
        f.write(ray.get_runtime_context().get_node_id())
    os.replace(path + ".tmp", path)  # readers never see a half-written id


def _recorded(
    batches: Iterator[torch.Tensor], directory: str, rank: int, epoch: int
) -> Iterator[torch.Tensor]:
    firsts = []
    for batch in batches:
        firsts.append(batch[:, 0].detach().cpu().numpy().copy())
        yield batch
    name = f"epoch-{epoch}-rank-{rank}-attempt-{uuid.uuid4().hex[:8]}.npy"
    values = np.concatenate(firsts) if firsts else np.zeros(0, np.float32)
    np.save(os.path.join(directory, name), values)
