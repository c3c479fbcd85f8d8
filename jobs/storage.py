"""Storage locations: the only module that builds filesystems.

A URI is resolved once into a :class:`Location`: the pyarrow filesystem to use
and the path to pass with it (no scheme), which is what Ray Data, Ray Train's
``storage_filesystem`` and ``pyarrow.parquet`` expect.

- Local paths and ``file://`` URIs use ``pyarrow.fs.LocalFileSystem``.
- ``s3://bucket/prefix`` uses s3fs wrapped as
  ``pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))``. s3fs is the only S3
  stack of the process: never mix in ``pyarrow.fs.S3FileSystem`` (the two abort
  at interpreter exit when loaded together).

Endpoint and credentials come only from the standard AWS environment and config
files (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``~/.aws/...``, web identity, instance roles). The endpoint is
read here explicitly so that it travels with the pickled filesystem to Ray
workers; credentials are never copied: each process resolves its own.

Every storage failure a user can cause surfaces as a one-line
:class:`tell.errors.TellStorageError` that names the location and the fix and
never contains a secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from tell.errors import TellStorageError

__all__ = [
    "Location",
    "check_access",
    "clear_cache",
    "delete_tree",
    "ensure_bucket",
    "exists",
    "list_files",
    "move_tree",
    "object_store_options",
    "open_output",
    "read_bytes",
    "resolve",
    "storage_errors",
    "translate_error",
    "write_bytes",
]

logger = logging.getLogger(__name__)

SUPPORTED_SCHEMES = "local paths, file:// and s3://"

# botocore "standard" retry mode: exponential backoff with jitter on throttling,
# 5xx, connection errors and timeouts. max_attempts counts the retries (4 tries
# in all), so an unreachable endpoint fails in about 5 s (connection refused)
# to 20 s (packets dropped: 4 x 3 s connect timeout plus backoff).
_MAX_RETRIES = 3
_CONNECT_TIMEOUT_S = 3
_READ_TIMEOUT_S = 30
# The preflight in check_access has a shorter read timeout (same bounded retries).
_PREFLIGHT_READ_TIMEOUT_S = 10

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):/")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "503",
        "500",
    }
)

_FILESYSTEMS: dict[tuple[str, str | None], pafs.FileSystem] = {}
_FILESYSTEMS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Location:
    """A resolved storage location.

    Attributes
    ----------
    uri : str
        Normalised URI: an absolute local path, or ``s3://bucket[/key]`` with no
        trailing slash. Used in messages and by ``str()``.
    filesystem : pyarrow.fs.FileSystem
        Filesystem to pass along with :attr:`path` (picklable, so it can be
        shipped to Ray workers).
    path : str
        Path for :attr:`filesystem`: absolute local path, or ``bucket/key``.
    is_s3 : bool
        Whether the location is on S3.
    endpoint_url : str or None
        S3 endpoint from the environment; ``None`` for local paths and for the
        default AWS endpoint.

    Examples
    --------
    >>> loc = resolve("/tmp/tell").join("runs", "a/b.json")
    >>> loc.path
    '/tmp/tell/runs/a/b.json'
    """

    uri: str
    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    path: str
    is_s3: bool
    endpoint_url: str | None = None

    def __str__(self) -> str:
        return self.uri

    @property
    def bucket(self) -> str | None:
        """The S3 bucket, or ``None`` for a local location."""
        return self.path.split("/", 1)[0] if self.is_s3 else None

    @property
    def key(self) -> str | None:
        """The S3 key (``""`` at the bucket root), or ``None`` for a local location."""
        return self.path.partition("/")[2] if self.is_s3 else None

    @property
    def name(self) -> str:
        """The last path component (the bucket name at an S3 bucket root)."""
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Location:
        """Return the location of ``parts`` below this one.

        Each part is a relative name, possibly with ``/`` separators. Parts that
        could leave this location or alias another key are rejected.

        Raises
        ------
        TellStorageError
            If a part is empty, absolute, or contains ``.``/``..`` segments, empty
            segments, backslashes or NUL characters.
        """
        segments: list[str] = []
        for part in parts:
            if (
                not isinstance(part, str)
                or not part
                or part.startswith("/")
                or "\\" in part
                or "\x00" in part
                or any(seg in ("", ".", "..") for seg in part.split("/"))
            ):
                raise TellStorageError(
                    f"Path part {part!r} joined to {self.uri} is unsafe: parts must be "
                    "non-empty relative names without '.', '..' or empty segments, "
                    "backslashes or NUL characters. Use plain names such as 'runs/0001'."
                )
            segments.extend(part.split("/"))
        if not segments:
            return self
        rel = "/".join(segments)
        return replace(
            self, uri=f"{self.uri.rstrip('/')}/{rel}", path=f"{self.path.rstrip('/')}/{rel}"
        )


def resolve(uri: str) -> Location:
    """Resolve a local path, ``file://`` or ``s3://`` URI into a :class:`Location`.

    No network access happens here; call :func:`check_access` for a preflight.

    Raises
    ------
    TellStorageError
        If the URI is empty, malformed, has an unsupported scheme, an invalid
        bucket name or an unsafe key, or AWS_ENDPOINT_URL is malformed.
    """
    if not isinstance(uri, str) or not uri.strip() or "\x00" in uri:
        raise TellStorageError(
            f"A storage URI must be a non-empty string ({SUPPORTED_SCHEMES}) without NUL "
            f"characters. Got {uri!r}. Pass a path such as ./data or s3://bucket/prefix."
        )
    uri = uri.strip()
    match = _SCHEME_RE.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3" and uri[:5].lower() == "s3://":
        return _resolve_s3(uri)
    if scheme == "file" and uri[:7].lower() == "file://":
        return _resolve_local(uri, from_file_uri=True)
    if scheme in ("s3", "file") or (scheme and uri[len(scheme) + 1 :].startswith("//")):
        raise TellStorageError(
            f"Storage URI {_redact_uri(uri)!r} is malformed or uses an unsupported scheme; "
            f"supported are {SUPPORTED_SCHEMES}. Use s3://bucket/prefix, file:///abs/path "
            "or a plain path, or copy the data there."
        )
    return _resolve_local(uri, from_file_uri=False)


def clear_cache() -> None:
    """Forget the cached filesystems (after changing AWS_* environment variables)."""
    with _FILESYSTEMS_LOCK:
        _FILESYSTEMS.clear()


def check_access(loc: Location, *, write: bool) -> None:
    """Preflight a location before any Ray work starts.

    Local: reading needs the path to exist and be readable; writing needs the
    path (a directory, never a file), or else its parent directory, to exist and be
    writable. S3 (bounded
    retries, 10 s read timeout): the endpoint answers, the credentials are accepted
    and the bucket exists; reading also needs an object at the key or below
    ``key/``. A missing bucket is never created here (see :func:`ensure_bucket`).

    Raises
    ------
    TellStorageError
        One line naming the location, the endpoint and the fix.
    """
    if loc.is_s3:
        _check_s3(loc, write=write)
    else:
        _check_local(loc, write=write)


def ensure_bucket(loc: Location) -> None:
    """Create the bucket of an S3 location if missing (a local directory for local paths)."""
    if not loc.is_s3:
        with storage_errors(loc, "creating"):
            os.makedirs(loc.path, exist_ok=True)
        return
    fs = _s3fs_of(loc)
    params: dict = {"Bucket": loc.bucket}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        try:
            fs.call_s3("create_bucket", **params)
        except FileExistsError as exc:
            # Ours already (some servers answer BucketAlreadyExists for our own bucket)?
            try:
                fs.call_s3("head_bucket", Bucket=loc.bucket)
            except PermissionError:
                raise TellStorageError(
                    f"Bucket '{loc.bucket}' already exists at "
                    f"{_display_endpoint(loc.endpoint_url)} and belongs to someone else. "
                    "Choose another bucket name."
                ) from exc
    except TellStorageError:
        raise
    except Exception as exc:
        raise translate_error(exc, loc, "creating the bucket of") from exc


def list_files(loc: Location, suffix: str = ".parquet", *, recursive: bool = False) -> list[str]:
    """Return the sorted filesystem paths of the files at ``loc`` ending with ``suffix``.

    Names (or, with ``recursive``, any path component below ``loc``) starting with
    ``_`` or ``.`` are skipped (``_SUCCESS``, staging and hidden files). A location
    that is itself a matching file returns ``[loc.path]``. Paths are in the form of
    :attr:`Location.path` (pass them with ``loc.filesystem``).

    Raises
    ------
    TellStorageError
        If ``loc`` does not exist or cannot be listed.
    """
    with storage_errors(loc, "listing"):
        kind = _kind(loc)
        if kind is None:
            raise TellStorageError(
                f"{loc.uri} does not exist (nothing to list). Fix the URI or write the data first."
            )
        if kind == "file":
            return [loc.path] if loc.path.endswith(suffix) else []
        infos = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, recursive=recursive))
    base = loc.path.rstrip("/") + "/"
    paths = []
    for item in infos:
        if item.type != pafs.FileType.File or not item.path.endswith(suffix):
            continue
        rel = item.path[len(base) :] if item.path.startswith(base) else item.base_name
        if not any(part.startswith(("_", ".")) for part in rel.split("/")):
            paths.append(item.path)
    return sorted(paths)


def exists(loc: Location) -> bool:
    """Whether a file or directory (S3: object or prefix) exists at ``loc``."""
    with storage_errors(loc, "checking"):
        return _kind(loc) is not None


def read_bytes(loc: Location) -> bytes:
    """Return the content of the file at ``loc``."""
    with storage_errors(loc, "reading"):
        if loc.is_s3:  # FSSpecHandler would report refused credentials as "not found"
            return _s3fs_of(loc).cat_file(loc.path)
        with loc.filesystem.open_input_stream(loc.path) as stream:
            return stream.read()


def open_output(loc: Location) -> tuple[Any, Callable[[], None]]:
    """Open ``loc`` for streaming writes: ``(stream, abandon)``.

    ``stream`` is a pyarrow output stream; closing it creates the file (S3: completes the
    upload; only then does the object exist). ``abandon()`` drops what was written instead,
    without creating the file: locally the partial file is deleted; on S3 the buffered bytes
    are thrown away with no request (one, to abort it, if a multipart upload had begun).
    Without it a dropped S3 stream uploads its buffer when garbage-collected (s3fs closes
    files in ``__del__``): a failed write would publish a partial file and, when the
    endpoint is what failed, spend a whole retry budget per open file (about 5 s each).
    Failures while opening raise :class:`TellStorageError`.
    """
    with storage_errors(loc, "writing"):
        if not loc.is_s3:
            loc.filesystem.create_dir(posixpath.dirname(loc.path), recursive=True)
            stream = loc.filesystem.open_output_stream(loc.path)

            def abandon() -> None:
                with contextlib.suppress(OSError):
                    stream.close()
                with contextlib.suppress(OSError):
                    os.remove(loc.path)

            return stream, abandon
        raw = _s3fs_of(loc).open(loc.path, "wb")

    def abandon_s3() -> None:
        with contextlib.suppress(Exception):  # best effort: the endpoint may be what failed
            raw.discard()
        raw.closed = True  # nothing left for __del__ to upload

    return pa.PythonFile(raw, mode="w"), abandon_s3


def write_bytes(loc: Location, data: bytes) -> None:
    """Write ``data`` to ``loc`` so that readers see the old or the new content, never a part.

    Local: written to a hidden temporary file in the same directory, fsynced, then
    renamed over the target (parent directories are created). S3: one upload,
    which becomes visible only once complete.
    """
    if loc.is_s3:
        with storage_errors(loc, "writing"):
            _s3fs_of(loc).pipe_file(loc.path, bytes(data))
        return
    parent = os.path.dirname(loc.path)
    tmp = os.path.join(parent, f".{os.path.basename(loc.path)}.tmp-{uuid.uuid4().hex}")
    with storage_errors(loc, "writing"):
        os.makedirs(parent, exist_ok=True)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, loc.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def delete_tree(loc: Location) -> None:
    """Delete the file or directory (S3: object or every key below ``key/``) at ``loc``.

    Missing locations are fine. A bucket root or ``/`` is refused.
    """
    if (loc.is_s3 and not loc.key) or (not loc.is_s3 and loc.path == "/"):
        raise TellStorageError(
            f"Refusing to delete {loc.uri}: delete_tree never deletes a whole bucket or "
            "filesystem root. Point it at a prefix below the root."
        )
    with storage_errors(loc, "deleting"):
        kind = _kind(loc)
        try:
            if kind == "dir":
                loc.filesystem.delete_dir(loc.path)
            elif kind == "file":
                loc.filesystem.delete_file(loc.path)
        except FileNotFoundError:
            pass


def move_tree(src: Location, dst: Location) -> None:
    """Move a file or directory tree from ``src`` to ``dst`` on the same filesystem.

    ``dst`` must not exist (no merging). Local: one rename (atomic on one
    device). S3: server-side copy of every object, then delete of ``src``; not
    atomic, so readers should rely on a manifest written last.
    """
    if src.is_s3 != dst.is_s3 or src.endpoint_url != dst.endpoint_url:
        raise TellStorageError(
            f"Cannot move {src.uri} to {dst.uri}: both must be on the same filesystem "
            "(both local, or both S3 at the same endpoint). Copy the data instead."
        )
    if exists(dst):
        raise TellStorageError(
            f"Cannot move {src.uri} to {dst.uri}: the destination exists and move_tree never "
            "merges. Delete it first or choose a new destination."
        )
    with storage_errors(src, "moving"):
        kind = _kind(src)
        if kind is None:
            raise TellStorageError(f"Cannot move {src.uri}: it does not exist. Fix the source URI.")
        if not src.is_s3:
            os.makedirs(os.path.dirname(dst.path), exist_ok=True)
            shutil.move(src.path, dst.path)
            return
        fs = src.filesystem
        if kind == "file":
            fs.copy_file(src.path, dst.path)
            fs.delete_file(src.path)
            return
        base = src.path.rstrip("/") + "/"
        for item in fs.get_file_info(pafs.FileSelector(src.path, recursive=True)):
            if item.type == pafs.FileType.File and item.path.startswith(base):
                fs.copy_file(item.path, f"{dst.path}/{item.path[len(base) :]}")
        fs.delete_dir(src.path)


def promote_file(src: Location, dst: Location) -> None:
    """Make the file at ``src`` appear whole at ``dst`` (same filesystem), for a commit.

    Local: one rename (atomic; parent directories are created), so ``src`` is gone after.
    S3 (no rename): one server-side copy; the new object is visible only once complete, and
    ``src`` is left for the caller to delete. ``dst`` is assumed not to exist.
    """
    with storage_errors(dst, "promoting a committed file to"):
        if not src.is_s3:
            os.makedirs(os.path.dirname(dst.path), exist_ok=True)
            os.rename(src.path, dst.path)
            return
        src.filesystem.copy_file(src.path, dst.path)


@contextlib.contextmanager
def storage_errors(loc: Location, action: str) -> Iterator[None]:
    """Turn storage exceptions raised in the block into one-line TellStorageErrors.

    ``action`` is a verb in the -ing form ("reading", "writing the checkpoint to").
    Exceptions that are not storage failures (programming errors) pass unchanged.
    """
    try:
        yield
    except TellStorageError:
        raise
    except Exception as exc:
        if not _is_storage_exception(exc):
            raise
        raise translate_error(exc, loc, action) from exc


def translate_error(
    exc: BaseException, loc: Location, action: str, *, endpoint: str | None = None
) -> TellStorageError:
    """Return a one-line TellStorageError describing ``exc`` (raised while ``action`` ``loc``).

    Recognises unreachable endpoints, rejected or missing credentials, denied
    access, missing buckets and keys, and throttling; secrets are scrubbed.
    """
    if isinstance(exc, TellStorageError):
        return exc
    where = f"while {action} {loc.uri}"
    code = _error_code(exc)
    if loc.is_s3:
        ep = _display_endpoint(endpoint or loc.endpoint_url)
        if code in _CREDENTIAL_CODES:
            msg = (
                f"S3 at {ep} rejected the credentials ({code}) {where}. "
                "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                "AWS_SESSION_TOKEN) and that they belong to this endpoint."
            )
        elif code in _DENIED_CODES:
            msg = (
                f"S3 at {ep} denied access ({code}) {where}. Check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that this identity may "
                f"use bucket '{loc.bucket}'."
            )
        elif code == "NoSuchBucket":
            msg = (
                f"Bucket '{loc.bucket}' does not exist at {ep} ({where}). Create it "
                f"first (e.g. aws s3 mb s3://{loc.bucket}) or fix the URI."
            )
        elif _is_no_credentials(exc):
            msg = (
                f"No AWS credentials found {where}. Set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (on every Ray node)."
            )
        elif _is_unreachable(exc):
            msg = (
                f"Cannot reach the S3 endpoint {ep} {where} ({_exc_name(exc)}). Check "
                "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and that the server is up "
                "and reachable from this machine."
            )
        elif code in _NOT_FOUND_CODES or isinstance(exc, FileNotFoundError):
            msg = (
                f"{loc.uri} does not exist at {ep} ({where}). Fix the URI or write the data first."
            )
        elif code in _THROTTLE_CODES or (code or "").startswith("5"):
            msg = (
                f"S3 at {ep} kept failing with {code} {where}, even after retries with "
                "backoff. Retry later or reduce the request rate (fewer, larger files)."
            )
        else:
            msg = f"S3 request failed {where} at {ep}: {_exc_name(exc)}: {exc}"
    elif isinstance(exc, FileNotFoundError):
        msg = f"{loc.uri} does not exist ({where}). Fix the path or write the data first."
    elif isinstance(exc, PermissionError):
        msg = f"Permission denied {where}. Fix the file permissions or choose another path."
    else:
        msg = f"Storage operation failed {where}: {_exc_name(exc)}: {exc}"
    return TellStorageError(_scrub(msg))


# --------------------------------------------------------------------------- helpers


def _resolve_local(uri: str, *, from_file_uri: bool) -> Location:
    if from_file_uri:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise TellStorageError(
                f"file:// URI {uri!r} must name an absolute local path without host, query "
                "or fragment. Use file:///abs/path or a plain path."
            )
        raw = unquote(parts.path)
    else:
        raw = os.path.expanduser(uri)
    path = os.path.abspath(raw)
    fs = _cached_filesystem(("file", None), pafs.LocalFileSystem)
    return Location(uri=path, filesystem=fs, path=path, is_s3=False)


def _resolve_s3(uri: str) -> Location:
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    key = key.rstrip("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise TellStorageError(
            f"S3 bucket name {bucket!r} in {_redact_uri(uri)!r} is invalid: names are 3-63 "
            "lowercase letters, digits, '.' or '-', starting and ending with a letter or "
            "digit. Use s3://BUCKET/prefix."
        )
    if key and (
        any(seg in ("", ".", "..") for seg in key.split("/")) or any(ch in key for ch in "\\?#")
    ):
        raise TellStorageError(
            f"S3 key {key!r} in {uri!r} is unsafe: keys must not contain '.', '..' or empty "
            "segments, backslashes, '?' or '#'. Use a plain prefix such as s3://bucket/data/in."
        )
    endpoint = _configured_endpoint()
    fs = _cached_filesystem(("s3", endpoint), lambda: _build_s3(endpoint))
    path = f"{bucket}/{key}" if key else bucket
    return Location(uri=f"s3://{path}", filesystem=fs, path=path, is_s3=True, endpoint_url=endpoint)


def _configured_endpoint() -> str | None:
    """The S3 endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (botocore's precedence)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(var, "").strip()
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TellStorageError(
                    f"{var} must be an http:// or https:// URL such as http://127.0.0.1:8333. "
                    f"Got {_display_endpoint(value)!r}. Fix the environment variable."
                )
            return value.rstrip("/")
    return None


def object_store_options(loc: Location) -> dict[str, str] | None:
    """Options for Rust ``object_store`` clients (``deltalake``) that reach ``loc`` the way
    this module does: the same endpoint, and the credentials botocore resolves in this
    process (environment, profile, web identity, instance role), passed for this call only.
    None for a local location."""
    if not loc.is_s3:
        return None
    import botocore.session

    session = botocore.session.get_session()
    options = {"AWS_REGION": session.get_config_variable("region") or "us-east-1"}
    if loc.endpoint_url:
        options["AWS_ENDPOINT_URL"] = loc.endpoint_url
        if loc.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["AWS_ACCESS_KEY_ID"] = frozen.access_key
        options["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options


def _config_kwargs(*, max_retries: int, read_timeout_s: int) -> dict:
    # A fresh dict each time: botocore rewrites "max_attempts" in place.
    return {
        "retries": {"max_attempts": max_retries, "mode": "standard"},
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "read_timeout": read_timeout_s,
    }


def _new_s3fs(endpoint: str | None, *, max_retries: int, read_timeout_s: int):
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=endpoint,
        config_kwargs=_config_kwargs(max_retries=max_retries, read_timeout_s=read_timeout_s),
        use_listings_cache=False,  # other processes (Ray workers) write concurrently
        skip_instance_cache=True,  # this module caches; credentials may change in between
    )


def _build_s3(endpoint: str | None) -> pafs.FileSystem:
    logger.debug("building the S3 filesystem for %s", _display_endpoint(endpoint))
    fs = _new_s3fs(endpoint, max_retries=_MAX_RETRIES, read_timeout_s=_READ_TIMEOUT_S)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _cached_filesystem(key: tuple[str, str | None], build) -> pafs.FileSystem:
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            fs = _FILESYSTEMS[key] = build()
        return fs


def _s3fs_of(loc: Location):
    return loc.filesystem.handler.fs


def _kind(loc: Location) -> str | None:
    """``"file"``, ``"dir"`` or ``None`` (missing); raises on storage failures.

    On S3 a "directory" exists while at least one object lies below ``key/``.
    Delimited listings are not used: some servers (SeaweedFS) keep reporting
    emptied folders as common prefixes.
    """
    if not loc.is_s3:
        info = loc.filesystem.get_file_info(loc.path)
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type)
    fs = _s3fs_of(loc)
    try:
        if not loc.key:
            fs.call_s3("head_bucket", Bucket=loc.bucket)
            return "dir"
        try:
            fs.call_s3("head_object", Bucket=loc.bucket, Key=loc.key)
            return "file"
        except FileNotFoundError:
            pass
        listing = fs.call_s3("list_objects_v2", Bucket=loc.bucket, Prefix=f"{loc.key}/", MaxKeys=1)
    except FileNotFoundError:  # no such bucket
        return None
    return "dir" if listing.get("KeyCount") or listing.get("Contents") else None


def _check_local(loc: Location, *, write: bool) -> None:
    path = loc.path
    if not write:
        if not os.path.exists(path):
            raise TellStorageError(f"Input {loc.uri} does not exist. Fix the path.")
        mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
        if not os.access(path, mode):
            raise TellStorageError(f"Input {loc.uri} is not readable. Fix its permissions.")
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise TellStorageError(
            f"Output {loc.uri} is a file; the output must be a directory (it is written "
            "below it). Choose a directory, or a path that does not exist yet."
        )
    target = path if os.path.exists(path) else os.path.dirname(path)
    if target != path and not os.path.isdir(target):
        raise TellStorageError(
            f"The parent directory {target} of output {loc.uri} does not exist; outputs need "
            f"an existing parent. Create it (mkdir -p {target}) or fix the path."
        )
    mode = os.W_OK | (os.X_OK if os.path.isdir(target) else 0)
    if not os.access(target, mode):
        raise TellStorageError(
            f"Output {loc.uri} is not writable ({target} denies write access). Fix the "
            "permissions or choose another path."
        )


def _check_s3(loc: Location, *, write: bool) -> None:
    # Throttling and 5xx are retried like every other request; a refused connection still
    # fails within seconds and a silent endpoint within about 20 s.
    fs = _new_s3fs(
        loc.endpoint_url, max_retries=_MAX_RETRIES, read_timeout_s=_PREFLIGHT_READ_TIMEOUT_S
    )
    fs.retries = 1  # no s3fs retry rounds on top of botocore's 4 tries
    bucket, key = loc.bucket, loc.key
    try:
        listing = fs.call_s3(
            "list_objects_v2", Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1
        )
        if write or listing.get("KeyCount") or listing.get("Contents"):
            return
        if key:
            try:
                fs.call_s3("head_object", Bucket=bucket, Key=key)
                return
            except FileNotFoundError:
                pass
        raise TellStorageError(
            f"Input {loc.uri} does not exist: no object {key or '(any)'!r} and nothing below "
            f"it in bucket '{bucket}' at {_display_endpoint(_endpoint_of(fs, loc))}. Fix the "
            "URI or upload the data."
        )
    except TellStorageError:
        raise
    except Exception as exc:
        raise translate_error(
            exc, loc, "checking access to", endpoint=_endpoint_of(fs, loc)
        ) from exc


def _endpoint_of(fs, loc: Location) -> str | None:
    """The endpoint the client really uses (it may come from ~/.aws/config)."""
    client = getattr(fs, "_s3", None)
    return getattr(getattr(client, "meta", None), "endpoint_url", None) or loc.endpoint_url


def _error_chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _error_code(exc: BaseException) -> str | None:
    for err in _error_chain(exc):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
    return None


def _is_no_credentials(exc: BaseException) -> bool:
    names = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
    return any(type(err).__name__ in names for err in _error_chain(exc))


def _is_unreachable(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        BotoConnectionError = HTTPClientError = ()
    kinds = (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)
    return any(isinstance(err, kinds) for err in _error_chain(exc))


def _is_storage_exception(exc: BaseException) -> bool:
    if isinstance(exc, OSError) or _error_code(exc) or _is_unreachable(exc):
        return True
    module = type(exc).__module__
    return module.startswith(("botocore", "aiobotocore", "s3fs", "aiohttp", "pyarrow"))


def _exc_name(exc: BaseException) -> str:
    for err in _error_chain(exc):
        if type(err).__module__.startswith(("botocore", "aiohttp")):
            return type(err).__name__
    return type(exc).__name__


def _display_endpoint(endpoint: str | None) -> str:
    if not endpoint:
        return "the default AWS S3 endpoint"
    parts = urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host


def _redact_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _scrub(text: str) -> str:
    for var in _SECRET_VARS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."
