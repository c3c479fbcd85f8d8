"""Reading committed runs: a directory with Parquet parts and a ``_SUCCESS`` JSON manifest.

A run is committed once its manifest exists (it is written last). Readers use only the files
the manifest lists when it lists them (names relative to the run directory, run-rooted
paths, URIs, or objects with a "path"/"name"), and reconcile the rows they read with the
count it records (any of the keys in :data:`_ROW_COUNT_KEYS`).
"""

from __future__ import annotations

import json
from typing import Any

from pyarrow.fs import FileSelector, FileType

from jobs import storage
from tell.errors import TellDataError

MANIFEST = "_SUCCESS"
_ROW_COUNT_KEYS = ("rows", "num_rows", "row_count", "output_rows", "rows_out")


def read_manifest(run: storage.Location, uri: str) -> dict[str, Any]:
    """The run's ``_SUCCESS`` manifest; refuses a run that has none (not committed)."""
    marker = run.join(MANIFEST)
    if not storage.exists(marker):
        runs = _committed_runs_below(run)
        hint = f" Committed runs below it: {runs}." if runs else ""
        raise TellDataError(
            f"The assignments at {uri} are not committed: no {MANIFEST} manifest there. "
            "Pass a run directory written by 'tell assign' (<out>/<run_id>) after it finished, "
            f"or re-run the assignment.{hint}"
        )
    raw = storage.read_bytes(marker)
    try:
        manifest = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TellDataError(
            f"The {MANIFEST} manifest of {uri} is not valid JSON ({exc})."
        ) from None
    if not isinstance(manifest, dict):
        raise TellDataError(f"The {MANIFEST} manifest of {uri} must be a JSON object.")
    return manifest


def _committed_runs_below(loc: storage.Location, limit: int = 5) -> list[str]:
    """Up to ``limit`` child directories of ``loc`` that hold a manifest (for error hints)."""
    if not storage.exists(loc):
        return []
    with storage.storage_errors(loc, "listing"):
        children = loc.filesystem.get_file_info(FileSelector(loc.path))
    dirs = sorted(c.base_name for c in children if c.type == FileType.Directory)[:50]
    return [loc.join(d).uri for d in dirs if storage.exists(loc.join(d, MANIFEST))][:limit]


def committed_files(run: storage.Location, manifest: dict[str, Any], uri: str) -> list[str]:
    """Paths (on run.filesystem) of the committed Parquet parts: the manifest's list, if any."""
    listed = manifest.get("files")
    if listed is None:
        files = storage.list_files(run, suffix=".parquet")
    else:
        names = [_entry_name(f) for f in (listed if isinstance(listed, list) else [None])]
        if not all(names):
            raise TellDataError(f"The {MANIFEST} manifest of {uri} has a malformed 'files' list.")
        files = [_part_path(run, n) for n in names]
        with storage.storage_errors(run, "checking the files of"):
            infos = run.filesystem.get_file_info(files)
        missing = [i.path for i in infos if i.type != FileType.File]
        if missing:
            raise TellDataError(
                f"The {MANIFEST} manifest of {uri} lists {len(missing)} file(s) that do not "
                f"exist, e.g. {missing[0]}; the run is damaged: re-run the assignment."
            )
    if not files:
        raise TellDataError(f"The committed run {uri} holds no Parquet files.")
    return files


def _entry_name(entry: Any) -> str | None:
    if isinstance(entry, dict):
        entry = entry.get("path") or entry.get("name")
    return entry if isinstance(entry, str) and entry else None


def _part_path(run: storage.Location, name: str) -> str:
    """A manifest entry (relative name, run-rooted path or URI) as a path on run.filesystem.

    Entries outside the run (another bucket, endpoint or directory, or ``..``) are refused:
    a manifest must never make a reader open files it was not asked to read.
    """
    root = run.path.rstrip("/") + "/"
    if "://" in name:
        loc = storage.resolve(name)
        same_store = loc.is_s3 == run.is_s3 and loc.endpoint_url == run.endpoint_url
        path = loc.path
    else:
        same_store = True
        path = name if name.startswith(root) else run.join(name).path
    if not same_store or not path.startswith(root) or ".." in path[len(root) :].split("/"):
        raise TellDataError(
            f"The {MANIFEST} manifest of {run.uri} lists {name!r}, which is outside the run; "
            "refusing to read it."
        )
    return path


def reconcile_rows(manifest: dict[str, Any], rows: int, uri: str) -> None:
    """Refuse a run whose files hold another number of rows than its manifest records."""
    for key in _ROW_COUNT_KEYS:
        expected = manifest.get(key)
        if isinstance(expected, int) and expected != rows:
            raise TellDataError(
                f"The {MANIFEST} manifest of {uri} records {expected} rows but its files hold "
                f"{rows}; the run is damaged: re-run the assignment."
            )
