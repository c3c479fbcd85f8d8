"""Security promises (issue #6): no secret written anywhere, no output outside its root.

- Credentials never reach logs, metadata, checkpoints, manifests or reports: the whole
  pipeline (train, assign, evaluate, explain) runs through the real CLI against a real S3
  server (SeaweedFS) that accepts one distinctive secret key, then every output is searched
  for it: the CLI's stdout/stderr, the Ray session's logs, every object in the bucket and
  every local output file.
- Configs cannot point outputs outside the chosen root: run ids and names with ``..``,
  slashes or absolute paths, and S3 keys with ``..``, are refused before anything is written.
- Readers never leave the run they were pointed at because a manifest says so.
(A planted malicious pickle is refused without being loaded: tests/integration/
test_bad_inputs.py through the CLI, tests/unit/test_checkpoint.py for the library.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.commit import reader

pytestmark = pytest.mark.integration

TIMEOUT_S = 900


def tell_command() -> list[str]:
    script = Path(sys.executable).with_name("tell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


def _files_containing(root: Path, needle: bytes, *, since: float | None = None) -> list[str]:
    """Regular files under ``root`` whose bytes contain ``needle`` (read in chunks, so large
    or binary files are searched too). Sockets, FIFOs and links are skipped, and files
    modified before ``since`` (a time.time() value) when given."""
    hits = []
    overlap = len(needle) - 1
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():  # is_file: regular files only
            continue
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            with open(path, "rb") as f:
                tail = b""
                while chunk := f.read(1 << 20):
                    if needle in tail + chunk:
                        hits.append(str(path))
                        break
                    tail = chunk[-overlap:] if overlap else b""
        except OSError:  # files removed meanwhile, unreadable ones
            pass
    return hits


def test_pipeline_on_s3_never_writes_the_secret(
    ray_with_s3_credentials, s3_server, s3_bucket, tmp_path
):
    from jobs import storage
    from tell.datasets import make_spherical_blobs
    from tell.io import embeddings_to_table

    secret = s3_server.secret_key
    assert len(secret) >= 16 and secret == os.environ["AWS_SECRET_ACCESS_KEY"]
    data = make_spherical_blobs(600, 8, 4, seed=2)
    table = embeddings_to_table(data.X, labels=data.y)
    root = storage.resolve(s3_bucket)
    for i in range(2):
        part = root.join("in", f"part-{i}.parquet")
        pq.write_table(table.slice(300 * i, 300), part.path, filesystem=part.filesystem)

    started_at = time.time()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = ray_with_s3_credentials.address_info["gcs_address"]
    model = f"{s3_bucket}/out/sec/model"
    runs = {
        "train": ["train", "--data", f"{s3_bucket}/in", "--out", f"{s3_bucket}/out",
                  "--name", "sec", "--k", "4", "--epochs", "2", "--batch-size", "64",
                  "--workers", "1"],
        "assign": ["assign", "--model", model, "--data", f"{s3_bucket}/in", "--out",
                   f"{s3_bucket}/assign", "--run-id", "sec", "--id-column", "id",
                   "--id-column", "label", "--workers", "1", "--min-rows-per-file", "100"],
        "evaluate": ["evaluate", "--assignments", f"{s3_bucket}/assign/sec", "--out",
                     str(tmp_path / "metrics.json")],
        "explain": ["explain", "--model", model, "--data", f"{s3_bucket}/in", "--out",
                    str(tmp_path / "report"), "--label-column", "label", "--sample-rows",
                    "300"],
    }  # fmt: skip
    streams: dict[str, str] = {}
    stdout: dict[str, str] = {}
    for name, argv in runs.items():
        started = time.monotonic()
        proc = subprocess.run(
            [*tell_command(), *argv],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT_S,
        )  # fmt: skip
        print(f"\ntell {name}: exit {proc.returncode} in {time.monotonic() - started:.1f} s")
        assert proc.returncode == 0, f"tell {name}:\n{proc.stderr[-3000:]}"
        streams[name], stdout[name] = proc.stdout + proc.stderr, proc.stdout
    assert json.loads(stdout["evaluate"])["rows"] == 600
    assert json.loads(stdout["explain"])["sample_rows"] == 300

    leaks = [f"stdout/stderr of tell {name}" for name, text in streams.items() if secret in text]

    # Every object the pipeline wrote: checkpoints, metadata, Ray Train state, the model,
    # Parquet parts, manifests.
    client = s3_server.client()
    bucket = s3_bucket[len("s3://") :]
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    for prefix in ("out/runs/sec/", "out/sec/model/", "assign/sec/_SUCCESS", "assign/sec/part-"):
        assert any(key.startswith(prefix) for key in keys), (prefix, keys)
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if secret.encode() in body:
            leaks.append(f"s3://{bucket}/{key}")

    # Local outputs (metrics JSON, HTML report; the CLI ran in tmp_path).
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    canary = tmp_path / "canary" / "deep" / "file.bin"  # the search itself works
    canary.parent.mkdir(parents=True)
    canary.write_bytes(b"\x00binary " + secret.encode() + b" tail")
    assert str(canary) in _files_containing(tmp_path, secret.encode())
    canary.unlink()
    leaks += _files_containing(tmp_path, secret.encode())
    # The whole Ray session directory: logs (driver, workers, raylet, GCS, Ray Data, Ray
    # Train), session metadata, runtime resources, anything spilled; every regular file,
    # as bytes (sockets are skipped).
    session = Path(ray_with_s3_credentials.address_info["session_dir"])
    logs = session / "logs"
    assert any(logs.glob("worker-*")) or any(logs.rglob("*.log")), sorted(logs.iterdir())
    session_files = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(session_files) > sum(1 for p in logs.rglob("*") if p.is_file()), "logs only?"
    leaks += _files_containing(session, secret.encode())
    # Ray Train's local default storage (unused here: the run's storage is the bucket,
    # searched above), in case anything was staged there during this test.
    ray_results = Path("~/ray_results").expanduser()
    if ray_results.is_dir():
        leaks += _files_containing(ray_results, secret.encode(), since=started_at)
    print(f"searched {len(keys)} objects and {len(session_files)} Ray session files")
    assert leaks == [], f"the secret key was written to: {leaks}"


# ------------------------------------------------------------------------- traversal


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from jobs import cli

    code = cli.main(argv)
    _, err = capsys.readouterr()
    return code, err


def _keys(s3_server, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


@pytest.mark.parametrize(
    ("command", "key", "value"),
    [
        ("train", "name", "../x"),
        ("train", "name", "a/../../b"),
        ("train", "name", "/abs/path"),
        ("assign", "run_id", "../x"),
        ("assign", "run_id", "a/../../b"),
        ("assign", "run_id", ".."),
        ("assign", "run_id", "x/y"),
    ],
)
def test_configs_cannot_point_outputs_outside_the_root(
    s3_server, s3_bucket, tmp_path, capsys, command, key, value
):
    """Through a YAML config, on S3 and on a local root: refused, and nothing is written."""
    bucket = s3_bucket[len("s3://") :]
    sentinel = s3_server.client()
    sentinel.put_object(Bucket=bucket, Key="root/keep", Body=b"x")
    local_root = tmp_path / "jail" / "root"
    local_root.mkdir(parents=True)
    before_local = sorted(tmp_path.rglob("*"))
    for out in (f"{s3_bucket}/root", str(local_root)):
        config = tmp_path / f"{command}.yaml"
        common = {
            "train": f"k: 3\ndata: {tmp_path}\n",
            "assign": f"model: {tmp_path}/model\ndata: {tmp_path}\n",
        }[command]
        config.write_text(common + f"out: {out}\n{key}: {json.dumps(value)}\n")
        code, err = _run_cli([command, "--config", str(config)], capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and f"The {key!r} must be 1-128 characters" in err, err
        config.unlink()
    assert _keys(s3_server, bucket) == ["root/keep"]
    assert sorted(tmp_path.rglob("*")) == before_local


def test_s3_keys_and_endpoint_userinfo(s3_env, capsys, monkeypatch, tmp_path):
    """``..`` in an S3 output key is refused; credentials in an endpoint URL never echo."""
    from tell.io import embeddings_to_table

    pq.write_table(embeddings_to_table(np.ones((10, 2), np.float32)), tmp_path / "a.parquet")
    code, err = _run_cli(
        ["train", "--data", str(tmp_path), "--out", "s3://tell-bucket/root/../x", "--k", "3"],
        capsys,
    )
    assert code == 2 and "is unsafe" in err and err.count("\n") == 1, err

    from jobs import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://someone:pa55w0rd-in-url@127.0.0.1:9")
    storage.clear_cache()
    try:
        code, err = _run_cli(["evaluate", "--assignments", "s3://tell-bucket/run"], capsys)
    finally:
        storage.clear_cache()
    assert code == 2 and "pa55w0rd-in-url" not in err and err.count("\n") == 1, err
    assert "http://127.0.0.1:9" in err, err


# -------------------------------------------------------------------------- readers


def _committed_run_with_manifest_entry(tmp_path: Path, entry: str) -> Path:
    """A run directory whose ``_SUCCESS`` lists one part inside and ``entry`` (outside)."""
    from tell.io import embeddings_to_table

    table = embeddings_to_table(np.ones((5, 2), np.float32), labels=np.arange(5) % 2)
    table = table.append_column("cluster", pa.array(np.arange(5, dtype=np.int32) % 2))
    table = table.append_column("distance", pa.array(np.zeros(5, np.float32)))
    run = tmp_path / "out" / "run"
    (run / "_staging" / "a").mkdir(parents=True)
    pq.write_table(table, run / "_staging" / "a" / "part-0.parquet")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pq.write_table(table, outside / "part-0.parquet")
    manifest = {
        "format": "tell-assign-manifest",
        "format_version": 1,
        "attempt": "a",
        "rows": {"input": 10, "assigned": 10, "rejected": 0},
        "n_clusters": 2,
        "files": [{"path": "_staging/a/part-0.parquet", "rows": 5}, {"path": entry, "rows": 5}],
        "rejected_files": [],
    }
    (run / "_SUCCESS").write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize(
    "entry", ["../../elsewhere/part-0.parquet", "{tmp}/elsewhere/part-0.parquet"]
)
def test_assignment_reader_stays_inside_the_run(tmp_path, entry):
    from tell.errors import TellError

    run = _committed_run_with_manifest_entry(tmp_path, entry.format(tmp=tmp_path))
    with pytest.raises(TellError, match="unsafe"):
        reader.read_committed(str(run))


def test_evaluate_refuses_manifest_entries_outside_the_run(tmp_path, capsys):
    run = _committed_run_with_manifest_entry(
        tmp_path, f"file://{tmp_path}/elsewhere/part-0.parquet"
    )
    code, err = _run_cli(["evaluate", "--assignments", str(run)], capsys)
    assert code == 2, err
