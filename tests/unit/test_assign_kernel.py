"""The nearest-center kernel shared by predict, training and the assignment job."""

import pytest
import torch
from torch.nn import functional as F

from tell.assign import _top2_numpy, _top2_torch, assign, top2_nearest


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("chunk_rows", [None, 7, 1000])
def test_assign_matches_brute_force_distances(chunk_rows):
    z, centers = _unit(300, 16, 0), _unit(12, 16, 1)
    out = assign(z, centers, chunk_rows=chunk_rows)
    sq = torch.cdist(z.double(), centers.double()) ** 2  # (n, k)
    order = sq.argsort(dim=1)
    assert torch.equal(out.labels, order[:, 0])
    assert torch.equal(out.runner_up, order[:, 1])
    rows = torch.arange(300)
    torch.testing.assert_close(out.distance.double(), sq[rows, order[:, 0]], atol=1e-5, rtol=0)
    expected_margin = sq[rows, order[:, 1]] - sq[rows, order[:, 0]]
    torch.testing.assert_close(out.margin.double(), expected_margin, atol=1e-5, rtol=0)
    assert (out.margin >= 0).all()


@pytest.mark.parametrize("kernel", [_top2_numpy, _top2_torch])
def test_top2_kernels_agree_with_topk_and_leave_scores_unchanged(kernel):
    scores = torch.randn(50, 9, generator=torch.Generator().manual_seed(2))
    scores[3, 4] = scores[3, 7] = 10.0  # exact tie: the lower index wins, the other is second
    before = scores.clone()
    labels, runner_up = torch.empty(50, dtype=torch.int64), torch.empty(50, dtype=torch.int64)
    best, second = torch.empty(50), torch.empty(50)
    kernel(scores, labels, runner_up, best, second)
    assert torch.equal(scores, before)
    values = scores.topk(2, dim=1).values
    assert torch.equal(best, values[:, 0]) and torch.equal(second, values[:, 1])
    assert torch.equal(labels, scores.argmax(dim=1))
    assert (labels[3], runner_up[3]) == (4, 7)
    assert torch.equal(scores.gather(1, runner_up[:, None]).squeeze(1), second)


def test_top2_nearest_matches_a_full_score_matrix_and_honours_excluded_centers():
    """The training forward's chunked assignment equals the full (n, k) argmax passes."""
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(300, 6, generator=g), dim=1)
    centers = F.normalize(torch.randn(9, 6, generator=g), dim=1)
    scores = z @ centers.T
    labels, runner_up, best, second = top2_nearest(z, centers, chunk_rows=64)
    values, order = scores.topk(2, dim=1)
    assert torch.equal(labels, order[:, 0]) and torch.equal(runner_up, order[:, 1])
    torch.testing.assert_close(best, values[:, 0])
    torch.testing.assert_close(second, values[:, 1])
    excluded = torch.zeros(9, dtype=torch.bool)
    excluded[labels[0]] = True
    labels_x, _, _, _ = top2_nearest(z, centers, excluded)
    assert not (labels_x == labels[0]).any()
    assert torch.equal(labels_x, scores.masked_fill(excluded, -1.0).argmax(dim=1))
