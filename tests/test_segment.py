"""Segment files (formats/segment.py, FORMAT.md "Segment file"): round trips for every dtype
and shape, and hostile bytes — every byte flip, every truncation, crafted section tables,
zstd bombs and random mutations — raise only FormatError subclasses, quickly and without
large allocations."""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vecz.formats.errors import (
    ChecksumError,
    FormatError,
    FormatVersionError,
    InvalidInput,
    StoreCorrupted,
)
from vecz.formats.segment import (
    DTYPES,
    MAGIC,
    check_segment,
    open_segment,
    read_segment,
    write_segment,
)

HEADER = struct.Struct("<8sHHIQII16sI12x")
ENTRY = struct.Struct("<48s8sBB6x4QQQQI4x")


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype.newbyteorder("<")
    assert got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, want)


def _sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "codes": np.tile(np.arange(16, dtype=np.uint8), (20, 2)),  # compressible: zstd
        "ids": np.arange(20, dtype=np.int64),
        "noise": rng.random(12).astype(np.float32),  # incompressible: raw
        "empty": np.zeros((0, 3), dtype=np.float16),
        "scalar": np.array(-5, dtype=np.int16),
    }


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "seg-000001.vzs"
    write_segment(path, "codes", _sample_arrays(), meta={"spec": "PQ4x8", "dim": 8})
    return path


# -- helpers that craft files byte by byte ------------------------------------------------


def _header(
    *,
    file_length: int,
    table: bytes,
    kind: bytes = b"codes",
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    magic: bytes = MAGIC,
) -> bytes:
    fields = (magic, major, minor, flags, file_length, len(table) // 128, zlib.crc32(table), kind)
    return HEADER.pack(*fields, zlib.crc32(HEADER.pack(*fields, 0)[:48]))


def _entry(name: bytes, dtype: bytes, shape, compression, offset, stored, raw, crc, ndim=None) -> bytes:
    shape4 = list(shape) + [0] * (4 - len(shape))
    return ENTRY.pack(name, dtype, len(shape) if ndim is None else ndim, compression, *shape4, offset, stored, raw, crc)


def _craft(path: Path, sections: list[dict], *, pad_to: int | None = None, **header) -> Path:
    """Write a segment from explicit table entries and payloads, with valid CRCs unless the
    entry gives its own. Each dict: name, dtype, shape, compression, data (stored bytes),
    optional offset, raw, crc, ndim."""
    table_end = 64 + 128 * len(sections)
    pos = table_end
    entries, blobs = [], []
    for s in sections:
        data = s["data"]
        offset = s.get("offset", -(-pos // 64) * 64)
        itemsize = np.dtype(s["dtype"].decode()).itemsize if s["dtype"].decode() in DTYPES else 1
        raw = s.get("raw", int(np.prod(s["shape"], dtype=object)) * itemsize)
        entries.append(
            _entry(
                s["name"],
                s["dtype"],
                s["shape"],
                s["compression"],
                offset,
                s.get("stored", len(data)),
                raw,
                s.get("crc", zlib.crc32(data)),
                s.get("ndim"),
            )
        )
        if s.get("place", True):  # place=False: the table points at bytes the file lacks
            blobs.append((offset, data))
            pos = max(pos, offset + len(data))
    length = max(pos, pad_to or 0)
    body = bytearray(length)
    table = b"".join(entries)
    body[64:table_end] = table
    for offset, data in blobs:
        body[offset : offset + len(data)] = data
    body[:64] = _header(file_length=header.pop("file_length", length), table=table, **header)
    path.write_bytes(bytes(body))
    return path


def _section(name=b"x", dtype=b"|u1", shape=(4,), compression=0, data=b"abcd", **kw) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "compression": compression, "data": data, **kw}


def _open_read(path: Path) -> dict[str, np.ndarray]:
    with open_segment(path) as seg:
        return seg.read_all()


def _covered_ranges(data: bytes) -> list[range]:
    """Byte ranges some checksum covers: header 0..51 (CRC'd fields and the CRC itself), the
    section table, and every section's stored bytes. Reserved header bytes 52..63 and the zero
    padding before 64-byte-aligned sections are covered by nothing, by design: a reader
    ignores them, so flipping them changes nothing read."""
    n = HEADER.unpack_from(data)[5]
    ranges = [range(52), range(64, 64 + 128 * n)]
    for i in range(n):
        fields = ENTRY.unpack_from(data, 64 + 128 * i)
        offset, stored = fields[8], fields[9]
        ranges.append(range(offset, offset + stored))
    return ranges


def _reseal(data: bytearray) -> bytearray:
    """Recompute every checksum (and the file length) of possibly mutated bytes, so a fuzzer
    gets past the CRCs and exercises the structural checks behind them."""
    if len(data) < 64:
        return data
    n = min(HEADER.unpack_from(data)[5], (len(data) - 64) // 128)
    for i in range(n):
        at = 64 + 128 * i
        fields = list(ENTRY.unpack_from(data, at))
        offset, stored = fields[8], fields[9]
        if offset + stored <= len(data):
            fields[11] = zlib.crc32(bytes(data[offset : offset + stored]))
            data[at : at + 128] = ENTRY.pack(*fields)
    fields = list(HEADER.unpack_from(data))
    fields[4] = len(data)
    fields[6] = zlib.crc32(bytes(data[64 : 64 + 128 * fields[5]]))
    fields[8] = zlib.crc32(HEADER.pack(*fields[:8], 0)[:48])
    data[:64] = HEADER.pack(*fields)
    return data


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_whitelisted_dtype_round_trips(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    values = np.concatenate(
        [np.array([info.min, info.max, 0], dtype=dtype), np.zeros(50, dtype), rng.integers(0, 100, 50).astype(dtype)]
    )
    arrays = {"v": values, "m": values[:100].reshape(4, 5, 5), "row0": values[:0].reshape(0, 7)}
    path = tmp_path / "a.vzs"
    n = write_segment(path, "codes", arrays, compress=compress).nbytes
    assert n == path.stat().st_size
    got, meta = read_segment(path, "codes")
    assert meta == {} and list(got) == list(arrays)
    for name, want in arrays.items():
        _assert_same(got[name], want)
    assert check_segment(path) == []
    with open_segment(path) as seg:
        kinds = {s.compression for s in seg.sections.values()}
        assert kinds == ({0, 1} if compress else {0})  # the zero-filled "v" compresses; "row0" never does


def test_shapes_zero_rows_zero_dims_and_four_dims(tmp_path):
    arrays = {
        "scalar_f": np.array(3.25, dtype=np.float64),
        "scalar_u": np.array(7, dtype=np.uint8),
        "rows0": np.zeros((0,), dtype=np.int64),
        "rows0_2d": np.zeros((0, 16), dtype=np.uint8),
        "mid0": np.zeros((3, 0, 2), dtype=np.float32),
        "four": np.arange(2 * 3 * 4 * 5, dtype=np.int32).reshape(2, 3, 4, 5),
    }
    path = tmp_path / "s.vzs"
    write_segment(path, "codes", arrays)
    got, _ = read_segment(path)
    for name, want in arrays.items():
        _assert_same(got[name], want)
    with pytest.raises(InvalidInput, match="at most 4 dims"):
        write_segment(tmp_path / "five.vzs", "codes", {"x": np.zeros((1, 1, 1, 1, 1))})
    assert not (tmp_path / "five.vzs").exists()


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    arrays = {
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "big_f8": np.arange(10, dtype=">f8") / 3,
        "big_i4": np.arange(-5, 5, dtype=">i4").reshape(2, 5),
        "big_u2": np.arange(9, dtype=">u2")[::-2],
    }
    path = tmp_path / "nc.vzs"
    write_segment(path, "codes", arrays)
    got, _ = read_segment(path)
    for name, want in arrays.items():
        _assert_same(got[name], want)
    assert got["big_f8"].dtype.str == "<f8"


def test_compression_is_used_only_when_it_helps(tmp_path):
    arrays = {"zeros": np.zeros(10_000, np.float32), "noise": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)}
    write_segment(tmp_path / "c.vzs", "codes", arrays, compress=True, level=19)
    write_segment(tmp_path / "r.vzs", "codes", arrays, compress=False)
    with open_segment(tmp_path / "c.vzs") as c, open_segment(tmp_path / "r.vzs") as r:
        assert c.sections["zeros"].compression == 1 and c.sections["zeros"].stored_size < 1000
        assert c.sections["noise"].compression == 0
        assert {s.compression for s in r.sections.values()} == {0}
        for name in arrays:
            np.testing.assert_array_equal(c.read(name), r.read(name))
            assert c.sections[name].offset % 64 == 0


def test_meta_round_trips_and_is_not_a_section(tmp_path):
    meta = {"id": "pq", "m": 4, "nested": {"xs": [1.5, None, True, "é"]}}
    write_segment(tmp_path / "m.vzs", "codec", {"centroids": np.ones((2, 3), np.float32)}, meta=meta)
    arrays, got = read_segment(tmp_path / "m.vzs", "codec")
    assert got == meta and list(arrays) == ["centroids"]
    with open_segment(tmp_path / "m.vzs") as seg:
        assert "__meta__" not in seg.sections and seg.kind == "codec" and (seg.major, seg.minor) == (1, 0)
        with pytest.raises(StoreCorrupted, match="'__meta__' missing"):
            seg.read("__meta__")
    write_segment(tmp_path / "none.vzs", "codec", {})
    assert read_segment(tmp_path / "none.vzs") == ({}, {})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arrays": {"o": np.array([None, 1], dtype=object)}}, "dtype"),
        ({"arrays": {"b": np.array([True])}}, "dtype"),
        ({"arrays": {"c": np.zeros(2, np.complex64)}}, "dtype"),
        ({"arrays": {"s": np.array(["ab"])}}, "dtype"),
        ({"arrays": {"": np.zeros(1)}}, "name"),
        ({"arrays": {"a\x00b": np.zeros(1)}}, "name"),
        ({"arrays": {"n" * 49: np.zeros(1)}}, "48"),
        ({"arrays": {"__meta__": np.zeros(1, np.uint8)}}, "reserved"),
        ({"meta": {"x": float("nan")}}, "meta"),
        ({"meta": {"x": object()}}, "meta"),
        ({"meta": [1, 2]}, "meta"),
        ({"kind": "k" * 17}, "kind"),
        ({"kind": "é"}, "kind"),
        ({"kind": ""}, "kind"),
        ({"level": 0}, "level"),
    ],
)
def test_writer_rejects_bad_input_before_creating_the_file(tmp_path, kwargs, match):
    args = {"kind": "codes", "arrays": {"x": np.zeros(2, np.float32)}, **kwargs}
    path = tmp_path / "bad.vzs"
    with pytest.raises(InvalidInput, match=match):
        write_segment(path, args.pop("kind"), args.pop("arrays"), **args)
    assert not path.exists()


def test_writer_creates_exclusively(small):
    before = small.read_bytes()
    with pytest.raises(FileExistsError):
        write_segment(small, "codes", {"x": np.zeros(1)})
    assert small.read_bytes() == before


def test_kind_mismatch_missing_file_and_missing_section(small, tmp_path):
    with pytest.raises(FormatError, match="expected a 'deletes' segment, found 'codes'"):
        open_segment(small, "deletes")
    missing = tmp_path / "nope.vzs"
    with pytest.raises(StoreCorrupted, match="nope.vzs"):
        open_segment(missing)
    problems = check_segment(missing)
    assert len(problems) == 1 and "nope.vzs" in problems[0]
    with pytest.raises(StoreCorrupted, match="not a regular file"):
        open_segment(tmp_path)
    with open_segment(small) as seg, pytest.raises(StoreCorrupted, match="'lists' missing"):
        seg.read("lists")


# -- damaged files ------------------------------------------------------------------------


def test_every_byte_flip_in_covered_bytes_is_detected_and_padding_is_harmless(small, tmp_path):
    data = small.read_bytes()
    covered = set()
    for r in _covered_ranges(data):
        covered.update(r)
    want = _open_read(small)
    target = tmp_path / "flip.vzs"
    n_uncovered = 0
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        target.unlink(missing_ok=True)
        target.write_bytes(bytes(damaged))
        if i in covered:
            with pytest.raises(FormatError):
                _open_read(target)
            assert check_segment(target), f"flip at byte {i} not reported"
        else:
            n_uncovered += 1
            assert check_segment(target) == [], f"flip at uncovered byte {i} reported"
            got = _open_read(target)
            assert all(np.array_equal(got[k], want[k]) for k in want)
    assert 12 <= n_uncovered < len(data) // 2  # reserved header bytes and section padding


def test_every_truncation_and_an_extension_are_refused(small, tmp_path):
    data = small.read_bytes()
    target = tmp_path / "cut.vzs"
    for length in range(len(data)):
        target.write_bytes(data[:length])
        with pytest.raises(FormatError):
            _open_read(target)
        assert check_segment(target)
    target.write_bytes(data + b"\x00")
    with pytest.raises(StoreCorrupted, match="truncated or extended"):
        open_segment(target)
    target.write_bytes(data[:100])
    with pytest.raises(StoreCorrupted, match=f"header records {len(data)} bytes, file has 100"):
        open_segment(target)


def test_wrong_magic_is_not_a_vecz_segment(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"hello, this is a text file and not a segment at all" * 3)
    with pytest.raises(FormatError, match="not a vecz segment"):
        open_segment(tmp_path / "t.txt")
    (tmp_path / "short").write_bytes(b"PAR1")
    with pytest.raises(FormatError, match="not a vecz segment"):
        open_segment(tmp_path / "short")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(StoreCorrupted, match="truncated"):
        open_segment(tmp_path / "empty")


def _with_header(data: bytes, **changes) -> bytes:
    fields = list(HEADER.unpack_from(data))
    names = ["magic", "major", "minor", "flags", "file_length", "n_sections", "table_crc", "kind"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    fields[8] = zlib.crc32(HEADER.pack(*fields[:8], 0)[:48])
    return HEADER.pack(*fields) + data[64:]


def test_versions_and_flags(small, tmp_path):
    data = small.read_bytes()
    target = tmp_path / "v.vzs"
    target.write_bytes(_with_header(data, major=2))
    with pytest.raises(FormatVersionError, match="major version 2"):
        open_segment(target)
    target.write_bytes(_with_header(data, major=0))
    with pytest.raises(FormatVersionError):
        open_segment(target)
    target.write_bytes(_with_header(data, flags=1 << 7))
    with pytest.raises(FormatVersionError, match="0x00000080"):
        open_segment(target)
    # A newer minor version is read; reserved bytes are ignored.
    newer = bytearray(_with_header(data, minor=9))
    newer[52:64] = b"\xab" * 12
    target.write_bytes(bytes(newer))
    with open_segment(target) as seg:
        assert seg.minor == 9
        got = seg.read_all()
    want = _open_read(small)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_header_and_table_checksums(small, tmp_path):
    data = bytearray(small.read_bytes())
    target = tmp_path / "c.vzs"
    bad = bytearray(data)
    bad[33] ^= 1  # inside kind
    target.write_bytes(bytes(bad))
    with pytest.raises(ChecksumError, match="header CRC32"):
        open_segment(target)
    bad = bytearray(data)
    bad[64 + 130] ^= 1  # second entry's name
    target.write_bytes(bytes(bad))
    with pytest.raises(ChecksumError, match="section table CRC32"):
        open_segment(target)


def test_section_checksum_names_file_and_section(small, tmp_path):
    data = bytearray(small.read_bytes())
    with open_segment(small) as seg:
        ids = seg.sections["ids"]
    data[ids.offset + 3] ^= 0x10
    target = tmp_path / "s.vzs"
    target.write_bytes(bytes(data))
    with open_segment(target) as seg:
        seg.read("codes")  # other sections still read
        with pytest.raises(ChecksumError, match=r"s\.vzs: section 'ids': CRC32 expected 0x[0-9a-f]{8}, found 0x"):
            seg.read("ids")
    problems = check_segment(target)
    assert len(problems) == 1 and "'ids'" in problems[0]


def _small_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "sections, match",
    [
        ([_section(offset=4096, place=False)], "past the end"),
        ([_section(compression=1, stored=10**6)], "past the end"),
        ([_section(offset=2**64 - 64, place=False)], "past the end"),
        ([_section(data=b"abcd" * 32, shape=(128,)), _section(name=b"y", offset=384, place=False)], "overlaps"),
        ([_section(offset=0, place=False)], "overlaps the table"),
        ([_section(offset=200)], "multiple of 64"),
        ([_section(shape=(2**40,), stored=4)], "raw section stored size"),
        ([_section(shape=(2**40, 2**40, 2**40, 2**40), dtype=b"<f8", raw=4)], "largest possible array"),
        ([_section(shape=(2**20, 2**20), dtype=b"<f8", raw=4)], "raw size expected 8796093022208"),
        ([_section(compression=1, shape=(2**40,))], "zstd section claims"),
        ([_section(compression=1, stored=0, data=b"")], "stored size expected >= 1"),
        ([_section(compression=2)], "compression"),
        ([_section(dtype=b"<c8", shape=(1,), data=b"abcdabcd")], "dtype"),
        ([_section(dtype=b"|b1")], "dtype"),
        ([_section(dtype=b"O\x00\x00\x00\x00\x00\x00\x00")], "dtype"),
        ([_section(dtype=b"<f4\x00x")], "NUL inside"),
        ([_section(ndim=5)], "at most 4 dims"),
        ([_section(shape=(4, 0, 0, 7), ndim=1)], "unused shape"),
        ([_section(raw=5)], "raw size expected 4"),
        ([_section(shape=(0, 2**40, 2**40), data=b"")], "largest possible array"),
        ([_section(name=b"")], "non-empty name"),
        ([_section(name=b"a\x00b")], "NUL inside"),
        ([_section(name=b"\xff\xfe")], "utf-8"),
        ([_section(), _section()], "appears twice"),
        ([_section(name=b"__meta__", dtype=b"<f4", shape=(1,))], "JSON"),
        ([_section(name=b"__meta__", shape=(2**25,), compression=1, data=b"x" * 2048)], "JSON"),
    ],
)
def test_crafted_tables_are_refused_at_open_without_allocating(tmp_path, sections, match):
    path = _craft(tmp_path / "c.vzs", sections)

    def attempt():
        with pytest.raises(FormatError, match=match):
            _open_read(path)

    assert _small_peak(attempt) < 1 << 20
    assert check_segment(path)


def test_table_size_and_section_count_caps(tmp_path):
    path = _craft(tmp_path / "t.vzs", [_section()])
    data = path.read_bytes()
    path.write_bytes(_with_header(data, n_sections=4097))
    with pytest.raises(FormatError, match="at most 4096 sections"):
        open_segment(path)
    path.write_bytes(_with_header(data, n_sections=100))
    with pytest.raises(FormatError, match="past the end"):
        open_segment(path)
    path.write_bytes(_with_header(data, kind=b"\xffbad"))
    with pytest.raises(FormatError, match="ascii"):
        open_segment(path)


def _zstd_section(payload: bytes, shape, *, content_size=True, **kw) -> dict:
    frame = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(payload)
    return _section(compression=1, data=frame, shape=shape, **kw)


def test_zstd_sections_must_decompress_to_exactly_raw_size(tmp_path):
    payload = bytes(range(256)) * 4
    ok = _craft(tmp_path / "ok.vzs", [_zstd_section(payload, (1024,))])
    np.testing.assert_array_equal(_open_read(ok)["x"], np.frombuffer(payload, np.uint8))
    cases = {
        "more_cs": _zstd_section(payload * 2, (1024,)),  # the frame itself says 2048
        "more": _zstd_section(payload * 2, (1024,), content_size=False),
        "less": _zstd_section(payload[:1000], (1024,), content_size=False),
        "less_cs": _zstd_section(payload[:1000], (1024,)),
        "two_frames": _section(
            compression=1, shape=(1024,), data=zstandard.ZstdCompressor().compress(payload) + zstandard.ZstdCompressor().compress(b"x")
        ),
        "trailing_junk": _section(compression=1, shape=(1024,), data=zstandard.ZstdCompressor().compress(payload) + b"junk"),
        "garbage": _section(compression=1, shape=(1024,), data=b"\x00" * 64),
        "truncated_frame": _section(compression=1, shape=(1024,), data=zstandard.ZstdCompressor().compress(payload)[:-6]),
    }
    for name, section in cases.items():
        path = _craft(tmp_path / f"{name}.vzs", [section])
        with open_segment(path) as seg, pytest.raises(StoreCorrupted, match="decompress"):
            seg.read("x")
        assert check_segment(path), name


def test_zstd_bomb_and_huge_window_are_refused_without_allocating(tmp_path):
    # A real 1 MiB-of-zeros frame is ~40 bytes: claiming its true size is within the ratio
    # bound and reads back; claiming far more than 32768 x stored is refused at open.
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 20))
    fine = _craft(tmp_path / "fine.vzs", [_section(compression=1, data=frame, shape=(1 << 20,))])
    assert _open_read(fine)["x"].sum() == 0
    bomb = _craft(tmp_path / "bomb.vzs", [_section(compression=1, data=frame, shape=(len(frame) * 32768 + 4097,))])
    with pytest.raises(FormatError, match="zstd section claims"):
        open_segment(bomb)
    # A frame whose header asks for a 2 GiB window for 1 byte of content.
    window = b"\x28\xb5\x2f\xfd" + bytes([0x00, (31 - 10) << 3]) + b"\x09\x00\x00" + b"x"
    path = _craft(tmp_path / "window.vzs", [_section(compression=1, data=window, shape=(1,))])

    def attempt():
        with open_segment(path) as seg, pytest.raises(StoreCorrupted):
            seg.read("x")

    assert _small_peak(attempt) < 1 << 20


@pytest.mark.parametrize(
    "text, match",
    [(b"[1, 2]", "JSON object"), (b"{bad", "JSON"), (b'{"x": NaN}', "JSON"), (b"[" * 100_000 + b"]" * 100_000, "JSON"), (b"\xff{}", "JSON")],
    ids=["list", "syntax", "nan", "deep", "utf8"],
)
def test_bad_metadata_is_a_format_error(tmp_path, text, match):
    path = _craft(tmp_path / "m.vzs", [_section(name=b"__meta__", shape=(len(text),), data=text)])
    with pytest.raises(FormatError, match=match):
        open_segment(path)
    assert check_segment(path)


# -- fuzzing ------------------------------------------------------------------------------

_BASE = None


def _base_bytes() -> bytes:
    global _BASE
    if _BASE is None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "b.vzs"
            write_segment(path, "codes", _sample_arrays(), meta={"k": [1, 2]})
            _BASE = path.read_bytes()
    return _BASE


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=70)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("u64"), st.integers(0, 10**6), st.sampled_from([0, 1, 63, 64, 2**31, 2**40, 2**63, 2**64 - 1])),
)


def _mutate(data: bytearray, op) -> bytearray:
    kind, at, arg = op
    at = at % (len(data) + 1)
    if kind == "flip" and at < len(data):
        data[at] ^= arg
    elif kind == "truncate":
        del data[at:]
    elif kind == "insert":
        data[at:at] = arg
    elif kind == "overwrite":
        data[at : at + len(arg)] = arg
    elif kind == "u64":
        data[at : at + 8] = struct.pack("<Q", arg)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_mutation, min_size=1, max_size=4), reseal=st.booleans())
def test_fuzzed_bytes_raise_only_format_errors(ops, reseal):
    data = bytearray(_base_bytes())
    for op in ops:
        data = _mutate(data, op)
    if reseal:
        data = _reseal(data)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.vzs"
        path.write_bytes(bytes(data))
        try:
            arrays = _open_read(path)
        except FormatError:
            arrays = None
        problems = check_segment(path)
        assert isinstance(problems, list)
        if arrays is not None:
            assert problems == []


@settings(max_examples=150, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(sorted(DTYPES) + [">u2", ">i4", ">f8", ">f2"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    ),
    compress=st.booleans(),
)
def test_round_trip_property(arr, compress):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.vzs"
        write_segment(path, "codes", {"a": arr, "b": arr.T}, compress=compress)
        got, _ = read_segment(path)
    for name, want in (("a", arr), ("b", arr.T)):
        assert got[name].shape == want.shape and got[name].dtype == want.dtype.newbyteorder("<")
        assert got[name].tobytes() == want.astype(want.dtype.newbyteorder("<")).tobytes()  # bitwise: NaNs too
