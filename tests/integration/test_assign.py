"""The batch assignment job end to end on a local Ray and a real S3 server (issue #4).

Every run must turn N input rows into exactly N output rows (assigned + rejected), with the
input's ids, once, and agree with the in-memory estimator; a storage failure must leave no
``_SUCCESS`` and a clean re-run.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.assign import driver as assign
from jobs.commit import reader, writer
from jobs.config import AssignJob
from jobs.model import save_model
from tell import TELL
from tell.datasets import make_spherical_blobs
from tell.errors import TellError
from tell.io import embeddings_to_table
from tests.plain_readers import assert_exactly, assert_nothing

pytestmark = pytest.mark.integration

N_ROWS, DIM, K, N_FILES = 20_000, 16, 8, 4
NAN_ROWS = np.array([3, 4_999, 5_000, 12_345, 19_999])
ID_OFFSET = 1_000_000  # ids differ from row numbers, so a mix-up cannot pass


@pytest.fixture(scope="module")
def fitted():
    """(estimator, X with some NaN rows, ids): a small TELL model and its data."""
    data = make_spherical_blobs(N_ROWS, DIM, K, seed=7)
    est = TELL(K, max_iter=3, batch_size=512, random_state=0).fit(data.X[:4_000])
    X = data.X.copy()
    X[NAN_ROWS, 1] = np.nan
    return est, X, np.arange(N_ROWS, dtype=np.int64) + ID_OFFSET


def _write_input(
    root: storage.Location, X: np.ndarray, ids: np.ndarray, n_files=N_FILES, labels=None
):
    table = embeddings_to_table(X, ids=ids)
    if labels is not None:
        table = table.append_column("label", pa.array(labels))
    bounds = np.linspace(0, len(ids), n_files + 1).astype(int)
    for i in range(n_files):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        loc = root.join(f"part-{i:05d}.parquet")
        if not root.is_s3:
            os.makedirs(root.path, exist_ok=True)
        pq.write_table(part, loc.path, filesystem=loc.filesystem)


def _save(est, uri):
    save_model(uri, est.model_, {"run_name": "assign-test", "epoch": est.n_iter_ - 1})
    return uri


def _job(model, data, out, run_id, **kw):
    kw.setdefault("min_rows_per_file", 6_000)
    kw.setdefault("batch_size", 4_096)
    return AssignJob(model=model, data=data, out=out, run_id=run_id, **kw)


def _check_exactly_once(unit_uri, ids):
    """N rows out, ids unique and equal to the input's; NaN rows rejected with a reason."""
    table = reader.read_committed(unit_uri, include_rejected=True)
    assert table.num_rows == len(ids)
    out_ids = np.sort(table["id"].to_numpy())
    np.testing.assert_array_equal(out_ids, np.sort(ids))  # unique + equal
    rejected = table.filter(table["reason"].is_valid())
    assert sorted(rejected["id"].to_pylist()) == sorted((NAN_ROWS + ID_OFFSET).tolist())
    assert set(rejected["reason"].to_pylist()) == {"non-finite value"}
    assert rejected["cluster"].null_count == len(NAN_ROWS)
    manifest = reader.read_manifest(storage.resolve(unit_uri))
    assert manifest["rows"] == {
        "input": len(ids),
        "assigned": len(ids) - len(NAN_ROWS),
        "rejected": len(NAN_ROWS),
    }
    return table, manifest


def _stopping_at(s3_server, when):
    def hook(event):
        if event == when:
            s3_server.crash()

    return hook


class _StopOnceAPartIsStaged:
    """Hook: when the writes start, watch the unit's staging prefix and stop the S3 server
    as soon as the first part is complete (an S3 object exists only once its upload
    finished), while the other write tasks are still writing."""

    def __init__(self, s3_server, unit: storage.Location) -> None:
        self.s3_server, self.client = s3_server, s3_server.client()
        self.bucket, _, self.prefix = unit.path.partition("/")
        self.staged: list[str] = []  # the staging keys seen when the server was stopped
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __call__(self, event: str) -> None:
        if event == "write_start":
            self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listing = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/_staging/"
            )
            keys = [o["Key"] for o in listing.get("Contents", [])]
            if any(k.endswith(writer.STAGED_SUFFIX) for k in keys):
                self.s3_server.crash()
                self.staged = keys
                return
            time.sleep(0.02)

    def wait_stopped(self) -> None:
        """Wait until the server has fully stopped (the job fails before it has exited)."""
        if self.thread.is_alive():
            self.thread.join(timeout=180)


def test_s3_exactly_once_faults_rerun_and_parity_with_predict(
    ray_cluster, s3_bucket, s3_server, fitted
):
    est, X, ids = fitted
    root = storage.resolve(s3_bucket)
    _write_input(root.join("in"), X, ids)
    model = _save(est, f"{s3_bucket}/model")
    job = _job(model, f"{s3_bucket}/in", f"{s3_bucket}/out", "daily")
    unit = storage.resolve(f"{s3_bucket}/out/daily")

    # 1. The S3 server stops mid-write, once a first part is staged (small files: many
    #    write tasks): a clear one-line error, no _SUCCESS, nothing readable.
    stopper = _StopOnceAPartIsStaged(s3_server, unit)
    try:
        with pytest.raises(TellError) as info:
            assign.main(dataclasses.replace(job, min_rows_per_file=1_000), on_event=stopper)
    finally:
        stopper.wait_stopped()
        s3_server.start()
    assert stopper.staged, "the server was never stopped: no part was staged"
    print(f"\nS3 stopped with {len(stopper.staged)} part(s) staged")
    message = str(info.value)
    assert "\n" not in message and "Nothing was committed" in message, message
    assert "S3" in message or "storage" in message.lower(), message
    storage.clear_cache()
    assert not storage.exists(unit.join(writer.MANIFEST_FILE))
    with pytest.raises(TellError, match="not a committed assignment"):
        reader.read_committed(unit)
    assert_nothing(unit.uri)  # plain Parquet readers (issue 12): no staged row either

    # 2. After the restart, the same run id: exactly N rows, the input's ids, once.
    summary = assign.main(job)
    assert summary["rows"] == N_ROWS and summary["rejected"] == len(NAN_ROWS)
    table, first = _check_exactly_once(unit.uri, ids)
    assigned_ids = np.delete(ids, NAN_ROWS)
    # every plain reader: the assigned rows, once (Ray Data, 3-6 s a read from S3 here, reads
    # the run after the failed re-run below, when a staged attempt lies beside the commit)
    assert_exactly(unit.uri, assigned_ids, ray_data=False)
    assert first["model"]["id"] == summary["model"] and first["run_id"] == "daily"
    assert len(first["input"]["files"]) == N_FILES and first["n_clusters"] == K

    #    Parity with the in-memory estimator on every row not closer to a tie than rounding.
    assigned = table.filter(table["reason"].is_null()).sort_by("id")
    valid = np.ones(N_ROWS, bool)
    valid[NAN_ROWS] = False
    expected = est.explain(X[valid])
    got = assigned["cluster"].to_numpy()
    clear = assigned["margin"].to_numpy() > 1e-5
    ties = int((~clear).sum())
    assert np.array_equal(got[clear], expected["cluster"][clear]), "assignment differs"
    assert int((got != expected["cluster"]).sum()) <= ties
    np.testing.assert_allclose(assigned["distance"].to_numpy(), expected["distance"], atol=1e-5)
    np.testing.assert_array_equal(assigned["runner_up"].to_numpy()[clear],
                                  expected["runner_up"][clear])  # fmt: skip
    assert assigned.schema.field("cluster").type == pa.int32()
    assert assigned.schema.field("margin").type == pa.float32()
    print(f"rows within 1e-5 of a tie: {ties} of {len(got)}")

    # 3. A re-run that fails between staging and commit leaves the previous commit intact.
    try:
        with pytest.raises(TellError) as info:
            assign.main(job, on_event=_stopping_at(s3_server, "staged"))
    finally:
        s3_server.start()
    assert "\n" not in str(info.value) and "Nothing was committed" in str(info.value)
    storage.clear_cache()
    assert reader.read_manifest(unit)["attempt"] == first["attempt"]
    assert_exactly(unit.uri, assigned_ids)  # every plain reader: the previous commit, whole

    # 4. Re-running the same run id replaces the output: still exactly N rows.
    assert assign.main(job)["rows"] == N_ROWS
    _, second = _check_exactly_once(unit.uri, ids)
    assert second["attempt"] != first["attempt"]
    assert writer.staged_files(unit) == []  # failed and replaced attempts were collected
    listed = {f["path"] for f in second["files"] + second["rejected_files"]}
    assert set(writer.part_files(unit)) == listed
    assert_exactly(unit.uri, assigned_ids, ray_data=False)  # Ray Data: read in 3

    # 5. --partition-by cluster (issue 12): cluster=J/ directories, the same guarantees.
    by_cluster = dataclasses.replace(job, run_id="daily-by-cluster", partition_by="cluster")
    hive = storage.resolve(f"{s3_bucket}/out/daily-by-cluster")
    assign.main(by_cluster)
    table, _ = _check_exactly_once(hive.uri, ids)
    _check_hive_clusters(hive.uri, table, assigned_ids, ray_data=False)  # Ray Data: below
    stopper = _StopOnceAPartIsStaged(s3_server, hive)  # a re-run dies mid-write
    try:
        with pytest.raises(TellError):
            assign.main(dataclasses.replace(by_cluster, min_rows_per_file=1_000), on_event=stopper)
    finally:
        stopper.wait_stopped()
        s3_server.start()
    assert stopper.staged
    storage.clear_cache()
    _check_hive_clusters(hive.uri, table, assigned_ids)  # every reader: the previous commit
    assign.main(by_cluster)
    table, _ = _check_exactly_once(hive.uri, ids)
    _check_hive_clusters(hive.uri, table, assigned_ids, ray_data=False)


def _check_hive_clusters(
    uri: str, committed: pa.Table, assigned_ids: np.ndarray, ray_data: bool = True
) -> None:
    """Plain readers of a --partition-by cluster run: exactly the assigned rows, each under
    the cluster tell's reader gives it, and every file inside its own cluster=J/."""
    found = assert_exactly(uri, assigned_ids, partitioned=True, ray_data=ray_data)
    ok = committed.filter(committed["reason"].is_null())
    want = dict(zip(ok["id"].to_pylist(), ok["cluster"].to_pylist(), strict=True))
    for name, got in found.items():
        assert dict(zip(got["id"].tolist(), got["cluster"].tolist(), strict=True)) == want, name
    manifest = reader.read_manifest(storage.resolve(uri))
    assert manifest["partition_by"] == ["cluster"]
    assert all(f["path"] == f"cluster={f['cluster']}/{f['path'].split('/')[-1]}"
               for f in manifest["files"])  # fmt: skip


def test_local_incremental_assigns_only_new_partitions(ray_cluster, tmp_path, fitted):
    est, X, ids = fitted
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    model = _save(est, str(tmp_path / "model"))
    half = N_ROWS // 2
    day1 = storage.resolve(str(data / "dt=2026-11-27"))
    _write_input(day1, X[:half], ids[:half], n_files=2)
    job = _job(model, str(data), str(out), "nightly", incremental=True)

    first = assign.main(job)
    assert first["partitions_assigned"] == ["dt=2026-11-27"] and first["rows"] == half
    m1 = reader.read_manifest(storage.resolve(str(out / "nightly" / "dt=2026-11-27")))

    _write_input(storage.resolve(str(data / "dt=2026-11-28")), X[half:], ids[half:], n_files=2)
    second = assign.main(job)
    assert second["partitions_assigned"] == ["dt=2026-11-28"]
    assert second["partitions_skipped"] == ["dt=2026-11-27"]
    assert second["rows"] == N_ROWS - half
    again = reader.read_manifest(storage.resolve(str(out / "nightly" / "dt=2026-11-27")))
    assert again["attempt"] == m1["attempt"]  # untouched
    tables = [
        reader.read_committed(str(out / "nightly" / day), include_rejected=True)
        for day in ("dt=2026-11-27", "dt=2026-11-28")
    ]
    all_ids = np.sort(np.concatenate([t["id"].to_numpy() for t in tables]))
    np.testing.assert_array_equal(all_ids, ids)
    # both days, plain readers of the run's root (each partition holds _SUCCESS, _rejected/)
    assert_exactly(str(out / "nightly"), np.delete(ids, NAN_ROWS), duckdb_glob="dt=*/*.parquet")
    assert sum(t.num_rows - t["reason"].null_count for t in tables) == len(NAN_ROWS)

    third = assign.main(job)  # nothing new: no Ray work, nothing rewritten
    assert third["partitions_assigned"] == [] and third["rows"] == 0


def test_cli_subprocess_on_partitioned_local_input(ray_cluster, tmp_path, fitted):
    """tell assign and tell evaluate take the same hive-partitioned --data (issue 10)."""
    est, X, ids = fitted
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    half = N_ROWS // 2  # hive-partitioned input read as a whole (not incremental)
    labels = (ids % 3).astype(np.int64)
    for day, rows in (("dt=2026-11-27", slice(None, half)), ("dt=2026-11-28", slice(half, None))):
        loc = storage.resolve(str(data / day))
        _write_input(loc, X[rows], ids[rows], n_files=2, labels=labels[rows])
    model = _save(est, str(tmp_path / "model"))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"]}
    base = [sys.executable, "-m", "jobs.cli", "assign", "--model", model, "--data", str(data)]
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [*base, "--out", str(out), "--run-id", "cli", "--min-rows-per-file", "5000"],
        capture_output=True, text=True, env=env, cwd=root, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["rows"] == N_ROWS and summary["rejected"] == len(NAN_ROWS)
    assert summary["run"] == str(out / "cli")
    _check_exactly_once(str(out / "cli"), ids)

    evaluate = [sys.executable, "-m", "jobs.cli", "evaluate", "--assignments", str(out / "cli")]
    scored = subprocess.run(
        [*evaluate, "--data", str(data)], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    metrics = json.loads(scored.stdout)
    assert metrics["rows"] == N_ROWS - len(NAN_ROWS) == metrics["labelled_rows"]
    assert metrics["unmatched_rows"] == 0 and 0.0 < metrics["acc"] <= 1.0

    bad = subprocess.run(
        [*base, "--out", str(out), "--column", "nope"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("tell assign: error: Column 'nope' not found"), bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(("n", "d", "k", "chunk"), [(1000, 16, 2, None), (70_000, 64, 300, 997)])
def test_kernel_matches_brute_force(n, d, k, chunk):
    """The chunked max/mask/max kernel equals sorting all distances (up to float ties)."""
    import torch

    from tell.assign import assign

    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    got = assign(z, c, chunk_rows=chunk)
    ranked = (2 - 2 * z @ c.T).clamp_min(0).sort(dim=1)
    clear = got.margin > 1e-5
    assert torch.equal(got.labels[clear], ranked.indices[clear, 0])
    if k > 2:
        clear &= ranked.values[:, 2] - ranked.values[:, 1] > 1e-5
    assert torch.equal(got.runner_up[clear], ranked.indices[clear, 1])
    torch.testing.assert_close(got.distance, ranked.values[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.margin, ranked.values[:, 1] - ranked.values[:, 0],
                               atol=1e-5, rtol=0)  # fmt: skip
    assert got.labels.dtype == torch.int64 and got.distance.dtype == torch.float32


# ------------------------------------------------------------------ --table-format delta


def _delta_table(uri: str) -> pa.Table:
    """What a Delta reader sees: the current version of the run's table."""
    from deltalake import DeltaTable

    loc = storage.resolve(uri)
    table = DeltaTable(loc.uri if loc.is_s3 else loc.path,
                       storage_options=storage.object_store_options(loc))  # fmt: skip
    return pa.table(table.to_pyarrow_table())


def test_s3_delta_run_is_replaced_atomically_and_keeps_its_format(ray_cluster, s3_bucket, fitted):
    """--table-format delta --partition-by cluster on S3: the Delta table holds exactly the
    assigned rows with tell's clusters; a re-run is one new version with exactly N again; a
    plain-Parquet run of the same run id is refused before Ray."""
    pytest.importorskip("deltalake")
    est, X, ids = fitted
    root = storage.resolve(s3_bucket)
    _write_input(root.join("in"), X, ids)
    model = _save(est, f"{s3_bucket}/model")
    job = _job(model, f"{s3_bucket}/in", f"{s3_bucket}/out", "delta-daily",
               table_format="delta", partition_by="cluster", min_rows_per_file=3_000)  # fmt: skip
    run = f"{s3_bucket}/out/delta-daily"
    summary = assign.main(job)
    assert summary["table_format"] == "delta" and summary["assigned"] == N_ROWS - len(NAN_ROWS)
    committed, manifest = _check_exactly_once(run, ids)
    assert manifest["table_format"] == "delta" and manifest["delta_version"] == 0
    ok = committed.filter(committed["reason"].is_null())
    want = dict(zip(ok["id"].to_pylist(), ok["cluster"].to_pylist(), strict=True))
    seen = _delta_table(run)
    assert dict(zip(seen["id"].to_pylist(), seen["cluster"].to_pylist(), strict=True)) == want
    assert seen.num_rows == len(want)  # unique ids, no rejected row

    assign.main(job)
    again = reader.read_manifest(storage.resolve(run))
    assert again["delta_version"] == 1 and again["attempt"] != manifest["attempt"]
    assert _delta_table(run).num_rows == len(want)

    with pytest.raises(TellError, match="table-format delta") as info:
        assign.main(dataclasses.replace(job, table_format="parquet"))
    assert "\n" not in str(info.value)


def test_local_incremental_delta_table_holds_each_partition_once(ray_cluster, tmp_path, fitted):
    """An incremental Delta run: each day is a table partition (dt), committed by its own
    transaction; Ray Data's read_delta and deltalake read exactly the assigned rows."""
    pytest.importorskip("deltalake")
    import ray.data

    est, X, ids = fitted
    data, out = tmp_path / "data", tmp_path / "out"
    model = _save(est, str(tmp_path / "model"))
    half = N_ROWS // 2
    _write_input(storage.resolve(str(data / "dt=2026-11-27")), X[:half], ids[:half], n_files=2)
    job = _job(model, str(data), str(out), "nightly", incremental=True, table_format="delta")
    assert assign.main(job)["partitions_assigned"] == ["dt=2026-11-27"]
    _write_input(storage.resolve(str(data / "dt=2026-11-28")), X[half:], ids[half:], n_files=2)
    assert assign.main(job)["partitions_assigned"] == ["dt=2026-11-28"]
    run = str(out / "nightly")
    seen = _delta_table(run)
    np.testing.assert_array_equal(np.sort(seen["id"].to_numpy()), np.delete(ids, NAN_ROWS))
    days = dict(zip(seen["id"].to_pylist(), seen["dt"].to_pylist(), strict=True))
    assert days[int(ids[0])] == "2026-11-27" and days[int(ids[half])] == "2026-11-28"
    assert ray.data.read_delta(run).count() == N_ROWS - len(NAN_ROWS)
    _write_input(storage.resolve(str(data / "dt=2026-11-29")), X[:10], ids[:10], n_files=1)
    with pytest.raises(TellError, match="--partition-by none") as info:  # before Ray
        assign.main(dataclasses.replace(job, partition_by="cluster"))
    assert "\n" not in str(info.value)
