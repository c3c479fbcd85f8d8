"""``tell evaluate`` and ``tell explain`` against a real S3 server (SeaweedFS on loopback) (#5)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.commit import writer as commit
from jobs.config import EvaluateJob, ExplainJob
from jobs.model import save_model
from jobs.report import evaluate, explain
from tell.encoders import EncoderSpec
from tell.errors import TellDataError
from tell.io import embeddings_to_table
from tell.metrics import clustering_scores
from tell.model import TELLNet

pytestmark = pytest.mark.integration


def _put(loc: storage.Location, table: pa.Table) -> None:
    pq.write_table(table, loc.path, filesystem=loc.filesystem)


def test_evaluate_joins_labels_and_writes_json_on_s3(s3_bucket):
    rng = np.random.default_rng(0)
    n = 500
    ids = np.arange(n, dtype=np.int64)
    y = rng.integers(0, 5, n)
    cluster = np.where(rng.random(n) < 0.7, y, rng.integers(0, 5, n)).astype(np.int32)
    run = storage.resolve(f"{s3_bucket}/assignments/run-1")
    assignments = pa.table(
        {"id": ids, "cluster": cluster, "distance": rng.random(n).astype(np.float32)}
    )
    attempt = commit.start_attempt(run)
    parts = []
    for i, part in enumerate(np.array_split(np.arange(n), 2)):
        writer = commit.PartWriter(attempt, commit.ASSIGNED, f"part-{i}.parquet")
        writer.write(assignments.take(pa.array(part)))
        parts.append(writer.close())
    job = EvaluateJob(assignments=run.uri, data=f"{s3_bucket}/data", out=f"{s3_bucket}/eval.json")
    with pytest.raises(TellDataError, match="not a committed assignment"):
        evaluate.main(job)  # staged, not yet committed
    commit.commit(attempt, input_rows=n, parts=parts)
    _put(
        storage.resolve(f"{s3_bucket}/data/part-0.parquet"),
        embeddings_to_table(np.zeros((n, 2)), ids=ids[::-1], labels=y[::-1]),
    )
    result = evaluate.main(job)
    assert result["acc"] == pytest.approx(clustering_scores(y, cluster)["acc"])
    assert result["rows"] == n and result["unmatched_rows"] == 0
    written = json.loads(storage.read_bytes(storage.resolve(f"{s3_bucket}/eval.json")))
    assert written["nmi"] == pytest.approx(result["nmi"])


def test_explain_reads_model_and_data_from_s3(s3_bucket, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    texts = [f"row <{i}>" for i in range(200)]
    save_model(f"{s3_bucket}/model", TELLNet(EncoderSpec("identity", 6), 4), {"epoch": 3})
    _put(storage.resolve(f"{s3_bucket}/text/part-0.parquet"), embeddings_to_table(x, texts=texts))
    job = ExplainJob(
        model=f"{s3_bucket}/model",
        data=f"{s3_bucket}/text",
        out=str(tmp_path / "report"),
        text_column="text",
        sample_rows=150,
    )
    summary = explain.main(job)
    page = open(summary["report"], encoding="utf-8").read()
    assert summary["sample_rows"] == 150 and "row &lt;" in page and "<th>text</th>" in page
