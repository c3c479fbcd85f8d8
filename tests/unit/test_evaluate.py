"""``tell evaluate`` on hand-made committed runs (issue #5), and the streamed scores."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.commit import writer as commit
from jobs.config import EvaluateJob
from jobs.report import evaluate
from jobs.report.contingency import Contingency, scores_from_contingency
from tell.errors import TellDataError
from tell.metrics import clustering_scores

N, K = 300, 5


def _assignments(seed: int, n: int = N, k: int = K):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    cluster = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))  # mostly right
    return {
        "id": np.arange(1000, 1000 + n, dtype=np.int64),
        "cluster": cluster.astype(np.int32),
        "distance": rng.random(n).astype(np.float32),
        "runner_up": ((cluster + 1) % k).astype(np.int32),
        "margin": rng.random(n).astype(np.float32),
        "label": y,
    }


def _commit(run_dir, columns: dict, n_files: int = 3):
    """A committed run written the way the assign job writes it (jobs.commit)."""
    table = pa.table(columns)
    attempt = commit.start_attempt(storage.resolve(str(run_dir)))
    parts = []
    for i, rows in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        writer = commit.PartWriter(attempt, commit.ASSIGNED, f"part-{i:05d}.parquet")
        writer.write(table.take(pa.array(rows)))
        parts.append(writer.close())
    commit.commit(attempt, input_rows=table.num_rows, parts=parts, metadata={"n_clusters": K})
    return run_dir


def _edit_manifest(run_dir, edit) -> None:
    path = run_dir / commit.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


def test_passed_through_labels_give_the_in_memory_scores(tmp_path):
    cols = _assignments(0)
    run = _commit(tmp_path / "out" / "run-1", cols)
    out = tmp_path / "metrics" / "eval.json"
    result = evaluate.main(EvaluateJob(assignments=str(run), out=str(out)))
    expected = clustering_scores(cols["label"], cols["cluster"])
    for key in ("acc", "nmi", "ari"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12)
    assert result["rows"] == N and result["labelled_rows"] == N and result["files"] == 3
    assert result["inertia"] == pytest.approx(float(cols["distance"].astype(np.float64).sum()))
    assert result["sizes"] == np.bincount(cols["cluster"], minlength=K).tolist()
    assert result["clusters_used"] == K and result["empty_clusters"] == 0
    top = result["per_cluster"][0]
    assert top["majority_label"] == 0 and 0.5 < top["purity"] <= 1.0
    assert json.loads(out.read_text())["acc"] == pytest.approx(result["acc"])
    table = evaluate.format_table(result)
    assert "ACC" in table and "inertia" in table and f"{N:,} rows" in table


def test_a_run_partitioned_by_cluster_scores_the_same(tmp_path):
    """Issue 12: --partition-by cluster files have no cluster column (their cluster=J/
    directory names it); evaluate scores them exactly like the flat run."""
    cols = _assignments(0)
    table = pa.table(cols)
    unit = storage.resolve(str(tmp_path / "by-cluster"))
    attempt = commit.start_attempt(unit)
    parts = []
    for j in np.unique(cols["cluster"]):
        rows = table.filter(pc.equal(table["cluster"], j)).drop_columns(["cluster"])
        writer = commit.PartWriter(attempt, commit.ASSIGNED, "part-00000.parquet", int(j))
        writer.write(rows)
        parts.append(writer.close())
    commit.commit(attempt, input_rows=N, parts=parts, metadata={"n_clusters": K})
    flat = evaluate.main(EvaluateJob(assignments=str(_commit(tmp_path / "flat", cols))))
    hive = evaluate.main(EvaluateJob(assignments=unit.uri))
    for key in ("acc", "nmi", "ari", "inertia", "sizes", "rows"):
        assert hive[key] == pytest.approx(flat[key]), key


def test_labels_are_joined_from_the_input_data_by_id(tmp_path):
    cols = _assignments(1)
    labels = cols.pop("label")
    run = _commit(tmp_path / "run", cols)
    data = tmp_path / "data"
    data.mkdir()
    order = np.random.default_rng(1).permutation(N)  # the join must not depend on row order
    pq.write_table(
        pa.table({"id": cols["id"][order], "embedding": np.zeros(N), "label": labels[order]}),
        data / "part-0.parquet",
    )
    result = evaluate.main(EvaluateJob(assignments=str(run), data=str(data)))
    expected = clustering_scores(labels, cols["cluster"])
    assert result["acc"] == pytest.approx(expected["acc"], abs=1e-12)
    assert result["ari"] == pytest.approx(expected["ari"], abs=1e-12)
    assert result["unmatched_rows"] == 0 and result["labelled_rows"] == N


def test_labels_are_joined_from_hive_partitioned_input_data(tmp_path):
    """--data takes what tell assign takes: dt=.../ partitions, read recursively (issue 10)."""
    cols = _assignments(3)
    labels = cols.pop("label")
    run = _commit(tmp_path / "run", cols)
    data = tmp_path / "data"
    for day, rows in (("dt=2026-11-28", slice(None, 100)), ("dt=2026-11-29", slice(100, None))):
        (data / day).mkdir(parents=True)
        pq.write_table(
            pa.table({"id": cols["id"][rows], "label": labels[rows]}), data / day / "part.parquet"
        )
    result = evaluate.main(EvaluateJob(assignments=str(run), data=str(data)))
    assert result["acc"] == pytest.approx(clustering_scores(labels, cols["cluster"])["acc"])
    assert result["unmatched_rows"] == 0 and result["labelled_rows"] == N


def test_a_run_without_success_manifest_is_not_committed(tmp_path):
    run = _commit(tmp_path / "run", _assignments(2))
    (run / "_SUCCESS").unlink()
    with pytest.raises(TellDataError, match="not a committed assignment: it has no _SUCCESS"):
        evaluate.main(EvaluateJob(assignments=str(run)))


def test_the_parent_of_committed_runs_is_refused_with_a_hint(tmp_path):
    _commit(tmp_path / "out" / "run-7", _assignments(2))
    with pytest.raises(TellDataError, match=r"not a committed.*Committed runs below it: \[.*run-7"):
        evaluate.main(EvaluateJob(assignments=str(tmp_path / "out")))


def test_only_the_files_the_manifest_lists_are_read(tmp_path):
    cols = _assignments(3)
    run = _commit(tmp_path / "run", cols)
    stray = pa.table({k: v[:50] for k, v in cols.items()})  # e.g. left by a failed attempt
    pq.write_table(stray, run / "part-99999.parquet")
    assert evaluate.main(EvaluateJob(assignments=str(run)))["rows"] == N


def _drop_first_file(m):
    first = m["files"][0]["path"]
    return {**m, "files": [*m["files"], {"path": first.replace("00000", "09999"), "rows": 1}]}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop_first_file, "listed in its run's manifest but does not exist"),
        (lambda m: {**m, "files": [{**m["files"][0], "rows": 7}, *m["files"][1:]]},
         "holds 100 rows but the manifest of .* records 7"),
        (lambda m: [1, 2], "not a tell assignment manifest"),
        (lambda m: {**m, "format": "spark"}, "not a tell assignment manifest"),
        (lambda m: {**m, "files": [{"size": 3}]}, "malformed file entry"),
        (lambda m: {**m, "files": [{"path": "../other/part.parquet", "rows": 3}]},
         "unsafe path outside the run"),
    ],
)  # fmt: skip
def test_damaged_runs_are_refused(tmp_path, edit, match):
    run = _commit(tmp_path / "run", _assignments(4))
    _edit_manifest(run, edit)
    with pytest.raises(TellDataError, match=match):
        evaluate.main(EvaluateJob(assignments=str(run)))


def test_missing_labels_say_how_to_get_them(tmp_path):
    cols = _assignments(5)
    del cols["label"]
    run = _commit(tmp_path / "run", cols)
    with pytest.raises(TellDataError, match="Pass --data"):
        evaluate.main(EvaluateJob(assignments=str(run)))


@pytest.mark.parametrize("seed", range(6))
def test_streamed_scores_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = rng.integers(0, int(rng.integers(1, 6)), n)
    pred = rng.integers(0, int(rng.integers(1, 8)), n)
    tally = Contingency()
    for part in np.array_split(np.arange(n), 3):  # batches see labels in any order
        tally.add(
            pa.array(pred[part]), pa.array(np.zeros(part.size)), pa.array(y[part].astype(str))
        )
    got = scores_from_contingency(tally.table(0))
    expected = clustering_scores(y, pred)
    for key in ("acc", "nmi", "ari"):
        assert got[key] == pytest.approx(expected[key], abs=1e-10), key
