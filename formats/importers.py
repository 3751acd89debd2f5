"""Importers and result writers: vectors in from .npy, .fvecs, Parquet and Arrow IPC; results out.

Role and contract
-----------------
`open_vectors` opens a vector file as a `VectorSource` that `vecz build` and `vecz search`
stream in bounded batches, so a file larger than RAM is never materialised. Supported
suffixes (`SUPPORTED_SUFFIXES`):

* ``.npy`` -- a 2-D float16/32/64 array, memory-mapped (the header is parsed with numpy's
  own parser, pickles are never loaded);
* ``.fvecs`` -- rows of an int32 width header followed by that many little-endian float32;
* ``.parquet`` -- one column of list / large_list / fixed_size_list of float16/32/64, plus
  an optional integer id column;
* ``.arrow`` / ``.feather`` / ``.ipc`` -- the same columns in an Arrow IPC file (Feather
  v2) or, failing that, an Arrow IPC stream, memory-mapped.

Every reader checks what it reads before it trusts it: lengths and shapes claimed by a file
are compared with the file's size before anything is allocated, every .fvecs row header is
checked, every Arrow record batch is fully validated (offsets in bounds) before its buffers
are touched, and every list row must hold exactly ``dim`` non-null values. Damaged bytes
raise `FormatError`; usable bytes holding the wrong kind of data (dtype, shape, nulls,
ragged rows, ambiguous columns) raise `InvalidInput`; a missing file raises
`DatasetNotFound`. Messages name the path and say what was expected and what was found.
NaN and inf are not checked while streaming (the store validates each batch it adds), but
`read_vectors` checks them; a float64 value beyond float32's range is refused where it is
narrowed (`InvalidInput` naming the file row), as the cast would make it an inf.

`write_results` writes search results (ids and scores) as .npy pairs or a long-format
Parquet table, through a temporary file in the same directory and an atomic ``os.replace``.

The older whole-file readers (`read_vectors`, `read_fvecs`, `read_ids`, `read_texts`) serve
the benchmark (engine/bench.py). Tested by tests/test_importers.py (round trips against the
arrays written, truncations and hypothesis byte flips) and tests/test_bench.py.
"""

from __future__ import annotations

import errno
import gzip
import mmap
import os
import zlib
from pathlib import Path

# typing, not collections.abc: tests/test_layout.py keeps formats/ to a stdlib whitelist
from typing import Any, BinaryIO, Iterator, Self  # noqa: UP035

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DatasetNotFound, DimensionMismatch, FormatError, InvalidInput, StorageError

__all__ = [
    "RESULT_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "VectorSource",
    "arrow_list_values",
    "check_output_dir",
    "check_results_path",
    "open_vectors",
    "read_fvecs",
    "read_ids",
    "read_texts",
    "read_vectors",
    "refuse_non_finite",
    "write_results",
]

#: Suffixes `open_vectors` reads (compared case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".npy", ".fvecs", ".parquet", ".arrow", ".feather", ".ipc")
#: Suffixes `write_results` writes.
RESULT_SUFFIXES: tuple[str, ...] = (".npy", ".parquet")

_ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# The widest .fvecs row accepted; far above any embedding, low enough that a damaged
# header cannot make a single row's buffer huge.
_MAX_FVECS_DIM = 1 << 20
# numpy's own default cap on .npy header bytes (np.load uses the same).
_MAX_NPY_HEADER = 10_000
# Parquet is read through a buffered stream of this many bytes (see _ParquetSource).
_PARQUET_BUFFER_BYTES = 8 << 20
# read_all works through batches of about this many bytes.
_READ_ALL_BYTES = 64 << 20
# Errors pyarrow raises on damaged bytes (ArrowInvalid, ArrowIOError = OSError,
# ArrowMemoryError for absurd claimed sizes, ArrowNotImplementedError for unknown codecs...,
# and UnicodeDecodeError when pyarrow decodes a damaged column name).
_ARROW_ERRORS = (pa.ArrowException, OSError, EOFError, UnicodeDecodeError)


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if path.is_dir():  # (it said "no such file" of a directory that exists)
        raise DatasetNotFound(f"{what}: expected a file, found a directory {str(path)!r}")
    if not path.is_file():
        raise DatasetNotFound(f"{what}: no such file {str(path)!r}")
    return path


def _unsupported_suffix(path: Path) -> InvalidInput:
    return InvalidInput(
        f"{path}: expected a .npy or .fvecs file or Arrow data (.parquet, .arrow, .feather, .ipc); "
        f"found suffix {path.suffix.lower()!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
    )


def _output_dtype(dtype: np.dtype) -> np.dtype:
    """float16 stays float16 (half the bytes, exact); float32/64 become float32."""
    return np.dtype(np.float16) if dtype == np.float16 else np.dtype(np.float32)


def _owned(arr: np.ndarray, dtype: np.dtype, path: Path | None = None, rows: int | np.ndarray = 0) -> np.ndarray:
    """A C-contiguous, writable array that owns its memory (never a view of a memory map,
    which a consumer normalising in place would otherwise try to write through).

    Narrowing float64 to float32 refuses a finite value beyond float32's range (`InvalidInput`
    naming `path` and the file row: `rows` + i for row i, or ``rows[i]`` for an array), which
    the cast would turn into an inf that no later check could tell from an inf in the file.
    """
    arr = np.asarray(arr)  # first: a slice of an np.memmap would otherwise stay an np.memmap subclass
    with np.errstate(over="ignore"):
        out = np.require(arr, dtype=dtype, requirements=["C", "W", "O"])
    if arr.dtype.kind == "f" and out.dtype.kind == "f" and arr.dtype.itemsize > out.dtype.itemsize \
            and (np.isinf(out) & np.isfinite(arr)).any():
        # the narrowing made an inf: the first non-finite value (a NaN or inf of the file
        # before it is reported first, as the store would)
        refuse_non_finite(out, path or "vectors", rows, given=arr)
    return out


def refuse_non_finite(x: np.ndarray, where: str | Path, rows: int | np.ndarray = 0,
                      given: np.ndarray | None = None) -> None:
    """InvalidInput naming the first NaN or inf of the 2-D `x` (row-major) by row and column,
    nothing when all are finite: row ``rows + i`` for x's row i, or ``rows[i]`` when `rows` is
    an array (a file's rows). `given`: the wider array x was narrowed from; the message shows
    its value, said to be beyond float32's range when it is finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    value = (x if given is None else given)[row, col]
    beyond = " (beyond float32's range)" if np.isfinite(value) else ""
    at = rows + row if isinstance(rows, (int, np.integer)) else int(rows[row])
    raise InvalidInput(f"{where}: expected finite values, found {value}{beyond} in row {at}, column {col}")


def _check_batch_rows(batch_rows: int) -> int:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
        raise InvalidInput(f"batch_rows must be a positive integer, found {batch_rows!r}")
    return int(batch_rows)


# --------------------------------------------------------------------------- VectorSource


class VectorSource:
    """A vector file opened for streaming: its shape, dtype and a batch iterator.

    Made by `open_vectors`; use it as a context manager (or call `close`).

    Attributes
    ----------
    path : Path
        The file.
    kind : str
        ``"npy"``, ``"fvecs"``, ``"parquet"``, ``"arrow-file"`` or ``"arrow-stream"``.
    n : int
        Number of rows. For .npy, .fvecs and Arrow IPC it is checked against the bytes
        present when the file is opened; for Parquet it is the count in the footer, and
        `batches` raises `FormatError` if the data disagree.
    dim : int
        Width of every row (0 only for a file with no rows whose width cannot be known,
        such as an empty .fvecs file or an empty Parquet list column).
    dtype : numpy.dtype
        The on-disk float dtype (native byte order): float16, float32 or float64.
    column, id_column : str or None
        The Arrow vector and id columns read (None for .npy and .fvecs).

    Notes
    -----
    Not thread-safe: one thread at a time per source. Each `batches` call is an independent
    iterator, so a source can be read more than once.
    """

    path: Path
    kind: str
    n: int
    dim: int
    dtype: np.dtype
    column: str | None
    id_column: str | None

    def __init__(self, path: Path, kind: str, n: int, dim: int, dtype: np.dtype,
                 column: str | None = None, id_column: str | None = None) -> None:
        self.path = path
        self.kind = kind
        self.n = n
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.column = column
        self.id_column = id_column
        self._closed = False

    # -- public surface

    @property
    def out_dtype(self) -> np.dtype:
        """The dtype of yielded vectors: float16 for float16 files, float32 otherwise."""
        return _output_dtype(self.dtype)

    def batches(self, batch_rows: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(vectors, ids)`` in file order, at most `batch_rows` rows at a time.

        Parameters
        ----------
        batch_rows : int
            Upper bound on the rows of each batch (>= 1). Batches are exactly this size
            except the last.
        start : int
            Skip the first `start` rows (a resumed build): .npy sources seek to them, the
            others read past them.

        Yields
        ------
        vectors : numpy.ndarray
            ``(rows, dim)`` C-contiguous, writable, owning its memory; float32 (float64
            files are converted per batch) or float16 for float16 files. NaN and inf are
            passed through; a float64 value beyond float32's range is refused.
        ids : numpy.ndarray or None
            ``(rows,)`` int64 from the id column, or None when the source has none.

        Raises
        ------
        FormatError
            Damaged bytes found while reading, or fewer or more rows than `n`.
        InvalidInput
            Null or ragged vector rows, null or out-of-range ids, bad `batch_rows`, a
            float64 value beyond float32's range (naming its file row and column).
        """
        batch_rows = _check_batch_rows(batch_rows)
        if self._closed:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= self.n:
            raise InvalidInput(f"{self.path}: start must be a row number in 0..{self.n}, found {start!r}")
        if start == 0:
            return self._counted(self._batches(batch_rows))
        first, it = self._batches_from(int(start), batch_rows)
        return self._skipped(self._counted(it, self.n - first), first, int(start))

    def sample(self, n: int, seed: int = 0, *, with_rows: bool = False) -> Any:
        """`n` rows drawn uniformly without replacement from the whole source (all rows if
        it has fewer), in file order, with memory for `n` rows plus one batch: each row gets
        a seeded random key and the `n` smallest keys are kept while streaming (.npy sources
        read the chosen rows directly). float32 or float16 like `batches`; with `with_rows`,
        ``(vectors, rows)``: the file row (int64, ascending) each vector was read from."""
        for name, value in (("n", n), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InvalidInput(f"sample {name}: expected an integer >= 0, found {value!r}")
        if self._closed:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        vecs, rows = self._sample(int(n), int(seed))
        return (vecs, rows) if with_rows else vecs

    def _sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if self.n <= n:
            return self.read_all()[0], np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng(seed)
        rows = max(1, _READ_ALL_BYTES // max(1, self.dim * self.out_dtype.itemsize))
        keep_keys = np.empty(0)
        keep_rows = np.empty(0, dtype=np.int64)
        keep_vecs = np.empty((0, self.dim), dtype=self.out_dtype)
        at = 0
        for vecs, _ in self.batches(rows):
            keys = np.concatenate([keep_keys, rng.random(len(vecs))])
            idx = np.concatenate([keep_rows, np.arange(at, at + len(vecs))])
            cand = np.concatenate([keep_vecs, vecs])
            at += len(vecs)
            if keys.size > n:
                best = np.argpartition(keys, n - 1)[:n]
                keys, idx, cand = keys[best], idx[best], cand[best]
            keep_keys, keep_rows, keep_vecs = keys, idx, cand
        order = np.argsort(keep_rows)
        return np.ascontiguousarray(keep_vecs[order]), keep_rows[order]

    @staticmethod
    def _skipped(it: Iterator[tuple[np.ndarray, np.ndarray | None]], first: int,
                 start: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Drop what precedes row `start` from batches that begin at row `first`."""
        at = first
        for vecs, ids in it:
            end = at + len(vecs)
            if end > start:
                cut = max(0, start - at)
                yield vecs[cut:], None if ids is None else ids[cut:]
            at = end

    def _batches_from(self, start: int, batch_rows: int) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray | None]]]:
        """(first row, batches from it) for a read that wants row `start` on: from row 0 here;
        subclasses that can seek override it."""
        return 0, self._batches(batch_rows)

    def read_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All rows at once: ``(vectors (n, dim), ids (n,) int64 or None)``, dtypes as in `batches`."""
        rows = max(1, _READ_ALL_BYTES // max(1, self.dim * self.out_dtype.itemsize))
        vecs: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        for v, i in self.batches(rows):
            vecs.append(v)
            if i is not None:
                ids.append(i)
        out = np.concatenate(vecs) if len(vecs) > 1 else (vecs[0] if vecs else np.empty((0, self.dim), self.out_dtype))
        if self.id_column is None:
            return out, None
        return out, np.concatenate(ids) if ids else np.empty(0, np.int64)

    def close(self) -> None:
        """Release the file handles and memory maps (idempotent)."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cols = f", column={self.column!r}, id_column={self.id_column!r}" if self.column else ""
        return (f"VectorSource(path={str(self.path)!r}, kind={self.kind!r}, n={self.n}, dim={self.dim}, "
                f"dtype={self.dtype.name}{cols})")

    # -- for subclasses

    def _batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        raise NotImplementedError

    def _counted(self, it: Iterator[tuple[np.ndarray, np.ndarray | None]],
                 expect: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Pass batches through while checking the rows add up to `n` (or `expect`, for a read
        that starts later): never trust a count."""
        expect = self.n if expect is None else expect
        seen = 0
        for vecs, ids in it:
            seen += vecs.shape[0]
            if seen > expect:
                raise FormatError(f"{self.path}: expected {self.n} rows (from the file's header), found more")
            yield vecs, ids
        if seen != expect:
            raise FormatError(f"{self.path}: expected {self.n} rows (from the file's header), found "
                              f"{seen + self.n - expect}")


# --------------------------------------------------------------------------- .npy


def _read_npy_magic(f: BinaryIO) -> tuple[int, int]:
    """numpy's read_magic, then a check of the header length the file claims: numpy reads
    that many bytes before it applies max_header_size, so a 4-byte length of 2**32 - 1 in a
    100-byte file would make it allocate 4 GiB. Raises ValueError; leaves `f` after the magic."""
    version = np.lib.format.read_magic(f)
    at = f.tell()
    claimed = int.from_bytes(f.read(2 if version == (1, 0) else 4), "little")
    f.seek(at)
    if claimed > _MAX_NPY_HEADER:
        raise ValueError(f"header length {claimed} exceeds the {_MAX_NPY_HEADER}-byte cap")
    return version


class _NpySource(VectorSource):
    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            # numpy's header parser raises ValueError (and, on hostile dicts, assorted others)
            # for anything that is not a well-formed header: all of it means "damaged".
            try:
                version = _read_npy_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
                elif version in ((2, 0), (3, 0)):
                    # 3.0 differs only in allowing utf-8 field names, which float arrays lack
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
                else:
                    raise ValueError(f"unknown .npy format version {version}")
            except Exception as exc:  # noqa: BLE001 -- see above
                why = "it holds pickled (object) data, which vecz never loads" if "pickle" in str(exc) else str(exc)
                raise FormatError(f"{path}: expected a numeric .npy array: {why}") from None
            offset = f.tell()
        if not all(type(s) is int and s >= 0 for s in shape):  # a bool is an int to isinstance
            raise FormatError(f"{path}: expected non-negative integer dimensions in the .npy header, found {shape}")
        if len(shape) != 2:
            raise InvalidInput(f"{path}: vectors must be a 2-D array (n, dim), found shape {shape}")
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or dtype.fields is not None:
            raise InvalidInput(f"{path}: vectors must be float16/32/64, found dtype {dtype}")
        n, dim = shape
        if n and not dim:
            raise InvalidInput(f"{path}: vectors must have at least one column, found shape {shape}")
        need = n * dim * dtype.itemsize  # Python ints: no overflow however large the claim
        have = size - offset
        if need != have:
            raise FormatError(
                f"{path}: the .npy header claims shape {shape} of {dtype} = {need} bytes of data, "
                f"found {have} bytes after the header ({'truncated' if need > have else 'trailing bytes'})"
            )
        super().__init__(path, "npy", n, dim, dtype.newbyteorder("="))
        self._file_dtype, self._offset, self._fortran = dtype, offset, fortran
        self._mm: np.ndarray | None
        if n == 0:
            self._mm = np.empty((0, dim), dtype)
        else:
            try:
                self._mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n, dim),
                                     order="F" if fortran else "C")
            except (ValueError, OSError) as exc:  # the file shrank since stat
                raise FormatError(f"{path}: cannot map the .npy data: {exc}") from None

    def _copy(self, index: Any) -> np.ndarray:
        """An owned copy of self._mm[index], after which the map's pages are dropped from
        this process (MADV_DONTNEED: the page cache keeps them). Without it every page read
        stays mapped and counts in the process's RSS: a build streaming a 15 GB file would
        show 15 GB resident although it holds one batch."""
        mm = self._mm
        if mm is None:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        rows = (index.start or 0) if isinstance(index, slice) else index
        out = _owned(mm[index], self.out_dtype, self.path, rows)
        raw = getattr(mm, "_mmap", None)
        if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                raw.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass  # only a memory measure: reading still works without it
        return out

    def _batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for start in range(0, self.n, batch_rows):
            yield self._copy(slice(start, start + batch_rows)), None

    def _batches_from(self, start: int, batch_rows: int) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray | None]]]:
        def it() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
            for at in range(start, self.n, batch_rows):
                yield self._copy(slice(at, at + batch_rows)), None
        return start, it()

    def _sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """See `VectorSource.sample`: the chosen rows are read from the file directly, one
        `pread` each (C order). Not through the memory map: each fault there maps the 64 KiB
        around it (the kernel's fault-around), so 131,072 rows drawn from a 15 GB file left
        7 GB of the file resident in the process."""
        if self.n <= n:
            return self.read_all()[0], np.arange(self.n, dtype=np.int64)
        if self._mm is None:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        rows = np.sort(np.random.default_rng(seed).choice(self.n, n, replace=False)).astype(np.int64)
        if self._fortran:
            return self._copy(rows), rows
        out = np.empty((n, self.dim), dtype=self._file_dtype)
        row_bytes = self.dim * self._file_dtype.itemsize
        flat = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as f:
            fd = f.fileno()
            for j, r in enumerate(rows.tolist()):
                got = os.preadv(fd, [flat[j * row_bytes:(j + 1) * row_bytes]], self._offset + r * row_bytes)
                if got != row_bytes:
                    raise FormatError(f"{self.path}: row {r} is cut short ({got} of {row_bytes} bytes); "
                                      f"the file shrank while it was read")
        return _owned(out, self.out_dtype, self.path, rows), rows

    def read_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All rows at once (one copy from the memory map); see `VectorSource.read_all`."""
        return self._copy(slice(None)), None

    def close(self) -> None:
        """Drop the memory map (yielded arrays are copies and stay valid)."""
        self._mm = None
        super().close()


# --------------------------------------------------------------------------- .fvecs


def _fvecs_shape(path: Path, size: int) -> tuple[int, int]:
    """(rows, dim) of a non-empty .fvecs/.ivecs file from its first header and its size."""
    if size < 4:
        raise FormatError(f"{path}: expected at least a 4-byte int32 width header, found {size} bytes")
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise FormatError(f"{path}: expected at least a 4-byte int32 width header, found {len(head)} bytes")
    dim = int(np.frombuffer(head, dtype="<i4")[0])
    if not 1 <= dim <= _MAX_FVECS_DIM:
        raise FormatError(f"{path}: expected a row width in 1..{_MAX_FVECS_DIM} in the first header, found {dim}")
    row_bytes = 4 * (dim + 1)
    if size % row_bytes:
        raise FormatError(
            f"{path}: file size {size} bytes is not a multiple of the row size {row_bytes} "
            f"(4-byte header + {dim} x 4 bytes); the file is truncated or not {path.suffix}"
        )
    return size // row_bytes, dim


def _check_fvecs_headers(path: Path, rows: np.ndarray, dim: int, first_row: int) -> None:
    bad = np.flatnonzero(rows[:, 0] != dim)
    if bad.size:
        row = int(bad[0])
        raise FormatError(
            f"{path}: row {first_row + row} has width header {int(rows[row, 0])}, expected {dim} (the first row's)"
        )


def _read_exact(f: BinaryIO, buf: np.ndarray) -> int:
    """Fill `buf` from file `f`; return the bytes read (fewer only at end of file)."""
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])  # type: ignore[attr-defined]  # BinaryIO omits readinto
        if not got:
            break
        done += got
    return done


class _FvecsSource(VectorSource):
    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        n, dim = (0, 0) if size == 0 else _fvecs_shape(path, size)
        super().__init__(path, "fvecs", n, dim, np.dtype(np.float32))

    def _batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        width = self.dim + 1
        with open(self.path, "rb") as f:
            for start in range(0, self.n, batch_rows):
                rows = min(batch_rows, self.n - start)
                buf = np.empty((rows, width), dtype="<i4")
                if _read_exact(f, buf) != buf.nbytes:
                    raise FormatError(f"{self.path}: expected {self.n} rows, found the file cut short at row {start}")
                _check_fvecs_headers(self.path, buf, self.dim, start)
                yield _owned(buf[:, 1:].view("<f4"), self.out_dtype), None


# --------------------------------------------------------------------------- Arrow (Parquet, IPC)

_ARROW_FLOATS = {pa.float16(): np.dtype(np.float16), pa.float32(): np.dtype(np.float32),
                 pa.float64(): np.dtype(np.float64)}


def _vector_value_dtype(t: pa.DataType) -> np.dtype | None:
    """The float dtype of a list/large_list/fixed_size_list-of-float type, else None."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _ARROW_FLOATS.get(t.value_type)
    return None


def _pick_columns(path: Path, schema: pa.Schema, column: str | None, id_column: str | None,
                  default_id: str | None = None) -> tuple[str, np.dtype, int | None, str | None]:
    """Choose the vector column; check the id column (or take `default_id` when no id column
    is named and the file has an integer column of that name). Returns (name, float dtype,
    fixed size, id column)."""
    try:  # names are decoded from the file's bytes here, so damage can surface here
        names = list(schema.names)
        listing = ", ".join(f"{f.name}: {f.type}" for f in schema) or "none"
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: expected UTF-8 column names, found {exc}") from None
    expected = "a list, large_list or fixed_size_list of float16/float32/float64"
    for name, role in ((column, "column"), (id_column, "id_column")):
        if name is not None and names.count(name) != 1:
            found = "several columns" if names.count(name) else "no column"
            raise InvalidInput(f"{path}: {role}={name!r}: expected one column of that name, found {found} "
                               f"(columns: {listing})")
    if column is None:
        candidates = [f.name for f in schema if _vector_value_dtype(f.type) is not None]
        if not candidates:
            raise InvalidInput(f"{path}: expected a vector column ({expected}), found none (columns: {listing})")
        if len(candidates) > 1 or names.count(candidates[0]) != 1:
            raise InvalidInput(f"{path}: expected one vector column, found several candidates {candidates}; "
                               f"choose one with column= (--column)")
        column = candidates[0]
    if id_column is None and default_id is not None and default_id != column and names.count(default_id) == 1 \
            and pa.types.is_integer(schema.field(default_id).type):
        id_column = default_id
    field = schema.field(column)
    dtype = _vector_value_dtype(field.type)
    if dtype is None:
        raise InvalidInput(f"{path}: column {column!r} must be {expected}, found {field.type}")
    if id_column is not None:
        if id_column == column:
            raise InvalidInput(f"{path}: id_column and column are both {column!r}; expected two different columns")
        id_type = schema.field(id_column).type
        if not pa.types.is_integer(id_type):
            raise InvalidInput(f"{path}: id column {id_column!r} must hold integers, found {id_type}")
    fixed = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
    return column, dtype, fixed, id_column


def _first_true(mask: pa.Array) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))


def arrow_list_values(arr: pa.Array, dim: int, what: str, row0: int = 0) -> np.ndarray:
    """The values of a list / large_list / fixed_size_list array of floats, flat (rows * dim,).

    Every row must be non-null and hold exactly `dim` non-null values (`InvalidInput`
    naming the row, counted from `row0`, otherwise). Zero-copy where Arrow allows it.
    """
    rows = len(arr)
    if arr.null_count:
        row = row0 + _first_true(arr.is_null())
        raise InvalidInput(f"{what}: row {row} is null, expected a vector of {dim} values")
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            row = int(bad[0])
            raise InvalidInput(f"{what}: row {row0 + row} has {int(lengths[row])} values, "
                               f"expected {dim} (every row as long as the first)")
    elif arr.type.list_size != dim:
        raise InvalidInput(f"{what}: expected vectors of {dim} values, found fixed_size_list of {arr.type.list_size}")
    flat = arr.flatten()  # honours slice offsets; no null rows remain to be skipped
    if len(flat) != rows * dim:  # only damaged buffers could get here past validation
        raise FormatError(f"{what}: expected {rows * dim} values for {rows} rows, found {len(flat)}")
    if flat.null_count:
        row = row0 + _first_true(flat.is_null()) // max(1, dim)
        raise InvalidInput(f"{what}: row {row} holds a null value, expected {dim} floats")
    return flat.to_numpy(zero_copy_only=False)


class _ArrowSource(VectorSource):
    """Shared conversion of Arrow record batches (Parquet and IPC) into numpy batches."""

    def _convert(self, batch: pa.RecordBatch, row0: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One validated record batch (or slice of one) -> (vectors, ids); row0 = its first row."""
        flat = arrow_list_values(batch.column(self.column), self.dim, f"{self.path}: column {self.column!r}", row0)
        vecs = _owned(flat.reshape(len(batch), self.dim), self.out_dtype, self.path, row0)
        if self.id_column is None:
            return vecs, None
        id_arr = batch.column(self.id_column)
        if id_arr.null_count:
            row = row0 + _first_true(id_arr.is_null())
            raise InvalidInput(f"{self.path}: id column {self.id_column!r}: row {row} is null, expected an integer")
        try:
            id_arr = pc.cast(id_arr, pa.int64())  # safe cast: uint64 above 2**63-1 is refused
        except pa.ArrowInvalid as exc:
            raise InvalidInput(f"{self.path}: id column {self.id_column!r}: expected ids that fit int64: {exc}") from None
        return vecs, _owned(id_arr.to_numpy(zero_copy_only=False), np.dtype(np.int64))

    def _rechunk(self, record_batches: Iterator[pa.RecordBatch],
                 batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Validate each record batch fully, then re-cut the rows into batches of `batch_rows`."""
        vecs: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        pending = 0
        row = 0
        for rb in _guarded(record_batches, self.path):
            try:
                rb.validate(full=True)  # offsets and lengths in bounds before any buffer is read
            except _ARROW_ERRORS as exc:
                raise FormatError(f"{self.path}: damaged record batch at row {row}: {exc}") from None
            start = 0
            while start < rb.num_rows:
                take = min(batch_rows - pending, rb.num_rows - start)
                v, i = self._convert(rb.slice(start, take), row)
                vecs.append(v)
                if i is not None:
                    ids.append(i)
                start += take
                row += take
                pending += take
                if pending == batch_rows:
                    yield _join(vecs, ids, self.id_column is not None)
                    vecs, ids, pending = [], [], 0
        if pending:
            yield _join(vecs, ids, self.id_column is not None)

    def _probe_dim(self, first: pa.RecordBatch | None, fixed: int | None) -> int:
        """dim = the fixed list size, else the length of the first row (0 with no rows)."""
        if fixed is not None:
            return fixed
        if first is None:
            return 0
        arr = first.column(self.column)
        if not arr.is_valid()[0].as_py():
            raise InvalidInput(f"{self.path}: column {self.column!r}: row 0 is null, expected a vector")
        return int(arr.value_lengths()[0].as_py())


def _join(vecs: list[np.ndarray], ids: list[np.ndarray], has_ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
    v = vecs[0] if len(vecs) == 1 else np.concatenate(vecs)
    if not has_ids:
        return v, None
    return v, ids[0] if len(ids) == 1 else np.concatenate(ids)


def _guarded(it: Iterator[pa.RecordBatch], path: Path) -> Iterator[pa.RecordBatch]:
    """Iterate, turning pyarrow's errors on damaged bytes into FormatError naming the path."""
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except _ARROW_ERRORS as exc:
            raise FormatError(f"{path}: damaged Arrow data: {exc}") from None
        yield rb


def _check_dim(path: Path, n: int, dim: int) -> None:
    if n and dim < 1:
        raise InvalidInput(f"{path}: vectors must have at least one value per row, found rows of {dim}")


class _ParquetSource(_ArrowSource):
    def __init__(self, path: Path, column: str | None, id_column: str | None, default_id: str | None) -> None:
        self._pf: pq.ParquetFile | None = None
        try:
            # pre_buffer=True (pyarrow's default) keeps every row group read so far in memory,
            # the whole file by the end; a buffered stream reads pages as batches need them.
            # Page checksums are verified when the writer stored them (cheap, catches flips).
            self._pf = pq.ParquetFile(str(path), pre_buffer=False, buffer_size=_PARQUET_BUFFER_BYTES,
                                      page_checksum_verification=True)
            schema = self._pf.schema_arrow
            meta = self._pf.metadata
            n = int(meta.num_rows)
            group_rows = [int(meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        except _ARROW_ERRORS as exc:
            if self._pf is not None:
                self._pf.close()
            raise FormatError(f"{path}: not a readable Parquet file: {exc}") from None
        if n < 0 or any(r < 0 for r in group_rows) or sum(group_rows) != n:
            self._pf.close()
            raise FormatError(f"{path}: the footer claims {n} rows but its row groups hold {group_rows}")
        try:
            col, dtype, fixed, id_column = _pick_columns(path, schema, column, id_column, default_id)
            super().__init__(path, "parquet", n, 0, dtype, col, id_column)
            first = None
            if fixed is None and n:
                first = next(iter(self._rechunk_probe()), None)
                if first is None:
                    raise FormatError(f"{path}: the footer claims {n} rows, found none")
            self.dim = self._probe_dim(first, fixed)
            _check_dim(path, n, self.dim)
            self._values = self._leaf_values(meta, col)
        except BaseException:
            self._pf.close()
            raise

    @staticmethod
    def _leaf_values(meta: Any, column: str) -> int | None:
        """The values the vector column's chunks claim (each row of a well-formed file gives
        `dim`; a null or empty row 1), or None when the metadata does not say."""
        leaves = [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == column]
        if len(leaves) != 1:
            return None
        try:
            return sum(int(meta.row_group(g).column(leaves[0]).num_values) for g in range(meta.num_row_groups))
        except _ARROW_ERRORS:
            return None

    def _rechunk_probe(self) -> Iterator[pa.RecordBatch]:
        """The first non-empty record batch of one row, validated."""
        pf = self._pf
        if pf is None:
            return
        for rb in _guarded(pf.iter_batches(batch_size=1, columns=[self.column], use_threads=False), self.path):
            if rb.num_rows:
                try:
                    rb.validate(full=True)
                except _ARROW_ERRORS as exc:
                    raise FormatError(f"{self.path}: damaged record batch at row 0: {exc}") from None
                yield rb
                return

    def _batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        pf = self._pf
        if pf is None:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        cols = [self.column] + ([self.id_column] if self.id_column else [])
        try:
            it = pf.iter_batches(batch_size=batch_rows, columns=cols, use_threads=False)
        except _ARROW_ERRORS as exc:
            raise FormatError(f"{self.path}: damaged Arrow data: {exc}") from None
        need = self.n * self.dim
        if self._values is None or self._values == need:
            yield from self._rechunk(it, batch_rows)
            return
        # Values the row counts do not account for: ragged or null rows (refused by row, as
        # the batches meet them) or a footer and row groups that all understate the rows
        # (pyarrow then reads that many and drops the rest): the last batch is held back
        # until every row has read well, and refused then.
        held = None
        for item in self._rechunk(it, batch_rows):
            if held is not None:
                yield held
            held = item
        raise FormatError(f"{self.path}: column {self.column!r} holds {self._values} values, but its {self.n} rows "
                          f"of {self.dim} need {need}: the row counts of the footer and row groups do not match "
                          f"the data")

    def close(self) -> None:
        """Close the Parquet file."""
        if self._pf is not None:
            self._pf.close()
            self._pf = None
        super().close()


class _IpcSource(_ArrowSource):
    def __init__(self, path: Path, column: str | None, id_column: str | None, default_id: str | None) -> None:
        self._mmap: pa.MemoryMappedFile | None = None
        self._buf: pa.Buffer | None = None
        try:
            self._mmap = pa.memory_map(str(path), "r")
            self._buf = self._mmap.read_buffer()
        except _ARROW_ERRORS as exc:
            self.close()
            raise FormatError(f"{path}: cannot map the file: {exc}") from None
        try:
            self._open(path, column, id_column, default_id)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, column: str | None, id_column: str | None, default_id: str | None) -> None:
        try:
            schema = pa.ipc.open_file(self._buf).schema
            stream = False
        except _ARROW_ERRORS as file_exc:
            try:
                schema = pa.ipc.open_stream(self._buf).schema
                stream = True
            except _ARROW_ERRORS as stream_exc:
                raise FormatError(f"{path}: expected an Arrow IPC file or stream (Feather v2): "
                                  f"as a file: {file_exc}; as a stream: {stream_exc}") from None
        col, dtype, fixed, id_column = _pick_columns(path, schema, column, id_column, default_id)
        wanted = {col, id_column} - {None}
        # decode only the columns used (matters for compressed IPC)
        self._opts = pa.ipc.IpcReadOptions(included_fields=[i for i, f in enumerate(schema) if f.name in wanted])
        super().__init__(path, "arrow-stream" if stream else "arrow-file", 0, 0, dtype, col, id_column)
        # Count rows from batches whose buffers were checked against their claimed lengths
        # (cheap validate(): sizes, not contents), so n never exceeds what the file holds.
        n = 0
        first = None
        for rb in _guarded(self._record_batches(), path):
            try:
                rb.validate()
            except _ARROW_ERRORS as exc:
                raise FormatError(f"{path}: damaged record batch at row {n}: {exc}") from None
            if first is None and rb.num_rows and fixed is None:
                try:
                    rb.validate(full=True)
                except _ARROW_ERRORS as exc:
                    raise FormatError(f"{path}: damaged record batch at row {n}: {exc}") from None
                first = rb
            n += rb.num_rows
        self.n = n
        self.dim = self._probe_dim(first, fixed)
        _check_dim(path, n, self.dim)

    def _record_batches(self) -> Iterator[pa.RecordBatch]:
        buf = self._buf
        if buf is None:
            raise InvalidInput(f"{self.path}: the vector source is closed")
        if self.kind == "arrow-stream":
            yield from pa.ipc.open_stream(buf, options=self._opts)
        else:
            reader = pa.ipc.open_file(buf, options=self._opts)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)

    def _batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        yield from self._rechunk(self._record_batches(), batch_rows)

    def close(self) -> None:
        """Drop the mapped buffer and close the memory map (yielded arrays are copies)."""
        self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        super().close()


def open_vectors(path: str | Path, *, column: str | None = None, id_column: str | None = None,
                 default_id_column: str | None = None) -> VectorSource:
    """Open a vector file for streaming; the format follows the suffix (`SUPPORTED_SUFFIXES`).

    Parameters
    ----------
    path : str or Path
        A .npy, .fvecs, .parquet, .arrow, .feather or .ipc file.
    column : str, optional
        Parquet/Arrow only: the vector column. Default: the single column whose type is a
        list, large_list or fixed_size_list of float16/32/64.
    id_column : str, optional
        Parquet/Arrow only: an integer column returned as int64 ids with each batch.
    default_id_column : str, optional
        Parquet/Arrow only, when `id_column` is None: use the column of this name as ids
        if the file has one of an integer type (`VectorSource.id_column` tells whether it did).

    Returns
    -------
    VectorSource
        With `n`, `dim`, `dtype` known and the header-level checks done; rows are read by
        `VectorSource.batches` or `VectorSource.read_all`.

    Raises
    ------
    DatasetNotFound
        No such file.
    InvalidInput
        Unknown suffix; wrong dtype or shape; no vector column or several (name one with
        `column`); a non-integer id column; `column`/`id_column` given for .npy or .fvecs.
    FormatError
        Damaged or truncated bytes, or a header claiming more data than the file holds.
    """
    path = _require_file(Path(path), "vectors")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _unsupported_suffix(path)
    if suffix in (".npy", ".fvecs"):
        if column is not None or id_column is not None:  # (default_id_column: nothing to default)
            raise InvalidInput(f"{path}: column= and id_column= apply to .parquet and Arrow files, "
                               f"found them given for a {suffix} file (which has no named columns)")
        return _NpySource(path) if suffix == ".npy" else _FvecsSource(path)
    if suffix == ".parquet":
        return _ParquetSource(path, column, id_column, default_id_column)
    return _IpcSource(path, column, id_column, default_id_column)


# --------------------------------------------------------------------------- result writers


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_results(path: str | Path, ids: np.ndarray, scores: np.ndarray) -> list[Path]:
    """Write search results; the format follows the suffix of `path`.

    Parameters
    ----------
    path : str or Path
        ``.npy``: ids go to `path` and scores to ``<stem>.scores.npy`` beside it.
        ``.parquet``: one long table with columns ``query`` (int64), ``rank`` (int32, the
        slot 0..k-1), ``id`` (int64), ``score`` (float32), one row per filled slot: slots
        whose id is -1 (empty, as in faiss) are dropped.
    ids : numpy.ndarray
        ``(nq, k)`` integer ids, stored as int64.
    scores : numpy.ndarray
        ``(nq, k)`` float scores, stored as float32.

    Returns
    -------
    list of Path
        The files written (ids first for .npy).

    Raises
    ------
    InvalidInput
        Unknown suffix, or ids/scores that are not 2-D integer/float arrays of one shape, or
        a `path` that is a directory or whose folder cannot be made (a file stands there).

    Notes
    -----
    Each file is written under a temporary name in the same directory, fsynced, then
    renamed with ``os.replace``, so a failure never leaves a half-written file at `path`.
    The parent directory is created if missing.
    """
    path = check_results_path(path)
    suffix = path.suffix.lower()
    ids = np.asarray(ids)
    scores = np.asarray(scores)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise InvalidInput(f"ids must be a 2-D integer array (nq, k), found {ids.dtype} {ids.shape}")
    if scores.ndim != 2 or scores.dtype.kind != "f":
        raise InvalidInput(f"scores must be a 2-D float array (nq, k), found {scores.dtype} {scores.shape}")
    if ids.shape != scores.shape:
        raise InvalidInput(f"ids and scores must have one shape, found {ids.shape} and {scores.shape}")
    if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:  # the cast would wrap them
        raise InvalidInput(f"ids must fit int64 (up to 2**63 - 1), found {ids.max()}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)

    if suffix == ".npy":
        targets = [path, path.with_name(f"{path.stem}.scores.npy")]
        arrays = [ids, scores]
    else:
        nq, k = ids.shape
        keep = (ids != -1).ravel()
        table = pa.table({
            "query": pa.array(np.repeat(np.arange(nq, dtype=np.int64), k)[keep]),
            "rank": pa.array(np.tile(np.arange(k, dtype=np.int32), nq)[keep]),
            "id": pa.array(ids.ravel()[keep]),
            "score": pa.array(scores.ravel()[keep]),
        })
        targets = [path]
        arrays = [table]

    temps: list[Path] = []
    try:
        # every temp is complete and durable before the first rename
        for obj in arrays:
            tmp = _temp_beside(path)
            temps.append(tmp)
            if isinstance(obj, np.ndarray):
                with open(tmp, "xb") as f:
                    np.save(f, obj, allow_pickle=False)
            else:
                pq.write_table(obj, str(tmp))
            _fsync_file(tmp)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
    return targets


def check_results_path(path: str | Path) -> Path:
    """`path` as a Path once `write_results` can write there: a known suffix, not a directory,
    and a folder that is one or can be made and written in (`InvalidInput` or `StorageError`
    otherwise, as `check_output_dir`), so that a command can refuse it before its search."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise InvalidInput(f"{path}: expected a results file ending in {' or '.join(RESULT_SUFFIXES)}, "
                           f"found suffix {suffix!r}")
    if path.is_dir():
        raise InvalidInput(f"{path}: expected a results file, found a directory")
    check_output_dir(path.parent, f"{path}: its folder")
    return path


def check_output_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, once it is a directory or one can be made there: `InvalidInput` when
    it, or its nearest existing ancestor, is something else (a file), `StorageError` when the
    system would refuse to write in that directory (permissions, a read-only file system), so
    that a command can refuse an output path before doing its work rather than fail after it."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.is_dir():
            # the system would refuse the writes: said now, not after the work (exit 3 in the CLI)
            effective = os.access in os.supports_effective_ids
            if not os.access(p, os.W_OK | os.X_OK, effective_ids=effective):
                code = errno.EROFS if _read_only_fs(p) else errno.EACCES
                where = "there" if p == path else f"in {str(p)!r}"
                raise StorageError(f"{what} {str(path)!r}: cannot write {where}: {os.strerror(code)}; nothing was done",
                                   code, str(p))
            break
        if p.exists() or p.is_symlink():
            kind = "a file" if p.is_file() else "a broken link" if not p.exists() else "something else"
            raise InvalidInput(f"{what} {str(path)!r}: expected a directory (or a path one can be made at), "
                               f"found {kind} at {str(p)!r}")
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------- whole-file readers


def read_fvecs(path: str | Path, dtype: str = "<f4") -> np.ndarray:
    """Read an .fvecs (or, with ``dtype="<i4"``, .ivecs) file: each row an int32 width, then the values.

    Checks, before any copy: the file holds at least one header, the width is in
    1..2**20, the file size is a whole number of rows, and every row's header equals the first.

    Returns
    -------
    numpy.ndarray
        ``(n, dim)`` float32 (or int64 for ``dtype="<i4"``); ``(0, 0)`` for an empty file.

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
    _, dim = _fvecs_shape(path, size)
    rows = np.fromfile(path, dtype="<i4").reshape(-1, dim + 1)
    _check_fvecs_headers(path, rows, dim, 0)
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
    """Float32 (n, dim) finite vectors from any `SUPPORTED_SUFFIXES` file, read whole.

    Parquet and Arrow files are read through `open_vectors` with its default column choice.

    Raises
    ------
    DatasetNotFound, InvalidInput, FormatError
        As `open_vectors`; also InvalidInput for NaN or inf (naming the first such row).
    """
    path = _require_file(Path(path), what)
    with open_vectors(path) as source:
        vecs, _ = source.read_all()
    return _check_float_matrix(vecs, path, what)


def read_ids(path: str | Path, n_queries: int, n_base: int, file_queries: int | None = None) -> np.ndarray:
    """Ground-truth ids int64 (n_queries, depth) from .npy or .ivecs, checked against the data:
    one row per query of the query file when `file_queries` (its row count) is given (a truth
    of another, larger query set was cut to the first rows, unnoticed), else at least
    `n_queries` rows (the first are used)."""
    path = _require_file(Path(path), "ground truth")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            with open(path, "rb") as f:
                _read_npy_magic(f)
            # mapped, not loaded: a header claiming more rows than the file holds fails here
            # instead of allocating them, and only the rows used are copied below
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 -- numpy's header parser, as in _NpySource
            raise FormatError(f"{path}: expected an integer .npy array: {exc}") from None
    elif suffix == ".ivecs":
        arr = read_fvecs(path, dtype="<i4")
    else:
        raise InvalidInput(f"{path}: expected a .npy or .ivecs ground truth, found suffix {suffix!r}")
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise InvalidInput(f"{path}: ground truth must be 2-D integer ids, found {arr.dtype} {arr.shape}")
    if file_queries is not None and arr.shape[0] != file_queries:
        raise DimensionMismatch(f"{path}: expected ground truth for the {file_queries} queries of the query file (a "
                                f"row per query), found {arr.shape[0]} rows")
    if arr.shape[0] < n_queries:
        raise DimensionMismatch(f"{path}: expected ground truth for {n_queries} queries, found {arr.shape[0]} rows")
    used = np.asarray(arr[:n_queries])
    # checked in the file's own dtype: a cast first would wrap uint64 above 2**63 - 1 to negatives
    if used.size and (used.min() < 0 or used.max() >= n_base):
        raise InvalidInput(f"{path}: ground-truth ids must be in [0, {n_base}), found {used.min()}..{used.max()}")
    used = np.ascontiguousarray(used, dtype=np.int64)
    ordered = np.sort(used, axis=1)
    repeats = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if repeats.size:  # a row's neighbours are distinct rows: a repeat would count one hit many times
        q = int(repeats[0])
        same = int(ordered[q, 1:][ordered[q, 1:] == ordered[q, :-1]][0])
        raise InvalidInput(f"{path}: ground-truth row {q} names id {same} more than once ({repeats.size} rows repeat "
                           f"ids); expected each query's neighbours to be distinct")
    return used


def read_texts(path: str | Path, n: int, what: str) -> list[str]:
    """Lines of a text file (gzip when it ends with .gz); line i = row i, exactly n lines."""
    path = _require_file(Path(path), what)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: {what}: expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x} at "
                           f"offset {exc.start}{' of the decompressed text' if opener is gzip.open else ''}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError: caught before it
        raise FormatError(f"{path}: {what}: expected gzip data (the name ends in .gz), found {exc}") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n:
        raise InvalidInput(f"{path}: {what}: expected {n} lines (one per row), found {len(lines)}")
    return lines
