"""The Delta Lake log of an assignment run (jobs.commit.delta, issue #12): Delta readers see
exactly one complete commit, old or new, including through the window where a re-run
promotes its parts, and the files of the replaced commit stay readable for one commit."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest

from jobs import storage
from jobs.commit import delta, reader
from jobs.commit import writer as commit
from tell.errors import TellConfigError, TellStorageError
from tests.commit_faults import dies_after_first_promotion

deltalake = pytest.importorskip("deltalake")

SCHEMA = pa.schema(
    [("id", pa.int64()), ("cluster", pa.int32()), ("distance", pa.float32()),
     ("runner_up", pa.int32()), ("margin", pa.float32())]
)  # fmt: skip


def _rows(ids, cluster=0, *, with_cluster=True):
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    columns = {"id": ids, "cluster": np.full(n, cluster, np.int32)}
    columns |= {
        "distance": np.full(n, 0.5, np.float32),
        "runner_up": np.full(n, 1, np.int32),
        "margin": np.full(n, 0.25, np.float32),
    }
    if not with_cluster:
        del columns["cluster"]
    return pa.table(columns)


def _commit(run, ids, *, unit="", clusters=None, reject=()):
    """One attempt of a unit: assigned rows (one part, or one per cluster), committed with
    its Delta log; returns the manifest."""
    unit_loc = run.join(unit) if unit else run
    log = delta.DeltaLog(run, unit, SCHEMA, partition_by_cluster=clusters is not None)
    commit.repair(unit_loc, reader.read_manifest(unit_loc), log.referenced())
    attempt = commit.start_attempt(unit_loc)
    parts, name = [], f"part-{uuid.uuid4().hex[:8]}.parquet"  # unique, as the sink's are
    groups = [(None, ids)]
    if clusters is not None:
        groups = list(zip(clusters, np.array_split(ids, 2), strict=True))
    for cluster, chunk in groups:
        w = commit.PartWriter(attempt, commit.ASSIGNED, name, cluster)
        w.write(_rows(chunk, cluster or 0, with_cluster=cluster is None))
        parts.append(w.close())
    if len(reject):
        w = commit.PartWriter(attempt, commit.REJECTED, name)
        w.write(pa.table({"id": np.asarray(reject, np.int64), "reason": ["null"] * len(reject)}))
        parts.append(w.close())
    return commit.commit(attempt, input_rows=len(ids) + len(reject), parts=parts, log=log)


def _delta_ids(run, version=None) -> list[int]:
    table = deltalake.DeltaTable(run.path, version=version)
    return sorted(pa.table(table.to_pyarrow_table())["id"].to_pylist())


@pytest.fixture
def run(tmp_path):
    return storage.resolve(str(tmp_path / "out" / "run-1"))


def test_a_commit_is_one_delta_version_with_exactly_its_rows(run):
    manifest = _commit(run, np.arange(100), reject=[1000, 1001])
    assert manifest["table_format"] == "delta" and manifest["delta_version"] == 0
    assert _delta_ids(run) == list(range(100))  # no rejected row, no staged row
    table = deltalake.DeltaTable(run.path)
    assert pa.schema(table.schema().to_arrow()).field("cluster").type == pa.int32()
    assert sorted(reader.read_committed(run)["id"].to_pylist()) == list(range(100))


def test_a_rerun_replaces_the_table_and_keeps_the_previous_files_one_commit(run):
    first = _commit(run, np.arange(50))
    second = _commit(run, np.arange(50, 80))
    assert _delta_ids(run) == list(range(50, 80))
    assert _delta_ids(run, version=first["delta_version"]) == list(range(50))  # still readable
    third = _commit(run, np.arange(80, 90))
    assert _delta_ids(run) == list(range(80, 90))
    on_disk = set(commit.part_files(run))
    assert {f["path"] for f in third["files"]} | {f["path"] for f in second["files"]} == on_disk
    assert not on_disk & {f["path"] for f in first["files"]}  # two commits back: deleted


def test_delta_readers_never_see_a_half_promoted_rerun(run, monkeypatch):
    """Killed after promoting some parts of a re-run, before the Delta commit: Delta readers
    (unlike a plain directory listing) still see exactly the previous commit; the next
    attempt's repair removes the stray part and commits cleanly."""
    _commit(run, np.arange(40))
    unit_log = delta.DeltaLog(run, "", SCHEMA, partition_by_cluster=False)
    crashing = commit.start_attempt(run)
    parts = []
    for i, chunk in enumerate((range(100, 120), range(120, 140))):
        w = commit.PartWriter(crashing, commit.ASSIGNED, f"p{i}.parquet")
        w.write(_rows(chunk))
        parts.append(w.close())
    with dies_after_first_promotion(monkeypatch):
        commit.commit(crashing, input_rows=40, parts=parts, log=unit_log)
    assert _delta_ids(run) == list(range(40))
    assert len(commit.part_files(run)) == 2  # the stray promoted part sits beside the commit
    _commit(run, np.arange(200, 210))
    assert _delta_ids(run) == list(range(200, 210))


def test_a_failed_delta_commit_leaves_every_reader_on_the_previous_commit(run, monkeypatch):
    first = _commit(run, np.arange(30))

    def refuse(self, files, *, attempt):
        raise TellStorageError("Could not commit the Delta log (simulated).")

    monkeypatch.setattr(delta.DeltaLog, "publish", refuse)
    with pytest.raises(TellStorageError, match="simulated"):
        _commit(run, np.arange(30, 60))
    assert _delta_ids(run) == list(range(30))
    assert reader.read_manifest(run)["attempt"] == first["attempt"]
    assert set(commit.part_files(run)) == {f["path"] for f in first["files"]}  # promoted: gone


def test_a_lost_manifest_write_keeps_the_files_the_delta_log_references(run, monkeypatch):
    """The Delta commit succeeded, then _SUCCESS could not be written: Delta readers have the
    new result, so neither the failure path nor the next repair may delete its files."""
    _commit(run, np.arange(10))
    original = storage.write_bytes

    def manifest_fails(loc, data):
        if loc.name == commit.MANIFEST_FILE:
            raise TellStorageError("S3 went away (simulated).")
        original(loc, data)

    monkeypatch.setattr(storage, "write_bytes", manifest_fails)
    with pytest.raises(TellStorageError, match="simulated"):
        _commit(run, np.arange(10, 25))
    monkeypatch.setattr(storage, "write_bytes", original)
    assert _delta_ids(run) == list(range(10, 25))
    log = delta.DeltaLog(run, "", SCHEMA, partition_by_cluster=False)
    commit.repair(run, reader.read_manifest(run), log.referenced())
    assert _delta_ids(run) == list(range(10, 25))  # the repair kept what the log names


def test_partitions_are_replaced_by_their_own_transactions(tmp_path):
    """An incremental run: each hive partition is a table partition; re-committing one
    replaces only its rows; --partition-by cluster adds the cluster partition column."""
    run = storage.resolve(str(tmp_path / "run"))
    _commit(run, np.arange(10), unit="dt=2026-11-28", clusters=[0, 3])
    _commit(run, np.arange(10, 15), unit="dt=2026-11-29", clusters=[1, 2])
    _commit(run, np.arange(100, 104), unit="dt=2026-11-28", clusters=[0, 5])
    table = pa.table(deltalake.DeltaTable(run.path).to_pyarrow_table())
    assert sorted(table["id"].to_pylist()) == [*range(10, 15), *range(100, 104)]
    by_day = dict(zip(table["id"].to_pylist(), table["dt"].to_pylist(), strict=True))
    assert by_day[100] == "2026-11-28" and by_day[10] == "2026-11-29"
    assert set(table["cluster"].to_pylist()) == {0, 1, 2, 5}
    assert deltalake.DeltaTable(run.path).metadata().partition_columns == ["dt", "cluster"]


def test_hive_values():
    assert delta.hive_values("") == {}
    assert delta.hive_values("dt=2026-11-28/region=eu") == {"dt": "2026-11-28", "region": "eu"}


def test_a_partition_partitioned_unlike_the_table_is_refused(tmp_path):
    """deltalake itself would accept a partition without the table's cluster partition values
    (and read its clusters as nulls): the log refuses it in one line, the table unchanged."""
    run = storage.resolve(str(tmp_path / "run"))
    _commit(run, np.arange(10), unit="dt=2026-11-28", clusters=[0, 3])
    with pytest.raises(TellConfigError) as info:
        _commit(run, np.arange(10, 15), unit="dt=2026-11-29")  # no cluster partition
    message = str(info.value)
    assert "\n" not in message and "--partition-by" in message and run.path in message
    assert _delta_ids(run) == list(range(10))
    assert not storage.exists(run.join("dt=2026-11-29", commit.MANIFEST_FILE))
    assert commit.part_files(run.join("dt=2026-11-29")) == []  # the promoted parts went


def test_a_deltalake_failure_is_one_line(tmp_path):
    """A table deltalake cannot read (a damaged log): one line naming the table."""
    run = storage.resolve(str(tmp_path / "run"))
    _commit(run, np.arange(10))
    (tmp_path / "run" / delta.LOG_DIR / "00000000000000000000.json").write_text("not json")
    with pytest.raises(TellStorageError) as info:
        delta.DeltaLog(run, "", SCHEMA, partition_by_cluster=False).referenced()
    message = str(info.value)
    assert "\n" not in message and "Could not read the Delta log of" in message
