"""jobs.storage against a real S3 server (SeaweedFS): round trips, preflight errors, restarts."""

import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage
from tell.errors import TellStorageError

pytestmark = pytest.mark.integration


def _message(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def test_round_trip(s3_bucket):
    root = storage.resolve(s3_bucket)
    assert root.is_s3 and root.path == s3_bucket[len("s3://") :]
    storage.check_access(root, write=True)
    for name in [
        "run/b.parquet",
        "run/a.parquet",
        "run/_SUCCESS",
        "run/.tmp.parquet",
        "run/sub/c.parquet",
        "run-2/d.parquet",
    ]:
        storage.write_bytes(root.join(name), name.encode())
    run = root.join("run")
    assert storage.read_bytes(run.join("a.parquet")) == b"run/a.parquet"
    assert storage.list_files(run) == [run.join("a.parquet").path, run.join("b.parquet").path]
    assert storage.list_files(run, recursive=True)[-1] == run.join("sub/c.parquet").path
    assert storage.exists(run) and storage.exists(run.join("a.parquet"))
    assert not storage.exists(root.join("nope"))
    storage.check_access(run, write=False)
    storage.check_access(run.join("a.parquet"), write=False)

    storage.write_bytes(run.join("a.parquet"), b"v2")
    assert storage.read_bytes(run.join("a.parquet")) == b"v2"

    # A prefix is a directory: deleting "run" must leave "run-2" alone.
    storage.delete_tree(run)
    storage.delete_tree(run)  # missing is fine
    assert not storage.exists(run)
    assert storage.read_bytes(root.join("run-2/d.parquet")) == b"run-2/d.parquet"
    with pytest.raises(TellStorageError, match="does not exist") as exc_info:
        storage.read_bytes(run.join("a.parquet"))
    _message(exc_info)
    with pytest.raises(TellStorageError, match="does not exist") as exc_info:
        storage.check_access(run, write=False)
    _message(exc_info)
    storage.ensure_bucket(root)  # idempotent


def test_move_tree(s3_bucket):
    root = storage.resolve(s3_bucket)
    stage, final = root.join("_staging/run-1"), root.join("out/run-1")
    for name in ["part-0.parquet", "part-1.parquet", "sub/x.bin"]:
        storage.write_bytes(stage.join(name), name.encode())
    storage.move_tree(stage, final)
    assert not storage.exists(stage)
    assert storage.read_bytes(final.join("sub/x.bin")) == b"sub/x.bin"
    assert len(storage.list_files(final)) == 2
    storage.write_bytes(stage.join("again.parquet"), b"1")
    with pytest.raises(TellStorageError, match="destination exists"):
        storage.move_tree(stage, final)


def test_parquet_through_wrapped_filesystem(s3_bucket):
    data = storage.resolve(s3_bucket).join("data")
    for i in range(2):
        table = pa.table({"id": pa.array([2 * i, 2 * i + 1], pa.int64()), "x": [0.5 * i, 1.0]})
        pq.write_table(table, data.join(f"part-{i}.parquet").path, filesystem=data.filesystem)
    storage.write_bytes(data.join("_SUCCESS"), b"{}")
    files = storage.list_files(data)
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-0.parquet", "part-1.parquet"]
    table = pq.read_table(files, filesystem=data.filesystem)
    assert sorted(table.column("id").to_pylist()) == [0, 1, 2, 3]
    assert pq.read_schema(files[0], filesystem=data.filesystem).names == ["id", "x"]


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch, closed_port):
    port = closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    storage.clear_cache()
    loc = storage.resolve("s3://tell-unreachable/x")
    started = time.monotonic()
    with pytest.raises(TellStorageError) as exc_info:
        storage.check_access(loc, write=False)
    assert time.monotonic() - started < 30
    message = _message(exc_info)
    assert f"127.0.0.1:{port}" in message and "AWS_ENDPOINT_URL" in message
    # The jobs' own filesystem retries more, but is bounded too.
    started = time.monotonic()
    with pytest.raises(TellStorageError, match="Cannot reach the S3 endpoint"):
        storage.write_bytes(loc, b"x")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials(s3_bucket, s3_server, monkeypatch, variable):
    storage.write_bytes(storage.resolve(s3_bucket).join("a.bin"), b"a")
    wrong = f"wrong-{variable.lower()}-e7f1c2"
    monkeypatch.setenv(variable, wrong)
    storage.clear_cache()
    loc = storage.resolve(s3_bucket)
    with pytest.raises(TellStorageError, match="rejected the credentials") as exc_info:
        storage.check_access(loc, write=True)
    message = _message(exc_info)
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in message and s3_server.endpoint in message
    assert wrong not in message and s3_server.secret_key not in message
    for action in (
        lambda: storage.read_bytes(loc.join("a.bin")),
        lambda: storage.write_bytes(loc.join("b.bin"), b"b"),
    ):
        with pytest.raises(TellStorageError, match="AWS_ACCESS_KEY_ID") as exc_info:
            action()
        assert wrong not in _message(exc_info)


def test_missing_bucket(s3_env):
    loc = storage.resolve("s3://tell-no-such-bucket-4f2a/out")
    for write in (True, False):
        with pytest.raises(
            TellStorageError, match="Bucket 'tell-no-such-bucket-4f2a' does not exist"
        ) as exc_info:
            storage.check_access(loc, write=write)
        assert "Create it" in _message(exc_info)


def test_traversal_rejected(s3_bucket):
    root = storage.resolve(s3_bucket)
    for parts in [("..",), ("a/../../other-bucket",), ("/etc",), ("a\\b",), ("",)]:
        with pytest.raises(TellStorageError, match="unsafe"):
            root.join(*parts)
    with pytest.raises(TellStorageError, match="unsafe"):
        storage.resolve(f"{s3_bucket}/a/../b")


def test_server_stopped_mid_write_then_restarted(s3_bucket, s3_server):
    root = storage.resolve(s3_bucket).join("restart")
    written: list[int] = []
    failure: list[BaseException] = []

    def writer():
        for i in range(100_000):
            try:
                storage.write_bytes(root.join(f"obj-{i:05d}.bin"), b"%d" % i)
            except BaseException as exc:  # reported to the test thread
                failure.append(exc)
                return
            written.append(i)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while len(written) < 5 and thread.is_alive():
        time.sleep(0.05)
    try:
        s3_server.crash()
        thread.join(timeout=60)
        assert not thread.is_alive(), "writer still blocked 60 s after the server stopped"
        assert failure and isinstance(failure[0], TellStorageError), failure
        message = str(failure[0])
        assert "\n" not in message and s3_server.endpoint in message
        with pytest.raises(TellStorageError, match="Cannot reach the S3 endpoint"):
            storage.check_access(root, write=True)
    finally:
        s3_server.start()
    # Every write that returned survived the crash, and the same filesystem works again.
    for i in written:
        assert storage.read_bytes(root.join(f"obj-{i:05d}.bin")) == b"%d" % i
    storage.write_bytes(root.join("after-restart.bin"), b"ok")
    assert storage.read_bytes(root.join("after-restart.bin")) == b"ok"
