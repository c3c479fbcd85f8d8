"""The scikit-learn style estimator: contract, invariants, quality, bad input (issue #2)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from tell import TELL, NotFittedError, TellConfigError, TellDataError
from tell.metrics import cluster_accuracy, partition_inertia


def blobs(n=2000, d=16, k=5, noise=0.08, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(scale=noise, size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted():
    x, y = blobs()
    return TELL(5, max_iter=6, batch_size=128, random_state=0).fit(x), x, y


def test_init_only_stores_parameters():
    est = TELL(4, encoder="mlp", max_iter=3)
    assert est.get_params()["n_clusters"] == 4 and est.get_params()["encoder"] == "mlp"
    assert not hasattr(est, "model_")


def test_fit_returns_self_and_sets_fitted_attributes(fitted):
    est, _, _ = fitted
    assert est.cluster_centers_.shape == (5, 16)
    assert est.labels_.shape == (2000,) and est.inertia_ > 0
    # well separated blobs: the automatic stop (identity, tol 0.003) ends before max_iter
    assert est.n_iter_ == len(est.history_) < 6
    assert est.outcome_["stop_reason"] == "converged"


def test_not_fitted_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        TELL(3).predict(np.zeros((2, 2)))


def test_centers_are_unit_and_equal_w_over_two_alpha(fitted):
    est, _, _ = fitted
    np.testing.assert_allclose(np.linalg.norm(est.cluster_centers_, axis=1), 1.0, rtol=1e-5)
    w = est.model_.cluster.weight.detach().numpy()
    np.testing.assert_allclose(est.cluster_centers_, w / (2 * est.alpha), rtol=1e-6)


def test_predict_is_argmin_euclidean_distance_and_transform_agrees(fitted):
    est, x, _ = fitted
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = ((z[:, None, :] - est.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(est.predict(x), d.argmin(1))
    np.testing.assert_allclose(est.transform(x), d, atol=1e-5)
    np.testing.assert_array_equal(est.predict(x), est.labels_)


def test_explain_gives_distance_runner_up_and_margin(fitted):
    est, x, _ = fitted
    e = est.explain(x[:100])
    d = est.transform(x[:100])
    order = np.argsort(d, axis=1)
    np.testing.assert_array_equal(e["cluster"], order[:, 0])
    np.testing.assert_array_equal(e["runner_up"], order[:, 1])
    np.testing.assert_allclose(e["distance"], d[np.arange(100), order[:, 0]], atol=1e-5)
    np.testing.assert_allclose(
        e["margin"], d[np.arange(100), order[:, 1]] - e["distance"], atol=1e-5
    )
    assert (e["margin"] >= 0).all()


def test_identity_matches_kmeans_on_spherical_embeddings():
    """Issue #2: 50k x 64, k=50: inertia <= 1.01x KMeans(n_init=10), ACC >= 0.98."""
    x, y = blobs(n=50_000, d=64, k=50, noise=0.09, seed=1)
    km = KMeans(50, n_init=10, random_state=0).fit(x)
    est = TELL(50, max_iter=8, batch_size=1024, random_state=0).fit(x)
    # Both partitions scored with the same objective (sum of squared distances to the
    # partition's means): TELL keeps unit centers, k-means keeps means.
    ratio = partition_inertia(x, est.labels_) / km.inertia_
    assert ratio <= 1.01, ratio
    assert cluster_accuracy(y, est.labels_) >= 0.98


def test_partial_fit_streams_batches_and_keeps_improving():
    x, y = blobs(n=6000, k=4, seed=3)
    est = TELL(4, batch_size=64, random_state=0)
    for chunk in np.array_split(x, 6):
        est.partial_fit(chunk)
    assert est.n_iter_ == 6
    assert cluster_accuracy(y, est.predict(x)) >= 0.95


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_autoencoders_fit_and_predict(encoder):
    x, _ = blobs(n=256, d=64, k=3)
    kw = {"image_shape": (8, 8, 1)} if encoder == "conv" else {"hidden_dims": (32,)}
    x = (x + 1) / 2  # pixels in [0, 1] for the conv decoder's sigmoid
    est = TELL(
        3, encoder=encoder, latent_dim=4, max_iter=2, pretrain_epochs=1, random_state=0, **kw
    )
    est.fit(x.reshape(-1, 8, 8, 1) if encoder == "conv" else x)
    assert est.cluster_centers_.shape == (3, 4)
    assert len(est.history_) == 3 and est.history_[0]["phase"] == "pretrain"
    assert est.predict(x).shape == (256,)


def test_save_and_load_predict_the_same(tmp_path, fitted):
    est, x, _ = fitted
    est.save(tmp_path / "m")
    again = TELL.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict(x), est.predict(x))
    assert again.max_iter == est.max_iter and again.n_clusters == 5


def test_n_init_keeps_lowest_cluster_loss():
    x, _ = blobs(n=1000, k=6, seed=5)
    est = TELL(6, max_iter=3, n_init=3, random_state=0, init="random").fit(x)
    singles = [
        TELL(6, max_iter=3, random_state=s, init="random").fit(x).history_[-1]["clu_loss"]
        for s in range(3)
    ]
    assert est.history_[-1]["clu_loss"] == pytest.approx(min(singles))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), "NaN or infinity in 1 row"),
        (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), "NaN or infinity"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros(5), "must be 2-D"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), "real numbers"),
        (np.array([[1, "b"], [2, 3], [3, 4]], dtype=object), "real numbers"),
        (np.zeros((2, 3)), "n_clusters=3 is larger than the number of rows"),
    ],
)
def test_bad_input_raises_clear_value_error(x, match):
    with pytest.raises(TellDataError, match=match) as info:
        TELL(3, max_iter=1).fit(x)
    assert isinstance(info.value, ValueError)


def test_wrong_dimension_at_predict(fitted):
    est, _, _ = fitted
    with pytest.raises(
        ValueError, match="has 7 features per row, but the model was fitted with 16"
    ):
        est.predict(np.zeros((3, 7)))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_clusters": 1}, "'k' must be in \\[2"),
        ({"encoder": "resnet"}, "'encoder' must be one of"),
        ({"batch_size": 0}, "'batch_size' must be in \\[1"),
        ({"lr": -1.0}, "'lr' must be in \\(0"),
        ({"init": "kmeans"}, "'init' must be one of"),
        ({"encoder": "conv"}, "'image_shape' must be"),
        ({"device": "tpu"}, "'device' must be one of"),
    ],
)
def test_wrong_params(params, match):
    with pytest.raises(TellConfigError, match=match):
        TELL(**{"n_clusters": 3, **params}).fit(np.random.rand(10, 4))


def test_identity_epochs_train_on_a_fresh_subset_of_epoch_rows():
    """tell.schedule.epoch_rows_for: an epoch of at most 256 rows per center for identity
    (here set explicitly), a different random subset each epoch; labels cover every row."""
    x, y = blobs()
    est = TELL(5, max_iter=4, epoch_rows=500, tol=0, random_state=0).fit(x)
    assert [h["rows"] for h in est.history_] == [500] * 4
    assert est.labels_.shape == (2000,) and cluster_accuracy(y, est.labels_) > 0.95
    auto = TELL(5, max_iter=2, tol=0, random_state=0).fit(x)
    assert [h["rows"] for h in auto.history_] == [2000] * 2  # at least 65,536: all rows


@pytest.mark.parametrize("gather_bytes", [1, 1000, 1 << 30])
def test_shuffled_batches_gathered_in_blocks_cover_each_row_once(monkeypatch, gather_bytes):
    """_shuffled_batches gathers several batches per index_select (GATHER_BYTES); whatever
    the block, the batches are the drawn rows, each once, in batch_size pieces, and a
    trailing batch of one row is dropped."""
    import torch

    from tell import estimator

    monkeypatch.setattr(estimator, "GATHER_BYTES", gather_bytes)
    x = torch.arange(101, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
    g = torch.Generator().manual_seed(0)
    batches = list(estimator._shuffled_batches(x, 10, g))
    assert [len(b) for b in batches] == [10] * 10  # 101 rows: the last single row dropped
    seen = torch.cat(batches)[:, 0].long()
    assert seen.unique().numel() == 100 and not torch.equal(seen, torch.arange(100))
    subset = list(estimator._shuffled_batches(x, 8, torch.Generator().manual_seed(1), 30))
    assert [len(b) for b in subset] == [8, 8, 8, 6]
    assert torch.cat(subset)[:, 0].unique().numel() == 30
