"""The jobs on a real multi-node Ray cluster (issue 13): never hang, never silently succeed.

Three raylets on this machine (``ray_nodes``: a head and two worker nodes of one CPU each),
the data, model and outputs on a real S3 server (SeaweedFS on loopback), ``tell`` run as a
subprocess joined through ``RAY_ADDRESS``, like a job submitted to a cluster:

- local paths are refused on a cluster of more than one node;
- ``tell assign`` completes, exactly N rows, when another job's actors hold half the CPU of
  every node (Ray Data's listing and read tasks used to ask for a whole CPU and wait
  forever);
- a job that cannot be scheduled at all fails after ``stall_timeout_s`` with one line naming
  the pending resource demand, and commits nothing;
- a worker node removed mid-assignment: still exactly N rows;
- a worker node removed mid-training (features kept in the object store): the run resumes
  from its checkpoint and finishes, or fails with one line; either within a bound, and its
  stdout is still one JSON document;
- a worker node removed while the two-level job's fine fits run on it: a model with all k
  centers, or one line.

The node-removing tests come last and put a node back when they end.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jobs.commit import reader, writer

pytestmark = pytest.mark.integration

N_ROWS, DIM, K, N_FILES = 12_000, 16, 8, 6
TIMEOUT_S = 420  # per subprocess; the bound every case must finish within
ERROR_LINE = re.compile(r"^tell (train|assign): error: ")


def tell_command() -> list[str]:
    script = Path(sys.executable).with_name("tell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


@pytest.fixture(scope="module")
def world(ray_nodes, s3_server, tmp_path_factory):
    """A bucket with the input (N_ROWS rows, ids 7i+11, in N_FILES files) and a model."""
    from jobs.model import save_model
    from tell import TELL
    from tell.datasets import make_spherical_blobs
    from tell.io import embeddings_to_table, write_parquet_files

    root = tmp_path_factory.mktemp("multi-node")
    data = make_spherical_blobs(N_ROWS, DIM, K, seed=7)
    ids = np.arange(N_ROWS, dtype=np.int64) * 7 + 11
    write_parquet_files(embeddings_to_table(data.X, ids=ids), root / "data", N_FILES)
    est = TELL(K, max_iter=2, batch_size=512, random_state=0).fit(data.X[:2000])
    save_model(str(root / "model"), est.model_, {"run_name": "multi-node", "epoch": 1})
    client = s3_server.client()
    bucket = "tell-multi-node"
    client.create_bucket(Bucket=bucket)
    for name in ("data", "model"):
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                key = f"{name}/{path.relative_to(root / name).as_posix()}"
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return {"s3": f"s3://{bucket}", "client": client, "bucket": bucket, "ids": ids, "root": root}


def _run(argv, env, timeout_s=TIMEOUT_S) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [*tell_command(), *argv], capture_output=True, text=True, env=env, timeout=timeout_s
    )
    return done, time.monotonic() - started


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line, last on stderr; no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr[-3000:]
    assert done.stdout == "", done.stdout
    return errors[0]


def _keys(world, prefix: str) -> list[str]:
    pages = (
        world["client"]
        .get_paginator("list_objects_v2")
        .paginate(Bucket=world["bucket"], Prefix=prefix)
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _assign_argv(world, run_id: str, *extra: str) -> list[str]:
    s3 = world["s3"]
    return [
        "assign", "--model", f"{s3}/model", "--data", f"{s3}/data", "--out", f"{s3}/out",
        "--run-id", run_id, "--batch-size", "1000", "--min-rows-per-file", "1500", *extra,
    ]  # fmt: skip


def _check_exactly_once(world, run_id: str, done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is one JSON document
    assert (summary["rows"], summary["assigned"]) == (N_ROWS, N_ROWS)
    table = reader.read_committed(f"{world['s3']}/out/{run_id}", include_rejected=True)
    got = np.sort(table["id"].to_numpy())
    np.testing.assert_array_equal(got, np.sort(world["ids"]))  # no row lost, none twice


@contextlib.contextmanager
def _cpus_held(nodes: list[str], cpus: float) -> Iterator[None]:
    """Another job's actors hold ``cpus`` CPUs of each of ``nodes`` (Ray node ids)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=cpus)
    class Holder:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    holders = [
        Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
        for n in nodes
    ]
    assert sorted(ray.get([h.node.remote() for h in holders])) == sorted(nodes)
    try:
        yield
    finally:
        for holder in holders:
            ray.kill(holder)


@pytest.fixture
def half_cpu_held(ray_nodes):
    """Another job's actors hold half the CPU of every node, for the test's duration."""
    import ray

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    with _cpus_held(nodes, 0.5):
        yield len(nodes)


@pytest.fixture
def s3_job_env(ray_nodes, world):
    return dict(ray_nodes.env)


# ------------------------------------------------------------------ no node lost


def test_local_paths_are_refused_on_a_multi_node_cluster(ray_nodes, world, tmp_path):
    done, wall_s = _run(
        ["train", "--data", str(world["root"] / "data"), "--out", str(tmp_path / "out"),
         "--k", "4"], ray_nodes.env, timeout_s=180,
    )  # fmt: skip
    line = _error_line(done)
    assert re.search(r"--data \S+ is a local path, but the Ray cluster has 3 nodes", line), line
    assert "shared_filesystem" in line
    assert not (tmp_path / "out").exists()
    print(f"\nrefused in {wall_s:.1f} s: {line}")


def test_assign_completes_when_every_node_has_only_half_a_cpu_free(ray_nodes, world, half_cpu_held):
    done, wall_s = _run(
        _assign_argv(world, "half-free", "--workers", "1", "--stall-timeout-s", "180"),
        ray_nodes.env,
    )
    _check_exactly_once(world, "half-free", done)
    print(f"\n{N_ROWS} rows assigned on {half_cpu_held} half-held nodes in {wall_s:.1f} s")


@pytest.mark.parametrize("command", ["assign", "train"])
def test_a_job_that_cannot_be_scheduled_fails_naming_the_pending_demand(
    ray_nodes, world, half_cpu_held, command
):
    """Workers asking for a whole CPU when no node has one free (assignment actors; the
    training workers' placement group): one line after stall_timeout_s, naming the demand,
    nothing committed (no _SUCCESS, no model)."""
    stall_s = 8  # the demand is pending from the start: any stall names it
    extra = ("--cpus-per-worker", "1", "--stall-timeout-s", str(stall_s))
    s3 = world["s3"]
    if command == "assign":
        argv, prefix = _assign_argv(world, "stalled", *extra), "out/stalled/"
    else:
        argv = ["train", "--data", f"{s3}/data", "--out", f"{s3}/train", "--name", "stalled",
                "--k", str(K), "--workers", "2", *extra]  # fmt: skip
        prefix = "train/stalled/model/"
    done, wall_s = _run(argv, ray_nodes.env)
    line = _error_line(done)
    assert re.search(rf"No progress for \d+ s \(stall_timeout_s={stall_s}", line), line
    assert "the cluster waits for" in line and "{'CPU': 1.0}" in line, line
    assert "free per node: {'CPU': 0.5}" in line, line
    assert not [k for k in _keys(world, prefix) if k.endswith(writer.MANIFEST_FILE)]
    assert not _keys(world, "train/stalled/model/")
    assert wall_s < stall_s + 120, wall_s
    print(f"\nstalled {command} ended after {wall_s:.1f} s: {line}")


# ------------------------------------------------------------------ a node lost


def _node_of_busiest_worker() -> str:
    """A worker node with no CPU free (an assignment actor holds it)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    head = ray.get_runtime_context().get_node_id()  # the tests' driver runs on the head
    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    busy = [
        node.node_id
        for node in status.active_nodes
        if node.node_id != head and node.available_resources().get("CPU", 0) < 0.5
    ]
    return busy[0] if busy else ""


def _lose_a_node_while(nodes, argv, env, victim) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``tell`` (``argv`` without the command) and remove the worker node ``victim()``
    names as soon as it names one (polled: no event tells the test that a part was written
    or a rank started); put a node back afterwards. Returns (the run, seconds to removal)."""
    started = time.monotonic()
    command = [*tell_command(), *argv]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        node = ""
        while proc.poll() is None and not node and time.monotonic() - started < TIMEOUT_S:
            time.sleep(0.1)
            node = victim()
        if not node or proc.poll() is not None:
            code = proc.poll()  # None: still running after TIMEOUT_S
            proc.kill()
            raise AssertionError(
                f"no node was lost before the job ended (exit {code}):\n"
                f"{proc.communicate(timeout=60)[1][-3000:]}"
            )
        nodes.remove_worker(node)
        removed_s = time.monotonic() - started
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        nodes.restore()
    total_s = time.monotonic() - started
    print(f"\nnode removed at {removed_s:.1f} s; exit {proc.returncode} after {total_s:.1f} s")
    return subprocess.CompletedProcess(command, proc.returncode, out, err), removed_s


def test_node_removed_mid_assignment_still_gives_exactly_n_rows(ray_nodes, world):
    extra = ("--workers", "2", "--cpus-per-worker", "1", "--stall-timeout-s", "180")

    def victim() -> str:
        # a part being written (issue 12 names staged parts *.staged)
        staged = [k for k in _keys(world, "out/node-lost/_staging/") if k.endswith(".staged")]
        return _node_of_busiest_worker() if staged else ""

    # every batch (12 of 1,000 rows, 6 per actor) takes 1 s longer: the actors hold their
    # nodes for seconds after the first part is staged, however loaded the machine
    env = {**ray_nodes.env, "TELL_FAULT_INJECT": "assign:delay_s=1"}
    # Another job holds the head's one CPU, so both actors (1 CPU each) run on worker nodes:
    # the job's driver runs on the head, and Ray would place the first actor beside it, where
    # no node can be lost (reads and writes ask for no CPU).
    import ray

    with _cpus_held([ray.get_runtime_context().get_node_id()], 1):
        argv = _assign_argv(world, "node-lost", *extra)
        done, _ = _lose_a_node_while(ray_nodes, argv, env, victim)
    _check_exactly_once(world, "node-lost", done)


def test_node_removed_mid_fine_fits_still_publishes_a_model_or_fails_with_one_line(
    ray_nodes, world, tmp_path
):
    """Issue 14: a worker node lost while the two-level job's fine fits run on it (the split's
    pieces in its object store, a partition task on its CPU). Ray retries the task and rebuilds
    the lost pieces from their split tasks (which read the input again), so the job publishes
    a model with all k centers; a clear failure (one line, exit 2, no model) is allowed, a hang
    or a model with fewer centers is not."""
    from jobs.model import load_assignable

    marker = tmp_path / "fine"
    s3 = world["s3"]
    argv = [
        "train", "--data", f"{s3}/data", "--out", f"{s3}/two-level", "--name", "fine-lost",
        "--levels", "2", "--k", "64", "--workers", "2", "--stall-timeout-s", "120",
    ]  # fmt: skip
    # each fine fit waits 6 s after marking its node, the first time only: the node goes
    # while one waits there; the retried task runs at once
    env = {**ray_nodes.env, "TELL_FAULT_INJECT": f"fine:marker={marker}:delay_s=6"}

    def victim() -> str:
        """A worker node a fine fit runs on (the head, where the driver is, stays)."""
        for path in sorted(tmp_path.glob("fine-part-*")):
            if path.suffix != ".tmp" and path.read_text() in ray_nodes.node_ids():
                return path.read_text()
        return ""

    done, _ = _lose_a_node_while(ray_nodes, argv, env, victim)
    if done.returncode != 0:
        print(_error_line(done))
        assert not _keys(world, "two-level/fine-lost/model/")
        return
    summary = json.loads(done.stdout)  # stdout is one JSON document
    assert summary["levels"] == 2 and summary["k"] == 64 and summary["rows"] == N_ROWS
    model, meta = load_assignable(summary["model"])
    assert model.n_clusters == 64 and meta["levels"] == 2
    print(f"published {summary['n_coarse']} x {summary['k']} after the node loss")


def test_node_removed_mid_training_resumes_or_fails_with_one_line(ray_nodes, world, tmp_path):
    """Issue 13, point 1: the run used to hang forever (the lost feature blocks could be
    rebuilt only by a task asking for a CPU no node had free)."""
    from jobs.model import load_model

    marker = tmp_path / "training"
    s3 = world["s3"]
    argv = [
        "train", "--data", f"{s3}/data", "--out", f"{s3}/train", "--name", "node-lost",
        "--k", str(K), "--epochs", "4", "--tol", "0", "--batch-size", "256", "--workers", "3",
        "--materialize", "auto", "--max-failures", "3", "--stall-timeout-s", "120",
        "--checkpoint-every", "1",  # resume from the newest epoch (the default cadence is 5)
    ]  # fmt: skip
    # 0.25 s per step of the marked epoch (about 45 steps): it outlasts the node removal (with
    # 0.05 s a quiet machine finished the run before the node was gone: nothing to resume);
    # the resumed run finds the markers and trains at full speed
    fault = f"mark:epoch=1:step=2:marker={marker}:delay_s=0.25"
    env = {**ray_nodes.env, "TELL_FAULT_INJECT": fault}

    def victim() -> str:
        """A worker node a rank runs on, once every rank wrote where it runs."""
        ranks = [Path(f"{marker}-rank-{rank}") for rank in range(3)]
        if not all(path.exists() for path in ranks):
            return ""
        on_workers = [p.read_text() for p in ranks if p.read_text() in ray_nodes.node_ids()]
        assert on_workers, "every rank runs on the head"
        return on_workers[0]

    done, _ = _lose_a_node_while(ray_nodes, argv, env, victim)
    if done.returncode != 0:  # a clear failure is allowed: one line, exit 2, no model
        print(_error_line(done))
        assert not _keys(world, "train/node-lost/model/")
        return
    pretty = subprocess.run([sys.executable, "-m", "json.tool"], input=done.stdout, text=True,
                            capture_output=True)  # fmt: skip
    assert pretty.returncode == 0, f"stdout is not one JSON document:\n{done.stdout[:2000]}"
    summary = json.loads(done.stdout)
    assert summary["epochs"] == 4 and summary["materialized"]
    _, meta = load_model(summary["model"])
    assert [h["epoch"] for h in meta["history"]] == list(range(4))
    assert len(meta["resumed_at"]) >= 1, meta["resumed_at"]  # resumed, not restarted
    print(f"resumed at epoch(s) {meta['resumed_at']}")
