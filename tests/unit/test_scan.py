"""The per-file scan before training (jobs.input.scan.scan_file), without a Ray cluster."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.input import scan
from tell.errors import TellDataError


def _write_ragged(path, rows: list[list[float] | None]) -> None:
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32()))}), path)


def _run(location, path, *, keep, fraction=0.5, seed=0, file_index=0, dim=3):
    outputs = list(
        scan.scan_file(location, path, file_index, "embedding", dim, fraction, seed, keep)
    )
    *blocks, stats = outputs
    assert isinstance(stats, scan.FileStats)
    return blocks, stats


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1024 rows (the minimum), so a 2,500-row file spans three batches."""
    monkeypatch.setattr(scan, "BLOCK_BYTES", 1)


def test_scan_file_counts_bad_rows_and_keeps_the_good_ones_in_order(tmp_path, small_blocks):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2500, 3)).astype(np.float32)
    rows: list = X.tolist()
    rows[5] = [1.0, float("nan"), 0.0]
    rows[1500] = [1.0, 2.0]  # wrong length
    rows[2400] = None
    path = str(tmp_path / "part.parquet")
    _write_ragged(path, rows)
    location = storage.resolve(str(tmp_path))

    blocks, stats = _run(location, path, keep=True)

    assert (stats.rows, stats.bad_rows, stats.first_reason) == (2500, 3, "non-finite value")
    assert [len(b) for b in blocks] == [1023, 1023, 451]
    kept = np.concatenate([np.stack(b.column("x").to_numpy(zero_copy_only=False)) for b in blocks])
    good = np.delete(X, [5, 1500, 2400], axis=0)
    np.testing.assert_array_equal(kept, good)
    # The sample is usable rows only, about `fraction` of them.
    assert stats.sample.dtype == np.float32 and stats.sample.shape[1] == 3
    assert 0.4 * len(good) < len(stats.sample) < 0.6 * len(good)
    assert np.isfinite(stats.sample).all()
    assert {tuple(r) for r in stats.sample} <= {tuple(r) for r in good}


def test_scan_file_sample_is_seeded_by_seed_and_file(tmp_path):
    X = np.random.default_rng(1).normal(size=(500, 3)).astype(np.float32)
    path = str(tmp_path / "part.parquet")
    _write_ragged(path, X.tolist())
    location = storage.resolve(str(tmp_path))

    _, a = _run(location, path, keep=False)
    _, again = _run(location, path, keep=False)
    _, other_seed = _run(location, path, keep=False, seed=1)
    _, other_file = _run(location, path, keep=False, file_index=1)

    np.testing.assert_array_equal(a.sample, again.sample)
    assert not np.array_equal(a.sample, other_seed.sample)
    assert not np.array_equal(a.sample, other_file.sample)


def test_scan_file_without_keep_yields_only_stats(tmp_path):
    path = str(tmp_path / "part.parquet")
    _write_ragged(path, [[1.0, 2.0, 3.0]] * 10)
    blocks, stats = _run(storage.resolve(str(tmp_path)), path, keep=False, fraction=1.0)
    assert blocks == [] and (stats.rows, stats.bad_rows, len(stats.sample)) == (10, 0, 10)


def test_scan_file_refuses_a_corrupt_file_in_one_line(tmp_path):
    path = tmp_path / "part.parquet"
    path.write_bytes(b"PAR1 but not really" * 10)
    with pytest.raises(TellDataError, match=r"part\.parquet is not a valid Parquet file"):
        _run(storage.resolve(str(tmp_path)), str(path), keep=True)


@pytest.mark.parametrize("dim, expected", [(128, 65536), (3, 2796202), (10**9, 1024)])
def test_block_rows_targets_block_bytes(dim, expected):
    assert scan.block_rows(dim) == expected
