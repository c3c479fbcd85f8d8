"""Nearest-center assignment with its explanation: one GEMM and a top-2 per chunk.

Shared by ``TELL.predict`` and the batch assignment job so both give identical answers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

DEFAULT_CHUNK_ROWS = 32768


class Assignment(NamedTuple):
    """Per-row assignment and explanation (all tensors of shape (n,)).

    labels : int64, the nearest center.
    distance : float32, squared Euclidean distance to it on the unit sphere, in [0, 4].
    runner_up : int64, the second-nearest center.
    margin : float32, runner-up distance minus distance (>= 0); small = ambiguous row.
    """

    labels: torch.Tensor
    distance: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor


@torch.no_grad()
def assign(
    z: torch.Tensor, centers: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Assignment:
    """Assign unit features to unit centers.

    Parameters
    ----------
    z : Tensor of shape (n, d), float32, unit rows (inputs are assumed validated).
    centers : Tensor of shape (k, d), float32, unit rows, k >= 2, same device as z.
    chunk_rows : int, rows per GEMM, bounds the (chunk_rows, k) score buffer.

    Returns
    -------
    Assignment
    """
    n = z.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=z.device)
    runner_up = torch.empty_like(labels)
    top_scores = torch.empty(n, 2, dtype=torch.float32, device=z.device)
    centers_t = centers.t().contiguous()  # (d, k)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        scores = z[start:stop] @ centers_t  # (chunk, k) cosine similarities
        best = scores.topk(2, dim=1)
        top_scores[start:stop] = best.values
        labels[start:stop] = best.indices[:, 0]
        runner_up[start:stop] = best.indices[:, 1]
    distances = (2.0 - 2.0 * top_scores).clamp_min_(0.0)  # (n, 2)
    return Assignment(labels, distances[:, 0], runner_up, distances[:, 1] - distances[:, 0])
