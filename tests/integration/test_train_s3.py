"""Training reads from and checkpoints to a real S3 server (SeaweedFS on loopback) (#3)."""

import pyarrow.parquet as pq
import pytest
import torch

from jobs import storage
from jobs.config import TrainJob
from jobs.model import load_model
from jobs.train import driver as train
from tell.config import TrainConfig
from tell.metrics import cluster_accuracy

pytestmark = pytest.mark.integration

K = 8  # clusters of the training_blobs fixture (tests/conftest.py)


def test_train_from_and_checkpoint_to_s3(ray_cluster, training_blobs, s3_bucket):
    """The billion-row path: every epoch streams the Parquet files from S3 (materialize
    never), checkpoints go to S3 (the kept-features path is tested in test_train.py)."""
    data_dir, data = training_blobs
    loc = storage.resolve(f"{s3_bucket}/input")
    for i, path in enumerate(sorted(data_dir.glob("*.parquet"))):
        pq.write_table(
            pq.read_table(path), loc.join(f"part-{i}.parquet").path, filesystem=loc.filesystem
        )
    cfg = TrainConfig(k=K, epochs=2, batch_size=256, tol=0.0, seed=0)
    job = TrainJob(
        data=f"{s3_bucket}/input",
        out=f"{s3_bucket}/out",
        name="s3run",
        materialize="never",
        config=cfg,
    )
    summary = train.main(job)
    assert summary["model"] == f"{s3_bucket}/out/s3run/model"
    assert summary["materialized"] is False and summary["rows"] == 6000
    model, meta = load_model(summary["model"])
    assert meta["epoch"] == 1
    # every row trains (#13): 23 full batches of 256 and a last one of 112
    assert [m["rows"] for m in meta["history"]] == [6000, 6000]
    assert [m["rows_skipped"] for m in meta["history"]] == [0, 0]
    with torch.no_grad():
        z = model.encode(torch.from_numpy(data.X))
        labels = (z @ model.cluster.centers.T).argmax(1).numpy()
    assert cluster_accuracy(data.y, labels) >= 0.9
    assert storage.list_files(storage.resolve(f"{s3_bucket}/out/runs/s3run"), suffix=".json")
