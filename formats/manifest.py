"""Manifests: one immutable file per committed store version, naming that version's files.

Implements formats/FORMAT.md, sections "Manifest file" and "Commit protocol". A manifest
is ``MANIFEST-{version:012d}`` in the store directory: a 32-byte header (magic, version,
flags, body length, CRCs) and a UTF-8 JSON object body. Zero-padded names make a plain
listing sort by version; the newest version is the largest number.

Publishing is atomic and exclusive: the bytes go to a temporary file in the same directory,
are fsynced, and the final name is created with ``os.link``, which fails if another writer
published that version first (`CommitConflict`). Readers therefore never see a partial
manifest. Reading checks, before allocating, the file size against the header, the body
cap (64 MiB) and both CRCs; hostile bytes raise only `FormatError` subclasses.

Tested in tests/test_manifest.py.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from ._header import check_magic_and_length, check_version_and_crc, open_regular, strict_json
from .errors import (
    ChecksumError,
    CommitConflict,
    FormatError,
    InvalidInput,
    StoreCorrupted,
    StoreNotFound,
    refused,
)

__all__ = [
    "MANIFEST_RE",
    "TMP_RE",
    "MAGIC",
    "MAJOR",
    "MINOR",
    "manifest_name",
    "list_versions",
    "write_manifest",
    "read_manifest",
    "remove_tmp_files",
    "fsync_dir",
]

MAGIC = b"VECZMAN\x00"
MAJOR = 1
MINOR = 0
# magic | major | minor | flags | body_length | body_crc32 | header_crc32
_HEADER = struct.Struct("<8sHHIQII")
_HEADER_CRC_END = 28  # the header CRC covers bytes 0..27
_MAX_BODY = 64 << 20
_MAX_VERSION = 10**12 - 1  # twelve digits keep names sorting by version

MANIFEST_RE = re.compile(r"MANIFEST-([0-9]{12})")
"""Exact manifest file names (use ``fullmatch``); group 1 is the zero-padded version."""

TMP_RE = re.compile(r"\.MANIFEST-[0-9]{12}\.[0-9]+\.[0-9a-f]+\.tmp")
"""Exact names of the temporary files `write_manifest` creates (use ``fullmatch``)."""


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _MAX_VERSION:
        raise InvalidInput(f"manifest version: expected an int in 1..{_MAX_VERSION}, found {version!r}")
    return version


def manifest_name(version: int) -> str:
    """File name of a version's manifest: ``MANIFEST-{version:012d}``."""
    return f"MANIFEST-{_check_version(version):012d}"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so the names created in it survive a crash.

    Platforms that cannot open or fsync a directory (Windows, some network file systems)
    raise an OSError other than "not found"; it is ignored there, as those file systems
    give no stronger guarantee to ask for.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise StoreNotFound(f"{directory}: no such store directory") from exc


def list_versions(directory: str | os.PathLike[str]) -> list[int]:
    """Committed versions in a store directory, ascending.

    Only names that match `MANIFEST_RE` exactly count (temporary files and junk are
    ignored); version 0 is not a valid version and is ignored too.

    Raises
    ------
    StoreNotFound
        The directory does not exist.
    """
    found = []
    for name in _names(Path(directory)):
        match = MANIFEST_RE.fullmatch(name)
        if match and int(match.group(1)) >= 1:
            found.append(int(match.group(1)))
    return sorted(found)


def _encode(version: int, body: dict) -> bytes:
    if not isinstance(body, dict):
        raise InvalidInput(f"manifest body: expected a dict, found {type(body).__name__}")
    if "version" in body and (isinstance(body["version"], bool) or body["version"] != version):
        raise InvalidInput(f"manifest body: 'version' is {body['version']!r}, but the manifest is version {version}")
    body = {**body, "version": version}
    try:
        text = json.dumps(body, sort_keys=True, allow_nan=False, ensure_ascii=False, indent=1)
        data = text.encode("utf-8")  # a lone surrogate in a string is no UTF-8
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidInput(f"manifest body: not JSON-serialisable ({exc})") from exc
    if len(data) > _MAX_BODY:
        raise InvalidInput(f"manifest body: expected at most {_MAX_BODY} bytes of JSON, found {len(data)}")
    fields = (MAGIC, MAJOR, MINOR, 0, len(data), zlib.crc32(data))
    head = _HEADER.pack(*fields, 0)[:_HEADER_CRC_END]
    return _HEADER.pack(*fields, zlib.crc32(head)) + data


def write_manifest(directory: str | os.PathLike[str], version: int, body: dict, *, dir_fd: int | None = None) -> Path:
    """Publish the manifest of `version`, atomically and exclusively.

    The bytes are written to ``.MANIFEST-{version:012d}.{pid}.{hex}.tmp`` in `directory`,
    flushed and fsynced; ``os.link`` then creates the final name (failing if it exists),
    the temporary name is removed and the directory is fsynced.

    Parameters
    ----------
    directory : path-like
        The store directory (must exist).
    version : int
        1 .. 10**12 - 1.
    body : dict
        JSON-serialisable; ``body["version"]`` is set to `version` (if present it must
        already equal it). Dumped with sorted keys; NaN and infinities are refused.
    dir_fd : int, optional
        An open descriptor of the store directory: every step then happens relative to it,
        so the manifest lands in the directory the writer opened even if its path has been
        renamed or replaced meanwhile (`directory` is then used in messages only).

    Returns
    -------
    Path
        The published manifest.

    Raises
    ------
    CommitConflict
        A manifest for `version` already exists: another writer committed first.
    InvalidInput
        Bad version or body.
    StoreNotFound
        `directory` does not exist.
    OSError
        Writing failed (e.g. ENOSPC); no temporary file is left behind.
    """
    directory = Path(directory)
    data = _encode(_check_version(version), body)
    final_name = manifest_name(version)
    tmp_name = f".{final_name}.{os.getpid()}.{os.urandom(8).hex()}.tmp"
    if dir_fd is None:
        tmp, final, at = directory / tmp_name, directory / final_name, {}
    else:
        tmp, final, at = tmp_name, final_name, {"dir_fd": dir_fd}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, **at)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise StoreNotFound(f"{directory}: no such store directory") from exc
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if dir_fd is None:
                os.link(tmp, final)
            else:
                os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileExistsError as exc:
            raise CommitConflict(
                f"{directory / final_name}: version {version} was already published by another writer; this "
                f"commit is not visible"
            ) from exc
    finally:
        try:
            os.unlink(tmp, **at)
        except OSError:
            pass
    if dir_fd is None:
        fsync_dir(directory)
    else:
        os.fsync(dir_fd)
    return directory / final_name


def _check_header(path: Path, head: bytes, size: int) -> tuple[int, int]:
    """Validate the header against the file size; return (body_length, body_crc32)."""
    check_magic_and_length(path, "manifest", MAGIC, head, size, _HEADER.size)
    _, major, _minor, flags, body_length, body_crc, header_crc = _HEADER.unpack(head)
    check_version_and_crc(path, "manifest", major, MAJOR, flags, head[:_HEADER_CRC_END], header_crc)
    if body_length > _MAX_BODY:
        raise FormatError(f"{path}: body length expected at most {_MAX_BODY} bytes, header says {body_length}")
    if size != _HEADER.size + body_length:
        raise StoreCorrupted(
            f"{path}: truncated or extended: header records {_HEADER.size + body_length} bytes, file has {size}"
        )
    return body_length, body_crc


def _decode_body(path: Path, body: bytes, body_crc: int, version: int) -> dict:
    found = zlib.crc32(body)
    if found != body_crc:
        raise ChecksumError(f"{path}: body CRC32 expected {body_crc:#010x}, found {found:#010x}")
    try:
        value = strict_json(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(f"{path}: body is not UTF-8 JSON ({str(exc)[:200]})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{path}: body: expected a JSON object, found {type(value).__name__}")
    recorded = value.get("version")
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded != version:
        raise StoreCorrupted(f"{path}: body 'version' expected {version} (the file name), found {recorded!r}")
    return value


def read_manifest(directory: str | os.PathLike[str], version: int | None = None) -> dict:
    """Read and check one manifest: the newest, or `version`.

    Returns
    -------
    dict
        The JSON body; ``body["version"]`` equals the version read.

    Raises
    ------
    StoreNotFound
        The directory does not exist, holds no manifest, or has no manifest for `version`.
    StoreCorrupted, ChecksumError, FormatVersionError, FormatError
        The manifest's bytes are damaged, truncated, of an unknown major version or flags,
        or its body's "version" differs from its name.
    """
    directory = Path(directory)
    if version is not None:
        return _read_version(directory, version)
    # The newest: a writer may commit newer versions and prune this one between the listing
    # and the open (a reader slower than a few commits); then the listing is taken again.
    tried, missing = None, None
    for _ in range(_NEWEST_ATTEMPTS):
        versions = list_versions(directory)
        if not versions:
            raise StoreNotFound(f"{directory}: no manifest (not a vecz store, or nothing committed)")
        if versions[-1] == tried:
            break  # the listing did not move on: the manifest is missing, not pruned
        tried = versions[-1]
        try:
            return _read_version(directory, tried)
        except StoreNotFound as exc:
            if not directory.is_dir():
                raise
            missing = exc
    raise missing


# `read_manifest` of the newest version: listings tried before it gives up
_NEWEST_ATTEMPTS = 8


def _read_version(directory: Path, version: int) -> dict:
    path = directory / manifest_name(version)
    try:
        with open(open_regular(path, "manifest"), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            body_length, body_crc = _check_header(path, f.read(_HEADER.size), size)
            body = f.read(body_length)  # capped at 64 MiB by _check_header
    except FileNotFoundError as exc:
        if not directory.is_dir():
            raise StoreNotFound(f"{directory}: no such store directory") from exc
        raise StoreNotFound(f"{path}: no manifest for version {version}") from exc
    except OSError as exc:  # the system refused (permissions, too many open files): not damage
        raise refused(exc, "read the manifest", path) from exc
    if len(body) != body_length:
        raise StoreCorrupted(f"{path}: expected a {body_length}-byte body, read {len(body)} (file changed while read)")
    return _decode_body(path, body, body_crc, version)


def remove_tmp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary manifest files left by crashed writers (names matching `TMP_RE`).

    Only a writer holding the store's lock calls this (a temporary file may belong to a
    commit in progress otherwise); readers never do.

    Returns
    -------
    list of Path
        The files removed.
    """
    directory = Path(directory)
    removed = []
    for name in sorted(_names(directory)):
        if TMP_RE.fullmatch(name):
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                continue
            removed.append(directory / name)
    return removed
