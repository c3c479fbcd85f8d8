"""The pure parts of the two-level jobs (issue #14), without Ray: the memory rule, the
disagreement sample, the parameters passed to both levels, the model artifact and the
assignment predictor of a two-level model."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.assign.predictor import Assigner
from jobs.model import load_assignable, load_model, model_id, publish_two_level, routing
from jobs.train import two_level as job
from tell.config import TrainConfig
from tell.datasets import make_spherical_blobs
from tell.errors import TellCheckpointError, TellConfigError, TellDataError
from tell.io import embeddings_to_table, write_parquet_files
from tell.two_level import TwoLevelModel, disagreement_rows, fit_two_level

GIB = 2**30


def test_rows_must_fit_a_quarter_of_the_object_store_and_of_the_driver():
    job.check_rows_fit(GIB, 4 * GIB, 4 * GIB, "d")  # exactly a quarter of each: fits
    with pytest.raises(TellDataError, match=r"more than 25% of the object store \(3\.00 GiB"):
        job.check_rows_fit(GIB, 3 * GIB, 8 * GIB, "d")
    with pytest.raises(TellDataError, match=r"25% of the driver's memory"):
        job.check_rows_fit(GIB, 8 * GIB, 3 * GIB, "d")


def test_disagreement_sample_is_bounded_by_rows_and_by_scores():
    assert disagreement_rows(5_000, 256) == 5_000  # every row
    assert disagreement_rows(10**9, 256) == 20_000
    assert disagreement_rows(10**9, 1 << 20) == 4_096  # 2^32 scores
    assert disagreement_rows(10**9, 1 << 30) == 1_000  # the floor


def test_tell_params_are_what_fit_two_level_accepts():
    params = job.tell_params(TrainConfig(k=4, epochs=3, seed=7))
    assert params["max_iter"] == 3 and not {"k", "seed", "encoder", "epochs"} & set(params)
    X = make_spherical_blobs(400, 8, 4, seed=0).X
    model = fit_two_level(X, 4, n_coarse=2, seed=7, **params)  # unknown names are refused
    assert model.n_clusters == 4


def test_zero_rows_are_refused_and_others_normalised():
    X = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    np.testing.assert_allclose(job.unit_rows(X, "x"), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(TellDataError, match=r"1 rows of x are zero vectors \(first: row 1\)"):
        job.unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), "x")


@pytest.fixture
def published(tmp_path):
    """(model URI, model, rows): a two-level model with a one-center group, published."""
    X = make_spherical_blobs(600, 8, 6, seed=1).X
    model = fit_two_level(X, 6, n_coarse=2, seed=0)
    # one coarse group holds a single fine center, the other the remaining five
    offsets = torch.tensor([0, 1, 6])
    model = TwoLevelModel(model.coarse_centers, model.fine_centers, offsets, model.fit_info)
    meta = {"run_name": "r", "levels": 2, "disagreement": {"rate": 0.01, "rows": 600}}
    uri, saved = publish_two_level(model, str(tmp_path), "r", meta)
    assert saved["model"] == "two_level" and saved["n_coarse"] == 2
    return uri, model, X


def test_two_level_artifact_is_read_by_load_assignable_only(published):
    uri, model, _ = published
    loaded, meta = load_assignable(uri)
    assert isinstance(loaded, TwoLevelModel)
    assert torch.equal(loaded.offsets, model.offsets) and meta["levels"] == 2
    assert model_id(meta) == "r@two_level-k6"
    assert routing(meta) == {"levels": 2, "n_coarse": 2, "disagreement": meta["disagreement"]}
    assert routing({"epoch": 3}) == {"levels": 1}
    with pytest.raises(TellCheckpointError, match=r"two-level model .*with jobs.model.load_assign"):
        load_model(uri)


def test_predictor_writes_both_levels_and_an_inf_margin_for_a_lone_center(published):
    uri, model, X = published
    scaled = X * 3.0  # the predictor normalises
    scaled[5] = np.nan  # rejected: null results and a reason
    table = embeddings_to_table(scaled, ids=np.arange(len(X)))
    out = Assigner(uri, "embedding", 8, ("id",))(table)
    assert out.column_names == ["id", "cluster", "coarse_cluster", "distance", "runner_up",
                                "margin", "_routing_check", "reason"]  # fmt: skip
    assert [out.schema.field(c).type for c in ("cluster", "coarse_cluster", "runner_up")] == [
        pa.int32()
    ] * 3
    assert out["cluster"].null_count == 1 and out["reason"].to_pylist()[5] == "non-finite value"
    ok = np.ones(len(X), bool)
    ok[5] = False
    expected = model.explain(torch.from_numpy(X[ok]))
    np.testing.assert_array_equal(out["cluster"].to_numpy(zero_copy_only=False)[ok],
                                  expected.labels.numpy())  # fmt: skip
    coarse = out["coarse_cluster"].to_numpy(zero_copy_only=False)[ok]
    np.testing.assert_array_equal(coarse, expected.coarse_labels.numpy())
    alone = coarse == 0
    assert alone.any() and (~alone).any()
    margin = out["margin"].to_numpy(zero_copy_only=False)[ok]
    runner_up = out["runner_up"].to_numpy(zero_copy_only=False)[ok]
    assert all(math.isinf(m) for m in margin[alone]) and (runner_up[alone] == -1).all()
    assert (margin[~alone] >= 0).all() and (runner_up[~alone] >= 1).all()
    check = out["_routing_check"].to_numpy(zero_copy_only=False)[ok]  # for the sink only
    checked = check >= 0  # a random share of the rows: 0.1 x (2 + 5) / 6 here
    assert 20 < checked.sum() < 150 and set(check[~checked]) == {-1}
    exact = model.predict(torch.from_numpy(X[ok]), routed=False)[0].numpy()
    differs = (exact != expected.labels.numpy()).astype(np.int8)
    np.testing.assert_array_equal(check[checked], differs[checked])


def test_the_predictor_probes_the_groups_it_is_given(published):
    uri, model, X = published
    table = embeddings_to_table(X, ids=np.arange(len(X)))
    out = Assigner(uri, "embedding", 8, ("id",), n_probe=2)(table)
    exact = model.predict(torch.from_numpy(X), routed=False)[0].numpy()
    np.testing.assert_array_equal(out["cluster"].to_numpy(), exact)  # 2 of 2 groups: exact
    check = out["_routing_check"].to_numpy()
    assert set(check) == {-1, 0} and (check == 0).sum() > 40  # 0.2 of 600 rows checked


def test_assign_plan_checks_the_width_of_a_two_level_model(published, tmp_path):
    from jobs.assign import driver as assign
    from jobs.config import AssignJob

    uri, _, X = published
    for name, width in (("good", 8), ("narrow", 6)):
        table = embeddings_to_table(X[:, :width], ids=np.arange(len(X)))
        write_parquet_files(table, tmp_path / name, n_files=1)
    job = AssignJob(model=uri, data=str(tmp_path / "good"), out=str(tmp_path / "out"))
    p = assign.plan(job)
    assert p.n_clusters == 6 and p.columns[:2] == ("cluster", "coarse_cluster")
    assert p.n_probe == 1  # the default, within the model's 2 coarse centers
    narrow = AssignJob(model=uri, data=str(tmp_path / "narrow"), out=str(tmp_path / "out"))
    with pytest.raises(TellDataError, match=rf"has 6 values per row, but model {uri} expects 8"):
        assign.plan(narrow)


def test_n_probe_is_bounded_by_the_coarse_centers_and_refused_for_one_level(published, tmp_path):
    from jobs.assign import driver as assign
    from jobs.config import AssignJob
    from tell import checkpoint
    from tell.encoders import EncoderSpec
    from tell.model import TELLNet

    uri, _, X = published
    data = str(tmp_path / "data")
    write_parquet_files(embeddings_to_table(X, ids=np.arange(len(X))), data, n_files=1)
    job = AssignJob(model=uri, data=data, out=str(tmp_path / "out"), n_probe=2)
    assert assign.plan(job).n_probe == 2
    with pytest.raises(TellConfigError, match=r"at most the model's 2 coarse centers\. Got 3"):
        assign.plan(AssignJob(model=uri, data=data, out=str(tmp_path / "out"), n_probe=3))
    one = str(tmp_path / "one")
    checkpoint.save(TELLNet(EncoderSpec("identity", 8), 6), one, {"epoch": 1})
    with pytest.raises(TellConfigError, match=r"applies to two-level models .* Drop n_probe"):
        assign.plan(AssignJob(model=one, data=data, out=str(tmp_path / "out"), n_probe=2))
    assert assign.plan(AssignJob(model=one, data=data, out=str(tmp_path / "out"))).n_probe is None
