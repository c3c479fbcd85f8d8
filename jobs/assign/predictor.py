"""The assignment job's predictor: the ``map_batches`` callable and the output schema.

Output schema (assigned parts): the id columns as read, ``cluster`` int32, for a two-level
model ``coarse_cluster`` int32 (the coarse center the row was routed through), ``distance``
float32 (squared Euclidean on the unit sphere, in [0, 4]), ``runner_up`` int32, ``margin``
float32 (runner-up distance minus distance). A two-level model answers within the routed
group: its runner-up is the group's second-nearest center, and a group of one center has
``runner_up`` -1 and ``margin`` +inf (no competitor: never ambiguous; a number, not null,
so that assigned rows hold no nulls and ``margin < t`` filters stay right). A two-level
model's batches also carry ``_routing_check`` int8 for the sink to count and drop, never
written: on a random :meth:`TwoLevelModel.check_share` of the rows, 1 where the routed
center is not the exact nearest one, 0 where it is; -1 on the other rows. Rows that
cannot be assigned (null, non-finite values, wrong length) go to ``_rejected`` parts: the
id columns and a ``reason``. The predictor returns both kinds in one table, the assigned
rows with a null ``reason``; the sink (:mod:`jobs.assign.sink`) splits them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from jobs.commit.writer import REASON_COLUMN as REASON
from jobs.faults import assign_delay_s
from jobs.model import load_assignable
from jobs.watchdog import Beater
from tell.assign import assign
from tell.io import screen_rows
from tell.two_level import TwoLevelModel

RESULT_COLUMNS = ("cluster", "distance", "runner_up", "margin")
COARSE_COLUMN = "coarse_cluster"
TWO_LEVEL_COLUMNS = ("cluster", COARSE_COLUMN, "distance", "runner_up", "margin")
CHECK_COLUMN = "_routing_check"  # between predictor and sink only
_DTYPES = {
    CHECK_COLUMN: np.int8,
    "cluster": np.int32,
    COARSE_COLUMN: np.int32,
    "distance": np.float32,
    "runner_up": np.int32,
    "margin": np.float32,
}
_ENCODE_CHUNK_ROWS = 16384  # bounds the encoder's activations per forward

Scorer = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # (b, D) rows -> column -> (b,)


def result_columns(two_level: bool) -> tuple[str, ...]:
    """The assignment columns written for a model of either kind, in order."""
    return TWO_LEVEL_COLUMNS if two_level else RESULT_COLUMNS


def output_schema(
    input_schema: pa.Schema, id_columns: tuple[str, ...], columns: tuple[str, ...]
) -> pa.Schema:
    """Schema of the assigned rows: the id columns as the input has them, then ``columns``
    (:func:`result_columns`) with their types."""
    ids = [input_schema.field(name) for name in id_columns]
    return pa.schema([*ids, *(pa.field(n, pa.from_numpy_dtype(_DTYPES[n])) for n in columns)])


def scorer(model: Any, device: torch.device, n_probe: int = 1) -> Scorer:
    """The per-chunk assignment of ``model``: a TELL model encodes the rows (on ``device``)
    and scores every center (:func:`tell.assign.assign`); a :class:`TwoLevelModel`
    normalises them (as the identity encoder does), routes them through its ``n_probe``
    nearest coarse groups (:meth:`TwoLevelModel.explain`, on the CPU) and checks a random
    share of them against the exact search (:meth:`TwoLevelModel.routing_check`)."""
    if isinstance(model, TwoLevelModel):
        share = model.check_share(n_probe)
        rng = np.random.default_rng()  # a measurement: any rows will do, but not fixed ones

        def route(x: torch.Tensor) -> dict[str, torch.Tensor]:
            z = F.normalize(x, dim=1)
            r = model.explain(z, n_probe=n_probe)
            check = model.routing_check(z, r.labels, torch.from_numpy(rng.random(len(z)) < share))
            values = (r.labels, r.coarse_labels, r.distance, r.runner_up, r.margin, check)
            return dict(zip((*TWO_LEVEL_COLUMNS, CHECK_COLUMN), values, strict=True))

        return route
    model = model.to(device).eval()
    centers = model.cluster.centers.to(device).contiguous()  # (k, d_z)

    def nearest(x: torch.Tensor) -> dict[str, torch.Tensor]:
        r = assign(model.encode(x.to(device, non_blocking=True)), centers)
        values = (r.labels, r.distance, r.runner_up, r.margin)
        return dict(zip(RESULT_COLUMNS, values, strict=True))

    return nearest


class Assigner:
    """``map_batches`` callable: an Arrow batch -> the id columns, assignment and ``reason``.

    Loads the model once per actor (safetensors + JSON via :mod:`jobs.model`, either kind),
    screens the rows, scores the valid ones (:func:`scorer`: no grad, eval mode, on the GPU
    when the actor has one and the model is a TELL model; ``n_probe`` for a two-level
    model). Rejected rows get null results and a reason; assigned rows a null reason. Row
    order and count are those of the batch.
    """

    def __init__(
        self,
        model_uri: str,
        column: str,
        dim: int,
        id_columns: tuple[str, ...],
        threads: int = 1,
        use_gpu: bool = False,
        heartbeat: Any | None = None,
        n_probe: int = 1,
        fault: str | None = None,
    ) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.delay_s = assign_delay_s(fault)  # tests: jobs.faults' ``assign`` fault
        self.beat = Beater(heartbeat)  # the job's watchdog hears of every batch
        self.column, self.dim, self.id_columns = column, dim, tuple(id_columns)
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        model, _ = load_assignable(model_uri)  # the driver checked its width
        two_level = isinstance(model, TwoLevelModel)
        self.columns = (*result_columns(two_level), *((CHECK_COLUMN,) if two_level else ()))
        self.score = scorer(model, device, n_probe)

    def __call__(self, batch: pa.Table) -> pa.Table:
        screen = screen_rows(batch, self.column, self.dim)
        n, m = batch.num_rows, screen.matrix.shape[0]
        out = {name: np.empty(m, _DTYPES[name]) for name in self.columns}
        x = torch.from_numpy(screen.matrix)  # (m, D) float32
        with torch.inference_mode():
            for start in range(0, m, _ENCODE_CHUNK_ROWS):
                stop = min(start + _ENCODE_CHUNK_ROWS, m)
                for name, values in self.score(x[start:stop]).items():
                    out[name][start:stop] = values.cpu().numpy()  # cast to the column's type
        arrays: list[Any] = [batch.column(name) for name in self.id_columns]
        if m == n:
            arrays += [pa.array(out[name]) for name in self.columns]
            arrays.append(pa.nulls(n, pa.string()))
        else:
            valid = screen.valid
            for name in self.columns:
                full = np.zeros(n, out[name].dtype)
                full[valid] = out[name]
                arrays.append(pa.array(full, mask=~valid))
            arrays.append(pa.array(screen.reasons, type=pa.string()))
        if self.delay_s:
            time.sleep(self.delay_s)
        self.beat(f"assigned a batch of {n} rows")
        return pa.table(arrays, names=[*self.id_columns, *self.columns, REASON])
