"""The distributed training job on a local Ray cluster (issue #3)."""

import json

import numpy as np
import pytest
import torch

from jobs.config import TrainJob
from jobs.model import load_model
from jobs.train import driver as train
from tell.config import TrainConfig
from tell.metrics import cluster_accuracy

pytestmark = pytest.mark.integration

K = 8  # clusters of the training_blobs fixture (tests/conftest.py)


def _job(data_dir, out, name, cfg, workers=2, **kw):
    return TrainJob(data=str(data_dir), out=str(out), name=name, workers=workers, config=cfg, **kw)


@pytest.fixture(scope="module")
def clean_run(ray_cluster, training_blobs, tmp_path_factory):
    """One uninterrupted 2-worker run, shared by the tests below."""
    data_dir, _ = training_blobs
    out = tmp_path_factory.mktemp("clean")
    cfg = TrainConfig(k=K, epochs=4, batch_size=256, tol=0.0, seed=0)  # all 4 epochs
    return train.main(_job(data_dir, out, "ddp-2", cfg)), out, cfg


def test_two_workers_keep_identical_centers_and_cluster_well(clean_run, training_blobs):
    summary, out, _ = clean_run
    _, data = training_blobs
    assert summary["epochs"] == 4 and summary["rows"] == 6000
    assert summary["materialized"]  # small data: the scan kept the features (materialize auto)
    assert summary["metrics"]["replica_divergence"] == 0.0
    model, meta = load_model(summary["model"])
    assert meta["config"]["k"] == K and meta["input"]["dim"] == 16
    assert [m["epoch"] for m in meta["history"]] == [0, 1, 2, 3]  # the whole training curve
    assert all(m["replica_divergence"] == 0.0 for m in meta["history"])
    assert meta["resumed_at"] == []  # never restarted from a checkpoint
    assert meta["checkpoint_epochs"] == [3]  # default cadence (every 5): the final one only
    with torch.no_grad():
        z = model.encode(torch.from_numpy(data.X))
        labels = (z @ model.cluster.centers.T).argmax(1).numpy()
    assert cluster_accuracy(data.y, labels) >= 0.95
    # every epoch's metrics were reported and checkpointed to storage
    runs = [p for p in (out / "runs" / "ddp-2").glob("checkpoint_*") if p.is_dir()]
    assert runs, "no checkpoint persisted"
    meta_files = [json.loads((r / "metadata.json").read_text()) for r in runs]
    assert all(m["metrics"]["replica_divergence"] == 0.0 for m in meta_files)


def test_killed_worker_resumes_from_checkpoint_and_finishes(
    clean_run, training_blobs, tmp_path, monkeypatch
):
    clean, _, cfg = clean_run
    data_dir, _ = training_blobs
    marker = tmp_path / "killed"
    killed_epoch = 2
    monkeypatch.setenv(
        "TELL_FAULT_INJECT", f"kill:rank=1:epoch={killed_epoch}:step=3:marker={marker}"
    )
    # a checkpoint every epoch (the default cadence, 5, would leave none before the kill)
    summary = train.main(
        _job(data_dir, tmp_path / "faulty", "fault", cfg, max_failures=2, checkpoint_every=1)
    )
    assert marker.exists(), "the fault was not injected"
    assert summary["epochs"] == 4
    faulty_model, faulty_meta = load_model(summary["model"])
    # the history survives the restart: one entry per epoch, none lost or repeated
    assert [m["epoch"] for m in faulty_meta["history"]] == [0, 1, 2, 3]
    # It resumed from a checkpoint, once, instead of restarting from scratch (which would
    # record nothing). Every epoch ends with a checkpoint, but Ray Train registers one only
    # after its controller has collected every rank's report of that epoch (each worker
    # holds one report until the controller's next poll): the kill early in epoch 2 can take
    # rank 1's epoch-1 report with it, and then the newest checkpoint is epoch 0's. Epoch
    # 0's is always registered: rank 1 could not queue its epoch-1 report before the
    # controller took its epoch-0 one. So the loop restarts at epoch 1 or 2.
    resumed_at = faulty_meta["resumed_at"]
    assert len(resumed_at) == 1 and 1 <= resumed_at[0] <= killed_epoch, resumed_at
    print(f"\nkilled in epoch {killed_epoch}, resumed at epoch {resumed_at[0]}")
    clean_model, _ = load_model(clean["model"])
    # Same clusters found: each center of one run has a near-identical twin in the other.
    a, b = faulty_model.cluster.centers.numpy(), clean_model.cluster.centers.numpy()
    cos = a @ b.T
    assert np.all(cos.max(axis=1) > 0.99), cos.max(axis=1)


def test_checkpoint_cadence_30_epochs(ray_cluster, training_blobs, tmp_path):
    """Issue 12: with the default cadence a 30-epoch run writes a checkpoint every 5 epochs
    and after the last one (6, not 30), and only those epochs report to Ray Train, which
    holds each report until its controller polls (a report every epoch cost about 0.45 s
    each). The minimum interval is unit-tested (tests/unit/test_checkpoint_cadence.py)."""
    data_dir, _ = training_blobs
    cfg = TrainConfig(k=K, epochs=30, batch_size=1024, tol=0.0, seed=0)
    summary = train.main(_job(data_dir, tmp_path, "cadence", cfg, workers=1))
    _, meta = load_model(summary["model"])
    assert summary["epochs"] == 30 and len(meta["history"]) == 30
    assert meta["checkpoint_epochs"] == [4, 9, 14, 19, 24, 29]
    loop_s = sum(h["epoch_s"] for h in meta["history"])
    print(
        f"\n30 epochs, {len(meta['checkpoint_epochs'])} checkpoints, fit {summary['fit_s']} s "
        f"of which {loop_s:.1f} s in epochs"
    )


def test_mlp_job_follows_the_estimators_epoch_plan_and_judges_its_encoder(
    ray_cluster, training_blobs, tmp_path
):
    """Issues 10 and 11: the Ray loop runs tell/schedule.py's plan (pretraining, init,
    alternation, repair window) exactly as the estimator does for the same config, and the
    published model carries the guard's outcome and the label-free verdict."""
    from tell import TELL

    data_dir, data = training_blobs
    cfg = TrainConfig(k=K, encoder="mlp", hidden_dims=(32,), epochs=5, pretrain_epochs=2, seed=0)
    summary = train.main(_job(data_dir, tmp_path, "mlp-plan", cfg))
    _, meta = load_model(summary["model"])
    est = TELL(K, encoder="mlp", hidden_dims=(32,), max_iter=5, pretrain_epochs=2,
               random_state=0).fit(data.X)  # fmt: skip
    plan = ("epoch", "phase", "repair", "cluster_weight")
    assert [tuple(h[k] for k in plan) for h in meta["history"]] == [
        tuple(h[k] for k in plan) for h in est.history_
    ]
    assert [h["phase"] for h in meta["history"]][:3] == ["pretrain", "pretrain", "centers"]
    assert meta["outcome"]["stop_reason"] == "completed" and meta["outcome"]["restarts"] == 0
    verdict = meta["verdict"]
    assert summary["verdict"] == verdict and isinstance(verdict["helped"], bool)
    assert 0.0 <= verdict["agreement_learned"] <= 1.0 and verdict["rows"] == 5000
