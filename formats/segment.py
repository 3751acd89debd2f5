"""Segment files: immutable named numpy arrays ("sections"), zstd-compressed, CRC32-checked.

Implements formats/FORMAT.md, section "Segment file (.vzs)": a 64-byte header, a table of
128-byte section entries, then each section's stored bytes at a 64-byte-aligned offset.
Codes, ids, IVF lists, trained codec arrays and delete sets are all stored this way; the
``kind`` string in the header says which.

Contract of the reader: the header and the table are parsed and validated at open, in the
order FORMAT.md lists, before anything sized by the file is allocated; a section is read
on demand with one positioned read of exactly its stored size, its CRC32 is checked, and a
zstd section is decompressed into a buffer of exactly its recorded raw size. Hostile bytes
raise only `FormatError` subclasses (`FormatVersionError`, `StoreCorrupted`,
`ChecksumError`), and no allocation exceeds what the file could legitimately hold (a zstd
section's raw size is capped at 32768 x its stored size + 4096, zstd's own RLE bound).

Tested against hand-crafted and fuzzed files in tests/test_segment.py.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Self  # noqa: UP035 (tests/test_layout.py allows typing, not collections)

import numpy as np
import zstandard

from ._header import check_magic_and_length, check_version_and_crc, open_regular, strict_json
from .errors import (
    ChecksumError,
    FormatError,
    InvalidInput,
    StoreCorrupted,
    refused,
)

__all__ = [
    "SectionInfo",
    "SegmentFile",
    "write_segment",
    "Written",
    "segment_digest",
    "open_segment",
    "read_segment",
    "check_segment",
    "MAGIC",
    "MAJOR",
    "MINOR",
    "DTYPES",
]

MAGIC = b"VECZSEG\x00"
MAJOR = 1
MINOR = 0

# magic | major | minor | flags | file_length | n_sections | table_crc32 | kind | header_crc32 | reserved
_HEADER = struct.Struct("<8sHHIQII16sI12x")
# name | dtype | ndim | compression | reserved | shape[4] | offset | stored_size | raw_size | crc32 | reserved
_ENTRY = struct.Struct("<48s8sBB6x4QQQQI4x")
_HEADER_CRC_END = 48  # the header CRC covers bytes 0..47 (magic .. kind)
_ALIGN = 64
_MAX_SECTIONS = 4096
_MAX_NDIM = 4
_MAX_META_BYTES = 16 << 20
_RAW, _ZSTD = 0, 1
# A zstd RLE block is 3 header bytes + 1 byte for up to 128 KiB of output, so no honest
# frame inflates more than ~32768x; the slack covers tiny frames (headers of empty input).
_ZSTD_RATIO = 32768
_ZSTD_SLACK = 4096
# Linux returns at most ~2 GiB per read(2); larger sections are read in pieces.
_READ_CHUNK = 1 << 30
_VERIFY_CHUNK = 4 << 20
_META = "__meta__"

DTYPES = frozenset({"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
"""numpy dtype strings a section may hold (little-endian numbers only: no objects, no strings)."""

@dataclass(frozen=True)
class SectionInfo:
    """One validated entry of a segment's section table.

    Attributes
    ----------
    name : str
        Section name (UTF-8, at most 48 bytes).
    dtype : str
        numpy dtype string from `DTYPES`.
    shape : tuple of int
        Array shape, 0 to 4 dims.
    compression : int
        0 = stored raw, 1 = one zstd frame.
    offset : int
        Byte offset of the stored bytes in the file (a multiple of 64).
    stored_size : int
        Bytes stored in the file.
    raw_size : int
        Bytes of the array, ``prod(shape) * itemsize``.
    crc32 : int
        CRC32 of the stored bytes (after compression).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    compression: int
    offset: int
    stored_size: int
    raw_size: int
    crc32: int


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _window_cap(raw_size: int) -> int:
    # An honest frame never needs a window larger than its content (zstd shrinks the window
    # to the known source size), so a hostile window descriptor cannot make the decoder
    # allocate more than the section claims. 2**10 and 2**31 are zstd's own window bounds.
    return min(max(1 << 10, raw_size), 1 << 31)


def _cstr(raw: bytes, what: str, encoding: str) -> str:
    text = raw.rstrip(b"\x00")
    if b"\x00" in text:
        raise FormatError(f"{what}: expected NUL padding only after the text, found a NUL inside {raw!r}")
    try:
        return text.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what}: expected {encoding} text, found {raw!r}") from exc


def _load_json_dict(data: bytes | bytearray | memoryview, what: str) -> dict:
    """Parse UTF-8 JSON whose top level must be an object; every failure is a FormatError."""
    try:
        value = strict_json(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(f"{what}: expected UTF-8 JSON, found bytes that do not parse ({exc})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected a JSON object, found {type(value).__name__}")
    return value


class SegmentFile:
    """An open segment file: header and section table validated, sections read on demand.

    Use `open_segment` to make one. The file stays open until `close` (or the end of a
    ``with`` block), so a reader keeps working after a writer unlinks the file (POSIX).
    `read` uses positioned reads and shares no mutable state, so threads may read sections
    of one `SegmentFile` concurrently.

    Attributes
    ----------
    path : Path
        The file.
    kind : str
        What the segment holds ("codes", "codec", "deletes", ...).
    major, minor : int
        Format version the file was written with.
    sections : dict of str to SectionInfo
        Every section except the metadata, in table order.
    meta : dict
        The JSON metadata (empty if the file has none).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd = open_regular(self.path, "segment file")  # a FIFO in its place cannot block
        except FileNotFoundError:
            raise StoreCorrupted(f"{self.path}: segment file missing (no such file)") from None
        except OSError as exc:  # the system refused (permissions, too many open files): not damage
            raise refused(exc, "open the segment file", self.path) from exc
        self._file = open(fd, "rb", buffering=0)  # noqa: SIM115 (held open until close())
        try:
            self._parse()
        except BaseException:
            self._file.close()
            raise

    # -- open-time validation (FORMAT.md, "Reader checks") ---------------------------------

    def _parse(self) -> None:
        path = self.path
        try:
            size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise StoreCorrupted(f"{path}: cannot stat segment file ({exc})") from exc
        head = self._pread(0, min(size, _HEADER.size), "header").tobytes()
        check_magic_and_length(path, "segment", MAGIC, head, size, _HEADER.size)
        _, major, minor, flags, file_length, n_sections, table_crc, kind, header_crc = _HEADER.unpack(head)
        check_version_and_crc(path, "segment", major, MAJOR, flags, head[:_HEADER_CRC_END], header_crc)
        # the header's CRC covers the table, whose entries hold every section's CRC: the
        # file's content in 4 bytes, which a manifest records to bind the file to a version
        self.digest = header_crc
        if file_length != size:
            raise StoreCorrupted(
                f"{path}: truncated or extended: header records {file_length} bytes, file has {size}"
            )
        if n_sections > _MAX_SECTIONS:
            raise FormatError(f"{path}: expected at most {_MAX_SECTIONS} sections, header says {n_sections}")
        table_end = _HEADER.size + n_sections * _ENTRY.size
        if table_end > size:
            raise FormatError(
                f"{path}: section table of {n_sections} entries ends at byte {table_end}, "
                f"past the end of the {size}-byte file"
            )
        table = self._pread(_HEADER.size, table_end - _HEADER.size, "section table").tobytes()
        found_crc = zlib.crc32(table)
        if found_crc != table_crc:
            raise ChecksumError(
                f"{path}: section table CRC32 expected {table_crc:#010x}, found {found_crc:#010x}"
            )
        self.kind = _cstr(kind, f"{path}: header kind", "ascii")
        self.major, self.minor, self.file_length = major, minor, file_length
        infos: dict[str, SectionInfo] = {}
        prev_end = table_end
        for i in range(n_sections):
            info = self._check_entry(i, table, prev_end, size)
            if info.name in infos:
                raise FormatError(f"{path}: section name {info.name!r} appears twice in the table")
            infos[info.name] = info
            prev_end = info.offset + info.stored_size
        meta_info = infos.pop(_META, None)
        self.sections = infos
        self.meta: dict = {}
        if meta_info is not None:
            self.meta = _load_json_dict(self._load(meta_info), f"{path}: section {_META!r}")

    def _check_entry(self, i: int, table: bytes, prev_end: int, size: int) -> SectionInfo:
        raw_name, raw_dtype, ndim, compression, *rest = _ENTRY.unpack_from(table, i * _ENTRY.size)
        shape4, (offset, stored_size, raw_size, crc) = rest[:4], rest[4:]
        where = f"{self.path}: section table entry {i}"
        name = _cstr(raw_name, f"{where} name", "utf-8")
        if not name:
            raise FormatError(f"{where}: expected a non-empty name, found {raw_name!r}")
        where = f"{self.path}: section {name!r}"
        dtype = _cstr(raw_dtype, f"{where} dtype", "ascii")
        if dtype not in DTYPES:
            raise FormatError(f"{where}: expected a dtype in {sorted(DTYPES)}, found {dtype!r}")
        if ndim > _MAX_NDIM:
            raise FormatError(f"{where}: expected at most {_MAX_NDIM} dims, found ndim {ndim}")
        if any(shape4[ndim:]):
            raise FormatError(f"{where}: expected unused shape slots to be 0, found shape {shape4} with ndim {ndim}")
        shape = tuple(shape4[:ndim])
        itemsize = np.dtype(dtype).itemsize
        # numpy refuses any shape whose non-zero dims overflow intp, even when another dim is 0.
        if math.prod(n for n in shape if n) * itemsize > np.iinfo(np.intp).max:
            raise FormatError(f"{where}: shape {shape} of {dtype} exceeds the largest possible array")
        expected_raw = math.prod(shape) * itemsize  # Python ints: no overflow on hostile dims
        if raw_size != expected_raw:
            raise FormatError(
                f"{where}: raw size expected {expected_raw} (shape {shape} x {itemsize} bytes), found {raw_size}"
            )
        if compression == _RAW:
            if stored_size != raw_size:
                raise FormatError(f"{where}: raw section stored size expected {raw_size}, found {stored_size}")
        elif compression == _ZSTD:
            if stored_size < 1:
                raise FormatError(f"{where}: zstd section stored size expected >= 1, found 0")
            bound = stored_size * _ZSTD_RATIO + _ZSTD_SLACK
            if raw_size > bound:
                raise FormatError(
                    f"{where}: zstd section claims {raw_size} raw bytes from {stored_size} stored; "
                    f"expected at most {bound} (32768 x stored + 4096)"
                )
        else:
            raise FormatError(f"{where}: expected compression 0 (raw) or 1 (zstd), found {compression}")
        if offset % _ALIGN:
            raise FormatError(f"{where}: offset {offset} is not a multiple of {_ALIGN}")
        if offset < prev_end:
            raise FormatError(
                f"{where}: offset {offset} overlaps the table or the previous section (which end at {prev_end})"
            )
        if offset + stored_size > size:
            raise FormatError(
                f"{where}: bytes {offset}..{offset + stored_size} lie past the end of the {size}-byte file"
            )
        if name == _META and not (dtype == "|u1" and ndim == 1 and raw_size <= _MAX_META_BYTES):
            raise FormatError(
                f"{where}: expected 1-D |u1 JSON of at most {_MAX_META_BYTES} bytes, "
                f"found {dtype} shape {shape}"
            )
        return SectionInfo(name, dtype, shape, compression, offset, stored_size, raw_size, crc)

    # -- reading ---------------------------------------------------------------------------

    def _alloc(self, n: int, what: str) -> np.ndarray:
        try:
            return np.empty(n, dtype=np.uint8)
        except MemoryError as exc:  # n is bounded by the file, but may still exceed this machine
            raise FormatError(f"{self.path}: {what}: cannot allocate {n} bytes") from exc

    def _pread(self, offset: int, size: int, what: str) -> np.ndarray:
        """Exactly `size` bytes at `offset`, as a fresh writable uint8 array."""
        buf = self._alloc(size, what)
        view = memoryview(buf)
        fd = self._file.fileno()
        done = 0
        try:
            while done < size:
                part = view[done : done + _READ_CHUNK]
                if hasattr(os, "preadv"):
                    got = os.preadv(fd, [part], offset + done)
                elif hasattr(os, "pread"):
                    data = os.pread(fd, len(part), offset + done)
                    got = len(data)
                    part[:got] = data
                else:  # Windows: no positioned reads; this path is not thread-safe
                    self._file.seek(offset + done)
                    got = self._file.readinto(part) or 0
                if got == 0:
                    raise StoreCorrupted(
                        f"{self.path}: {what}: expected {size} bytes at offset {offset}, "
                        f"found {done} (file shrank while open)"
                    )
                done += got
        except OSError as exc:
            raise StoreCorrupted(f"{self.path}: {what}: read failed ({exc})") from exc
        return buf

    def _check_crc(self, info: SectionInfo, found: int) -> None:
        if found != info.crc32:
            raise ChecksumError(
                f"{self.path}: section {info.name!r}: CRC32 expected {info.crc32:#010x}, found {found:#010x}"
            )

    def _inflate(self, stored: np.ndarray, info: SectionInfo, out: np.ndarray | None) -> None:
        """Decompress one zstd section into `out` (or, if None, into a scratch buffer to
        verify it), requiring exactly `raw_size` bytes of output and nothing after."""
        what = f"{self.path}: section {info.name!r}"
        raw_size = info.raw_size
        dctx = zstandard.ZstdDecompressor(max_window_size=_window_cap(raw_size))
        target = memoryview(out if out is not None else self._alloc(min(raw_size, _VERIFY_CHUNK), "scratch"))
        got = 0
        try:
            with dctx.stream_reader(stored, read_across_frames=True) as reader:
                while got < raw_size:
                    view = target[got:] if out is not None else target[: min(len(target), raw_size - got)]
                    n = reader.readinto(view)
                    if not n:
                        break
                    got += n
                extra = len(reader.read(1))
        except zstandard.ZstdError as exc:
            raise StoreCorrupted(f"{what}: zstd data does not decompress ({exc})") from exc
        if got != raw_size or extra:
            found = f"more than {raw_size}" if extra else str(got)
            raise StoreCorrupted(f"{what}: decompressed size expected {raw_size} bytes, found {found}")

    def _load(self, info: SectionInfo) -> np.ndarray:
        stored = self._pread(info.offset, info.stored_size, f"section {info.name!r}")
        self._check_crc(info, zlib.crc32(stored))
        if info.compression == _RAW:
            return stored
        out = self._alloc(info.raw_size, f"section {info.name!r}")
        self._inflate(stored, info, out)
        return out

    def _verify(self, info: SectionInfo) -> None:
        """Check one section's CRC and decompression without holding its raw bytes."""
        if info.compression == _ZSTD:
            stored = self._pread(info.offset, info.stored_size, f"section {info.name!r}")
            self._check_crc(info, zlib.crc32(stored))
            self._inflate(stored, info, None)
            return
        crc = 0
        for start in range(0, info.stored_size, _VERIFY_CHUNK):
            n = min(_VERIFY_CHUNK, info.stored_size - start)
            crc = zlib.crc32(self._pread(info.offset + start, n, f"section {info.name!r}"), crc)
        self._check_crc(info, crc)

    def read(self, name: str) -> np.ndarray:
        """Read, check and decompress one section.

        Returns
        -------
        numpy.ndarray
            A fresh writable C-contiguous array of the recorded dtype and shape.

        Raises
        ------
        StoreCorrupted
            The section is missing, the file cannot be read, or its zstd data is damaged.
        ChecksumError
            The stored bytes' CRC32 differs from the table's.
        """
        info = self.sections.get(name)
        if info is None:
            raise StoreCorrupted(
                f"{self.path}: section {name!r} missing; the {self.kind!r} segment holds {list(self.sections)}"
            )
        if self._file.closed:
            raise ValueError(f"{self.path}: segment file is closed")
        return self._load(info).view(np.dtype(info.dtype)).reshape(info.shape)

    def read_all(self) -> dict[str, np.ndarray]:
        """Read every section (except the metadata) in table order."""
        return {name: self.read(name) for name in self.sections}

    def problems(self) -> list[str]:
        """Verify every section's CRC32 and decompressed size; return what is wrong (empty if healthy)."""
        found = []
        for info in self.sections.values():
            try:
                self._verify(info)
            except FormatError as exc:
                found.append(str(exc))
        return found

    def close(self) -> None:
        """Close the file; further reads raise ValueError."""
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SegmentFile({str(self.path)!r}, kind={self.kind!r}, sections={list(self.sections)})"


def _prepare(name: str, array: Any) -> tuple[str, str, tuple[int, ...], np.ndarray]:
    """Validate one named array; return (name, dtype string, shape, raw little-endian bytes)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidInput(f"section name: expected a non-empty str without NUL, found {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"section name {name!r}: not encodable as UTF-8") from exc
    if len(encoded) > 48:
        raise InvalidInput(f"section name {name!r}: expected at most 48 UTF-8 bytes, found {len(encoded)}")
    arr = np.asarray(array)
    little = arr.dtype.newbyteorder("<")
    if little.str not in DTYPES:
        raise InvalidInput(f"section {name!r}: expected a dtype in {sorted(DTYPES)}, found {arr.dtype.str!r}")
    if arr.ndim > _MAX_NDIM:
        raise InvalidInput(f"section {name!r}: expected at most {_MAX_NDIM} dims, found shape {arr.shape}")
    shape = tuple(int(n) for n in arr.shape)
    flat = np.ascontiguousarray(arr.astype(little, copy=False)).reshape(-1).view(np.uint8)
    return name, little.str, shape, flat


class Written(NamedTuple):
    """What `write_segment` wrote: the file's length and its digest (`segment_digest`)."""

    nbytes: int
    digest: int


def write_segment(
    path: str | os.PathLike[str],
    kind: str,
    arrays: Mapping[str, np.ndarray],
    *,
    meta: dict | None = None,
    compress: bool = True,
    level: int = 3,
) -> Written:
    """Write a new segment file (exclusive create) and fsync it.

    Parameters
    ----------
    path : path-like
        Must not exist: the file is created with mode "xb". The directory is not fsynced;
        the caller publishes the file (see FORMAT.md, "Commit protocol").
    kind : str
        ASCII, 1..16 bytes, e.g. "codes", "codec", "deletes".
    arrays : mapping of str to numpy.ndarray
        Sections, written in mapping order. Dtypes from `DTYPES` (big-endian input is
        converted to little-endian), at most 4 dims, any memory layout.
    meta : dict, optional
        JSON-serialisable metadata, stored as the section "__meta__" (at most 16 MiB).
    compress : bool
        Store a section as one zstd frame when that makes it smaller; otherwise raw.
    level : int
        zstd level, 1..22.

    Returns
    -------
    Written
        Bytes written (the file's length) and the file's digest, the header CRC32 a
        manifest records for it.

    Raises
    ------
    InvalidInput
        Bad kind, name, dtype, ndim, metadata or level; nothing is created.
    FileExistsError
        `path` exists.
    """
    path = Path(path)
    if not isinstance(kind, str) or not kind.isascii() or not 1 <= len(kind) <= 16 or "\x00" in kind:
        raise InvalidInput(f"segment kind: expected 1..16 ASCII characters without NUL, found {kind!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise InvalidInput(f"zstd level: expected an int in 1..22, found {level!r}")
    prepared = []
    for name, array in arrays.items():
        if name == _META:
            raise InvalidInput(f"section name {_META!r} is reserved for the metadata; pass meta= instead")
        prepared.append(_prepare(name, array))
    if meta is not None:
        if not isinstance(meta, dict):
            raise InvalidInput(f"segment meta: expected a dict, found {type(meta).__name__}")
        try:
            text = json.dumps(meta, sort_keys=True, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInput(f"segment meta: not JSON-serialisable ({exc})") from exc
        blob = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        if blob.size > _MAX_META_BYTES:
            raise InvalidInput(f"segment meta: expected at most {_MAX_META_BYTES} bytes of JSON, found {blob.size}")
        prepared.append((_META, "|u1", (int(blob.size),), blob))
    if len(prepared) > _MAX_SECTIONS:
        raise InvalidInput(f"segment: expected at most {_MAX_SECTIONS} sections, found {len(prepared)}")

    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    entries = []
    payloads = []
    pos = _HEADER.size + len(prepared) * _ENTRY.size
    for name, dtype, shape, flat in prepared:
        stored: Any = flat
        compression = _RAW
        if compress and flat.size:
            packed = cctx.compress(flat)
            if len(packed) < flat.size:
                stored, compression = packed, _ZSTD
        stored_size = len(stored) if compression == _ZSTD else int(flat.size)
        pos = _align(pos)
        shape4 = list(shape) + [0] * (_MAX_NDIM - len(shape))
        entries.append(
            _ENTRY.pack(
                name.encode("utf-8"),
                dtype.encode("ascii"),
                len(shape),
                compression,
                *shape4,
                pos,
                stored_size,
                int(flat.size),
                zlib.crc32(stored),
            )
        )
        payloads.append((pos, stored, stored_size))
        pos += stored_size
    file_length = pos
    table = b"".join(entries)
    fields = (MAGIC, MAJOR, MINOR, 0, file_length, len(entries), zlib.crc32(table), kind.encode("ascii"))
    digest = zlib.crc32(_HEADER.pack(*fields, 0)[:_HEADER_CRC_END])
    header = _HEADER.pack(*fields, digest)

    with open(path, "xb") as f:
        try:
            f.write(header)
            f.write(table)
            written = len(header) + len(table)
            for offset, stored, stored_size in payloads:
                f.write(bytes(offset - written))
                f.write(stored)
                written = offset + stored_size
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            try:
                os.unlink(path)  # ours: created exclusively above
            except OSError:
                pass
            raise
    return Written(file_length, digest)


def open_segment(path: str | os.PathLike[str], kind: str | None = None, digest: int | None = None) -> SegmentFile:
    """Open a segment file, validating its header and section table.

    Parameters
    ----------
    path : path-like
    kind : str, optional
        If given, the segment's kind must equal it.
    digest : int, optional
        If given, the file's digest (`segment_digest`) must equal it: the one its manifest
        recorded when the file was written.

    Raises
    ------
    StoreCorrupted
        The file is missing, unreadable, truncated or extended, or its digest is not `digest`.
    FormatVersionError
        Unknown major version or required feature flags.
    ChecksumError
        Header, table or metadata CRC32 mismatch.
    FormatError
        Anything else that does not follow FORMAT.md, or the wrong kind.
    """
    seg = SegmentFile(path)
    if kind is not None and seg.kind != kind:
        seg.close()
        raise FormatError(f"{seg.path}: expected a {kind!r} segment, found {seg.kind!r}")
    if digest is not None and seg.digest != digest:
        seg.close()
        raise StoreCorrupted(digest_mismatch(seg.path, seg.digest, digest))
    return seg


def digest_mismatch(path: Path, found: int, recorded: int) -> str:
    """What a reader says of a segment file whose digest is not the one its manifest recorded."""
    return (f"{path}: not the file the manifest names: its digest (header CRC32) is {found:#010x}, the manifest "
            f"records {recorded:#010x} (a file copied from another store or version?)")


def segment_digest(path: str | os.PathLike[str]) -> int:
    """The digest a manifest records for a segment file it names: the header's CRC32, which
    covers the table and through it every section's CRC32. Errors as `open_segment`."""
    with open_segment(path) as seg:
        return seg.digest


def read_segment(
    path: str | os.PathLike[str], kind: str | None = None, digest: int | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Read a whole segment: ``(arrays, meta)``. Errors as `open_segment` and `SegmentFile.read`."""
    with open_segment(path, kind, digest) as seg:
        return seg.read_all(), seg.meta


def check_segment(path: str | os.PathLike[str], digest: int | None = None) -> list[str]:
    """Verify a segment file completely: header, table, every section's CRC32 and
    decompression, and, when given, that its digest is the one a manifest recorded.

    Returns
    -------
    list of str
        Human-readable problems, each naming the file; empty when the file is healthy.
        Damaged bytes never raise. Bytes no checksum covers (zero padding between sections,
        reserved header bytes) are not inspected: they carry no information.
    """
    try:
        seg = SegmentFile(path)
    except FormatError as exc:
        return [str(exc)]
    with seg:
        problems = seg.problems()
        if digest is not None and seg.digest != digest:
            problems.append(digest_mismatch(seg.path, seg.digest, digest))
        return problems
