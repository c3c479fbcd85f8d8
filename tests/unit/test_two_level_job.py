"""The pure parts of the two-level jobs (issue #14), without Ray: the split and the
partition fits (the library's model, center for center), the disagreement sample, the
parameters passed to both levels, the model artifact and the assignment predictor of a
two-level model."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.assign.predictor import Assigner
from jobs.model import load_assignable, load_model, model_id, publish_two_level, routing
from jobs.train import split
from jobs.train import two_level as job
from tell.config import TrainConfig
from tell.datasets import make_spherical_blobs
from tell.errors import TellCheckpointError, TellConfigError, TellDataError
from tell.io import embeddings_to_table, write_parquet_files
from tell.two_level import (
    COARSE_ROWS_PER_CENTER,
    TwoLevelModel,
    disagreement_rows,
    fit_coarse,
    fit_two_level,
)


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
    np.testing.assert_allclose(split.unit_rows(X, "x"), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(TellDataError, match=r"1 rows of x are zero vectors \(first: row 1\)"):
        split.unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), "x")
    centers = torch.eye(2)
    with pytest.raises(TellDataError, match=r"rows of f.parquet are zero vectors"):
        split.split_rows_of(np.zeros((3, 2), np.float32), centers, 2, "f.parquet")


def test_partitions_hold_about_256_mib_at_least_two_per_worker_at_most_one_per_group():
    assert split.n_partitions(20_000, 16, 16, 2) == 4  # 1.2 MB: two per worker
    assert split.n_partitions(10**7, 64, 1024, 2) == 10  # 2.56 GB / 256 MiB
    assert split.n_partitions(10**9, 1024, 1024, 8) == 1024  # one group each, at most
    assert split.n_partitions(100, 4, 3, 4) == 3
    assert split.piece_rows(10**7, 64, 10) == 2**26 // 256  # 64 MiB of features
    assert split.piece_rows(10**11, 64, 1024) == 10**11 * 1024 // 2**18  # object count cap


class LocalRunner:
    """Runs partition works in this process, in order: what PartitionRunner does on Ray."""

    def __init__(self):
        self.beats = []

    def beat(self, what):
        self.beats.append(what)

    def __call__(self, works, parts, verb):
        for work in works:
            yield split.run_partition(work, 1, *parts.pieces[work.part])
            self.beat(verb)


def _split_locally(X, coarse, n_parts, chunks):
    """What split_input gives, with the pieces themselves instead of ObjectRefs."""
    counts = np.zeros(coarse.shape[0], np.int64)
    pieces = [[] for _ in range(n_parts)]
    for rows in np.array_split(X, chunks):
        counts_, *parts = split.split_rows_of(rows.copy(), coarse, n_parts, "x")
        counts += counts_
        for p, piece in enumerate(parts):
            pieces[p].append(piece)
    return split.Split(counts, pieces)


@pytest.mark.parametrize("n_parts, chunks", [(1, 1), (3, 4), (16, 5)])
def test_the_split_and_partition_fits_give_the_library_s_model(n_parts, chunks):
    """Same coarse centers, same groups in the same row order, same shares and seeds: the
    job's distributed fit is the library's in-memory fit_two_level, center for center (up
    to float rounding: the job normalises the rows it reads once more)."""
    X = make_spherical_blobs(3000, 8, 64, seed=2).X
    X[:200] = X[0]  # a group with fewer distinct rows than its share
    k, k1, seed = 64, 16, 3
    expected = fit_two_level(X, k, n_coarse=k1, seed=seed, max_iter=4)
    coarse = fit_coarse(X, k1, min(len(X), COARSE_ROWS_PER_CENTER * k1), seed, {"max_iter": 4})
    parts = _split_locally(X, coarse, n_parts, chunks)
    runner = LocalRunner()
    model, timings = job.fit_split(parts, coarse, k, seed, {"max_iter": 4}, runner, runner)
    assert torch.equal(model.offsets, expected.offsets)
    torch.testing.assert_close(model.coarse_centers, expected.coarse_centers, rtol=0, atol=0)
    torch.testing.assert_close(model.fine_centers, expected.fine_centers, rtol=0, atol=1e-6)
    for key in ("coarse_dropped", "group_rows_min", "group_rows_max", "share_min", "share_max"):
        assert model.fit_info[key] == expected.fit_info[key], key
    assert model.fit_info["partitions"] == n_parts and set(timings) == {"shares_s", "fine_fit_s"}
    assert "started the fine fits" in runner.beats


def test_too_few_distinct_rows_are_refused_after_the_count():
    X = np.repeat(make_spherical_blobs(40, 8, 4, seed=0).X[:5], 8, axis=0)  # 5 distinct rows
    coarse = fit_coarse(X, 2, len(X), 0, {})
    runner = LocalRunner()
    with pytest.raises(TellDataError, match=r"fewer distinct rows than n_clusters=6 \(at most 5\)"):
        job.fit_split(_split_locally(X, coarse, 2, 2), coarse, 6, 0, {}, runner, runner)


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
