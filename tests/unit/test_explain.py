"""``tell explain`` pieces that need no browser: the bounded sample, prototypes, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import ExplainJob
from jobs.input import sample
from jobs.input.inspect import open_input
from jobs.model import save_model
from jobs.report import explain
from tell.encoders import EncoderSpec
from tell.errors import TellConfigError, TellDataError
from tell.io import embeddings_to_table
from tell.model import TELLNet


def _data(directory, n=1000, d=4, row_group_size=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[3] = np.nan  # one unusable row
    directory.mkdir()
    pq.write_table(
        embeddings_to_table(x, labels=rng.integers(0, 3, n)),
        directory / "part-0.parquet",
        row_group_size=row_group_size,
    )
    return directory


def test_sample_reads_a_bounded_number_of_row_groups(tmp_path):
    info = open_input(str(_data(tmp_path / "d", row_group_size=10)), "embedding")
    assert len(sample._row_groups(info)) == 100 > sample.MAX_ROW_GROUPS
    drawn = sample.read_sample(info, ["id", "label"], 50, seed=0)
    ids = drawn.columns["id"]
    assert len(drawn.x) == len(ids) == 50 - drawn.dropped
    assert len(np.unique(ids)) == len(ids)
    # rows come from at most MAX_ROW_GROUPS row groups of 10 rows
    assert len(np.unique(ids // 10)) <= sample.MAX_ROW_GROUPS
    assert np.isfinite(drawn.x).all()


def test_sample_of_a_small_data_set_is_all_of_it_minus_bad_rows(tmp_path):
    info = open_input(str(_data(tmp_path / "d", n=120)), "embedding")
    drawn = sample.read_sample(info, ["id"], 5000, seed=0)
    assert drawn.dropped == 1 and len(drawn.x) == 119
    assert 3 not in drawn.columns["id"].tolist()


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (EncoderSpec("identity", 12), (3, 2, 6, 1)),
        (EncoderSpec("conv", 12, latent_dim=4, image_shape=(2, 6, 1)), (3, 2, 6, 1)),
        (EncoderSpec("mlp", 12, latent_dim=4, hidden_dims=(8,)), (3, 2, 6, 1)),
    ],
)
def test_prototypes_are_images_in_unit_range(spec, shape):
    images = explain.prototypes(TELLNet(spec, 3).eval(), (2, 6, 1))
    assert images.shape == shape and images.min() >= 0.0 and images.max() <= 1.0


def test_no_prototypes_without_an_image_shape():
    assert explain.prototypes(TELLNet(EncoderSpec("mlp", 12, 4, (8,)), 3), None) is None


@pytest.fixture
def model_and_data(tmp_path):
    save_model(str(tmp_path / "model"), TELLNet(EncoderSpec("identity", 4), 3), {"epoch": 0})
    return str(tmp_path / "model"), str(_data(tmp_path / "data", n=50))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"label_column": "truth"}, "label_column 'truth' is not a column of .*--label-column"),
        ({"text_column": "gloss"}, "text_column 'gloss' is not a column of .*--text-column"),
        ({"column": "label"}, "not a numeric feature column"),
    ],
)
def test_bad_columns_are_refused_with_the_key_name(tmp_path, model_and_data, change, match):
    model, data = model_and_data
    job = ExplainJob(model=model, data=data, out=str(tmp_path / "report"), **change)
    with pytest.raises(TellDataError, match=match):
        explain.main(job)
    assert not (tmp_path / "report").exists()


def test_null_labels_are_refused(tmp_path, model_and_data):
    model, _ = model_and_data
    table = pa.table({"embedding": pa.array([[1.0, 2.0, 3.0, 4.0]] * 3), "y": [1, None, 2]})
    pq.write_table(table, tmp_path / "x.parquet")
    job = ExplainJob(
        model=model, data=str(tmp_path / "x.parquet"), out=str(tmp_path / "r"), label_column="y"
    )
    with pytest.raises(TellDataError, match=r"Label column 'y' .* has null values"):
        explain.main(job)


def test_data_of_another_width_is_refused(tmp_path, model_and_data):
    model, _ = model_and_data
    pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]] * 3)}), tmp_path / "x.parquet")
    job = ExplainJob(model=model, data=str(tmp_path / "x.parquet"), out=str(tmp_path / "r"))
    with pytest.raises(TellDataError, match=r"has 2 values per row, but model .* expects 4"):
        explain.main(job)


def test_a_two_level_model_is_explained_with_its_coarse_level(tmp_path):
    """Images in pixel space, 24 fine centers under 3 coarse ones, one a group of one
    center: the report draws the fine centers as images, shows the coarse level, leaves
    the rows without a runner-up out of the margin statistics, and counts routing misses."""
    import dataclasses
    import json
    import re

    import torch

    from jobs.model import publish_two_level
    from tell.datasets import make_spherical_blobs
    from tell.two_level import TwoLevelModel, fit_two_level

    blobs = make_spherical_blobs(1200, 16, 24, seed=3)
    X = np.abs(blobs.X)  # pixel-like: non-negative, 4x4 images
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    fitted = fit_two_level(X, 24, n_coarse=3, seed=0, max_iter=3)
    offsets = torch.tensor([0, 1, 12, 24])  # group 0 holds one fine center
    model = TwoLevelModel(fitted.coarse_centers, fitted.fine_centers, offsets, fitted.fit_info)
    uri, _ = publish_two_level(model, str(tmp_path), "two", {"run_name": "two"})
    data = tmp_path / "data"
    data.mkdir()
    table = embeddings_to_table((X * 2.0).reshape(-1, 4, 4, 1), labels=blobs.y)
    pq.write_table(table, data / "part-0.parquet")  # 2 x unit rows: the report normalises
    job = ExplainJob(model=uri, data=str(data), out=str(tmp_path / "report"),
                     label_column="label")  # fmt: skip
    summary = explain.main(job)
    assert summary["levels"] == 2 and summary["n_coarse"] == 3 and summary["n_clusters"] == 24
    check = summary["routing_check"]
    assert check["n_probe"] == 1 and check["rows"] == 1200  # every row of a small sample
    assert check["rate"] == pytest.approx(model.disagreement(X))
    assert 0 < check["differs"] < 1200
    assert bool(model.explain(X).margin.isinf().any())  # rows routed to the group of one center
    html = (tmp_path / "report" / "report.html").read_text()
    assert 'id="coarse"' in html and "3 coarse centers split the 24 fine centers" in html
    assert "groups of its 1 nearest coarse center(s)" in html
    median_margin = re.search(r"<b>([^<]*)</b><span>median margin</span>", html).group(1)
    assert float(median_margin) > 0  # a number: the rows without a runner-up left out
    assert 'alt="decoded centers"' in html  # the fine centers drawn as 4x4 images
    assert json.dumps(summary)  # plain JSON for the command's stdout
    probed = explain.main(dataclasses.replace(job, out=str(tmp_path / "probed"), n_probe=2))
    assert probed["routing_check"]["rate"] == pytest.approx(model.disagreement(X, n_probe=2))
    with pytest.raises(TellConfigError, match=r"n_probe' must be at most the model's 3 coarse"):
        explain.main(dataclasses.replace(job, out=str(tmp_path / "too-many"), n_probe=4))
