"""What plain Parquet readers see in an assignment run directory (issue #12).

None of them knows tell's manifest: each lists ``<out>/<run_id>/`` the way a user's engine
does. :func:`plain_reads` returns, per reader, the ids (and clusters) it found, so a test can
require exactly the committed rows from every one of them, or nothing at all.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa

from jobs import storage

HAVE_DUCKDB = importlib.util.find_spec("duckdb") is not None


def _pyarrow_dataset(loc: storage.Location) -> pa.Table:
    import pyarrow.dataset as ds

    return ds.dataset(loc.path, filesystem=loc.filesystem, partitioning="hive").to_table()


def _pandas(loc: storage.Location) -> pa.Table:
    import pandas as pd

    frame = pd.read_parquet(loc.path, filesystem=loc.filesystem)
    if "cluster" in frame and isinstance(frame["cluster"].dtype, pd.CategoricalDtype):
        frame["cluster"] = frame["cluster"].astype(int)  # hive values come as categories
    return pa.Table.from_pandas(frame, preserve_index=False)


def _ray_data(loc: storage.Location) -> pa.Table:
    import ray
    import ray.data

    dataset = ray.data.read_parquet(loc.path, filesystem=loc.filesystem)
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def _duckdb(loc: storage.Location, glob: str) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    root = loc.path
    if loc.is_s3:  # through the same fsspec filesystem (httpfs would need a download)
        con.register_filesystem(storage._s3fs_of(loc))
        root = f"s3://{loc.path}"
    query = f"SELECT * FROM read_parquet('{root}/{glob}', hive_partitioning=true)"
    return pa.Table.from_pandas(con.sql(query).df(), preserve_index=False)


def plain_reads(
    uri: str, *, partitioned: bool = False, ray_data: bool = True, duckdb_glob: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """``{reader: {"id": ids, "cluster": clusters}}`` as each plain reader finds them under
    ``uri``; a reader that finds no data file gives empty arrays (that is "nothing").
    DuckDB reads the glob the README gives (``*.parquet``, ``cluster=*/*.parquet`` when
    ``partitioned``) unless ``duckdb_glob`` names another (``dt=*/*.parquet``)."""
    loc = storage.resolve(uri)
    readers = {"pyarrow.dataset": _pyarrow_dataset, "pandas": _pandas}
    if ray_data:
        readers["ray.data"] = _ray_data
    if HAVE_DUCKDB:
        glob = duckdb_glob or ("cluster=*/*.parquet" if partitioned else "*.parquet")
        readers["duckdb"] = lambda loc: _duckdb(loc, glob)
    has_data = bool(storage.list_files(loc, recursive=True)) if storage.exists(loc) else False
    found = {}
    for name, read in readers.items():
        if not has_data:
            found[name] = {"id": np.array([], np.int64), "cluster": np.array([], np.int32)}
            continue
        table = read(loc)
        found[name] = {
            "id": table["id"].to_numpy(),
            "cluster": np.asarray(table["cluster"].to_numpy(), np.int32),
        }
    return found


def assert_exactly(uri: str, ids: np.ndarray, **kw) -> dict[str, dict[str, np.ndarray]]:
    """Every plain reader finds exactly ``ids``: none twice, none missing, no other."""
    found = plain_reads(uri, **kw)
    for name, got in found.items():
        assert len(got["id"]) == len(ids), (name, len(got["id"]), len(ids))
        np.testing.assert_array_equal(np.sort(got["id"]), np.sort(ids), err_msg=name)
    return found


def assert_nothing(uri: str, **kw) -> None:
    """No plain reader finds a row."""
    counts = {name: len(got["id"]) for name, got in plain_reads(uri, **kw).items()}
    assert set(counts.values()) == {0}, counts
