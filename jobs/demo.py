"""``tell demo``: the whole pipeline on bundled, labelled data, locally and offline.

A local Ray cluster, a local directory as the object store, scikit-learn's digits (or MNIST
when its tarball is cached) written as Parquet; then distributed train (the learned
encoder, ``mlp`` by default, with the library's defaults) -> batch assign -> evaluate ->
explain, one progress line per stage on stderr. Beside it, the identity encoder (plain
k-means on the raw rows: what TELL adds nothing to) is fitted in memory on the same rows
with the same defaults, so the table shows what the learned encoder adds. It ends by
printing where everything went and the metrics table, the last lines on stdout (the same
summary, as JSON, goes to ``<workdir>/summary.json``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jobs import progress
from jobs.assign import driver as assign
from jobs.config import AssignJob, DemoJob, EvaluateJob, ExplainJob, TrainJob
from jobs.report import evaluate, explain
from jobs.train import driver as train
from tell import TELL
from tell.config import TrainConfig
from tell.datasets import Dataset, load_digits, load_mnist, mnist_available
from tell.io import write_parquet_files
from tell.metrics import clustering_scores

logger = logging.getLogger("tell.demo")

RUN_ID = "demo"


def _dataset(choice: str) -> Dataset:
    if choice == "mnist" or (choice == "auto" and mnist_available()):
        return load_mnist()
    return load_digits()


def _stage(name: str, fn, *args) -> Any:
    progress.line(f"==> {name}")
    started = time.perf_counter()
    result = fn(*args)
    progress.line(f"<== {name} done in {time.perf_counter() - started:.1f} s")
    return result


def main(job: DemoJob) -> dict[str, Any]:
    root = Path(job.workdir).resolve()
    data = _dataset(job.dataset)
    data_dir = root / "data" / data.name
    if not any(data_dir.glob("*.parquet")):
        progress.line(f"writing {data.n_samples} {data.name} rows as Parquet to {data_dir}")
        table = data.to_table()
        write_parquet_files(table, data_dir, n_files=4)
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    train_job = TrainJob(
        data=str(data_dir),
        out=str(store),
        name=f"{data.name}-demo-{int(time.time())}",
        workers=job.workers,
        cpus_per_worker=job.cpus_per_worker,
        gpus_per_worker=job.gpus_per_worker,
        stall_timeout_s=job.stall_timeout_s,
        shared_filesystem=job.shared_filesystem,
        config=TrainConfig(k=data.n_classes, encoder=job.encoder, seed=0, **_overrides(job)),
    )
    trained = _stage("train", train.main, train_job)
    assigned = _stage(
        "assign",
        assign.main,
        AssignJob(
            model=trained["model"],
            data=str(data_dir),
            out=str(store / "assignments"),
            id_columns=("id", "label"),
            run_id=RUN_ID,
            workers=1,
            cpus_per_worker=job.cpus_per_worker,
            stall_timeout_s=job.stall_timeout_s,
            shared_filesystem=job.shared_filesystem,
        ),
    )
    evaluated = _stage(
        "evaluate",
        evaluate.main,
        EvaluateJob(assignments=assigned["run"], label_column="label", id_column="id"),
    )
    explained = _stage(
        "explain",
        explain.main,
        ExplainJob(
            model=trained["model"],
            data=str(data_dir),
            out=str(root / "report"),
            label_column="label",
        ),
    )
    baseline = _stage("identity", _identity, data, job)
    summary_path = root / "summary.json"
    summary = {
        "data": str(data_dir),
        "rows": data.n_samples,
        "classes": data.n_classes,
        "model": trained["model"],
        "assignments": assigned["run"],
        "report": explained["report"],
        "summary": str(summary_path),
        "encoder": job.encoder,
        "metrics": {k: evaluated[k] for k in ("acc", "nmi", "ari", "inertia") if k in evaluated},
        "identity_metrics": baseline,
        "verdict": trained.get("verdict"),
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """What ``tell demo`` prints last (the CLI prints it instead of JSON): where everything
    went, then the metrics table."""
    baseline = summary["identity_metrics"]
    lines = [
        "",
        f"data        {summary['data']} ({summary['rows']} rows, {summary['classes']} classes)",
        f"model       {summary['model']}",
        f"assignments {summary['assignments']}",
        f"report      {summary['report']}",
        f"summary     {summary['summary']}",
        "",
        f"metric  {'TELL ' + summary['encoder']:<14} identity (k-means)",
        *(
            f"{k:<7} {v:<14.4f} {baseline[k]:.4f}" if k in baseline else f"{k:<7} {v:.4f}"
            for k, v in summary["metrics"].items()
        ),
    ]
    return "\n".join(lines)


def _overrides(job: DemoJob) -> dict[str, Any]:
    """The demo's explicit settings; everything else is the library's default."""
    return {
        key: getattr(job, key)
        for key in ("epochs", "pretrain_epochs")
        if getattr(job, key) is not None
    }


def _identity(data: Dataset, job: DemoJob) -> dict[str, float]:
    """ACC/NMI/ARI of the identity encoder (k-means on the raw rows) on the same data, fitted
    in memory with the same defaults and seed: the row the learned encoder is judged by."""
    x = data.X.reshape(len(data.X), -1)
    epochs = job.epochs if job.epochs is not None else TrainConfig(k=2).epochs
    model = TELL(data.n_classes, encoder="identity", max_iter=epochs, random_state=0).fit(x)
    return clustering_scores(data.y, model.predict(x))
