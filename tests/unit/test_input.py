"""The input set (jobs.input.inspect.open_input): one preflight, one listing, footers read
once, and every input check in one place. No Ray, local files."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.input import inspect as input_inspect
from jobs.input.inspect import check_feature_type, list_input, open_input
from tell.errors import TellConfigError, TellDataError


def _write(path, ids, dim=4, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(len(ids)).random((len(ids), dim), dtype=np.float32)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
    pq.write_table(pa.table({"id": ids, "x": vec, **columns}), path)


def test_partitions_group_by_directory_from_the_footers_already_read(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _write(root / "dt=2026-11-28" / "a.parquet", [0, 1])
    _write(root / "dt=2026-11-28" / "b.parquet", [2])
    _write(root / "dt=2026-11-29" / "hour=03" / "a.parquet", [3, 4, 5])
    data = open_input(str(root), "x", required=["id"])
    assert (data.num_rows, data.dim, len(data.files)) == (6, 4, 3)

    def no_more_io(*args, **kwargs):
        raise AssertionError("the partitions must not list or read footers again")

    monkeypatch.setattr(storage, "list_files", no_more_io)
    monkeypatch.setattr(input_inspect, "_footer", no_more_io)
    parts = data.partitions()
    assert list(parts) == ["dt=2026-11-28", "dt=2026-11-29/hour=03"]
    assert [p.num_rows for p in parts.values()] == [3, 3]
    assert parts["dt=2026-11-28"].uri == storage.resolve(str(root / "dt=2026-11-28")).uri
    assert all(p.dim == 4 and p.column == "x" for p in parts.values())


def test_only_the_footers_asked_for_are_read(tmp_path, monkeypatch):
    """An incremental run lists once, then reads the footers of its new partitions only."""
    root = tmp_path / "data"
    for day in ("dt=1", "dt=2", "dt=3"):
        _write(root / day / "p.parquet", [0, 1, 2])
    files = list_input(str(root))
    groups = files.partitions(hive=True)
    assert list(groups) == ["dt=1", "dt=2", "dt=3"]
    read = []
    footer = input_inspect._footer
    monkeypatch.setattr(input_inspect, "_footer", lambda loc, p: read.append(p) or footer(loc, p))
    data = files.open("x", paths=groups["dt=3"])
    assert read == groups["dt=3"] and data.num_rows == 3
    assert list(data.partitions()) == ["dt=3"]


def test_incremental_needs_hive_partitions(tmp_path):
    flat = tmp_path / "flat"
    _write(flat / "x.parquet", [0, 1])
    data = open_input(str(flat), "x")
    assert data.partitions() == {"": data}
    with pytest.raises(TellConfigError, match="hive-partitioned"):
        list_input(str(flat)).partitions(hive=True)
    plain = tmp_path / "plain"
    _write(plain / "plain-dir" / "x.parquet", [0, 1])
    with pytest.raises(TellConfigError, match="hive-partitioned"):
        list_input(str(plain)).partitions(hive=True)


def test_width_check_has_one_message(tmp_path):
    _write(tmp_path / "d" / "p.parquet", [0, 1], dim=2)
    data = open_input(str(tmp_path / "d"), "x")
    data.require_width(2, "m")
    with pytest.raises(TellDataError, match=r"Column 'x' of \S+ has 2 values per row, but model m "
                       r"expects 4 \(the width it was trained on\)"):  # fmt: skip
        data.require_width(4, "m")


def test_without_a_feature_column_only_files_and_required_columns_are_checked(tmp_path):
    _write(tmp_path / "d" / "dt=1" / "p.parquet", [0, 1], label=["a", "b"])
    data = open_input(str(tmp_path / "d"), None, required=["id", "label"])
    assert (data.num_rows, data.column, data.dim) == (2, None, 0)
    with pytest.raises(TellDataError, match=r"Column 'nope' not found in \S+p\.parquet"):
        open_input(str(tmp_path / "d"), None, required=["nope"])


@pytest.mark.parametrize(
    "typ",
    [pa.string(), pa.list_(pa.string()), pa.list_(pa.string(), 3)],
)
def test_numeric_screening_refuses_non_numeric_types(typ):
    with pytest.raises(TellDataError, match="not a numeric"):
        check_feature_type("x", typ)


def test_numeric_screening_judges_extension_types_by_their_storage():
    check_feature_type("x", pa.fixed_shape_tensor(pa.float32(), [2, 2]))
    with pytest.raises(TellDataError, match="not a numeric"):
        check_feature_type("x", pa.fixed_shape_tensor(pa.string(), [2, 2]))


def test_a_corrupt_file_is_one_line_naming_it(tmp_path):
    _write(tmp_path / "d" / "a.parquet", [0, 1])
    (tmp_path / "d" / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TellDataError, match=r"b\.parquet is not a valid Parquet file"):
        open_input(str(tmp_path / "d"), "x")
