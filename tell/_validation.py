"""Input checks for the estimator: the one home of its data error messages."""

from __future__ import annotations

import numpy as np

from tell.errors import TellDataError


def check_matrix(X: object, *, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 array of shape (n, D), or raise TellDataError.

    Accepts any array-like of real numbers with 2 or more dimensions; rows are flattened
    (images (n, H, W, C) become (n, H*W*C), in H, W, C order).

    Raises on: non-numeric values, fewer than 2 dimensions, no rows or no columns,
    NaN or infinite values (reporting how many rows and the first one), and a row length
    different from ``n_features`` when given.
    """
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise TellDataError(f"{name} is not a numeric array: {exc}.") from None
    if (
        arr.dtype == object
        or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_)
        or np.iscomplexobj(arr)
    ):
        raise TellDataError(f"{name} must hold real numbers. Got dtype {arr.dtype}.")
    if arr.ndim < 2:
        raise TellDataError(
            f"{name} must be 2-D (n_samples, n_features) or image-shaped. Got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise TellDataError(f"{name} is empty: it has 0 rows (shape {arr.shape}).")
    arr = np.ascontiguousarray(arr.reshape(arr.shape[0], -1), dtype=np.float32)
    if arr.shape[1] == 0:
        raise TellDataError(f"{name} has 0 features per row (shape {arr.shape}).")
    bad_rows = ~np.isfinite(arr).all(axis=1)
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        raise TellDataError(
            f"{name} contains NaN or infinity in {int(bad_rows.sum())} row(s) (first: row {first})."
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise TellDataError(
            f"{name} has {arr.shape[1]} features per row, "
            f"but the model was fitted with {n_features}."
        )
    return arr


def check_enough_rows(n_rows: int, n_clusters: int, name: str = "X") -> None:
    """Refuse fewer rows than clusters."""
    if n_rows < n_clusters:
        raise TellDataError(
            f"n_clusters={n_clusters} is larger than the number of rows in {name} ({n_rows}); "
            "use fewer clusters or more data."
        )
