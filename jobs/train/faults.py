"""Fault injection for tests: kill one training worker once, mid-epoch. Off by default.

Set ``TELL_FAULT_INJECT=kill:rank=R:epoch=E:step=S:marker=PATH`` in the driver's
environment: rank R exits abruptly (``os._exit``) after S steps of epoch E, the first time
only (the marker file records that it happened), exactly like a lost worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from tell.errors import TellConfigError


def parse_fault(spec: str) -> dict[str, str]:
    kind, *fields = spec.split(":")
    values = dict(f.split("=", 1) for f in fields if "=" in f)
    if kind != "kill" or not {"rank", "epoch", "step", "marker"} <= set(values):
        raise TellConfigError(
            "TELL_FAULT_INJECT must look like kill:rank=R:epoch=E:step=S:marker=PATH. "
            f"Got {spec!r}."
        )
    return values


def maybe_inject_fault(
    batches: Iterator[torch.Tensor], spec: str | None, *, rank: int, epoch: int
) -> Iterator[torch.Tensor]:
    """Pass ``batches`` through, dying at the configured step if this is the chosen rank."""
    if not spec:
        yield from batches
        return
    fault = parse_fault(spec)
    armed = (
        int(fault["rank"]) == rank
        and int(fault["epoch"]) == epoch
        and not os.path.exists(fault["marker"])
    )
    for step, batch in enumerate(batches):
        if armed and step == int(fault["step"]):
            with open(fault["marker"], "w") as f:
                f.write(f"killed rank {rank} at epoch {epoch} step {step}\n")
            os._exit(17)
        yield batch
