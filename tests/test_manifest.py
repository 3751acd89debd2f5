"""Manifests (formats/manifest.py, FORMAT.md "Manifest file" and "Commit protocol"): round
trips, listing and newest-wins, exclusive publication (CommitConflict, also under a thread
race), temporary-file hygiene, and damaged bytes raising only FormatError subclasses."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.formats.errors import (
    ChecksumError,
    CommitConflict,
    FormatError,
    FormatVersionError,
    InvalidInput,
    StoreCorrupted,
    StoreNotFound,
)
from vecz.formats.manifest import (
    MANIFEST_RE,
    fsync_dir,
    list_versions,
    manifest_name,
    read_manifest,
    remove_tmp_files,
    write_manifest,
)

HEADER = struct.Struct("<8sHHIQII")
BODY = {"format": "vecz.store", "parent": None, "dim": 8, "metric": "cosine", "segments": [{"file": "seg-000001.vzs", "rows": 3}]}


def _seal(body: bytes, *, major: int = 1, minor: int = 0, flags: int = 0, magic: bytes = b"VECZMAN\x00", length: int | None = None) -> bytes:
    """Manifest bytes around an arbitrary body, with valid CRCs."""
    fields = (magic, major, minor, flags, len(body) if length is None else length, zlib.crc32(body))
    head = HEADER.pack(*fields, 0)[:28]
    return HEADER.pack(*fields, zlib.crc32(head)) + body


def _put(directory: Path, version: int, data: bytes) -> Path:
    path = directory / manifest_name(version)
    path.write_bytes(data)
    return path


def test_round_trip_and_name(tmp_path):
    path = write_manifest(tmp_path, 1, BODY)
    assert path == tmp_path / "MANIFEST-000000000001" and MANIFEST_RE.fullmatch(path.name)
    got = read_manifest(tmp_path)
    assert got == {**BODY, "version": 1} and read_manifest(tmp_path, 1) == got
    assert "version" not in BODY  # the caller's dict is not modified
    assert list_versions(tmp_path) == [1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert manifest_name(123) == "MANIFEST-000000000123"
    assert write_manifest(tmp_path, 2, {**BODY, "version": 2}).name.endswith("2")


@pytest.mark.parametrize("version", [0, -1, 10**12, True, 1.0, "1"])
def test_bad_versions_are_invalid_input(tmp_path, version):
    with pytest.raises(InvalidInput):
        write_manifest(tmp_path, version, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body", [{"version": 2}, {"x": float("nan")}, {"x": float("inf")}, {"x": object()}, [("version", 1)]])
def test_bad_bodies_are_invalid_input_and_leave_nothing(tmp_path, body):
    with pytest.raises(InvalidInput):
        write_manifest(tmp_path, 1, body)
    assert list(tmp_path.iterdir()) == []


def test_list_versions_ignores_junk_and_newest_wins(tmp_path):
    for v in (3, 1, 12):
        write_manifest(tmp_path, v, {"n": v})
    junk = [
        "MANIFEST-1",
        "MANIFEST-000000000002.bak",
        "MANIFEST-00000000000a",
        "manifest-000000000004",
        "MANIFEST-000000000000",
        "MANIFEST-0000000000005",
        "MANIFEST-٠٠٠٠٠٠٠٠٠٠٠٧",  # Arabic-Indic digits: \d would match them, [0-9] does not
        "xMANIFEST-000000000008",
        ".MANIFEST-000000000009.123.abcd.tmp",
        "seg-000001.vzs",
    ]
    for name in junk:
        (tmp_path / name).write_bytes(b"junk")
    assert list_versions(tmp_path) == [1, 3, 12]
    assert read_manifest(tmp_path)["n"] == 12
    assert read_manifest(tmp_path, 3)["n"] == 3


def test_missing_store_and_missing_versions_are_store_not_found(tmp_path):
    with pytest.raises(StoreNotFound, match="no manifest"):
        read_manifest(tmp_path)
    with pytest.raises(StoreNotFound):
        list_versions(tmp_path / "nope")
    with pytest.raises(StoreNotFound, match="nope"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(StoreNotFound, match="nope"):
        read_manifest(tmp_path / "nope", 1)
    with pytest.raises(StoreNotFound, match="nope"):
        write_manifest(tmp_path / "nope", 1, {})
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreNotFound):
        list_versions(tmp_path / "file")
    write_manifest(tmp_path, 1, {})
    with pytest.raises(StoreNotFound, match="version 5") as info:
        read_manifest(tmp_path, 5)
    assert isinstance(info.value, FileNotFoundError)


def test_newest_pruned_between_listing_and_open_is_read_again(tmp_path, monkeypatch):
    """A reader lists versions 1..3, a writer commits 4 and prunes 3 before the reader opens
    it: the newest is listed again and 4 is read (seen in CI: a reader of a store under a
    stream of commits got 'no manifest for version 8'). A listing that does not change
    raises as before."""
    from vecz.formats import manifest as mf

    for v in (1, 2, 3):
        write_manifest(tmp_path, v, {"n": v})
    real = mf.list_versions
    calls = []

    def racing(directory):
        found = real(directory)
        if not calls:  # the writer runs right after the first listing
            write_manifest(tmp_path, 4, {"n": 4})
            os.remove(tmp_path / manifest_name(3))
        calls.append(found)
        return found

    monkeypatch.setattr(mf, "list_versions", racing)
    assert read_manifest(tmp_path)["n"] == 4
    assert calls[0][-1] == 3 and calls[-1][-1] == 4

    monkeypatch.setattr(mf, "list_versions", lambda directory: [1, 2, 4, 9])  # 9 never existed
    with pytest.raises(StoreNotFound, match="version 9"):
        read_manifest(tmp_path)


def test_tmp_files_are_ignored_and_removed(tmp_path):
    write_manifest(tmp_path, 1, {})
    leftovers = [".MANIFEST-000000000002.4242.0123456789abcdef.tmp", ".MANIFEST-000000000003.1.f.tmp"]
    keep = [".MANIFEST-2.1.f.tmp", ".other.tmp", ".MANIFEST-000000000002.1.XYZ.tmp", "MANIFEST-000000000002.1.f.tmp"]
    for name in leftovers + keep:
        (tmp_path / name).write_bytes(b"partial")
    assert list_versions(tmp_path) == [1] and read_manifest(tmp_path)["version"] == 1
    removed = remove_tmp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["MANIFEST-000000000001"])
    assert remove_tmp_files(tmp_path) == []


def test_commit_conflict_when_the_version_exists(tmp_path):
    first = write_manifest(tmp_path, 1, {"who": "first"})
    before = first.read_bytes()
    with pytest.raises(CommitConflict, match="version 1 was already published") as info:
        write_manifest(tmp_path, 1, {"who": "second"})
    assert isinstance(info.value, RuntimeError)
    assert first.read_bytes() == before and read_manifest(tmp_path)["who"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_racing_writers_publish_exactly_one(tmp_path):
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            write_manifest(tmp_path, 7, {"writer": i})
            outcomes.append("won")
        except CommitConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
    assert list_versions(tmp_path) == [7] and isinstance(read_manifest(tmp_path)["writer"], int)
    assert [p.name for p in tmp_path.iterdir()] == ["MANIFEST-000000000007"]


def test_fsync_dir(tmp_path):
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "nope")


# -- damaged bytes -------------------------------------------------------------------------


def test_every_byte_flip_and_every_truncation_is_refused(tmp_path):
    good = write_manifest(tmp_path, 1, {"a": [1, 2], "b": "x"}).read_bytes()
    for i in range(len(good)):  # header CRC, body CRC and both CRC fields cover every byte
        damaged = bytearray(good)
        damaged[i] ^= 0x01
        _put(tmp_path, 1, bytes(damaged))
        with pytest.raises(FormatError):
            read_manifest(tmp_path, 1)
    for length in range(len(good)):
        _put(tmp_path, 1, good[:length])
        with pytest.raises(FormatError):
            read_manifest(tmp_path)
    _put(tmp_path, 1, good + b"\n")
    with pytest.raises(StoreCorrupted, match="truncated or extended"):
        read_manifest(tmp_path)


def test_header_checks(tmp_path):
    body = json.dumps({"version": 1}).encode()
    cases = [
        (b"PAR1" + bytes(40), FormatError, "not a vecz manifest"),
        (_seal(body, major=2), FormatVersionError, "major version 2"),
        (_seal(body, flags=4), FormatVersionError, "0x00000004"),
        (_seal(body)[:28] + b"\x00\x00\x00\x00" + body, ChecksumError, "header CRC32"),
        (_seal(body, length=(64 << 20) + 1), FormatError, "at most"),
        (_seal(body, length=2**64 - 1), FormatError, "at most"),
        (_seal(body, length=len(body) + 5), StoreCorrupted, "truncated or extended"),
    ]
    for data, error, match in cases:
        _put(tmp_path, 1, data)
        with pytest.raises(error, match=match):
            read_manifest(tmp_path)
    _put(tmp_path, 1, _seal(body, minor=9))  # a newer minor version is read
    assert read_manifest(tmp_path) == {"version": 1}


@pytest.mark.parametrize(
    "body, error, match",
    [
        (b"[" * 10**6 + b"]" * 10**6, FormatError, "JSON"),
        (b'{"version": 1, "x": ' + b"[" * 10**6 + b"]" * 10**6 + b"}", FormatError, "JSON"),
        (b'{"version": 1, "x": NaN}', FormatError, "JSON"),
        (b'{"version": 1, "x": -Infinity}', FormatError, "JSON"),
        # json reads a number beyond float64 as inf: the body carried it into every later commit
        (b'{"version": 1, "build": {"rows_done": 1e999}}', FormatError, "1e999 is beyond float64's range"),
        (b'{"version": 1, "x": -2.5e400}', FormatError, "beyond float64's range"),
        (b'{"version": 1,', FormatError, "JSON"),
        (b'\xff{"version": 1}', FormatError, "JSON"),
        (b"[1]", FormatError, "JSON object"),
        (b"", FormatError, "JSON"),
        (b'{"version": 2}', StoreCorrupted, "expected 1"),
        (b'{"version": "1"}', StoreCorrupted, "expected 1"),
        (b'{"version": true}', StoreCorrupted, "expected 1"),
        (b'{"format": "vecz.store"}', StoreCorrupted, "found None"),
    ],
    ids=["deep", "deep_inside", "nan", "inf", "huge", "-huge", "cut", "utf8", "list", "empty", "v2", "v_str", "v_bool",
         "v_missing"],
)
def test_body_checks(tmp_path, body, error, match):
    _put(tmp_path, 1, _seal(body))
    with pytest.raises(error, match=match):
        read_manifest(tmp_path)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["flip", "truncate", "insert", "reseal"]), st.integers(0, 10**4), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_fuzzed_manifests_raise_only_format_errors(ops):
    good = _seal(json.dumps({"version": 1, "segments": [{"file": "seg-000001.vzs", "rows": 10}], "next_id": 10}).encode())
    data = bytearray(good)
    for kind, at, arg in ops:
        at %= len(data) + 1
        if kind == "flip" and at < len(data):
            data[at] ^= arg
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([arg])
        elif kind == "reseal" and len(data) >= 32:  # fix the CRCs so the JSON checks are reached
            data = bytearray(_seal(bytes(data[32:]), length=struct.unpack_from("<Q", data, 16)[0] if arg % 2 else None))
    with tempfile.TemporaryDirectory() as d:
        _put(Path(d), 1, bytes(data))
        try:
            body = read_manifest(d)
        except FormatError:
            return
        assert body["version"] == 1 and isinstance(body, dict)
        assert os.listdir(d) == ["MANIFEST-000000000001"]
