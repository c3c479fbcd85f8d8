"""The two-level model for very large k (issue #14): shares, routing, persistence, errors."""

import itertools
import math

import numpy as np
import pytest
import torch

from tell import checkpoint
from tell.datasets import make_spherical_blobs
from tell.encoders import EncoderSpec
from tell.errors import TellCheckpointError, TellConfigError, TellDataError
from tell.model import TELLNet
from tell.two_level import (
    TwoLevelModel,
    allocate_shares,
    fit_two_level,
    split_rows,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the small fits' parallel regions cost milliseconds each on a busy
    machine with two (index_add_ of 800 rows: 11 ms with 2 threads, 8 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _separated_blobs(n_coarse: int, fine_per_coarse: int, rows_per_fine: int, seed: int = 0):
    """Rows around ``n_coarse`` orthogonal directions, each split into ``fine_per_coarse``
    tight sub-clusters: every row's nearest fine center is in its own coarse group."""
    rng = np.random.default_rng(seed)
    d = 2 * n_coarse
    coarse = np.eye(d)[:n_coarse]  # (k1, d), 90 degrees apart
    fine = _unit(
        coarse[:, None, :] + 0.3 * _unit(rng.standard_normal((n_coarse, fine_per_coarse, d)))
    )
    centers = fine.reshape(-1, d)  # (k, d), 0.3 rad around their coarse direction
    labels = np.repeat(np.arange(centers.shape[0]), rows_per_fine)
    X = _unit(centers[labels] + 0.02 * rng.standard_normal((labels.size, d)))
    return X, labels


def test_every_fine_center_is_used_on_a_toy_case():
    data = make_spherical_blobs(6000, 16, 64, seed=0)
    model = fit_two_level(data.X, 64, seed=0)
    labels, coarse = model.predict(data.X)
    assert model.n_coarse == 8 and model.n_clusters == 64
    assert torch.unique(labels).numel() == 64
    assert torch.equal(coarse, model.coarse_of(labels))
    sizes = model.offsets.diff()
    assert int(sizes.sum()) == 64 and bool((sizes >= 1).all())


def test_routed_equals_exact_when_the_coarse_clusters_are_well_separated():
    X, _ = _separated_blobs(n_coarse=4, fine_per_coarse=5, rows_per_fine=40)
    model = fit_two_level(X, 20, n_coarse=4, seed=0)
    routed, routed_coarse = model.predict(X)
    exact, exact_coarse = model.predict(X, routed=False)
    assert torch.equal(routed, exact) and torch.equal(routed_coarse, exact_coarse)
    assert model.disagreement(X) == 0.0
    assert torch.unique(routed).numel() == 20


def _hand_model(seed: int = 0, d: int = 6) -> TwoLevelModel:
    """Random centers, group sizes 1, 3 and 4: routing often misses the exact center."""
    rng = np.random.default_rng(seed)
    offsets = torch.tensor([0, 1, 4, 8])
    return TwoLevelModel(
        torch.from_numpy(_unit(rng.standard_normal((3, d)))),
        torch.from_numpy(_unit(rng.standard_normal((8, d)))),
        offsets,
    )


def _brute_force(model: TwoLevelModel, z: np.ndarray):
    """Routed labels, their runner-up and cosines, and exact labels, one row at a time."""
    coarse = model.coarse_centers.numpy()
    fine = model.fine_centers.numpy()
    bounds = model.offsets.tolist()
    routed, runner, best, second, exact = [], [], [], [], []
    for row in z.astype(np.float64):
        c = int(np.argmax(coarse @ row))
        lo, hi = bounds[c], bounds[c + 1]
        scores = fine[lo:hi] @ row
        ranked = np.argsort(-scores, kind="stable")
        routed.append(lo + int(ranked[0]))
        best.append(scores[ranked[0]])
        runner.append(lo + int(ranked[1]) if hi - lo > 1 else -1)
        second.append(scores[ranked[1]] if hi - lo > 1 else np.nan)
        exact.append(int(np.argmax(fine @ row)))
    return (np.array(a) for a in (routed, runner, best, second, exact))


def test_predict_explain_and_disagreement_match_a_brute_force_reference():
    model = _hand_model()
    z = _unit(np.random.default_rng(1).standard_normal((500, 6)))
    routed, runner, best, second, exact = _brute_force(model, z)
    labels, coarse = model.predict(z)
    assert labels.tolist() == routed.tolist()
    assert coarse.tolist() == model.coarse_of(torch.from_numpy(routed)).tolist()
    assert model.predict(z, routed=False)[0].tolist() == exact.tolist()
    assert 0.0 < model.disagreement(z) == pytest.approx(float(np.mean(routed != exact)))
    why = model.explain(z)
    assert why.labels.tolist() == routed.tolist() and why.runner_up.tolist() == runner.tolist()
    np.testing.assert_allclose(why.distance.numpy(), 2 - 2 * best, atol=1e-5)
    alone = runner == -1  # a row routed to the group of one center has no runner-up
    assert alone.any() and np.isinf(why.margin.numpy()[alone]).all()
    np.testing.assert_allclose(
        why.margin.numpy()[~alone], 2 * best[~alone] - 2 * second[~alone], atol=1e-5
    )


def _brute_force_probed(model: TwoLevelModel, z: np.ndarray, n_probe: int):
    """Routed labels and runner-ups over the groups of the ``n_probe`` best coarse centers."""
    coarse, fine = model.coarse_centers.numpy(), model.fine_centers.numpy()
    bounds = model.offsets.tolist()
    labels, runner = [], []
    for row in z.astype(np.float64):
        probed = np.argsort(-(coarse @ row), kind="stable")[:n_probe]
        union = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in probed])
        ranked = union[np.argsort(-(fine[union] @ row), kind="stable")]
        labels.append(int(ranked[0]))
        runner.append(int(ranked[1]) if ranked.size > 1 else -1)
    return np.array(labels), np.array(runner)


@pytest.mark.parametrize("n_probe", [2, 3])
def test_probing_more_groups_matches_a_brute_force_reference(n_probe):
    model = _hand_model(seed=2)
    z = _unit(np.random.default_rng(3).standard_normal((400, 6)))
    labels, runner = _brute_force_probed(model, z, n_probe)
    why = model.explain(z, n_probe=n_probe)
    assert why.labels.tolist() == labels.tolist()
    assert why.runner_up.tolist() == runner.tolist()
    assert torch.equal(why.coarse_labels, model.coarse_of(why.labels))
    fine = model.fine_centers.numpy()
    cos = lambda c: np.einsum("nd,nd->n", z, fine[c])  # noqa: E731
    np.testing.assert_allclose(why.distance.numpy(), 2 - 2 * cos(labels), atol=1e-5)
    np.testing.assert_allclose(why.margin.numpy(), 2 * cos(labels) - 2 * cos(runner), atol=1e-5)
    assert model.predict(z, n_probe=n_probe)[0].tolist() == labels.tolist()


def test_disagreement_falls_with_the_probes_to_zero_when_every_group_is_probed():
    data = make_spherical_blobs(4000, 8, 128, seed=1)
    model = fit_two_level(data.X, 128, seed=0, max_iter=3)
    rates = [model.disagreement(data.X, n_probe=p) for p in range(1, model.n_coarse + 1)]
    assert rates[0] > 0 and rates[-1] == 0.0
    assert rates == sorted(rates, reverse=True)  # a superset of groups each time
    exact = model.predict(data.X, routed=False)
    routed = model.predict(data.X, n_probe=model.n_coarse)
    assert torch.equal(routed[0], exact[0]) and torch.equal(routed[1], exact[1])
    with pytest.raises(TellConfigError, match=r"n_probe must be an int in \[1, n_coarse=11\]"):
        model.predict(data.X, n_probe=12)


def test_the_routing_check_searches_only_the_checked_rows_exactly():
    model = _hand_model()
    z = torch.from_numpy(_unit(np.random.default_rng(4).standard_normal((300, 6))))
    routed, _ = model.predict(z)
    exact, _ = model.predict(z, routed=False)
    checked = torch.arange(300) % 3 == 0
    got = model.routing_check(z, routed, checked)
    assert got.dtype == torch.int8 and bool((got[~checked] == -1).all())
    assert got[checked].tolist() == (exact != routed)[checked].to(torch.int8).tolist()
    assert 0 < int(got[checked].sum()) < int(checked.sum())
    assert model.check_share() == pytest.approx(min(1.0, 0.1 * (3 + 4) / 8))
    big = TwoLevelModel(
        torch.zeros(1024, 4), torch.zeros(1 << 20, 4), torch.arange(0, (1 << 20) + 1, 1024)
    )
    assert big.check_share() == pytest.approx(0.1 * 2048 / 2**20)  # 2e-4 of the rows
    assert big.check_share(n_probe=3) == pytest.approx(0.1 * (1024 + 3 * 1024) / 2**20)


def _brute_force_shares(counts, k, caps):
    """Every feasible allocation; the one nearest (L2) the proportional quotas."""
    quota = k * np.asarray(counts) / sum(counts)
    feasible = [s for s in itertools.product(*(range(1, c + 1) for c in caps)) if sum(s) == k]
    return min(float(((np.array(s) - quota) ** 2).sum()) for s in feasible), quota


@pytest.mark.parametrize("case", range(60))
def test_shares_sum_to_k_respect_the_caps_and_are_the_nearest_to_proportional(case):
    rng = np.random.default_rng(case)
    groups = int(rng.integers(1, 5))
    counts = rng.integers(1, 9, size=groups)
    caps = np.minimum(counts, rng.integers(1, 9, size=groups)) if case % 2 else counts
    k = int(rng.integers(groups, caps.sum() + 1))
    shares = allocate_shares(counts, k, caps)
    assert shares.sum() == k and (shares >= 1).all() and (shares <= caps).all()
    best, quota = _brute_force_shares(counts, k, caps)
    assert float(((shares - quota) ** 2).sum()) == pytest.approx(best)


def test_shares_of_a_large_split_are_exactly_proportional_where_possible():
    counts = np.full(1024, 9766)
    counts[:3] = 1  # three tiny groups, one center each
    shares = allocate_shares(counts, 1_048_576)
    assert shares.sum() == 1_048_576 and shares[:3].tolist() == [1, 1, 1]
    assert set(shares[3:].tolist()) <= {1027, 1028}


def test_a_group_with_fewer_distinct_rows_than_its_share_gets_its_distinct_rows():
    rng = np.random.default_rng(0)
    spread = _unit(np.array([1.0, 0, 0, 0]) + 0.3 * rng.standard_normal((100, 4)))
    copies = np.tile(_unit(np.array([[-1.0, 0.1, 0, 0]])), (12, 1))  # 12 rows, 1 distinct
    few = _unit(np.array([[0, -1.0, 0, 0], [0, -1.0, 0.1, 0], [0, -1.0, 0, 0.1]]))
    X = np.concatenate([spread, copies, few])  # 115 rows; quotas at k=46: 40, 4.8, 1.2
    coarse = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0]])
    split = split_rows(X, coarse, 46)
    assert split.counts.tolist() == [100, 12, 3]
    assert split.shares.tolist() == [42, 1, 3]  # 12 copies of one row: one center
    assert split.all_distinct.tolist() == [False, True, True]
    model = fit_two_level(X, 46, n_coarse=3, seed=0)
    labels, _ = model.predict(X)
    assert torch.unique(labels).numel() == 46


def test_a_group_whose_share_reaches_its_rows_keeps_them_as_centers():
    rng = np.random.default_rng(0)
    big = _unit(np.array([1.0, 0, 0]) + 0.3 * rng.standard_normal((20, 3)))
    small = _unit(np.array([[-1.0, 0.2, 0], [-1.0, -0.2, 0], [-1.0, 0, 0.2]]))
    X = np.concatenate([big, small])  # quotas at k=20: 17.39 and 2.61 -> shares 17 and 3
    split = split_rows(X, torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), 20)
    assert split.shares.tolist() == [17, 3] and split.all_distinct.tolist() == [False, True]
    model = fit_two_level(X, 20, n_coarse=2, seed=0)
    c = int(torch.argmin(model.coarse_centers[:, 0]))  # the coarse center near -e1
    kept = model.fine_centers[model.offsets[c] : model.offsets[c + 1]].numpy()
    np.testing.assert_allclose(np.sort(kept, axis=0), np.sort(small, axis=0), atol=1e-6)


def test_the_fine_fits_go_through_map_fn():
    X = make_spherical_blobs(1500, 8, 9, seed=3).X
    calls = []

    def recording_map(fn, tasks):
        tasks = list(tasks)
        calls.append([(t.rows.shape[0], t.n_centers, t.seed) for t in tasks])
        return [fn(t) for t in tasks]

    model = fit_two_level(X, 9, seed=5, map_fn=recording_map)
    reference = fit_two_level(X, 9, seed=5)
    (tasks,) = calls
    assert [n for _, n, _ in tasks] == model.offsets.diff().tolist()
    assert sum(rows for rows, _, _ in tasks) == 1500
    assert [s for _, _, s in tasks] == [6 + g for g in range(len(tasks))]
    assert torch.equal(model.fine_centers, reference.fine_centers)
    assert {"coarse_fit_s", "split_s", "fine_fit_s"} <= model.fit_info.keys()


def test_save_load_round_trip(tmp_path):
    X = make_spherical_blobs(800, 8, 8, seed=1).X
    model = fit_two_level(X, 8, seed=0, max_iter=3)
    model.save(tmp_path / "m")
    loaded = TwoLevelModel.load(tmp_path / "m")
    for name in ("coarse_centers", "fine_centers", "offsets"):
        assert torch.equal(getattr(loaded, name), getattr(model, name))
    assert loaded.fit_info == model.fit_info
    assert torch.equal(loaded.predict(X)[0], model.predict(X)[0])


def test_load_refuses_pickles_other_models_and_inconsistent_tensors(tmp_path):
    model = _hand_model()
    _, meta = model.dump()
    with pytest.raises(TellCheckpointError, match="pickle"):
        TwoLevelModel.restore(b"\x80\x04" + b"x" * 32, meta)
    net = TELLNet(EncoderSpec("identity", 6), 3)
    checkpoint.save(net, tmp_path / "tell", {})
    with pytest.raises(TellCheckpointError, match="not a two-level model"):
        TwoLevelModel.load(tmp_path / "tell")
    bad = TwoLevelModel(model.coarse_centers, model.fine_centers, torch.tensor([0, 4, 4, 8]))
    with pytest.raises(TellCheckpointError, match="rise strictly"):
        TwoLevelModel.restore(*bad.dump())
    with pytest.raises(TellCheckpointError, match="Cannot read"):
        TwoLevelModel.load(tmp_path / "missing")


_X = make_spherical_blobs(200, 4, 4, seed=0).X


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        (2 * _X, {"n_clusters": 4}, TellDataError, "unit rows.*row 0 has norm 2"),
        (_X, {"n_clusters": 1}, TellConfigError, "'n_clusters'.*int >= 2. Got 1"),
        (_X, {"n_clusters": 2.5}, TellConfigError, "'n_clusters'.*Got 2.5"),
        (_X[:3], {"n_clusters": 4}, TellDataError, "n_clusters=4 is larger than the number"),
        (_X, {"n_clusters": 4, "n_coarse": 0}, TellConfigError, r"'n_coarse'.*\[1, n_clusters=4\]"),
        (_X, {"n_clusters": 4, "n_coarse": 5}, TellConfigError, "'n_coarse'.*Got 5"),
        (
            _X,
            {"n_clusters": 4, "max_iters": 3},
            TellConfigError,
            r"Unknown TELL parameter.*max_iters",
        ),
        (_X, {"n_clusters": 4, "encoder": "mlp"}, TellConfigError, r"\['encoder'\]"),
        (_X, {"n_clusters": 4, "coarse_sample_rows": 1}, TellConfigError, "at least n_coarse=2"),
        (np.tile(_X[:1], (10, 1)), {"n_clusters": 4}, TellDataError, "fewer distinct rows"),
    ],
)
def test_bad_input_is_refused_with_a_message(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_two_level(X, **kwargs)


def test_predict_refuses_rows_of_the_wrong_width():
    with pytest.raises(TellDataError, match=r"shape \(n, 6\).*Got \(2, 5\)"):
        _hand_model().predict(np.ones((2, 5), np.float32))


@pytest.mark.parametrize(("counts", "k"), [([3, 2], 1), ([3, 2], 6), ([0, 2], 1)])
def test_impossible_shares_are_refused(counts, k):
    with pytest.raises(TellDataError, match=r"allocate_shares|Cannot give"):
        allocate_shares(counts, k)


def test_default_n_coarse_is_the_rounded_square_root():
    X = make_spherical_blobs(600, 4, 10, seed=0).X
    assert fit_two_level(X, 10, max_iter=2).n_coarse == round(math.sqrt(10)) == 3


def test_coarse_centers_without_rows_are_dropped():
    rng = np.random.default_rng(0)
    X = _unit(np.array([1.0, 0, 0]) + 0.2 * rng.standard_normal((30, 3)))
    coarse = torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [-1.0, 0, 0]])  # only e1 has rows
    split = split_rows(X, coarse, 5)
    assert split.dropped == 2 and split.counts.tolist() == [30] and split.shares.tolist() == [5]
    assert torch.equal(split.coarse_centers, coarse[1:2])
