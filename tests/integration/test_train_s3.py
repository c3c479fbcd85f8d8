"""Training reads from and checkpoints to a real S3 server (SeaweedFS on loopback) (#3)."""

import pyarrow.parquet as pq
import pytest

from jobs import storage, train
from jobs.config import TrainJob
from jobs.model_store import load_model
from tell.config import TrainConfig
from tell.datasets import make_spherical_blobs
from tell.io import embeddings_to_table, write_parquet_files

pytestmark = pytest.mark.integration

K = 8


@pytest.fixture(scope="module")
def blobs_dir(tmp_path_factory):
    data = make_spherical_blobs(6000, 16, K, seed=3)
    directory = tmp_path_factory.mktemp("blobs")
    write_parquet_files(embeddings_to_table(data.X, labels=data.y), directory, n_files=3)
    return directory, data


def test_train_from_and_checkpoint_to_s3(ray_cluster_s3, blobs_dir, s3_bucket):
    data_dir, _ = blobs_dir
    loc = storage.resolve(f"{s3_bucket}/input")
    for i, path in enumerate(sorted(data_dir.glob("*.parquet"))):
        pq.write_table(
            pq.read_table(path), loc.join(f"part-{i}.parquet").path, filesystem=loc.filesystem
        )
    cfg = TrainConfig(k=K, epochs=2, batch_size=256, seed=0)
    summary = train.main(
        TrainJob(data=f"{s3_bucket}/input", out=f"{s3_bucket}/out", name="s3run"), cfg
    )
    assert summary["model"] == f"{s3_bucket}/out/s3run/model"
    _, meta = load_model(summary["model"])
    assert meta["epoch"] == 1
    assert storage.list_files(storage.resolve(f"{s3_bucket}/out/runs/s3run"), suffix=".json")
