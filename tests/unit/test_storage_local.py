"""jobs.storage on local paths, URI parsing and error messages (no server, no ray)."""

import os
import pickle

import pyarrow.fs as pafs
import pytest

from jobs import storage
from tell.errors import TellStorageError


@pytest.fixture(autouse=True)
def _clean_cache(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(var, raising=False)
    storage.clear_cache()
    yield
    storage.clear_cache()


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- resolve


def test_resolve_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = storage.resolve("data/in/")
    assert loc.path == loc.uri == str(tmp_path / "data" / "in")
    assert str(loc) == loc.uri
    assert not loc.is_s3 and loc.bucket is None and loc.key is None
    assert isinstance(loc.filesystem, pafs.LocalFileSystem)
    assert storage.resolve(f"file://{tmp_path}/a%20b").path == f"{tmp_path}/a b"
    assert storage.resolve(f"file://localhost{tmp_path}").path == str(tmp_path)
    assert storage.resolve("./x/../y").path == str(tmp_path / "y")
    assert storage.resolve("~").path == os.path.expanduser("~")


def test_resolve_s3_without_network(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
    loc = storage.resolve("s3://my-bucket/data/in/")
    assert (loc.uri, loc.path, loc.bucket, loc.key) == (
        "s3://my-bucket/data/in",
        "my-bucket/data/in",
        "my-bucket",
        "data/in",
    )
    assert loc.is_s3 and loc.endpoint_url == "http://127.0.0.1:9"
    assert isinstance(loc.filesystem, pafs.PyFileSystem)
    root = storage.resolve("s3://my-bucket")
    assert (root.path, root.key, root.name) == ("my-bucket", "", "my-bucket")
    # One filesystem per (scheme, endpoint).
    assert root.filesystem is loc.filesystem
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")
    other = storage.resolve("s3://my-bucket")
    assert other.endpoint_url == "https://s3.example.com"
    assert other.filesystem is not loc.filesystem
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert storage.resolve("s3://my-bucket").endpoint_url is None


def test_locations_pickle_for_ray_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3 = pickle.loads(pickle.dumps(storage.resolve("s3://my-bucket/k")))
    assert s3 == storage.resolve("s3://my-bucket/k")
    assert s3.filesystem.handler.fs.endpoint_url == "http://127.0.0.1:9"
    local = pickle.loads(pickle.dumps(storage.resolve(str(tmp_path))))
    assert local.filesystem.get_file_info(local.path).type == pafs.FileType.Directory


@pytest.mark.parametrize(
    "uri, match",
    [
        ("gs://bucket/x", "supported are local paths, file:// and s3://"),
        ("http://host/x", "unsupported scheme"),
        ("hdfs://nn/x", "unsupported scheme"),
        ("s3:/bucket/x", "malformed"),
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        ("a\x00b", "NUL"),
        ("s3://", "bucket name"),
        ("s3://ab/x", "bucket name"),
        ("s3://My_Bucket/x", "bucket name"),
        ("s3://bucket/a/../b", "unsafe"),
        ("s3://bucket/a//b", "unsafe"),
        ("s3://bucket/a\\b", "unsafe"),
        ("s3://bucket/a?versionId=1", "unsafe"),
        ("file://otherhost/x", "absolute local path"),
    ],
)
def test_resolve_rejects(uri, match):
    with pytest.raises(TellStorageError, match=match) as exc_info:
        storage.resolve(uri)
    _one_line(exc_info)


def test_resolve_never_echoes_userinfo():
    with pytest.raises(TellStorageError) as exc_info:
        storage.resolve("http://user:hunter2@host/x")
    assert "hunter2" not in _one_line(exc_info)


@pytest.mark.parametrize("endpoint", ["localhost:9000", "ftp://host", "http://"])
def test_malformed_endpoint(monkeypatch, endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(TellStorageError, match="AWS_ENDPOINT_URL must be an http") as exc_info:
        storage.resolve("s3://bucket/x")
    _one_line(exc_info)


# --------------------------------------------------------------------------- join


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("a/../b",),
        ("/abs",),
        ("a\\b",),
        ("",),
        ("a//b",),
        ("a/",),
        (".",),
        ("nul\x00",),
        ("ok", ".."),
        (3,),
    ],
)
@pytest.mark.parametrize("base", ["/tmp/tell-base", "s3://bucket/base"])
def test_join_rejects_traversal(base, parts):
    loc = storage.resolve(base)
    with pytest.raises(TellStorageError, match="unsafe") as exc_info:
        loc.join(*parts)
    _one_line(exc_info)


def test_join():
    loc = storage.resolve("s3://bucket/base").join("runs/0001", "model.safetensors")
    assert loc.uri == "s3://bucket/base/runs/0001/model.safetensors"
    assert loc.path == "bucket/base/runs/0001/model.safetensors"
    assert loc.name == "model.safetensors"
    assert storage.resolve("s3://bucket").join("k").path == "bucket/k"
    assert storage.resolve("/").join("etc").path == "/etc"
    base = storage.resolve("/tmp/x")
    assert base.join() is base


# --------------------------------------------------------------------------- helpers


def test_local_round_trip(tmp_path):
    root = storage.resolve(str(tmp_path / "out"))
    for name in [
        "b.parquet",
        "a.parquet",
        "_SUCCESS",
        ".hidden.parquet",
        "c.json",
        "_tmp/d.parquet",
        "sub/e.parquet",
    ]:
        storage.write_bytes(root.join(name), name.encode())
    assert storage.read_bytes(root.join("sub/e.parquet")) == b"sub/e.parquet"
    assert storage.list_files(root) == [root.join("a.parquet").path, root.join("b.parquet").path]
    assert storage.list_files(root, recursive=True) == [
        root.join(n).path for n in ("a.parquet", "b.parquet", "sub/e.parquet")
    ]
    assert storage.list_files(root, ".json") == [root.join("c.json").path]
    assert storage.list_files(root.join("a.parquet")) == [root.join("a.parquet").path]
    assert storage.exists(root.join("sub")) and not storage.exists(root.join("nope"))

    storage.write_bytes(root.join("a.parquet"), b"new")  # overwrite in place
    assert storage.read_bytes(root.join("a.parquet")) == b"new"
    assert not [p for p in os.listdir(root.path) if ".tmp-" in p]

    storage.delete_tree(root.join("sub"))
    storage.delete_tree(root.join("a.parquet"))
    storage.delete_tree(root.join("never-existed"))
    assert not storage.exists(root.join("sub")) and not storage.exists(root.join("a.parquet"))


def test_local_move_tree(tmp_path):
    src = storage.resolve(str(tmp_path / "stage"))
    storage.write_bytes(src.join("part-0.parquet"), b"0")
    dst = storage.resolve(str(tmp_path / "final" / "run"))
    storage.move_tree(src, dst)
    assert not storage.exists(src)
    assert storage.read_bytes(dst.join("part-0.parquet")) == b"0"
    with pytest.raises(TellStorageError, match="does not exist"):
        storage.move_tree(src, storage.resolve(str(tmp_path / "other")))
    storage.write_bytes(src.join("x"), b"1")
    with pytest.raises(TellStorageError, match="destination exists"):
        storage.move_tree(src, dst)


def test_local_missing_and_refused(tmp_path):
    missing = storage.resolve(str(tmp_path / "missing"))
    with pytest.raises(TellStorageError, match="does not exist") as exc_info:
        storage.read_bytes(missing)
    _one_line(exc_info)
    with pytest.raises(TellStorageError, match="does not exist"):
        storage.list_files(missing)
    with pytest.raises(TellStorageError, match="Refusing to delete /"):
        storage.delete_tree(storage.resolve("/"))
    with pytest.raises(TellStorageError, match="whole bucket"):
        storage.delete_tree(storage.resolve("s3://bucket"))


def test_check_access_local(tmp_path):
    (tmp_path / "in.parquet").write_bytes(b"x")
    storage.check_access(storage.resolve(str(tmp_path / "in.parquet")), write=False)
    storage.check_access(storage.resolve(str(tmp_path / "new-output")), write=True)
    storage.check_access(storage.resolve(str(tmp_path)), write=True)
    with pytest.raises(TellStorageError, match="does not exist") as exc_info:
        storage.check_access(storage.resolve(str(tmp_path / "nope")), write=False)
    _one_line(exc_info)
    with pytest.raises(TellStorageError, match=r"parent directory .* does not exist") as exc_info:
        storage.check_access(storage.resolve(str(tmp_path / "a" / "b")), write=True)
    _one_line(exc_info)


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_check_access_local_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(TellStorageError, match="not writable"):
            storage.check_access(storage.resolve(str(locked / "out")), write=True)
    finally:
        locked.chmod(0o700)


def test_ensure_bucket_local_creates_directory(tmp_path):
    loc = storage.resolve(str(tmp_path / "a" / "b"))
    storage.ensure_bucket(loc)
    storage.ensure_bucket(loc)
    assert (tmp_path / "a" / "b").is_dir()


# --------------------------------------------------------------------------- errors


def test_translate_error_scrubs_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    loc = storage.resolve("s3://bucket/k")
    err = storage.translate_error(OSError("boom very-secret-value\nsecond line"), loc, "reading")
    assert isinstance(err, TellStorageError)
    assert "very-secret-value" not in str(err) and "\n" not in str(err)
    assert "s3://bucket/k" in str(err)


def test_storage_errors_passes_programming_errors(tmp_path):
    loc = storage.resolve(str(tmp_path))
    with pytest.raises(TypeError):
        with storage.storage_errors(loc, "reading"):
            raise TypeError("a bug, not a storage failure")
    with pytest.raises(TellStorageError, match="Permission denied while writing"):
        with storage.storage_errors(loc, "writing"):
            raise PermissionError("denied")
