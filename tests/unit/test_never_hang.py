"""Issue 13, the parts that need no Ray: a bounded connect to a cluster, batch sizing that
trains every row, refusing a run that never trained, and the smaller checks (an output that
is a file, a list column beside a fixed-size one, NaN labels, manifest row totals)."""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import runtime, storage
from jobs.faults import assign_delay_s, fine_fault, maybe_inject_fault, parse_fault
from jobs.input.inspect import open_input
from jobs.model import publish
from jobs.report.contingency import Contingency
from jobs.train.driver import padding_rows
from jobs.train.split import PartitionWork
from jobs.train.worker import local_batch_rows
from tell import TELL, checkpoint
from tell.errors import TellConfigError, TellDataError, TellStorageError

# ------------------------------------------------------------------ connecting to a cluster


def test_closed_port_fails_within_the_bound_with_one_line(closed_port):
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(runtime.ClusterError) as caught:
        runtime.probe_address(f"127.0.0.1:{port}", timeout_s=2.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10, elapsed  # retried for the bound, then gave up
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:{port}")
    assert "refused" in message.lower()


def test_a_listening_port_passes_the_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        host, port = server.getsockname()
        runtime.probe_address(f"{host}:{port}", timeout_s=2.0)
        runtime.probe_address(f"ray://{host}:{port}", timeout_s=2.0)
    runtime.probe_address("auto")  # left to Ray: it reads its own temp directory


@pytest.mark.parametrize("address", ["no-port-here", "host:", "http//x:abc"])
def test_an_address_without_a_port_is_refused(address):
    with pytest.raises(runtime.ClusterError, match="is not an address of a Ray cluster"):
        runtime.probe_address(address, timeout_s=1.0)


# ------------------------------------------------------------------ every row trains


@pytest.mark.parametrize(
    ("batch_size", "world", "rows_per_worker", "expected"),
    [(256, 1, 3, 3), (256, 2, 20, 20), (256, 3, 33_334, 85), (256, 4, 1, 1), (1, 4, 10, 1)],
)
def test_a_batch_never_exceeds_the_shard(batch_size, world, rows_per_worker, expected):
    assert local_batch_rows(batch_size, world, rows_per_worker) == expected


@pytest.mark.parametrize(("rows", "workers"), [(3, 1), (3, 2), (3, 4), (100_000, 3), (40, 3)])
def test_padding_makes_the_rows_split_evenly(rows, workers):
    pad = padding_rows(rows, workers)
    assert 0 <= pad < workers and (rows + pad) % workers == 0


def _checkpoint(tmp_path, history, dead):
    model = TELL(2, max_iter=1, batch_size=4, random_state=0).fit(
        np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    )
    meta = {"epoch": len(history) - 1, "history": history, "metrics": {"dead_centers": dead}}
    directory = tmp_path / "ckpt"
    checkpoint.save(model.model_, str(directory), meta)
    return directory


@pytest.mark.parametrize(
    ("history", "dead", "match"),
    [
        ([{"epoch": 0, "rows": 0}], 2, r"epoch\(s\) \[0\] saw no rows"),
        ([{"epoch": 0, "rows": 5}, {"epoch": 1, "rows": 0}], 0, r"epoch\(s\) \[1\] saw no rows"),
        ([{"epoch": 0, "rows": 5}], 2, "all 2 centers are dead"),
    ],
)
def test_a_run_that_never_trained_is_not_published(tmp_path, history, dead, match):
    directory = _checkpoint(tmp_path, history, dead)
    with pytest.raises(TellDataError, match=match):
        publish(directory, str(tmp_path / "out"), "run")
    assert not (tmp_path / "out").exists()
    publish(_checkpoint(tmp_path / "ok", [{"epoch": 0, "rows": 3}], 1), str(tmp_path), "ok")


def test_fault_specs():
    assert parse_fault("record:dir=/x") == ("record", {"dir": "/x"})
    assert parse_fault("mark:epoch=1:step=0:marker=/m:delay_s=0.1")[0] == "mark"
    with pytest.raises(TellConfigError, match="TELL_FAULT_INJECT must look like"):
        parse_fault("mark:epoch=1")
    # the two-level job's fault is only the fine fits': the train loop ignores it
    assert fine_fault("fine:marker=/m:delay_s=6") == "fine:marker=/m:delay_s=6"
    assert fine_fault("record:dir=/x") is None and fine_fault(None) is None
    batches = [torch.ones(2, 3)]
    assert list(maybe_inject_fault(iter(batches), "fine:marker=/m", rank=0, epoch=0)) == batches
    # the assignment actors' fault: a delay per batch, which neither the train loop nor the
    # fine fits apply
    assert assign_delay_s("assign:delay_s=0.5") == 0.5
    assert assign_delay_s("fine:marker=/m:delay_s=6") == 0.0 and assign_delay_s(None) == 0.0
    assert fine_fault("assign:delay_s=0.5") is None
    assert list(maybe_inject_fault(iter(batches), "assign:delay_s=9", rank=0, epoch=0)) == batches


def test_the_fine_fault_marks_and_waits_the_first_time_only(tmp_path, monkeypatch):
    from jobs import faults
    from jobs.train import two_level  # its fine-fit runner applies the fault

    waits, marks = [], []
    monkeypatch.setattr(faults.time, "sleep", waits.append)
    monkeypatch.setattr(
        faults, "_write_node_id", lambda path: (marks.append(path), open(path, "w").close())
    )
    monkeypatch.setattr(two_level, "run_partition", lambda work, threads, *pieces: [work.part])
    spec = f"fine:marker={tmp_path / 'm'}:delay_s=6"
    fit, count = PartitionWork(3, (3,), shares=(2,)), PartitionWork(3, (3,))
    assert two_level.run_partition_with_fault(spec, count, 1) == [3]  # counting: untouched
    assert marks == [] and waits == []
    assert two_level.run_partition_with_fault(spec, fit, 1) == [3]
    assert marks == [str(tmp_path / "m-part-3")] and waits == [6.0]
    assert two_level.run_partition_with_fault(spec, fit, 1) == [3]  # the retry: at once
    assert len(marks) == 1 and waits == [6.0]


# ------------------------------------------------------------------ smaller checks


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path):
    existing = tmp_path / "out.parquet"
    existing.write_bytes(b"x")
    with pytest.raises(TellStorageError, match=r"is a file; the output must be a directory"):
        storage.check_access(storage.resolve(str(existing)), write=True)
    storage.check_access(storage.resolve(str(tmp_path / "new")), write=True)


def test_a_list_column_beside_a_fixed_size_one_names_both_types(tmp_path):
    x = np.random.default_rng(0).random((4, 16), dtype=np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16)
    ragged = pa.array(x.astype(np.float64).tolist(), pa.list_(pa.float64()))
    pq.write_table(pa.table({"e": fixed}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"e": ragged}), tmp_path / "b.parquet")
    with pytest.raises(TellDataError) as caught:
        open_input(str(tmp_path), "e")
    message = str(caught.value)
    assert "has None values" not in message
    assert re.search(r"is list<\w+: double> \(variable length\) in", message), message
    assert "fixed_size_list<element: float>[16] (fixed width) in" in message


def test_nan_labels_count_as_unlabelled():
    tally = Contingency()
    labels = pa.array([0.0, 0.0, 1.0, float("nan"), None, 1.0])
    tally.add(pa.array([0, 0, 1, 1, 0, 1]), pa.array([0.1] * 6), labels)
    table = tally.table(2)
    assert table.sum() == 4 and table.shape == (2, 2)  # NaN is no third class
    assert tally.sizes(2).tolist() == [3, 3]  # but its row is still counted and assigned


def test_manifest_row_totals_must_match_its_files(tmp_path):
    from jobs.commit import writer as commit
    from jobs.config import EvaluateJob
    from jobs.report import evaluate

    table = pa.table(
        {
            "id": np.arange(6),
            "cluster": pa.array([0, 1] * 3, pa.int32()),
            "distance": pa.array([0.1] * 6, pa.float32()),
            "label": [0, 1] * 3,
        }
    )
    run = tmp_path / "run"
    attempt = commit.start_attempt(storage.resolve(str(run)))
    part = commit.PartWriter(attempt, commit.ASSIGNED, "part-0.parquet")
    part.write(table)
    commit.commit(attempt, input_rows=6, parts=[part.close()], metadata={"n_clusters": 2})
    assert evaluate.main(EvaluateJob(assignments=str(run)))["rows"] == 6
    path = run / commit.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["rows"] = {"input": 9, "assigned": 9, "rejected": 0}
    path.write_text(json.dumps(manifest))
    with pytest.raises(TellDataError, match=r"says rows .* but the files it lists hold 6 assigned"):
        evaluate.main(EvaluateJob(assignments=str(run)))


def test_duplicated_ids_are_noticed_in_bounded_memory():
    from jobs.assign import ids

    unique = pa.table({"id": np.arange(10_000) * 7, "day": ["d"] * 10_000})
    halves = [ids.sketch(unique.slice(0, 5_000), ("id",)), ids.sketch(unique.slice(5_000), ("id",))]
    merged = ids.merge(halves)
    assert len(merged) == ids.SKETCH_SIZE  # bounded, whatever the rows
    assert ids.duplicated_ids_message(merged, 10_000, ("id",)) is None
    twice = ids.merge([merged, ids.sketch(unique, ("id",))])  # every file given twice
    message = ids.duplicated_ids_message(twice, 20_000, ("id",))
    assert message and "about" in message and "(estimated)" in message
    small = ids.sketch(pa.table({"id": [1, 2, 2, 3]}), ("id",))
    assert "hold 3 distinct values in 4 rows" in ids.duplicated_ids_message(small, 4, ("id",))
    pair = ids.sketch(pa.table({"a": [1, 1], "b": ["x", "y"]}), ("a", "b"))  # both columns
    assert ids.duplicated_ids_message(pair, 2, ("a", "b")) is None


def test_the_heartbeat_keeps_the_latest_sent_beat_whatever_order_they_arrive_in():
    """Beats from two threads of the driver (a stage's beating thread and the main one) may
    reach the actor out of order: the stall line must name the later one."""
    from jobs.watchdog import Heartbeat

    heart = Heartbeat()
    heart.beat("started the fine fits", sent_at=20.0)
    heart.beat("fitting the coarse level", sent_at=10.0)  # sent earlier, arrived later
    idle_s, last = heart.since()
    assert last == "started the fine fits" and idle_s < 1.0  # the late beat is progress too
