"""The assignment job's predictor: the ``map_batches`` callable and the output schema.

Output schema (assigned parts): the id columns as read, ``cluster`` int32, ``distance``
float32 (squared Euclidean on the unit sphere, in [0, 4]), ``runner_up`` int32, ``margin``
float32 (runner-up distance minus distance). Rows that cannot be assigned (null, non-finite
values, wrong length) go to ``_rejected`` parts: the id columns and a ``reason``. The
predictor returns both kinds in one table, the assigned rows with a null ``reason``; the
sink (:mod:`jobs.assign.sink`) splits them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from jobs.commit.writer import REASON_COLUMN as REASON
from jobs.model import load_model
from jobs.watchdog import Beater
from tell.assign import assign
from tell.io import screen_rows

RESULT_COLUMNS = ("cluster", "distance", "runner_up", "margin")
_ENCODE_CHUNK_ROWS = 16384  # bounds the encoder's activations per forward


class Assigner:
    """``map_batches`` callable: an Arrow batch -> the id columns, assignment and ``reason``.

    Loads the model once per actor (safetensors + JSON via :mod:`jobs.model`), screens
    the rows, encodes the valid ones (no grad, eval mode, on the GPU when the actor has one)
    and runs :func:`tell.assign.assign`. Rejected rows get null results and a reason;
    assigned rows a null reason. Row order and count are those of the batch.
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
    ) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.beat = Beater(heartbeat)  # the job's watchdog hears of every batch
        self.column, self.dim, self.id_columns = column, dim, tuple(id_columns)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        model, _ = load_model(model_uri)  # the driver checked its width against the input's
        self.model = model.to(self.device).eval()
        self.centers = model.cluster.centers.to(self.device).contiguous()  # (k, d_z)

    def __call__(self, batch: pa.Table) -> pa.Table:
        screen = screen_rows(batch, self.column, self.dim)
        n, m = batch.num_rows, screen.matrix.shape[0]
        labels = np.empty(m, np.int32)
        runner_up = np.empty(m, np.int32)
        distance = np.empty(m, np.float32)
        margin = np.empty(m, np.float32)
        x = torch.from_numpy(screen.matrix)  # (m, D) float32
        with torch.inference_mode():
            for start in range(0, m, _ENCODE_CHUNK_ROWS):
                stop = min(start + _ENCODE_CHUNK_ROWS, m)
                z = self.model.encode(x[start:stop].to(self.device, non_blocking=True))
                result = assign(z, self.centers)
                labels[start:stop] = result.labels.to(torch.int32).cpu().numpy()
                runner_up[start:stop] = result.runner_up.to(torch.int32).cpu().numpy()
                distance[start:stop] = result.distance.cpu().numpy()
                margin[start:stop] = result.margin.cpu().numpy()
        arrays: list[Any] = [batch.column(name) for name in self.id_columns]
        if m == n:
            arrays += [pa.array(a) for a in (labels, distance, runner_up, margin)]
            arrays.append(pa.nulls(n, pa.string()))
        else:
            valid = screen.valid
            for values in (labels, distance, runner_up, margin):
                full = np.zeros(n, values.dtype)
                full[valid] = values
                arrays.append(pa.array(full, mask=~valid))
            arrays.append(pa.array(screen.reasons, type=pa.string()))
        self.beat(f"assigned a batch of {n} rows")
        return pa.table(arrays, names=[*self.id_columns, *RESULT_COLUMNS, REASON])
