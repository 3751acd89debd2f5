"""Dense-vector files: the disk tier of a store (formats/FORMAT.md, "Dense files").

A dense file is an Arrow IPC file (uncompressed, one record batch) with columns ``id``
(int64) and ``vector`` (fixed_size_list<float32 | float16>[dim]), so any Arrow reader can
open it. The writer records where the vector values start (`DenseInfo.offset`); a reader
then reads row i at ``offset + i * dim * itemsize`` with one seek and never parses or loads
the whole file. `DenseReader` maps the file read-only with MADV_RANDOM (the kernel reads
the pages a row touches, not a read-ahead window) and counts the rows and bytes it reads.

Readers trust nothing from the manifest or the file before checking it: the file's size
equals the recorded size, the Arrow magic sits at both ends, the values region lies inside
the file, and every requested row is in range. `check_dense` also verifies the whole-file
CRC32, that the Arrow schema and row count agree with the record, and that the recorded
offset is where the Arrow metadata puts the vector values.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba.core import types

from ..kernels._jit import jit
from ._header import open_regular
from .errors import FormatError, InvalidInput, StorageError, StoreCorrupted, refused

__all__ = ["DENSE_DTYPES", "DenseInfo", "DenseReader", "write_dense", "check_dense"]

DENSE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
_MAGIC_HEAD = b"ARROW1\x00\x00"
_MAGIC_TAIL = b"ARROW1"
_CRC_CHUNK = 16 << 20
# `DenseReader.cached`: the share of a file's pages in the page cache that counts as cached,
# how old its answer may be (seconds), and where it looks: the whole file up to
# RESIDENCY_WINDOWS x RESIDENCY_WINDOW_BYTES, else that many windows drawn at random, an
# estimate (mincore costs ~55 ns a page the process has not mapped, 1.2 ms for a whole
# 86 MiB file, and ~6 us a call: 32 windows of 16 pages about 0.2 ms a look).
RESIDENT_SHARE = 0.99
RESIDENCY_RECHECK_S = 1.0
RESIDENCY_WINDOWS = 32
RESIDENCY_WINDOW_BYTES = 64 << 10


@dataclass(frozen=True)
class DenseInfo:
    """What the manifest records about one dense file (JSON via `to_json`/`from_json`)."""

    file: str
    rows: int
    dim: int
    dtype: str
    offset: int
    nbytes: int
    crc32: int

    @property
    def row_bytes(self) -> int:
        return self.dim * DENSE_DTYPES[self.dtype].itemsize

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "DenseInfo":
        """Validate a manifest entry's types and ranges (hostile JSON raises StoreCorrupted)."""
        if not isinstance(obj, dict):
            raise StoreCorrupted(f"{where}: expected a dense-file record (object), found {type(obj).__name__}")
        fields = {"file": str, "rows": int, "dim": int, "dtype": str, "offset": int, "nbytes": int, "crc32": int}
        values = {}
        for name, kind in fields.items():
            value = obj.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise StoreCorrupted(f"{where}: dense field {name!r}: expected {kind.__name__}, found {value!r:.80}")
            values[name] = value
        info = cls(**values)
        if info.dtype not in DENSE_DTYPES:
            raise StoreCorrupted(f"{where}: dense dtype: expected one of {sorted(DENSE_DTYPES)}, found {info.dtype!r}")
        top = (1 << 63) - 1  # a reader's int64 arrays hold them (rows 2**63 raised a raw OverflowError)
        if not (0 <= info.rows <= top and 1 <= info.dim <= top and 0 <= info.offset <= top and 0 <= info.nbytes <= top
                and 0 <= info.crc32 < 1 << 32):
            raise StoreCorrupted(f"{where}: dense record has a negative or out-of-range field: {values}")
        if "/" in info.file or info.file.startswith("."):
            raise StoreCorrupted(f"{where}: dense file name must be a plain name, found {info.file!r}")
        return info


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_dense(path: str | Path, ids: np.ndarray, vectors: np.ndarray, dtype: str) -> DenseInfo:
    """Write a dense file exclusively (fails if `path` exists) and fsync it.

    Parameters
    ----------
    path : destination (its directory is not fsynced: the caller publishes the commit)
    ids : int64 (n,)
    vectors : float (n, dim); stored as `dtype` ("f32" or "f16")
    """
    import pyarrow as pa  # imported here: a reader opening a store never needs pyarrow (26 MB RSS)
    import pyarrow.ipc as ipc

    path = Path(path)
    if dtype not in DENSE_DTYPES:
        raise InvalidInput(f"dense dtype: expected one of {sorted(DENSE_DTYPES)}, found {dtype!r}")
    np_dtype = DENSE_DTYPES[dtype]
    vectors = np.ascontiguousarray(vectors, dtype=np_dtype)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    if ids.shape != (n,):
        raise InvalidInput(f"dense ids: expected shape ({n},), found {ids.shape}")
    values = pa.array(vectors.reshape(-1), type=pa.float32() if dtype == "f32" else pa.float16())
    batch = pa.record_batch([pa.array(ids, type=pa.int64()), pa.FixedSizeListArray.from_arrays(values, dim)],
                            names=["id", "vector"])
    f = open(path, "xb")  # noqa: SIM115 (closed below; removed with what it holds on any failure)
    try:
        with f:
            sink = pa.PythonFile(f, mode="w")
            with ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
            f.flush()
            os.fsync(f.fileno())
        # Locate the values buffer in the file just written (trusted: we wrote it).
        nbytes = path.stat().st_size
        source = pa.memory_map(str(path))
        try:
            whole = source.read_buffer(nbytes)
            column = ipc.open_file(source).get_batch(0).column(1)
            offset = _values_offset(column, whole, np_dtype.itemsize) if n else 0
        finally:
            source.close()
        crc = _file_crc32(path)
    except BaseException:
        path.unlink(missing_ok=True)  # ours: created exclusively above; a retry may reuse the name
        raise
    return DenseInfo(path.name, int(n), int(dim), dtype, int(offset), int(nbytes), crc)


class _Mapping:
    """A read-only shared mapping of a whole file that holds no file descriptor.

    Python's `mmap.mmap` keeps a duplicate of the descriptor for as long as the map lives
    (until Python 3.13's ``trackfd=False``), so a store of many dense files would hold one
    descriptor each and fail under ``ulimit -n 1024``. This maps through libc and closes
    the descriptor at once; numpy arrays made from it keep it alive (their base), and the
    mapping is unmapped when the last of them is gone, so closing a reader never leaves a
    dangling view."""

    _libc: Any = None

    def __init__(self, fd: int, size: int) -> None:
        libc = self.libc()
        self.addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if self.addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.size = size
        self.__array_interface__ = {"shape": (size,), "typestr": "|u1", "data": (self.addr, True), "version": 3}

    @classmethod
    def libc(cls) -> Any:
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            if hasattr(libc, "mincore"):
                libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            cls._libc = libc
        return cls._libc

    def resident(self, start: int, length: int) -> float | None:
        """The share of the pages of bytes [start, start + length) of the file that are in
        the page cache now (mincore; 1.0 for no bytes); None where that cannot be asked (no
        mincore, or it failed)."""
        libc = self.libc()
        if not self.addr or not hasattr(libc, "mincore"):
            return None
        if length <= 0:
            return 1.0
        page = mmap.PAGESIZE
        first = start - start % page
        n_pages = (start + length - first + page - 1) // page
        vec = np.zeros(n_pages, dtype=np.uint8)
        if libc.mincore(self.addr + first, n_pages * page, vec.ctypes.data) != 0:
            return None
        return float(np.count_nonzero(vec & 1)) / n_pages

    def madvise(self, advice: int, start: int = 0, length: int | None = None) -> None:
        self.libc().madvise(self.addr + start, self.size - start if length is None else length, advice)

    def __del__(self) -> None:
        if getattr(self, "addr", None):
            self.libc().munmap(self.addr, self.size)
            self.addr = None


# madvise(2), called by name from compiled code (resolved in the process's C library; an
# ExternalFunction, unlike a ctypes pointer, keeps the function cacheable on disk).
_madvise = types.ExternalFunction("madvise", types.intc(types.uintp, types.uintp, types.intc))


@jit
def row_pages(offset: int, row_bytes: int, n_rows: int, rows: np.ndarray, page: int) -> tuple[np.ndarray, np.ndarray]:
    """The page-aligned byte ranges [first, end) that hold `rows` (any order, repeats allowed;
    rows outside [0, n_rows) are skipped) of a file whose row r starts at byte
    ``offset + r * row_bytes``, ascending, ranges that touch or overlap joined."""
    r = np.sort(rows)
    first = np.empty(r.size, dtype=np.int64)
    end = np.empty(r.size, dtype=np.int64)
    n = 0
    i = 0
    while i < r.size and r[i] < 0:
        i += 1
    while i < r.size and r[i] < n_rows:
        a = (offset + r[i] * row_bytes) // page * page
        b = (offset + r[i] * row_bytes + row_bytes - 1) // page * page + page
        i += 1
        while i < r.size and r[i] < n_rows and (offset + r[i] * row_bytes) // page * page <= b:
            b = max(b, (offset + r[i] * row_bytes + row_bytes - 1) // page * page + page)
            i += 1
        first[n] = a
        end[n] = b
        n += 1
    return first[:n], end[:n]


@jit
def advise_ranges(addr: int, first: np.ndarray, end: np.ndarray, advice: int) -> int:
    """madvise(`advice`) over each byte range [first, end) of the mapping at `addr`; returns
    the calls that failed. One compiled loop: through ctypes each call cost ~2 us of Python,
    0.2-0.5 ms for a 100-row shortlist whose pages were all cached already."""
    failed = 0
    for j in range(first.size):
        if _madvise(addr + first[j], end[j] - first[j], advice) != 0:
            failed += 1
    return failed


@jit
def advise_rows(addr: int, offset: int, row_bytes: int, n_rows: int, rows: np.ndarray, page: int, advice: int) -> int:
    """`advise_ranges` over the pages of `rows` (`row_pages`), in one compiled call: a
    shortlist's hint costs one dispatch, not two."""
    first, end = row_pages(offset, row_bytes, n_rows, rows, page)
    return advise_ranges(addr, first, end, advice)


def _may_write(path: Path, owner: int) -> bool:
    """Whether mincore tells this process the truth about the page cache of `path`, owned by
    uid `owner`: Linux does for the file's owner and for whoever may open it for writing (an
    effective-uid access check, so root without CAP_DAC_OVERRIDE, or mapped to another uid
    in a user namespace, is told every page is cached and gets False here). A file on a
    read-only mount gets False too (its readers keep their hints: slower when cached, never
    wrong)."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:
        return False
    try:
        if geteuid() == owner:
            return True
        if os.access in os.supports_effective_ids:
            return os.access(path, os.W_OK, effective_ids=True)
        return os.access(path, os.W_OK)
    except OSError:  # no such file (the reader reports it)
        return False


class DenseReader:
    """Reads rows of one dense file by number, counting what it reads.

    Thread-safety: `read_rows` may run from several threads (the map is read-only); the
    counters are then approximate.
    """

    def __init__(self, directory: str | Path, info: DenseInfo) -> None:
        self.path = Path(directory) / info.file
        self.info = info
        self.rows_read = 0
        self.bytes_read = 0
        self._mmap: _Mapping | None = None
        self._resident = False  # `cached`'s last answer, when it was found, where it looks
        self._resident_at = -np.inf
        self._windows = np.random.default_rng(0)
        self._sees_cache = False  # mincore's answers are true for this process (`_may_write`)
        try:
            fd = open_regular(self.path, "dense file")
        except FileNotFoundError:
            raise StoreCorrupted(f"{self.path}: dense file named by the manifest is missing") from None
        except OSError as exc:  # the system refused (permissions, too many open files): not damage
            raise refused(exc, "open the dense file", self.path) from exc
        try:
            st = os.fstat(fd)
            size = st.st_size
            # mincore tells a process the truth about a file's page cache only if it owns the
            # file or may write it (Linux >= 5.1); to others it reports every page cached
            self._sees_cache = _may_write(self.path, st.st_uid)
            if size != info.nbytes:
                raise StoreCorrupted(f"{self.path}: expected {info.nbytes} bytes (manifest), found {size}")
            end = info.offset + info.rows * info.row_bytes
            if info.rows and (info.offset < len(_MAGIC_HEAD) or end > size - len(_MAGIC_TAIL)):
                raise StoreCorrupted(
                    f"{self.path}: vector values [{info.offset}, {end}) do not fit inside the {size}-byte file"
                )
            itemsize = DENSE_DTYPES[info.dtype].itemsize
            if info.offset % itemsize:
                # Arrow aligns buffers to 8 bytes: a misaligned offset splits every value
                raise StoreCorrupted(f"{self.path}: expected the vector values' offset to be a multiple of "
                                     f"{itemsize} ({info.dtype}), found {info.offset}")
            if size < len(_MAGIC_HEAD) + len(_MAGIC_TAIL):
                raise StoreCorrupted(f"{self.path}: expected an Arrow IPC file, found only {size} bytes")
            if os.pread(fd, 8, 0) != _MAGIC_HEAD or os.pread(fd, 6, size - 6) != _MAGIC_TAIL:
                raise StoreCorrupted(f"{self.path}: expected the Arrow IPC magic 'ARROW1' at both ends")
            self._mmap = _Mapping(fd, size)
        finally:
            os.close(fd)  # the mapping holds no descriptor: a store's open files do not grow with it
        if hasattr(mmap, "MADV_RANDOM"):
            self._mmap.madvise(mmap.MADV_RANDOM)
        whole = np.asarray(self._mmap)
        self._values = whole[info.offset: info.offset + info.rows * info.row_bytes].view(
            DENSE_DTYPES[info.dtype]).reshape(info.rows, info.dim)

    @property
    def values(self) -> np.ndarray:
        """The mapped rows: read-only (rows, dim) float32, or float16 bit patterns (uint16)
        for an f16 file, for kernels that read a shortlist in place. Whoever reads through
        it reports the rows with `note_read`."""
        v = self._values
        return v.view(np.uint16) if self.info.dtype == "f16" else v

    def will_need(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading these rows' pages now (MADV_WILLNEED), so that a
        shortlist not in the page cache is fetched with its reads in flight together rather
        than one page fault after another. Rows in any order and of any shape; rows outside
        the file (such as -1) are skipped."""
        if self._mmap is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        advise_rows(self._mmap.addr, self.info.offset, self.info.row_bytes, self.info.rows,
                    np.asarray(rows, dtype=np.int64).ravel(), mmap.PAGESIZE, mmap.MADV_WILLNEED)

    def cached(self) -> bool:
        """Whether at least `RESIDENT_SHARE` of the pages of the file's rows were in the page
        cache when last looked at (mincore, at most once every `RESIDENCY_RECHECK_S` seconds;
        a file over RESIDENCY_WINDOWS x RESIDENCY_WINDOW_BYTES is estimated from that many
        windows drawn at random, so a file with evicted stretches can pass). The store skips
        its page hints (`will_need`) for a file found cached: on a cached page a hint is a
        system call that fetches nothing (0.04-0.14 ms of a 0.28-0.52 ms warm single query,
        R = 30 to auto's 92 rows, on a Zen 4), and a hint pays only by fetching several
        missing pages at once, where a query of 100 rows meets about one missing page in a
        file 99% cached. False where mincore is missing or fails, and for a process that
        neither owns the file nor may write it (mincore would report every page cached).
        Pages dropped after a look are noticed at the next one: a query in between reads
        them by page faults, one after another, as with no hints."""
        mapping = self._mmap
        if mapping is None or not self._sees_cache:
            return False
        now = time.monotonic()
        if now - self._resident_at >= RESIDENCY_RECHECK_S:
            self._resident = (self._resident_share(mapping) or 0.0) >= RESIDENT_SHARE
            self._resident_at = now
        return self._resident

    def _resident_share(self, mapping: _Mapping) -> float | None:
        length = self.info.rows * self.info.row_bytes
        if length <= RESIDENCY_WINDOWS * RESIDENCY_WINDOW_BYTES:
            return mapping.resident(self.info.offset, length)
        starts = self.info.offset + self._windows.integers(0, length - RESIDENCY_WINDOW_BYTES + 1, RESIDENCY_WINDOWS)
        shares = [mapping.resident(int(a), RESIDENCY_WINDOW_BYTES) for a in starts]
        return None if None in shares else float(np.mean(shares))

    def mark_uncached(self) -> None:
        """Count the file as not cached until `cached` looks again, `RESIDENCY_RECHECK_S`
        from now (for whoever just dropped its pages from the page cache)."""
        self._resident = False
        self._resident_at = time.monotonic()

    def note_read(self, n_rows: int) -> None:
        """Count rows read through `values`."""
        self.rows_read += int(n_rows)
        self.bytes_read += int(n_rows) * self.info.row_bytes

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows (ascending, as the store passes them) -> float32 (len(rows), dim)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.info.rows):
            raise StoreCorrupted(
                f"{self.path}: row numbers must lie in [0, {self.info.rows}), found {rows.min()}..{rows.max()}"
            )
        out = self._values[rows].astype(np.float32)
        self.rows_read += int(rows.size)
        self.bytes_read += int(rows.size) * self.info.row_bytes
        return out

    def close(self) -> None:
        """Drop this reader's references: the file is unmapped once no array viewing it is
        left. Reads through this reader fail afterwards, so a store never closes one that a
        segment may still read through (engine/segments.py `DensePool` drops them instead)."""
        self._values = None  # type: ignore[assignment]
        self._mmap = None


def check_dense(directory: str | Path, info: DenseInfo) -> list[str]:
    """Problems with one dense file (empty list = healthy): size, magic, CRC32, schema, rows,
    and the values' offset (parsed from the Arrow metadata, as `write_dense` finds it)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = Path(directory) / info.file
    if not path.is_file():
        if os.path.lexists(path):
            try:
                os.close(open_regular(path, "dense file"))
            except (StoreCorrupted, OSError) as exc:
                return [str(exc)]
        return [f"{path}: dense file is missing"]
    size = path.stat().st_size
    if size != info.nbytes:
        return [f"{path}: expected {info.nbytes} bytes, found {size}"]
    try:
        crc = _file_crc32(path)
    except OSError as exc:  # the system refused the read: not damage
        raise refused(exc, "read the dense file", path) from exc
    if crc != info.crc32:
        return [f"{path}: CRC32 expected {info.crc32:08x}, found {crc:08x}"]
    try:
        reader = DenseReader(directory, info)
        reader.close()
        with pa.memory_map(str(path)) as source:
            whole = source.read_buffer(size)
            table = ipc.open_file(source).read_all()
            expected = pa.schema([("id", pa.int64()), ("vector", pa.list_(
                pa.float32() if info.dtype == "f32" else pa.float16(), info.dim))])
            if not table.schema.equals(expected) or table.num_rows != info.rows:
                return [f"{path}: expected {info.rows} rows of {expected}, found {table.num_rows} rows of "
                        f"{table.schema}"]
            if info.rows:
                vectors = table.column("vector")  # one record batch as written: one chunk
                offset = (_values_offset(vectors.chunk(0), whole, DENSE_DTYPES[info.dtype].itemsize)
                          if vectors.num_chunks == 1 else None)
                if offset != info.offset:
                    found = "values not in one buffer inside the file" if offset is None else f"offset {offset}"
                    return [f"{path}: expected the vector values at offset {info.offset} (manifest), found {found}"]
    except FormatError as exc:  # names the path already
        return [str(exc)]
    except StorageError:  # the system refused a read (permissions...): not damage
        raise
    except (pa.ArrowException, OSError) as exc:
        return [f"{path}: {exc}"]
    return []


def _values_offset(column: Any, whole: Any, itemsize: int) -> int | None:
    """Where the values of the list array `column` (read from the memory map `whole`) start
    in the file, the offset `write_dense` records and `check_dense` verifies; None when they
    are not one buffer inside the mapped file (buffers Arrow copied)."""
    flat = column.values
    data = flat.buffers()[1]
    if data is None:
        return None
    start = data.address - whole.address + flat.offset * itemsize
    if not 0 <= start <= whole.size - len(flat) * itemsize:
        return None
    return int(start)

