"""The Parquet column contract: tables <-> dense float32 matrices."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tell.errors import TellConfigError, TellDataError
from tell.io import (
    IMAGE_SHAPE_KEY,
    embeddings_to_table,
    image_shape_from_schema,
    table_to_matrix,
    write_parquet_files,
)

X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # (4, 3)


def _fsl(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    flat = pa.array(values.reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


# --------------------------------------------------------------------------- writer


def test_embeddings_to_table_layout():
    table = embeddings_to_table(X, labels=[0, 1, 1, 0], texts=list("abcd"))

    assert table.column_names == ["id", "embedding", "label", "text"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert table.column("id").to_pylist() == [0, 1, 2, 3]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("label").type == pa.int64()
    assert table.column("text").to_pylist() == ["a", "b", "c", "d"]
    assert image_shape_from_schema(table.schema) is None
    np.testing.assert_array_equal(table_to_matrix(table, "embedding"), X)


def test_embeddings_to_table_custom_names_and_ids():
    table = embeddings_to_table(
        X.astype(np.float64), column="vec", ids=[10, 11, 12, 13], id_column="row"
    )

    assert table.column_names == ["row", "vec"]
    assert table.column("row").to_pylist() == [10, 11, 12, 13]
    np.testing.assert_array_equal(table_to_matrix(table, "vec"), X)


def test_images_are_stored_flattened_with_their_shape():
    images = np.random.default_rng(0).random((5, 4, 3, 2), dtype=np.float32)  # (n, H, W, C)

    table = embeddings_to_table(images)

    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 24)
    assert table.schema.metadata[IMAGE_SHAPE_KEY] == b"4,3,2"
    assert image_shape_from_schema(table.schema) == (4, 3, 2)
    np.testing.assert_array_equal(table_to_matrix(table, "embedding"), images.reshape(5, 24))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [0, 1]}, r"'label' needs one value per row \(4\)"),
        ({"ids": [0, 1, 2]}, r"'id' needs one value per row \(4\)"),
        ({"texts": ["a"]}, r"'text' needs one value per row \(4\)\. Got 1"),
        ({"labels": [0.5, 1, 1, 0]}, r"'label' must hold integers"),
    ],
)
def test_embeddings_to_table_bad_columns(kwargs, match):
    with pytest.raises(TellDataError, match=match):
        embeddings_to_table(X, **kwargs)


def test_embeddings_to_table_rejects_bad_shapes_and_names():
    with pytest.raises(TellDataError, match=r"must be 2-D .* or 4-D .*Got shape \(4,\)"):
        embeddings_to_table(np.zeros(4))
    with pytest.raises(TellConfigError, match="distinct"):
        embeddings_to_table(X, column="id")


# --------------------------------------------------------------------------- reader


@pytest.mark.parametrize(
    "arrow_type", [pa.float32(), pa.float64(), pa.float16(), pa.int32(), pa.int64()]
)
def test_fixed_size_list_of_any_numeric_type(arrow_type):
    values = np.arange(12).reshape(4, 3)
    arr = _fsl(values, arrow_type)

    out = table_to_matrix(pa.table({"f": arr}), "f")

    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, values)


def test_fixed_size_list_float32_is_zero_copy_unless_asked():
    arr = _fsl(X, pa.float32())

    view = table_to_matrix(arr)
    fresh = table_to_matrix(arr, copy=True)

    assert not view.flags.writeable  # a view of the Arrow buffer
    assert fresh.flags.writeable
    np.testing.assert_array_equal(view, X)
    np.testing.assert_array_equal(fresh, X)


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
@pytest.mark.parametrize("value_type", [pa.float32(), pa.float64()])
def test_variable_list_of_equal_lengths(list_type, value_type):
    arr = pa.array(X.tolist(), type=list_type(value_type))

    out = table_to_matrix(pa.table({"emb": arr}), "emb")

    np.testing.assert_allclose(out, X, rtol=1e-7)
    assert out.dtype == np.float32


def test_uint8_lists_are_pixel_bytes_scaled_to_unit_interval():
    pixels = np.array([[0, 255, 51], [102, 0, 255]], dtype=np.uint8)
    variable = pa.array(pixels.tolist(), type=pa.list_(pa.uint8()))
    fixed = _fsl(pixels, pa.uint8())

    for arr in (variable, fixed):
        np.testing.assert_allclose(table_to_matrix(arr, "img"), pixels / 255.0, rtol=1e-6)


@pytest.mark.parametrize("binary_type", [pa.binary(), pa.large_binary(), pa.binary(3)])
def test_binary_image_bytes(binary_type):
    pixels = np.array([[0, 255, 51], [102, 0, 255], [1, 2, 3]], dtype=np.uint8)
    arr = pa.array([row.tobytes() for row in pixels], type=binary_type)

    np.testing.assert_allclose(table_to_matrix(arr, "img"), pixels / 255.0, rtol=1e-6)
    # A slice starts at a non-zero offset in the same buffers.
    np.testing.assert_allclose(table_to_matrix(arr.slice(1, 2)), pixels[1:] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: _fsl(X, pa.float32()), lambda: pa.array(X.tolist())])
def test_sliced_and_chunked_columns(make):
    arr = make()
    chunked = pa.chunked_array([arr.slice(0, 1), arr.slice(1, 3)])

    np.testing.assert_allclose(table_to_matrix(arr.slice(1, 2)), X[1:3])
    np.testing.assert_allclose(table_to_matrix(chunked, "emb"), X)
    np.testing.assert_allclose(table_to_matrix(pa.table({"emb": chunked}), "emb"), X)


def test_record_batch_and_tensor_extension_type():
    tensor_type = pa.fixed_shape_tensor(pa.float32(), (3,))
    arr = pa.ExtensionArray.from_storage(tensor_type, _fsl(X, pa.float32()))
    batch = pa.RecordBatch.from_arrays([arr], names=["t"])

    np.testing.assert_array_equal(table_to_matrix(batch, "t"), X)


def test_empty_column_keeps_its_width():
    out = table_to_matrix(_fsl(np.empty((0, 5), np.float32), pa.float32()))

    assert out.shape == (0, 5) and out.dtype == np.float32


def test_ragged_list_error_names_column_and_lengths():
    arr = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0], [6.0, 7.0, 8.0]])

    with pytest.raises(
        TellDataError,
        match=r"Column 'vec' has rows of different lengths: 1, 2, 3 \(row 0 has 2, row 2 has 1\)",
    ):
        table_to_matrix(pa.table({"vec": arr}), "vec")


def test_ragged_across_chunks_is_an_error():
    chunked = pa.chunked_array([pa.array([[1.0, 2.0]]), pa.array([[1.0, 2.0, 3.0]])])

    with pytest.raises(TellDataError, match=r"'vec' has rows of different lengths .*\[2, 3\]"):
        table_to_matrix(chunked, "vec")


@pytest.mark.parametrize(
    ("arr", "type_text"),
    [
        (pa.array(["a", "b"]), "string"),
        (pa.array([["a"], ["b"]]), "list<item: string>"),
        (pa.array([1.0, 2.0]), "double"),
        (pa.array([[True], [False]]), "list<item: bool>"),
        (pa.array([{"x": 1.0}]), "struct<x: double>"),
    ],
)
def test_non_numeric_error_names_column_and_type(arr, type_text):
    with pytest.raises(TellDataError) as info:
        table_to_matrix(pa.table({"name": arr}), "name")

    message = str(info.value)
    assert "Column 'name' has type " + type_text in message
    assert "not a numeric feature column" in message


@pytest.mark.parametrize(
    ("arr", "what"),
    [(pa.array([[1.0, 2.0], None]), "1 null rows"), (pa.array([[1.0, None]]), "1 null values")],
)
def test_nulls_are_errors(arr, what):
    with pytest.raises(TellDataError, match=f"Column 'v' has {what}"):
        table_to_matrix(arr, "v")


def test_missing_column_lists_the_columns():
    with pytest.raises(TellDataError, match=r"'embedding' not found; columns are \['id', 'vec'\]"):
        table_to_matrix(pa.table({"id": [1], "vec": [[1.0]]}), "embedding")


# --------------------------------------------------------------------------- files


def test_write_parquet_files_round_trip(tmp_path):
    images = np.random.default_rng(1).random((10, 2, 2, 1), dtype=np.float32)
    table = embeddings_to_table(images, labels=np.arange(10) % 3)

    paths = write_parquet_files(table, tmp_path / "out", 3)

    assert [p.rsplit("/", 1)[1] for p in paths] == [f"part-0000{i}.parquet" for i in range(3)]
    parts = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in parts] == [3, 4, 3]
    back = pa.concat_tables(parts)
    assert back.column("id").to_pylist() == list(range(10))
    assert image_shape_from_schema(parts[0].schema) == (2, 2, 1)
    np.testing.assert_array_equal(table_to_matrix(back, "embedding"), images.reshape(10, 4))


def test_write_parquet_files_refuses_stale_files_unless_overwrite(tmp_path):
    table = embeddings_to_table(X)
    write_parquet_files(table, tmp_path, 4, prefix="p")

    with pytest.raises(TellDataError, match=r"already holds 4 'p-\*\.parquet' files"):
        write_parquet_files(table, tmp_path, 2, prefix="p")
    paths = write_parquet_files(table, tmp_path, 2, prefix="p", overwrite=True)

    assert sorted(str(p) for p in tmp_path.glob("p-*.parquet")) == paths


@pytest.mark.parametrize("n_files", [0, 5, 1.5, True])
def test_write_parquet_files_bad_n_files(tmp_path, n_files):
    with pytest.raises(TellConfigError, match=r"'n_files' parameter must be an int in \[1, 4\]"):
        write_parquet_files(embeddings_to_table(X), tmp_path, n_files)


def test_screen_rows_quarantines_bad_rows_with_reasons():
    from tell.io import screen_rows

    col = pa.array(
        [[1.0, 2.0], None, [1.0], [float("nan"), 0.0], [3.0, None], [5.0, 6.0]],
        type=pa.list_(pa.float32()),
    )
    screen = screen_rows(pa.table({"e": col}), "e", 2)
    assert screen.valid.tolist() == [True, False, False, False, False, True]
    assert screen.reasons.tolist() == [
        None,
        "null",
        "length 1, expected 2",
        "non-finite value",
        "non-finite value",
        None,
    ]
    np.testing.assert_array_equal(screen.matrix, [[1.0, 2.0], [5.0, 6.0]])


def test_screen_rows_fixed_size_and_wrong_type():
    from tell.io import screen_rows

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[2, 1] = np.inf
    table = embeddings_to_table(x)
    screen = screen_rows(table, "embedding", 3)
    assert screen.valid.tolist() == [True, True, False, True]
    wrong = screen_rows(table, "embedding", 4)
    assert not wrong.valid.any() and wrong.reasons[0] == "length 3, expected 4"
    with pytest.raises(TellDataError, match="not a numeric feature column"):
        screen_rows(pa.table({"e": pa.array(["a", "b"])}), "e", 2)
