"""The exactly-once commit protocol of ``tell assign`` on local directories (issue #4).

No Ray here: write tasks are simulated with :class:`jobs.commit.PartWriter`.
"""

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import storage
from jobs.commit import reader
from jobs.commit import writer as commit
from tell.errors import TellDataError, TellStorageError
from tests.commit_faults import dies_after_first_promotion


def _rows(ids, cluster=0):
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "cluster": np.full(n, cluster, np.int32),
            "distance": np.full(n, 0.5, np.float32),
            "runner_up": np.full(n, 1, np.int32),
            "margin": np.full(n, 0.25, np.float32),
        }
    )


def _rejected(ids, reason="non-finite value"):
    return pa.table({"id": np.asarray(ids, np.int64), "reason": [reason] * len(ids)})


def _stage(attempt, name, assigned=(), rejected=()):
    """One simulated write task; returns the parts it reports."""
    parts = []
    for kind, tables in ((commit.ASSIGNED, assigned), (commit.REJECTED, rejected)):
        writer = commit.PartWriter(attempt, kind, name)
        for table in tables:
            writer.write(table)
        part = writer.close()
        if part is not None:
            parts.append(part)
    return parts


@pytest.fixture
def unit(tmp_path):
    return storage.resolve(str(tmp_path / "out" / "run-1"))


def _commit_ids(unit, ids, *, batches=2, reject=()):
    attempt = commit.start_attempt(unit)
    chunks = np.array_split(np.asarray(ids), batches)
    parts = []
    for i, chunk in enumerate(chunks):
        parts += _stage(attempt, f"part-{i}.parquet", assigned=[_rows(chunk)])
    if len(reject):
        parts += _stage(attempt, "part-r.parquet", rejected=[_rejected(reject)])
    manifest = commit.commit(
        attempt,
        input_rows=len(ids) + len(reject),
        parts=parts,
        metadata={"run_id": unit.name},
        rejected_reasons={"non-finite value": len(reject)},
    )
    return attempt, manifest


def test_counts_reconcile_and_manifest_lists_exactly_the_files(unit):
    attempt, manifest = _commit_ids(unit, range(100), reject=[1000, 1001, 1002])
    on_disk = json.loads(storage.read_bytes(unit.join("_SUCCESS")))
    assert on_disk == manifest
    assert manifest["rows"] == {"input": 103, "assigned": 100, "rejected": 3}
    assert manifest["attempt"] == attempt.attempt_id and manifest["run_id"] == "run-1"
    assert manifest["rejected_reasons"] == {"non-finite value": 3}
    assert sum(f["rows"] for f in manifest["files"]) == 100
    # promoted out of staging: beside _SUCCESS, rejected rows under _rejected/
    assert all(f["path"].startswith("part-") for f in manifest["files"])
    assert all(f["path"].startswith("_rejected/part-") for f in manifest["rejected_files"])
    # only committed assigned parts end in .parquet (readers that keep *.parquet, #12)
    assert all(f["path"].endswith(".parquet.rejected") for f in manifest["rejected_files"])
    assert all(f["path"].endswith(".parquet") for f in manifest["files"])
    assert commit.staged_files(unit) == [] and not storage.exists(unit.join("_staging"))
    assert manifest["format_version"] == 2 and manifest["partition_by"] == []
    assert manifest["tell_version"] and manifest["created"].endswith("+00:00")

    assigned = reader.read_committed(unit.uri)
    assert sorted(assigned["id"].to_pylist()) == list(range(100))
    assert "reason" not in assigned.column_names
    everything = reader.read_committed(unit, include_rejected=True)
    assert everything.num_rows == 103
    bad = everything.filter(everything["reason"].is_valid())
    assert sorted(bad["id"].to_pylist()) == [1000, 1001, 1002]
    assert bad["cluster"].null_count == 3
    only = reader.read_committed(unit, columns=["id", "cluster"])
    assert only.column_names == ["id", "cluster"]


def test_mismatch_refuses_to_commit(unit):
    attempt = commit.start_attempt(unit)
    parts = _stage(attempt, "p.parquet", assigned=[_rows(range(10))])
    with pytest.raises(commit.RowCountMismatch, match=r"11 rows in, 10 assigned \+ 0 rejected"):
        commit.commit(attempt, input_rows=11, parts=parts)
    assert reader.read_manifest(unit) is None
    with pytest.raises(TellDataError, match="not a committed assignment"):
        reader.read_committed(unit)


def test_footer_counts_beat_the_writers_word(unit):
    attempt = commit.start_attempt(unit)
    (part,) = _stage(attempt, "p.parquet", assigned=[_rows(range(10))])
    lying = commit.Part(part.path, 11, part.kind)
    with pytest.raises(TellDataError, match="holds 10 rows but its writer reported 11"):
        commit.commit(attempt, input_rows=11, parts=[lying])
    assert reader.read_manifest(unit) is None


@pytest.mark.parametrize("bad", ["other/p.parquet", "_staging/someone-else/p.parquet"])
def test_parts_outside_the_attempt_are_refused(unit, bad):
    attempt = commit.start_attempt(unit)
    with pytest.raises(TellDataError, match="outside attempt"):
        commit.commit(attempt, input_rows=1, parts=[commit.Part(bad, 1)])


def test_same_part_twice_is_refused(unit):
    attempt = commit.start_attempt(unit)
    (part,) = _stage(attempt, "p.parquet", assigned=[_rows(range(5))])
    with pytest.raises(TellDataError, match="listed twice"):
        commit.commit(attempt, input_rows=10, parts=[part, part])


def test_rerun_replaces_never_adds(unit):
    _commit_ids(unit, range(50))
    second, manifest = _commit_ids(unit, range(50, 80), batches=3)
    table = reader.read_committed(unit)
    assert sorted(table["id"].to_pylist()) == list(range(50, 80))
    assert manifest["attempt"] == second.attempt_id
    listed = {f["path"] for f in manifest["files"]}
    assert set(commit.part_files(unit)) == listed  # the old commit's files were deleted
    assert commit.staged_files(unit) == []
    assert _plain_ids(unit) == list(range(50, 80))


def test_crashed_attempt_leftovers_are_ignored_then_collected(unit):
    good, _ = _commit_ids(unit, range(20))
    crashed = commit.start_attempt(unit)
    _stage(crashed, "p.parquet", assigned=[_rows(range(1000, 1100))])  # never committed
    # a half-written file of the crashed attempt
    with open(f"{unit.path}/{crashed.prefix}/torn.parquet", "wb") as f:
        f.write(b"PAR1 not really")
    assert sorted(reader.read_committed(unit)["id"].to_pylist()) == list(range(20))
    assert _plain_ids(unit) == list(range(20))  # plain readers skip the staging prefix
    assert reader.read_manifest(unit)["attempt"] == good.attempt_id
    _, manifest = _commit_ids(unit, range(20))  # the next commit collects the leftovers
    assert not any(crashed.attempt_id in rel for rel in commit.staged_files(unit))
    assert reader.read_committed(unit).num_rows == 20 == manifest["rows"]["assigned"]


def test_failed_rerun_keeps_the_previous_commit(unit):
    good, _ = _commit_ids(unit, range(30))
    retry = commit.start_attempt(unit)
    parts = _stage(retry, "p.parquet", assigned=[_rows(range(29))])
    with pytest.raises(commit.RowCountMismatch):
        commit.commit(retry, input_rows=30, parts=parts)
    assert reader.read_manifest(unit)["attempt"] == good.attempt_id
    assert sorted(reader.read_committed(unit)["id"].to_pylist()) == list(range(30))


def test_orphan_files_of_retried_tasks_are_not_committed(unit):
    attempt = commit.start_attempt(unit)
    parts = _stage(attempt, "p0.parquet", assigned=[_rows(range(10))])
    _stage(attempt, "p0-failed-try.parquet", assigned=[_rows(range(10))])  # not reported
    manifest = commit.commit(attempt, input_rows=10, parts=parts)
    assert [f["path"] for f in manifest["files"]] == [attempt.promoted(parts[0].path)]
    assert reader.read_committed(unit).num_rows == 10
    assert commit.staged_files(unit) == []  # the orphan was deleted
    assert commit.part_files(unit) == [attempt.promoted(parts[0].path)]


def test_damaged_commit_is_reported(unit):
    _, manifest = _commit_ids(unit, range(10))
    storage.delete_tree(unit.join(manifest["files"][0]["path"]))
    with pytest.raises(TellDataError, match="missing; the run is damaged"):
        reader.read_committed(unit)


def test_manifest_from_elsewhere_is_refused(unit):
    storage.write_bytes(unit.join("_SUCCESS"), b"")
    with pytest.raises(TellDataError, match="not valid JSON"):
        reader.read_committed(unit)
    storage.write_bytes(unit.join("_SUCCESS"), b'{"format": "spark"}')
    with pytest.raises(TellDataError, match="not a tell assignment manifest"):
        reader.read_committed(unit)


def test_write_failure_is_one_storage_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    unit = storage.resolve(str(tmp_path / "blocker" / "run"))
    attempt = commit.start_attempt(unit)
    writer = commit.PartWriter(attempt, commit.ASSIGNED, "p.parquet")
    with pytest.raises(TellStorageError) as info:
        writer.write(_rows(range(3)))
    assert "\n" not in str(info.value) and "blocker" in str(info.value)
    writer.abort()


def test_empty_writer_writes_nothing(unit):
    attempt = commit.start_attempt(unit)
    writer = commit.PartWriter(attempt, commit.REJECTED, "p.parquet")
    writer.write(_rejected([]))
    assert writer.close() is None
    assert not storage.exists(unit)


def test_committed_units(tmp_path):
    """Which partitions of an incremental run are committed (grouping the input into
    partitions is tests/unit/test_input.py's)."""
    units = ["dt=2026-11-28", "dt=2026-11-29/hour=03"]
    run = storage.resolve(str(tmp_path / "out" / "nightly"))
    _commit_ids(run.join("dt=2026-11-28"), range(5))
    done = reader.committed_units(run, units)
    assert done["dt=2026-11-28"]["rows"]["assigned"] == 5
    assert done["dt=2026-11-29/hour=03"] is None


def test_a_reported_part_that_vanished_before_the_commit_commits_nothing(unit):
    """A part its writer reported but storage no longer has (lost, or a failing server that
    answers 404): one storage error that says so, and no manifest."""
    attempt = commit.start_attempt(unit)
    parts = _stage(attempt, "part-0.parquet", assigned=[_rows(range(10))])
    (unit.join(parts[0].path)).filesystem.delete_file(unit.join(parts[0].path).path)
    with pytest.raises(TellStorageError, match="written by this attempt but is missing when"):
        commit.commit(attempt, input_rows=10, parts=parts)
    assert reader.read_manifest(unit) is None


# ------------------------------------------------------------- plain Parquet readers (#12)


def _plain_ids(unit) -> list[int]:
    """The ids a plain Parquet reader finds in the run directory (pyarrow.dataset and pandas
    must agree; neither knows the manifest)."""
    import pandas as pd
    import pyarrow.dataset as ds

    by_dataset = ds.dataset(unit.path, format="parquet", partitioning="hive").to_table()
    by_pandas = pd.read_parquet(unit.path)
    assert by_dataset.num_rows == len(by_pandas)
    return sorted(by_dataset["id"].to_pylist())


def test_plain_readers_see_exactly_the_committed_rows(unit):
    _commit_ids(unit, range(100), reject=[1000, 1001])
    assert _plain_ids(unit) == list(range(100))  # no rejected row, no staged row
    import pyarrow.dataset as ds

    table = ds.dataset(unit.path).to_table()
    assert "reason" not in table.column_names and table["cluster"].type == pa.int32()


def test_a_crash_during_promotion_is_repaired_by_the_next_attempt(unit, monkeypatch):
    """Killed after promoting some files of a re-run, before _SUCCESS: tell's reader keeps
    the old commit; plain readers see extra files until the next attempt's repair, which
    restores exactly the commit."""
    _, first = _commit_ids(unit, range(40))
    crashing = commit.start_attempt(unit)
    parts = _stage(crashing, "p0.parquet", assigned=[_rows(range(100, 120))])
    parts += _stage(crashing, "p1.parquet", assigned=[_rows(range(120, 140))])
    with dies_after_first_promotion(monkeypatch):
        commit.commit(crashing, input_rows=40, parts=parts)
    assert reader.read_manifest(unit)["attempt"] == first["attempt"]
    assert sorted(reader.read_committed(unit)["id"].to_pylist()) == list(range(40))
    assert len(_plain_ids(unit)) == 60  # the window plain Parquet cannot close
    deleted = commit.repair(unit, reader.read_manifest(unit))
    assert deleted and _plain_ids(unit) == list(range(40))
    assert commit.staged_files(unit) == []


def test_partitioned_by_cluster_layout(unit):
    """--partition-by cluster: cluster=J/ directories without the column; tell's reader
    and plain hive readers give every row its cluster back."""
    attempt = commit.start_attempt(unit)
    parts = []
    for cluster, ids in ((0, range(10)), (3, range(10, 25))):
        writer = commit.PartWriter(attempt, commit.ASSIGNED, "part-0.parquet", cluster)
        writer.write(_rows(ids, cluster).drop_columns(["cluster"]))
        parts.append(writer.close())
    manifest = commit.commit(attempt, input_rows=25, parts=parts, metadata={
        "columns": ["id", "cluster", "distance", "runner_up", "margin"]})  # fmt: skip
    assert manifest["partition_by"] == ["cluster"]
    assert sorted(f["path"] for f in manifest["files"]) == [
        "cluster=0/part-0.parquet", "cluster=3/part-0.parquet"]  # fmt: skip
    table = reader.read_committed(unit)
    assert table.column_names == ["id", "cluster", "distance", "runner_up", "margin"]
    assert table["cluster"].type == pa.int32()
    got = dict(zip(table["id"].to_pylist(), table["cluster"].to_pylist(), strict=True))
    assert got == {i: 0 if i < 10 else 3 for i in range(25)}
    import pyarrow.dataset as ds

    plain = ds.dataset(unit.path, partitioning="hive").to_table()
    assert dict(zip(plain["id"].to_pylist(), plain["cluster"].to_pylist(), strict=True)) == got
    assert set(commit.part_files(unit)) == {f["path"] for f in manifest["files"]}
