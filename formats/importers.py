"""Importers: vectors, ids and texts from .npy, .fvecs/.ivecs and text files.

Every reader checks what it reads before it trusts it: .npy is loaded with
allow_pickle=False; an .fvecs file must hold whole rows whose int32 width headers all equal
the first (and lie in 1..2**20); vectors must be 2-D float16/32/64 and finite (returned as
float32, C-contiguous); ground-truth ids must be 2-D integers within the base. Errors are
formats/errors.py's typed errors naming the path, the expected and the found values.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import DatasetNotFound, DimensionMismatch, FormatError, InvalidInput

__all__ = ["read_fvecs", "read_vectors", "read_ids", "read_texts"]


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFound(f"{what}: no such file {str(path)!r}")
    return path


def read_fvecs(path: str | Path, dtype: str = "<f4") -> np.ndarray:
    """Read an .fvecs (or, with ``dtype="<i4"``, .ivecs) file: each row an int32 width, then the values.

    Checks, before any copy: the file holds at least one header, the width is >= 1, the file
    size is a whole number of rows, and every row's header equals the first.

    Raises
    ------
    FormatError
        Truncated file or inconsistent headers; the message names the path, the expected
        and the found values.
    """
    path = _require_file(Path(path), "vectors")
    size = path.stat().st_size
    if size == 0:
        return np.empty((0, 0), dtype=np.float32 if dtype == "<f4" else np.int64)
    if size < 4:
        raise FormatError(f"{path}: expected at least a 4-byte int32 width header, found {size} bytes")
    with open(path, "rb") as f:
        dim = int(np.frombuffer(f.read(4), dtype="<i4")[0])
    if not 1 <= dim <= 1 << 20:
        raise FormatError(f"{path}: expected a row width in 1..{1 << 20} in the first header, found {dim}")
    row_bytes = 4 * (dim + 1)
    if size % row_bytes:
        raise FormatError(
            f"{path}: file size {size} bytes is not a multiple of the row size {row_bytes} "
            f"(4-byte header + {dim} x 4 bytes); the file is truncated or not {Path(path).suffix}"
        )
    rows = np.fromfile(path, dtype="<i4").reshape(-1, dim + 1)
    bad = np.flatnonzero(rows[:, 0] != dim)
    if bad.size:
        row = int(bad[0])
        raise FormatError(f"{path}: row {row} has width header {int(rows[row, 0])}, expected {dim} (the first row's)")
    values = np.ascontiguousarray(rows[:, 1:]).view(dtype)
    return values.astype(np.float32 if dtype == "<f4" else np.int64)


def _check_float_matrix(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InvalidInput(f"{path}: {what} must be a 2-D array (n, dim), found shape {arr.shape}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise InvalidInput(f"{path}: {what} must be float16/32/64, found dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise InvalidInput(f"{path}: {what}: expected finite values, found NaN or inf in row {int(np.argmin(finite))}")
    return out


def read_vectors(path: str | Path, what: str = "vectors") -> np.ndarray:
    """Float32 (n, dim) vectors from a .npy (``allow_pickle=False``) or .fvecs file."""
    path = _require_file(Path(path), what)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:  # numpy raises ValueError for object data and damaged files
            why = "it holds pickled (object) data, which vecz never loads" if "pickle" in str(exc) else str(exc)
            raise FormatError(f"{path}: expected a numeric .npy array: {why}") from None
    elif suffix == ".fvecs":
        arr = read_fvecs(path)
    else:
        raise InvalidInput(f"{path}: expected a .npy or .fvecs file, found suffix {suffix!r}")
    return _check_float_matrix(arr, path, what)


def read_ids(path: str | Path, n_queries: int, n_base: int) -> np.ndarray:
    """Ground-truth ids int64 (n_queries, depth) from .npy or .ivecs, checked against the data."""
    path = _require_file(Path(path), "ground truth")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".ivecs":
        arr = read_fvecs(path, dtype="<i4")
    else:
        raise InvalidInput(f"{path}: expected a .npy or .ivecs ground truth, found suffix {suffix!r}")
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise InvalidInput(f"{path}: ground truth must be 2-D integer ids, found {arr.dtype} {arr.shape}")
    if arr.shape[0] < n_queries:
        raise DimensionMismatch(f"{path}: expected ground truth for {n_queries} queries, found {arr.shape[0]} rows")
    gt = np.ascontiguousarray(arr[:n_queries], dtype=np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= n_base):
        raise InvalidInput(f"{path}: ground-truth ids must be in [0, {n_base}), found {gt.min()}..{gt.max()}")
    return gt


def read_texts(path: str | Path, n: int, what: str) -> list[str]:
    """Lines of a text file (gzip when it ends with .gz); line i = row i, exactly n lines."""
    path = _require_file(Path(path), what)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n:
        raise InvalidInput(f"{path}: {what}: expected {n} lines (one per row), found {len(lines)}")
    return lines
