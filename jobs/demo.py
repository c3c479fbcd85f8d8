"""``tell demo``: the whole pipeline on bundled, labelled data, locally and offline.

A local Ray cluster, a local directory as the object store, scikit-learn's digits (or MNIST
when its tarball is cached) written as Parquet; then distributed train -> batch assign ->
evaluate -> explain, logging progress on stderr. It ends by printing where everything went
and the metrics table, the last lines on stdout (the same summary, as JSON, goes to
``<workdir>/summary.json``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jobs.assign import driver as assign
from jobs.config import AssignJob, DemoJob, EvaluateJob, ExplainJob, TrainJob
from jobs.report import evaluate, explain
from jobs.train import driver as train
from tell.config import TrainConfig
from tell.datasets import Dataset, load_digits, load_mnist, mnist_available
from tell.io import write_parquet_files

logger = logging.getLogger("tell.demo")

RUN_ID = "demo"


def _dataset(choice: str) -> Dataset:
    if choice == "mnist" or (choice == "auto" and mnist_available()):
        return load_mnist()
    return load_digits()


def _stage(name: str, fn, *args) -> Any:
    logger.info("==> %s", name)
    started = time.perf_counter()
    result = fn(*args)
    logger.info("<== %s done in %.1f s", name, time.perf_counter() - started)
    return result


def main(job: DemoJob) -> dict[str, Any]:
    root = Path(job.workdir).resolve()
    data = _dataset(job.dataset)
    data_dir = root / "data" / data.name
    if not any(data_dir.glob("*.parquet")):
        logger.info("writing %d %s rows as Parquet to %s", data.n_samples, data.name, data_dir)
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
        config=TrainConfig(
            k=data.n_classes, encoder="identity", epochs=job.epochs, batch_size=128, seed=0
        ),
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
    summary_path = root / "summary.json"
    summary = {
        "data": str(data_dir),
        "rows": data.n_samples,
        "classes": data.n_classes,
        "model": trained["model"],
        "assignments": assigned["run"],
        "report": explained["report"],
        "summary": str(summary_path),
        "metrics": {k: evaluated[k] for k in ("acc", "nmi", "ari", "inertia") if k in evaluated},
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """What ``tell demo`` prints last (the CLI prints it instead of JSON): where everything
    went, then the metrics table."""
    lines = [
        "",
        f"data        {summary['data']} ({summary['rows']} rows, {summary['classes']} classes)",
        f"model       {summary['model']}",
        f"assignments {summary['assignments']}",
        f"report      {summary['report']}",
        f"summary     {summary['summary']}",
        "",
        "metric  value",
        *(f"{k:<7} {v:.4f}" for k, v in summary["metrics"].items()),
    ]
    return "\n".join(lines)
