"""Faults survived (issue #6): a killed driver, and transient S3 errors retried with backoff.

- The ``tell assign`` driver, a real subprocess joined to a local Ray cluster, is SIGKILLed
  while it writes: nothing is committed, and re-running the same run id gives exactly N rows
  with unique ids. Killed again during a re-run of a committed run, the previous commit stays
  readable and whole. (The S3 server stopped mid-write is tests/integration/test_assign.py;
  a training worker killed mid-epoch is tests/integration/test_train.py.)
- Transient S3 errors (503 SlowDown, 500 InternalError) are retried with backoff by the
  filesystem layer (botocore "standard" mode under s3fs) and the operation succeeds;
  permanent ones (403) fail at once with one clear line. Failures come from a small HTTP
  proxy on loopback in front of the real S3 server (SeaweedFS): it answers scripted errors,
  then forwards requests unchanged (the signature covers the proxy's Host, which it keeps).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.commit import reader, writer
from tests.plain_readers import assert_exactly, assert_nothing

pytestmark = pytest.mark.integration

TIMEOUT_S = 600


def tell_command() -> list[str]:
    script = Path(sys.executable).with_name("tell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


# ------------------------------------------------------------------- driver SIGKILLed

N_ROWS, DIM, K, N_FILES = 40_000, 16, 8, 8


@pytest.fixture(scope="module")
def assign_inputs(tmp_path_factory):
    """(model dir, data dir, ids): a small TELL model and N rows in N_FILES files."""
    from jobs.model import save_model
    from tell import TELL
    from tell.datasets import make_spherical_blobs
    from tell.io import embeddings_to_table, write_parquet_files

    root = tmp_path_factory.mktemp("driver-kill")
    data = make_spherical_blobs(N_ROWS, DIM, K, seed=5)
    ids = np.arange(N_ROWS, dtype=np.int64) * 7 + 11  # not row numbers
    est = TELL(K, max_iter=2, batch_size=512, random_state=0).fit(data.X[:2000])
    save_model(str(root / "model"), est.model_, {"run_name": "faults", "epoch": 1})
    write_parquet_files(embeddings_to_table(data.X, ids=ids), root / "data", N_FILES)
    return root / "model", root / "data", ids


def _assign_argv(model: Path, data: Path, out: Path, partition_by: str) -> list[str]:
    # Small batches and files: many write tasks, so the write phase lasts long enough to be
    # interrupted in the middle.
    return [
        *tell_command(), "assign", "--model", str(model), "--data", str(data), "--out",
        str(out), "--run-id", "nightly", "--batch-size", "1000", "--min-rows-per-file", "2000",
        "--workers", "1", "--partition-by", partition_by,
    ]  # fmt: skip


def _ray_env(ray_cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["RAY_ADDRESS"] = ray_cluster.address_info["gcs_address"]
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _staged_parts(unit: Path) -> list[Path]:
    """The complete staged part files (a local part is visible while still being written,
    and a write task that dies deletes its half-written file: only a readable footer
    counts)."""
    staging = unit / "_staging"
    if not staging.exists():
        return []
    return sorted(p for p in staging.rglob("*" + writer.STAGED_SUFFIX) if _has_footer(p))


def _has_footer(path: Path) -> bool:
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):  # still being written, or deleted meanwhile
        return False
    return True


def _kill_while_writing(argv, env, unit: Path, log: Path) -> float:
    """Start the driver, SIGKILL it once it staged a new complete part file; return seconds
    it ran."""
    started = time.monotonic()
    before = set(_staged_parts(unit))
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            while not set(_staged_parts(unit)) - before and proc.poll() is None:
                if time.monotonic() - started > TIMEOUT_S:
                    raise AssertionError("no part file was staged in time")
                time.sleep(0.05)
            assert proc.poll() is None, f"the driver exited first ({proc.returncode})"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return time.monotonic() - started


def _committed_ids(unit: Path) -> np.ndarray:

    table = reader.read_committed(str(unit), include_rejected=True)
    return table["id"].to_numpy()


@pytest.mark.parametrize("partition_by", ["none", "cluster"])
def test_driver_killed_during_assignment_then_rerun_same_run_id(
    ray_cluster, assign_inputs, tmp_path, partition_by
):
    """Also what plain Parquet readers (no manifest) see of the run directory (issue 12):
    nothing after the kill, exactly N rows after the commit, the previous N after a kill
    during a re-run; the same with --partition-by cluster."""
    model, data, ids = assign_inputs
    out = tmp_path / "out"
    out.mkdir()
    unit = out / "nightly"
    argv, env = _assign_argv(model, data, out, partition_by), _ray_env(ray_cluster)
    hive = {"partitioned": partition_by == "cluster"}

    # 1. Killed while writing: parts are staged, nothing is committed.
    ran_s = _kill_while_writing(argv, env, unit, tmp_path / "kill-1.log")
    killed_parts = _staged_parts(unit)
    assert killed_parts, "nothing was staged before the kill"
    assert not (unit / writer.MANIFEST_FILE).exists(), "a killed run committed"
    with pytest.raises(Exception, match="not a committed assignment"):
        reader.read_committed(str(unit))
    assert_nothing(str(unit), **hive)
    print(f"\nkilled after {ran_s:.1f} s with {len(killed_parts)} staged part(s)")

    # 2. Re-run with the same run id: exactly N rows, ids unique and equal to the input's.
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["rows"] == N_ROWS
    got = _committed_ids(unit)
    assert len(got) == N_ROWS
    np.testing.assert_array_equal(np.sort(got), np.sort(ids))  # no loss, no duplicate
    manifest = json.loads((unit / writer.MANIFEST_FILE).read_text())
    assert manifest["rows"] == {"input": N_ROWS, "assigned": N_ROWS, "rejected": 0}
    listed = {f["path"] for f in manifest["files"]}
    killed_attempts = {p.relative_to(unit).parts[1] for p in killed_parts}
    assert manifest["attempt"] not in killed_attempts
    assert not any(path.startswith("_") for path in listed)  # promoted out of staging
    assert not (unit / writer.STAGING_DIR).exists()
    found = assert_exactly(str(unit), ids, **hive)
    if hive["partitioned"]:
        assert all(f["path"].startswith(f"cluster={f['cluster']}/") for f in manifest["files"])
        clusters = dict(zip(*(found["pyarrow.dataset"][c].tolist() for c in ("id", "cluster")),
                            strict=True))  # fmt: skip
        committed = reader.read_committed(str(unit))
        assert clusters == dict(zip(committed["id"].to_pylist(),
                                    committed["cluster"].to_pylist(), strict=True))  # fmt: skip

    # 3. Killed during a re-run of the committed run: the previous commit stands, whole.
    _kill_while_writing(argv, env, unit, tmp_path / "kill-2.log")
    again = json.loads((unit / writer.MANIFEST_FILE).read_text())
    assert again["attempt"] == manifest["attempt"]
    got = _committed_ids(unit)
    assert len(got) == N_ROWS and len(np.unique(got)) == N_ROWS
    assert_exactly(str(unit), ids, **hive)  # plain readers: the previous commit, no extra row


# --------------------------------------------------------------- transient S3 errors


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that fails scripted requests.

    ``fail(n, status, code)`` makes the next ``n`` requests get ``status`` with an S3 error
    body ``code`` (``n=None``: every request until ``clear()``); other requests are forwarded
    unchanged. ``log`` records (monotonic time, method, path, status) of every request.
    Bounded: at most ``max_requests`` requests and ``lifetime_s`` seconds, then it stops.
    """

    def __init__(self, upstream: str, *, max_requests: int = 2000, lifetime_s: float = 600):
        target = urlsplit(upstream)
        assert target.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
        self.upstream = (target.hostname, target.port)
        self.max_requests = max_requests
        self.log: list[tuple[float, str, str, int]] = []
        self._failures: list[tuple] = []
        self._fail_all: tuple | None = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._timer.cancel()
        with contextlib.suppress(Exception):
            self.server.shutdown()
        self.server.server_close()

    def fail(self, n: int | None, status: int, code: str, match=None) -> None:
        """Fail the next ``n`` requests (all when None) for which ``match(method, path)``."""
        with self._lock:
            rule = (status, code, match or (lambda method, path: True))
            if n is None:
                self._fail_all = rule
            else:
                self._failures = [rule] * n

    def clear(self) -> None:
        with self._lock:
            self._failures, self._fail_all = [], None
            self.log.clear()

    def statuses(self) -> list[int]:
        return [entry[3] for entry in self.log]

    def _next_failure(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            if len(self.log) >= self.max_requests:
                return (503, "ProxyRequestLimit")
            if self._fail_all and self._fail_all[2](method, path):
                return self._fail_all[:2]
            if self._failures and self._failures[0][2](method, path):
                return self._failures.pop(0)[:2]
            return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((time.monotonic(), method, path, status))

    def _handler_class(self):
        proxy = self
        hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                failure = proxy._next_failure(self.command, self.path)
                if failure is not None:
                    status, code = failure
                    proxy._record(self.command, self.path, status)
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>'
                        f"{code}</Code><Message>injected by the test proxy</Message>"
                        "<RequestId>fault-proxy</RequestId></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    proxy._record(self.command, self.path, response.status)
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in hop_by_hop and key.lower() != "content-length":
                            self.send_header(key, value)
                    length = (
                        response.getheader("Content-Length") if self.command == "HEAD" else None
                    )
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler


@pytest.fixture
def proxy(s3_server, s3_env, monkeypatch):
    """A FaultProxy in front of the S3 server; jobs.storage talks to S3 through it."""
    from jobs import storage

    with FaultProxy(s3_server.endpoint) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
        storage.clear_cache()
        yield fault_proxy
    storage.clear_cache()


def _through(proxy: FaultProxy, bucket_uri: str):
    """``bucket_uri`` resolved now, while AWS_ENDPOINT_URL names the proxy."""
    from jobs import storage

    assert os.environ["AWS_ENDPOINT_URL"] == proxy.endpoint
    storage.clear_cache()
    return storage.resolve(bucket_uri)


def _gaps(proxy: FaultProxy, after_status: int | None = None) -> list[float]:
    """Seconds between consecutive requests the proxy saw (only those after a request
    that got ``after_status``, when given)."""
    return [
        b[0] - a[0]
        for a, b in itertools.pairwise(proxy.log)
        if after_status is None or a[3] == after_status
    ]


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")]
)
def test_transient_errors_are_retried_with_backoff(proxy, s3_bucket, status, code):
    from jobs import storage

    loc = _through(proxy, s3_bucket).join("retry", "object.bin")
    payload = os.urandom(4096)

    # The no-backoff round trip, measured here: the gaps between the requests of clean
    # writes and reads (PUT; HEAD then GET), the same operations as below without failures.
    proxy.clear()
    for _ in range(3):
        storage.write_bytes(loc, payload)
        assert storage.read_bytes(loc) == payload
    assert set(proxy.statuses()) == {200}, proxy.log
    round_trip = statistics.median(_gaps(proxy))

    proxy.clear()
    proxy.fail(2, status, code)
    storage.write_bytes(loc, payload)  # 2 failures, then the upload goes through
    assert proxy.statuses() == [status, status, 200], proxy.log
    assert {entry[1] for entry in proxy.log} == {"PUT"}
    waits = _gaps(proxy, after_status=status)

    proxy.clear()
    proxy.fail(3, status, code)
    assert storage.read_bytes(loc) == payload
    statuses = proxy.statuses()  # s3fs reads with HEAD, then GET
    assert statuses[:3] == [status] * 3 and set(statuses[3:]) == {200}, proxy.log
    waits += _gaps(proxy, after_status=status)
    assert len(waits) == 5, proxy.log
    # botocore's standard mode (jobs/storage.py) waits rand(0, 1) * 2**(try - 1) s before
    # each retry (full jitter: up to 1, 2 s on the write, 1, 2, 4 s on the read; 5 s on
    # average in all). Without backoff each gap would be one round trip. The 5 waits beyond
    # the round trip must add up to more than 0.25 s: only a real backoff does that (with
    # backoff, 5 jittered waits sum to less with probability 0.25**5 / (5! * 1*2*1*2*4),
    # about 5e-7). No upper bound: a loaded machine only makes the gaps longer.
    backoff = sum(waits) - len(waits) * round_trip
    assert backoff > 0.25, (round_trip, waits)
    print(
        f"\n{code}: round trip {round_trip * 1000:.1f} ms; waits between tries "
        f"{[round(g, 3) for g in waits]} s (backoff {backoff:.2f} s)"
    )


def _write_parts(root, n_files: int = 3) -> None:
    for i in range(n_files):
        table = pa.table({"id": np.arange(10) + 10 * i, "x": [[0.5, 1.0]] * 10})
        pq.write_table(table, root.join(f"part-{i}.parquet").path, filesystem=root.filesystem)


def test_parquet_footers_read_through_throttling(proxy, s3_bucket):
    """Reading every footer (what each job does first, on the driver) rides out SlowDowns."""
    from jobs.input.inspect import open_input

    root = _through(proxy, s3_bucket).join("data")
    _write_parts(root)
    proxy.clear()
    proxy.fail(6, 503, "SlowDown", match=lambda method, path: "/part-" in path)
    info = open_input(root.uri, "x")
    assert (info.num_rows, info.dim, len(info.files)) == (30, 2, 3)
    statuses = proxy.statuses()
    assert statuses.count(503) == 6 and statuses[-1] in (200, 206), proxy.log


def test_preflight_rides_out_throttling(proxy, s3_bucket):
    from jobs.input.inspect import open_input

    root = _through(proxy, s3_bucket).join("data")
    _write_parts(root)
    proxy.clear()
    proxy.fail(3, 503, "SlowDown")  # the first requests: the preflight's LIST
    assert open_input(root.uri, "x").num_rows == 30


def test_permanent_errors_fail_fast_with_one_clear_line(proxy, s3_bucket):
    from jobs import storage
    from tell.errors import TellStorageError

    loc = _through(proxy, s3_bucket).join("denied.bin")
    for action, call in [
        ("preflight", lambda: storage.check_access(loc, write=False)),
        ("read", lambda: storage.read_bytes(loc)),
        ("write", lambda: storage.write_bytes(loc, b"x")),
    ]:
        proxy.clear()
        proxy.fail(None, 403, "AccessDenied")
        started = time.monotonic()
        with pytest.raises(TellStorageError) as info:
            call()
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert "\n" not in message
        # (the code from the XML body; HEAD answers have none, then the status)
        assert re.search(r"denied access \((AccessDenied|403)\)", message), message
        assert loc.uri in message, message
        assert "AWS_ACCESS_KEY_ID" in message  # the fix is named
        assert len(proxy.log) == 1, f"{action}: a 403 was retried: {proxy.log}"
        assert elapsed < 3, f"{action} took {elapsed:.1f} s to fail"


def test_persistent_5xx_gives_up_after_bounded_retries(proxy, s3_bucket):
    from jobs import storage
    from tell.errors import TellStorageError

    loc = _through(proxy, s3_bucket).join("flaky.bin")
    proxy.clear()
    proxy.fail(None, 500, "InternalError")
    started = time.monotonic()
    with pytest.raises(TellStorageError, match=r"kept failing with (InternalError|500) .* retries"):
        storage.read_bytes(loc)
    tries, elapsed = len(proxy.log), time.monotonic() - started
    assert tries == 4, proxy.log  # botocore standard mode: 1 try + 3 retries
    assert elapsed < 30, elapsed  # 3 jittered waits of at most 1, 2, 4 s, plus load

    # The preflight the CLI runs first retries throttling exactly like every other request:
    # bounded, then one clear error.
    proxy.clear()
    proxy.fail(None, 503, "SlowDown")
    with pytest.raises(TellStorageError, match="kept failing with SlowDown"):
        storage.check_access(loc, write=False)
    assert len(proxy.log) == 4, proxy.log
    print(f"\npersistent 500: {tries} tries in {elapsed:.2f} s")


def test_a_failed_write_abandons_its_open_parts_without_a_request(proxy, s3_bucket):
    """A write task whose storage fails abandons its other open parts (issue 13): no
    request for them (against a dead endpoint each would spend a whole retry budget, about
    5 s, so a --partition-by cluster task with many open parts stalled for minutes), and no
    staged file appears, not even when the dropped streams are garbage-collected later."""
    import gc

    from tell.errors import TellStorageError

    unit = _through(proxy, s3_bucket).join("out", "run")
    attempt = writer.start_attempt(unit)
    parts = [writer.PartWriter(attempt, writer.ASSIGNED, "part-0.parquet", j) for j in range(4)]
    for part in parts:
        part.write(pa.table({"id": np.arange(10)}))
    proxy.clear()
    proxy.fail(None, 403, "AccessDenied")  # the storage fails from here on
    with pytest.raises(TellStorageError):
        parts[0].close()
    for part in parts:
        part.abort()
    gc.collect()
    assert len(proxy.log) == 1, proxy.log  # the upload that failed, none for the others
    proxy.clear()  # the storage answers again
    del parts, part
    gc.collect()
    assert proxy.log == [], "an abandoned part was uploaded when garbage-collected"
    assert writer.staged_files(unit) == []
