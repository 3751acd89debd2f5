"""What vecz accepts as a batch of vectors: numpy arrays, Arrow arrays and tables, pandas,
and anything exposing DLPack or ``__array__`` (torch, jax, cupy on the host, ...).

`as_matrix(x, dim, what, column=None)` returns a numpy array without a Python-level loop over
rows; the caller (`engine.codecs._as_vectors`) then checks shape, dtype and finiteness:

- numpy: as is (any strides; float16/32/64); a masked array only without masked entries.
- pyarrow ``Array``/``ChunkedArray`` of ``fixed_size_list``/``list``/``large_list`` of floats:
  the flat values buffer, reshaped (zero-copy for one chunk without nulls); every row must
  hold ``dim`` non-null values (`InvalidInput` names the first row that does not).
- pyarrow ``Table``/``RecordBatch``, pandas ``DataFrame``: the column named by `column`, or
  the only vector column (a pandas frame of float columns only is taken as the matrix).
- pandas ``Series`` of arrays or lists: converted to an Arrow list array by pyarrow (C++),
  then as above; a Series with an Arrow list dtype goes straight through.
- DLPack (``__dlpack__``): ``np.from_dlpack`` (zero-copy for CPU tensors); a tensor that
  needs ``.detach()`` or ``.cpu()`` first is an `InvalidInput` saying so.
- anything else: ``np.asarray`` (ragged nested lists are an `InvalidInput`).

Tested by tests/test_inputs.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..formats.importers import arrow_list_values
from .errors import InvalidInput

__all__ = ["as_matrix", "as_ids", "asarray"]

_MAX_ID = (1 << 63) - 1

_VECTOR_TYPES = "a list, large_list or fixed_size_list of floats"


def asarray(x: Any, what: str, expected: str) -> np.ndarray:
    """np.asarray(x), with numpy's error for ragged nested lists turned into InvalidInput."""
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what}: expected {expected}, found a {type(x).__name__} numpy cannot make one "
                           f"array of ({exc})") from None


def as_matrix(x: Any, dim: int, what: str, column: str | None = None) -> np.ndarray:
    """`x` as a numpy array (see the module docstring); shape and dtype are checked later."""
    if isinstance(x, np.ndarray):
        if column is not None:
            raise InvalidInput(f"{what}: column={column!r} applies to tables and data frames, found a numpy array")
        if isinstance(x, np.ma.MaskedArray):
            return _unmasked(x, what)
        return x
    root = type(x).__module__.partition(".")[0]
    if root == "pyarrow":
        return _from_arrow(x, dim, what, column)
    if root == "pandas":
        return _from_pandas(x, dim, what, column)
    if column is not None:
        raise InvalidInput(f"{what}: column={column!r} applies to pyarrow tables and pandas data frames, "
                           f"found a {type(x).__name__}")
    if hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        try:
            return np.from_dlpack(x)
        except (RuntimeError, TypeError, BufferError, ValueError) as exc:
            if not hasattr(x, "__array__"):
                raise InvalidInput(f"{what}: expected a tensor numpy can read through DLPack (on the CPU, "
                                   f"without autograd: call .detach().cpu() first), found {type(x).__name__}: "
                                   f"{exc}") from None
            try:
                return np.asarray(x)
            except (RuntimeError, TypeError, ValueError) as exc2:
                raise InvalidInput(f"{what}: expected a tensor numpy can read (on the CPU, without autograd: "
                                   f"call .detach().cpu() first), found {type(x).__name__}: {exc2}") from None
    return asarray(x, what, f"a 2-D array (n, {dim}) of floats")


def _unmasked(x: np.ma.MaskedArray, what: str) -> np.ndarray:
    """The data of a masked array without masked entries; InvalidInput naming the first masked
    entry otherwise (what lies under a mask is not data, and no fill value is right for a vector)."""
    mask = np.ma.getmaskarray(x)
    if mask.any():
        at = tuple(int(i) for i in np.argwhere(mask)[0])
        where = {1: f"column {at[0]}", 2: f"row {at[0]}, column {at[-1]}"}.get(len(at), f"index {at}")
        raise InvalidInput(f"{what}: expected no masked entries (fill or drop them first), found {int(mask.sum())} "
                           f"masked, the first in {where}")
    return np.ma.getdata(x)


def _from_arrow(x: Any, dim: int, what: str, column: str | None) -> np.ndarray:
    import pyarrow as pa

    if isinstance(x, (pa.Table, pa.RecordBatch)):
        x = x.column(_pick(x.schema, column, what, lambda t: _is_vector_type(pa, t)))
    elif column is not None:
        raise InvalidInput(f"{what}: column={column!r} applies to tables, found a {type(x).__name__}")
    if isinstance(x, (pa.Array, pa.ChunkedArray)) and _is_vector_type(pa, x.type):
        chunks = x.chunks if isinstance(x, pa.ChunkedArray) else [x]
        fixed = pa.types.is_fixed_size_list(x.type)
        if not chunks or len(x) == 0:  # no rows, but a fixed width is a width (checked by the caller)
            return np.empty((0, x.type.list_size if fixed else dim), dtype=np.float32)
        width = x.type.list_size if fixed else _first_length(chunks, dim)
        parts, row0 = [], 0
        for chunk in chunks:
            parts.append(arrow_list_values(chunk, width, what, row0).reshape(len(chunk), width))
            row0 += len(chunk)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    if isinstance(x, (pa.Array, pa.ChunkedArray)) and (pa.types.is_list(x.type) or pa.types.is_large_list(x.type)
                                                       or pa.types.is_fixed_size_list(x.type)):
        raise InvalidInput(f"{what}: expected {_VECTOR_TYPES}, found {x.type}")
    return asarray(x, what, f"{_VECTOR_TYPES} (n rows of {dim})")


def _is_vector_type(pa: Any, t: Any) -> bool:
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return is_list and pa.types.is_floating(t.value_type)


def _first_length(chunks: list, dim: int) -> int:
    """The length of the first non-null row, or `dim` when every row is null (the null rows
    are then refused by row, against the width expected)."""
    for chunk in chunks:
        lengths = chunk.value_lengths().drop_null()
        if len(lengths):
            return int(lengths[0].as_py())
    return dim


def _pick(schema: Any, column: str | None, what: str, is_vector: Any) -> str:
    names = list(schema.names)
    if column is not None:
        if names.count(column) != 1:
            raise InvalidInput(f"{what}: column={column!r}: expected one column of that name, found "
                               f"{names.count(column)} (columns: {names})")
        return column
    candidates = [f.name for f in schema if is_vector(f.type)]
    if len(candidates) != 1:
        found = "none" if not candidates else f"several: {candidates}"
        raise InvalidInput(f"{what}: expected one vector column ({_VECTOR_TYPES}) or column=NAME, found {found} "
                           f"(columns: {names})")
    return candidates[0]


def _from_pandas(x: Any, dim: int, what: str, column: str | None) -> np.ndarray:
    import pandas as pd
    import pyarrow as pa

    if isinstance(x, pd.DataFrame):
        floats = [pd.api.types.is_float_dtype(t) for t in x.dtypes]
        if column is None and len(x.columns) and all(floats):
            # a frame of float columns is the matrix itself (pandas' nullable Float64 too: NA as NaN, refused)
            return x.to_numpy(dtype=np.float64 if any(not isinstance(t, np.dtype) for t in x.dtypes) else None,
                              na_value=np.nan)
        if column is None:
            numeric = [pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in x.dtypes]
            vector_cols = [c for c, is_num in zip(x.columns, numeric) if not is_num]
            if len(vector_cols) != 1:
                others = [c for c, f in zip(x.columns, floats) if not f]
                found = (f"{len(vector_cols)} columns that could hold vectors ({vector_cols})" if vector_cols else
                         f"float columns beside others ({others}): a frame is the matrix only when every column "
                         f"is float; drop those" if any(floats) else
                         f"no float column (dtypes: {sorted({str(t) for t in x.dtypes})})")
                raise InvalidInput(f"{what}: expected a frame of float columns, one column of vectors, or "
                                   f"column=NAME; found {found}")
            column = vector_cols[0]
        elif list(x.columns).count(column) != 1:
            raise InvalidInput(f"{what}: column={column!r}: expected one column of that name "
                               f"(columns: {list(x.columns)})")
        x = x[column]
    elif column is not None:
        raise InvalidInput(f"{what}: column={column!r} applies to data frames, found a {type(x).__name__}")
    if isinstance(x, pd.Series):
        if isinstance(x.dtype, np.dtype) and x.dtype.kind != "O":
            return x.to_numpy()  # one vector, as a 1-D float Series
        errors = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)
        try:
            if not isinstance(x.dtype, np.dtype):
                arr = pa.array(x.array)
            else:
                try:  # NaN inside the arrays stays NaN (from_pandas=True would make it a null value)
                    arr = pa.array(x.to_numpy(), from_pandas=False)
                except errors:  # missing rows (NaN, pd.NA) or values (pd.NA) that only pandas' view reads as null
                    arr = pa.array(x.to_numpy(), from_pandas=True)
        except errors as exc:
            raise InvalidInput(f"{what}: expected a Series of equal-length float arrays, found one pyarrow cannot "
                               f"convert ({exc})") from None
        return _from_arrow(arr, dim, what, None)
    return asarray(x, what, f"a 2-D array (n, {dim}) of floats")


def _check_id_items(items: np.ndarray, what: str) -> np.ndarray:
    """Object ids (1-D) item by item: a missing one (None, pandas NA, NaN) or a Python int
    beyond int64 named with its row; all in-range ints as int64; else `items` unchanged."""
    for i, v in enumerate(items):
        if v is None or type(v).__name__ == "NAType" or (isinstance(v, float) and v != v):
            raise InvalidInput(f"{what}: expected integer ids, found a missing value (null or NaN) at row {i}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        return items
    wide = next((i for i, v in enumerate(items) if not -(1 << 63) <= v <= _MAX_ID), None)
    if wide is not None:  # numpy left them Python ints: one does not fit int64
        raise InvalidInput(f"{what}: ids must fit int64, found {items[wide]} at row {wide}")
    return items.astype(np.int64)


def as_ids(ids: Any, what: str) -> np.ndarray:
    """Integer ids (numpy, pyarrow, pandas, lists; a scalar is one id) as int64 (n,)."""
    if ids is None:
        raise InvalidInput(f"{what}: expected integer ids, found None")
    arr = asarray(ids, what, "a 1-D array of integer ids")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInput(f"{what}: expected a 1-D array of integer ids, found shape {arr.shape}")
    if arr.size and arr.dtype.kind == "f" and np.isnan(arr).any():  # a pyarrow null or pandas NA reads as NaN
        raise InvalidInput(f"{what}: expected integer ids, found a missing value (null or NaN) at row "
                           f"{int(np.flatnonzero(np.isnan(arr))[0])}")
    if arr.size and isinstance(ids, (list, tuple)) and arr.ndim == 1:
        if arr.dtype.kind in "fO":
            # a list numpy made floats or objects of: see its items as given (2**63 beside small
            # ints became a float, None an object)
            items = np.empty(len(ids), dtype=object)
            items[:] = list(ids)
            _check_id_items(items, what)
        if arr.dtype.kind in "iuf":  # a bool beside numbers became the id 0 or 1 (all bools: dtype bool, below)
            flag = next((i for i, v in enumerate(ids) if isinstance(v, (bool, np.bool_))), None)
            if flag is not None:
                raise InvalidInput(f"{what}: expected integer ids, found {ids[flag]!r} (a bool) at row {flag}")
    if arr.size and arr.dtype.kind == "O":
        arr = _check_id_items(arr, what)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidInput(f"{what}: expected integer ids, found dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > _MAX_ID:
        raise InvalidInput(f"{what}: ids must fit int64, found {arr.max()}")
    return arr.astype(np.int64)
