"""The checks every vecz file header shares (segment and manifest, formats/FORMAT.md):
magic and minimum length before unpacking, then major version, feature flags and the
header's own CRC32. One place, so both files report damage in the same words."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

from .errors import ChecksumError, FormatError, FormatVersionError, StoreCorrupted


def check_magic_and_length(path: Path, what: str, magic: bytes, head: bytes, size: int, header_size: int) -> None:
    """`head` (the first bytes read, at most `header_size`) starts with `magic` and the file
    (`size` bytes) holds a whole header. FormatError for a foreign file, StoreCorrupted for a
    truncated one."""
    if head[: len(magic)] != magic[: len(head)]:
        raise FormatError(f"{path}: not a vecz {what} (expected magic {magic!r}, found {head[:8]!r})")
    if size < header_size or len(head) < header_size:
        raise StoreCorrupted(f"{path}: truncated: expected at least the {header_size}-byte header, found {size} bytes")


def check_version_and_crc(path: Path, what: str, major: int, reader_major: int, flags: int, covered: bytes,
                          header_crc: int) -> None:
    """A header this reader may read: its major version, no unknown feature flags, and
    CRC32 of `covered` (the header bytes before the CRC field) equal to `header_crc`."""
    if major != reader_major:
        raise FormatVersionError(
            f"{path}: {what} format major version {major}; this reader reads major version {reader_major}"
        )
    if flags:
        raise FormatVersionError(f"{path}: {what} requires feature flags {flags:#010x}, which this reader does not know")
    found = zlib.crc32(covered)
    if found != header_crc:
        raise ChecksumError(f"{path}: header CRC32 expected {header_crc:#010x}, found {found:#010x}")


def open_regular(path: Path, what: str) -> int:
    """Open `path` read-only and return the descriptor, refusing anything but a regular file.

    O_NONBLOCK keeps a FIFO (or a device) in the file's place from blocking the open; the
    type is then checked on the descriptor itself (no race between a check and the open).
    Raises FileNotFoundError when nothing is there, `StoreCorrupted` for another file type.
    """
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise StoreCorrupted(f"{path}: not a regular file (expected the {what}, found {kind})")
    return fd


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond float64's range")
    return value


def strict_json(text: str) -> Any:
    """`json.loads` refusing NaN and Infinity and any number beyond float64 (json reads
    ``1e999`` as inf: a manifest body carried it into every later commit, whose
    serialisation then failed). Raises ValueError, as json does for bad text."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
