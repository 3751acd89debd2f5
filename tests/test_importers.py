"""Tests of formats/importers.py: streaming vector sources and result writers.

Checked: round trips of every format (.npy float16/32/64 including Fortran order and
big-endian, .fvecs, Parquet and Arrow IPC file/stream with list, large_list and
fixed_size_list of float16/32/64, with and without an id column) at batch sizes 1, 7 and
more than n, batch sizes exact except the last; zero-row files; column choice and its
errors; ragged rows and nulls; wrong dtypes and shapes; truncation at several lengths; an
.npy header claiming 10**12 rows (refused without allocating); an object .npy (refused
without unpickling); hypothesis byte flips after which only VeczError may escape; and the
.npy / Parquet result writers (atomic, -1 slots dropped). Every file is made in tmp_path.
"""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.formats import importers
from vecz.formats.errors import DatasetNotFound, FormatError, InvalidInput, VeczError
from vecz.formats.importers import (
    SUPPORTED_SUFFIXES,
    VectorSource,
    open_vectors,
    read_ids,
    read_texts,
    read_vectors,
    write_results,
)
from tests.reference.files import write_fvecs

N, DIM = 23, 5
BATCHES = [1, 7, 100]
FLOATS = [np.float16, np.float32, np.float64]
LIST_KINDS = ["list", "large_list", "fixed"]


# --------------------------------------------------------------------------- writers of test files


def _data(dtype: type = np.float32, n: int = N, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(dtype)


def _expected(x: np.ndarray) -> np.ndarray:
    """What a source yields for x: float16 stays float16, the rest become float32."""
    return x.astype(np.float16 if x.dtype == np.float16 else np.float32)


def _vector_array(x: np.ndarray, kind: str) -> pa.Array:
    n, dim = x.shape
    values = pa.array(np.ascontiguousarray(x).ravel())
    if kind == "fixed":
        return pa.FixedSizeListArray.from_arrays(values, dim)
    if kind == "large_list":
        return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * dim), values)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), values)


def _table(x: np.ndarray, kind: str = "list", ids: np.ndarray | None = None) -> pa.Table:
    cols = {"emb": _vector_array(x, kind), "label": pa.array([f"r{i}" for i in range(len(x))])}
    if ids is not None:
        cols["key"] = pa.array(ids)
    return pa.table(cols)


def write_parquet(path: Path, table: pa.Table, **kw: object) -> Path:
    pq.write_table(table, path, row_group_size=kw.pop("row_group_size", 6), **kw)
    return path


def write_ipc(path: Path, table: pa.Table, *, stream: bool = False, chunk: int = 4) -> Path:
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with new(path, table.schema) as w:
        for b in table.to_batches(max_chunksize=chunk):
            w.write_batch(b)
    return path


def _collect(source: VectorSource, batch_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read every batch, checking the batch contract on the way."""
    vecs, ids, sizes = [], [], []
    for v, i in source.batches(batch_rows):
        assert type(v) is np.ndarray and v.flags.c_contiguous and v.flags.writeable and v.flags.owndata
        assert v.dtype == source.out_dtype and v.shape[1] == source.dim
        sizes.append(v.shape[0])
        vecs.append(v)
        if i is None:
            assert source.id_column is None
        else:
            assert i.dtype == np.int64 and i.shape == (v.shape[0],) and i.flags.c_contiguous
            ids.append(i)
    assert all(s == batch_rows for s in sizes[:-1]) and (not sizes or 1 <= sizes[-1] <= batch_rows)
    assert sum(sizes) == source.n
    out = np.concatenate(vecs) if vecs else np.empty((0, source.dim), source.out_dtype)
    return out, (np.concatenate(ids) if ids else None)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("batch_rows", BATCHES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_npy_round_trip(tmp_path, dtype, batch_rows):
    x = _data(dtype)
    np.save(tmp_path / "x.npy", x)
    with open_vectors(tmp_path / "x.npy") as src:
        assert (src.n, src.dim, src.dtype, src.kind) == (N, DIM, np.dtype(dtype), "npy")
        got, ids = _collect(src, batch_rows)
        all_v, all_ids = src.read_all()
    assert ids is None and all_ids is None
    np.testing.assert_array_equal(got, _expected(x))
    np.testing.assert_array_equal(all_v, _expected(x))
    assert all_v.dtype == _expected(x).dtype


def test_npy_fortran_order_and_big_endian(tmp_path):
    x = _data(np.float64)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "b.npy", x.astype(">f4"))
    for name in ("f.npy", "b.npy"):
        with open_vectors(tmp_path / name) as src:
            got, _ = _collect(src, 7)
            assert src.dtype.isnative
        np.testing.assert_array_equal(got, x.astype(np.float32))


@pytest.mark.parametrize("batch_rows", BATCHES)
def test_fvecs_round_trip(tmp_path, batch_rows):
    x = _data()
    write_fvecs(tmp_path / "x.fvecs", x)
    with open_vectors(tmp_path / "x.fvecs") as src:
        assert (src.n, src.dim, src.dtype) == (N, DIM, np.float32)
        got, ids = _collect(src, batch_rows)
    assert ids is None
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(importers.read_fvecs(tmp_path / "x.fvecs"), x)


@pytest.mark.parametrize("batch_rows", BATCHES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", LIST_KINDS)
def test_parquet_round_trip(tmp_path, kind, dtype, batch_rows):
    x = _data(dtype)
    keys = np.random.default_rng(1).integers(-(2**62), 2**62, N)
    write_parquet(tmp_path / "x.parquet", _table(x, kind, keys))
    with open_vectors(tmp_path / "x.parquet", id_column="key") as src:
        assert (src.n, src.dim, src.dtype, src.column) == (N, DIM, np.dtype(dtype), "emb")
        got, ids = _collect(src, batch_rows)
    np.testing.assert_array_equal(got, _expected(x))
    np.testing.assert_array_equal(ids, keys)
    with open_vectors(tmp_path / "x.parquet") as src:  # no id column asked for
        got, ids = src.read_all()
    assert ids is None
    np.testing.assert_array_equal(got, _expected(x))


@pytest.mark.parametrize("batch_rows", BATCHES)
@pytest.mark.parametrize("suffix", [".arrow", ".feather", ".ipc"])
@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_arrow_round_trip(tmp_path, stream, suffix, batch_rows):
    x = _data(np.float32)
    keys = np.arange(N, dtype=np.int32) * 3 - 5  # an int32 column comes back int64
    path = write_ipc(tmp_path / f"x{suffix}", _table(x, "list", keys), stream=stream)
    with open_vectors(path, id_column="key") as src:
        assert (src.n, src.dim, src.kind) == (N, DIM, "arrow-stream" if stream else "arrow-file")
        got, ids = _collect(src, batch_rows)
        again, _ = _collect(src, batch_rows)  # a source can be read twice
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(again, x)
    np.testing.assert_array_equal(ids, keys.astype(np.int64))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", LIST_KINDS)
def test_arrow_list_kinds(tmp_path, kind, dtype):
    x = _data(dtype)
    for stream in (False, True):
        path = write_ipc(tmp_path / f"x{stream}.arrow", _table(x, kind), stream=stream, chunk=5)
        with open_vectors(path) as src:
            assert src.dtype == np.dtype(dtype)
            got, _ = _collect(src, 7)
        np.testing.assert_array_equal(got, _expected(x))


def test_sliced_and_unaligned_arrow_batches(tmp_path):
    """Record batches that are slices of larger arrays (non-zero offsets) convert correctly."""
    x = _data()
    table = _table(x, "list").slice(3, 15)
    path = write_ipc(tmp_path / "s.arrow", table, chunk=4)
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=4)
    for p in (path, tmp_path / "s.parquet"):
        with open_vectors(p) as src:
            got, _ = _collect(src, 6)
        np.testing.assert_array_equal(got, x[3:18])


def test_parquet_streams_without_holding_the_file(tmp_path):
    """Arrow memory while streaming stays near one batch plus the read buffer, not the file
    (pyarrow's default pre_buffer=True would end up holding every row group read)."""
    n, dim = 40_000, 256  # 41 MB of float32 in 40 row groups
    x = np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32)
    write_parquet(tmp_path / "big.parquet", _table(x, "fixed"), row_group_size=1000, compression="none")
    del x
    peak = 0
    with open_vectors(tmp_path / "big.parquet") as src:
        for v, _ in src.batches(500):
            peak = max(peak, pa.total_allocated_bytes())
    assert peak < 20 << 20, f"{peak >> 20} MB of Arrow memory held while streaming a 41 MB file"


def test_nan_and_inf_pass_through_batches_but_not_read_vectors(tmp_path):
    x = _data(np.float64)
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    with open_vectors(tmp_path / "x.npy") as src:
        got, _ = src.read_all()
    assert np.isnan(got[2, 1]) and np.isinf(got[4, 0])
    with pytest.raises(InvalidInput, match="row 2"):
        read_vectors(tmp_path / "x.npy")


@pytest.mark.parametrize("fmt", ["npy", "npy-fortran", "parquet", "arrow"])
@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_float64_beyond_float32_is_refused_at_its_file_row(tmp_path, fmt, batch_rows):
    """The cast to float32 would make 1e300 an inf that the store reports as "inf" in a row of
    the batch: the source names the value and its row in the file, as Store.add does."""
    x = _data(np.float64, n=40)
    x[23, 4] = -1e300
    path = tmp_path / ("x.npy" if fmt.startswith("npy") else f"x.{fmt}")
    if fmt == "parquet":
        write_parquet(path, _table(x), row_group_size=9)
    elif fmt == "arrow":
        write_ipc(path, _table(x))
    else:
        np.save(path, np.asfortranarray(x) if fmt == "npy-fortran" else x)
    want = r"x\.\w+: expected finite values, found -1e\+300 \(beyond float32's range\) in row 23, column 4"
    with open_vectors(path) as src:
        with pytest.raises(InvalidInput, match=want):
            list(src.batches(batch_rows))
        with pytest.raises(InvalidInput, match=want):
            list(src.batches(batch_rows, start=20))
        with pytest.raises(InvalidInput, match=want):
            src.sample(39, seed=1)  # 39 of 40 rows, row 23 among them
        if fmt.startswith("npy"):  # .npy samples read only the rows drawn: a sample without row 23 is fine
            _, rows = src.sample(10, seed=2, with_rows=True)
            assert 23 not in rows
    x[23, 4] = np.nan  # a NaN before the overflow is the first non-finite value, named as such
    x[30, 0] = 1e300
    np.save(tmp_path / "y.npy", x)
    with open_vectors(tmp_path / "y.npy") as src, pytest.raises(InvalidInput, match=r"found nan in row 23, column 4"):
        list(src.batches(1000))
    f32_max = float(np.finfo(np.float32).max)
    x[23, 4], x[30, 0] = f32_max, -f32_max  # the largest float32s are not beyond its range
    np.save(tmp_path / "z.npy", x)
    with open_vectors(tmp_path / "z.npy") as src:
        np.testing.assert_array_equal(src.read_all()[0], x.astype(np.float32))


def test_read_vectors_reads_parquet_and_arrow(tmp_path):
    x = _data(np.float16)
    write_parquet(tmp_path / "x.parquet", _table(x, "fixed"))
    write_ipc(tmp_path / "x.arrow", _table(x, "list"))
    for name in ("x.parquet", "x.arrow"):
        got = read_vectors(tmp_path / name)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, x.astype(np.float32))


# --------------------------------------------------------------------------- empty files


def test_zero_row_files(tmp_path):
    empty = np.empty((0, DIM), np.float32)
    np.save(tmp_path / "e.npy", empty)
    (tmp_path / "e.fvecs").write_bytes(b"")
    write_parquet(tmp_path / "fixed.parquet", _table(empty, "fixed"))
    write_parquet(tmp_path / "list.parquet", _table(empty, "list"))
    write_ipc(tmp_path / "fixed.arrow", _table(empty, "fixed"))  # no record batches at all
    write_ipc(tmp_path / "list.arrow", _table(empty, "list"), stream=True)
    want_dim = {"e.npy": DIM, "e.fvecs": 0, "fixed.parquet": DIM, "list.parquet": 0,
                "fixed.arrow": DIM, "list.arrow": 0}  # a list column's width is its first row's
    for name, dim in want_dim.items():
        with open_vectors(tmp_path / name) as src:
            assert (src.n, src.dim) == (0, dim), name
            assert list(src.batches(3)) == []
            vecs, _ = src.read_all()
            assert vecs.shape == (0, dim) and vecs.dtype == np.float32


# --------------------------------------------------------------------------- column choice, bad contents


def test_column_choice(tmp_path):
    x = _data()
    table = _table(x, "list").append_column("other", _vector_array(x[:, :3], "fixed"))
    path = write_parquet(tmp_path / "two.parquet", table)
    ipc = write_ipc(tmp_path / "two.arrow", table)
    for p in (path, ipc):
        with pytest.raises(InvalidInput, match=r"several candidates \['emb', 'other'\].*column="):
            open_vectors(p)
        with open_vectors(p, column="other") as src:
            assert src.dim == 3
            np.testing.assert_array_equal(src.read_all()[0], x[:, :3])
        with pytest.raises(InvalidInput, match="column='nope'.*found no column"):
            open_vectors(p, column="nope")
        with pytest.raises(InvalidInput, match="column 'label' must be a list.*found string"):
            open_vectors(p, column="label")
        with pytest.raises(InvalidInput, match="id column 'label' must hold integers, found string"):
            open_vectors(p, column="emb", id_column="label")
        with pytest.raises(InvalidInput, match="both 'emb'"):
            open_vectors(p, column="emb", id_column="emb")
    write_parquet(tmp_path / "none.parquet", pa.table({"a": [1, 2], "b": [[1, 2], [3, 4]]}))
    with pytest.raises(InvalidInput, match="found none.*a: int64, b: list<element: int64>"):
        open_vectors(tmp_path / "none.parquet")


def test_columns_refused_for_npy_and_fvecs(tmp_path):
    np.save(tmp_path / "x.npy", _data())
    with pytest.raises(InvalidInput, match="no named columns"):
        open_vectors(tmp_path / "x.npy", id_column="id")


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "stream"])
def test_ragged_rows_and_nulls(tmp_path, fmt):
    def save(name: str, vectors: list, ids: list | None = None) -> Path:
        cols = {"v": pa.array(vectors, type=pa.list_(pa.float32()))}
        if ids is not None:
            cols["id"] = pa.array(ids, type=pa.int64())
        t = pa.table(cols)
        if fmt == "parquet":
            return write_parquet(tmp_path / f"{name}.parquet", t)
        return write_ipc(tmp_path / f"{name}.arrow", t, stream=fmt == "stream", chunk=2)

    good = [[1.0, 2.0, 3.0]] * 6
    cases = {
        "ragged": (good[:3] + [[1.0, 2.0]] + good[:2], None, r"row 3 has 2 values, expected 3"),
        "null_row": (good[:2] + [None] + good[:3], None, r"row 2 is null"),
        "null_value": (good[:4] + [[1.0, None, 3.0]] + good[:1], None, r"row 4 holds a null value"),
        "null_id": (good, [0, 1, 2, 3, None, 5], r"id column 'id': row 4 is null"),
        "first_null": ([None] + good[:2], None, r"row 0 is null"),
    }
    for name, (vectors, ids, match) in cases.items():
        path = save(name, vectors, ids)
        with pytest.raises(InvalidInput, match=match), open_vectors(path, id_column="id" if ids else None) as src:
            for _ in src.batches(2):
                pass


def test_uint64_ids_beyond_int64_refused(tmp_path):
    t = pa.table({"v": _vector_array(_data(n=3), "fixed"), "id": pa.array([1, 2, 2**63 + 5], pa.uint64())})
    write_parquet(tmp_path / "u.parquet", t)
    with pytest.raises(InvalidInput, match="fit int64"):
        open_vectors(tmp_path / "u.parquet", id_column="id").read_all()


@pytest.mark.parametrize(("arr", "match"), [
    (np.ones((3, 4), np.int32), "float16/32/64, found dtype int32"),
    (np.ones((3, 4), np.complex64), "float16/32/64, found dtype complex64"),
    (np.ones((3, 4), bool), "float16/32/64, found dtype bool"),
    (np.ones(4, np.float32), r"2-D array \(n, dim\), found shape \(4,\)"),
    (np.ones((2, 3, 4), np.float32), r"2-D array \(n, dim\), found shape \(2, 3, 4\)"),
    (np.ones((3, 0), np.float32), "at least one column"),
])
def test_npy_wrong_dtype_or_shape(tmp_path, arr, match):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(InvalidInput, match=match):
        open_vectors(tmp_path / "x.npy")


def _npy_with_header(path: Path, header: dict, payload: bytes) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    return path


def test_object_npy_is_never_unpickled(tmp_path):
    # protocol-2 pickle opcodes: if anything unpickled this, the GLOBAL would import os.system
    payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    path = _npy_with_header(tmp_path / "o.npy", {"descr": "|O", "fortran_order": False, "shape": (2, 2)}, payload)
    with pytest.raises((FormatError, InvalidInput), match="found dtype object"):
        open_vectors(path)
    with pytest.raises((FormatError, InvalidInput)):
        read_vectors(path)


def test_npy_header_claiming_1e12_rows_refused_without_allocating(tmp_path):
    path = _npy_with_header(tmp_path / "huge.npy", {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)},
                            np.ones(16, np.float32).tobytes())
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=r"claims shape \(1000000000000, 4\).*truncated"):
            open_vectors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_missing_unknown_and_closed(tmp_path):
    with pytest.raises(DatasetNotFound, match="no such file"):
        open_vectors(tmp_path / "missing.parquet")
    (tmp_path / "dir.npy").mkdir()  # it said "no such file" of a directory that exists
    with pytest.raises(DatasetNotFound, match="expected a file, found a directory '.*dir.npy'"):
        open_vectors(tmp_path / "dir.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InvalidInput, match=r"expected a \.npy or \.fvecs.*\.parquet, \.arrow, \.feather, \.ipc"):
        open_vectors(tmp_path / "x.csv")
    np.save(tmp_path / "x.npy", _data())
    src = open_vectors(tmp_path / "x.npy")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InvalidInput, match="batch_rows"):
            src.batches(bad)
    src.close()
    src.close()
    with pytest.raises(InvalidInput, match="closed"):
        src.batches(4)
    assert set(SUPPORTED_SUFFIXES) == {".npy", ".fvecs", ".parquet", ".arrow", ".feather", ".ipc"}


def test_fvecs_bad_header_in_a_later_chunk_names_the_row(tmp_path):
    x = _data(n=20)
    path = write_fvecs(tmp_path / "x.fvecs", x)
    raw = bytearray(path.read_bytes())
    raw[13 * 4 * (DIM + 1): 13 * 4 * (DIM + 1) + 4] = np.int32(DIM + 2).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=rf"row 13 has width header {DIM + 2}, expected {DIM}"):
        for _ in open_vectors(path).batches(4):
            pass
    raw[:4] = np.int32(0).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="expected a row width in 1..1048576"):
        open_vectors(path)


# --------------------------------------------------------------------------- damaged bytes


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    """Small valid files of every format, used as seeds for truncation and byte flips."""
    d = tmp_path_factory.mktemp("importer_samples")
    x = _data(n=6, dim=4)
    t = _table(x, "list", np.arange(6)).append_column("half", _vector_array(x.astype(np.float16), "fixed"))
    out = {
        "npy": d / "s.npy",
        "fvecs": write_fvecs(d / "s.fvecs", x),
        "parquet": write_parquet(d / "s.parquet", t, row_group_size=4, compression="none"),
        "parquet-zstd": write_parquet(d / "z.parquet", t, row_group_size=4, compression="zstd"),
        "arrow": write_ipc(d / "s.arrow", t),
        "arrow-zstd": d / "z.arrow",
        "stream": write_ipc(d / "t.arrow", t, stream=True),
    }
    np.save(out["npy"], x)
    with pa.ipc.new_file(out["arrow-zstd"], t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        for b in t.to_batches(max_chunksize=4):
            w.write_batch(b)
    return out


def _read(path: Path, **kw: str) -> tuple[np.ndarray, np.ndarray | None]:
    with open_vectors(path, **kw) as src:
        return src.read_all()


@pytest.mark.parametrize("fmt", ["npy", "fvecs", "parquet", "parquet-zstd", "arrow", "arrow-zstd", "stream"])
def test_truncation(tmp_path, samples, fmt):
    raw = samples[fmt].read_bytes()
    kw = {} if fmt in ("npy", "fvecs") else {"column": "emb"}
    full, _ = _read(samples[fmt], **kw)
    row_bytes = 4 * (4 + 1)
    cuts = sorted({1, 3, 7, 9, 64, len(raw) // 3, len(raw) // 2, len(raw) - 9, len(raw) - 3, len(raw) - 1})
    for cut in cuts:
        path = tmp_path / f"cut{cut}{samples[fmt].suffix}"
        path.write_bytes(raw[:cut])
        if fmt == "stream" or (fmt == "fvecs" and cut % row_bytes == 0):
            # a stream cut at a message boundary, or .fvecs at a row boundary, is a shorter
            # valid file: it must then read back as a prefix, never as other values
            try:
                got, _ = _read(path, **kw)
            except FormatError:
                continue
            np.testing.assert_array_equal(got, full[: len(got)])
            assert len(got) < len(full)
            continue
        with pytest.raises(FormatError, match=f"cut{cut}"):
            _read(path, **kw)


FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6)


@pytest.mark.parametrize("fmt", ["npy", "fvecs", "parquet", "parquet-zstd", "arrow", "arrow-zstd", "stream"])
def test_byte_flips_raise_only_vecz_errors(tmp_path_factory, samples, fmt):
    raw = samples[fmt].read_bytes()
    work = tmp_path_factory.mktemp(f"flips_{fmt}") / f"m{samples[fmt].suffix}"
    choices = [{}] if fmt in ("npy", "fvecs") else [{}, {"column": "half", "id_column": "key"}]

    @settings(max_examples=45, deadline=None, database=None)
    @given(flips=FLIPS, cut=st.one_of(st.none(), st.floats(0, 1)), pick=st.sampled_from(choices))
    def check(flips, cut, pick):
        b = bytearray(raw)
        for where, value in flips:
            b[int(where * len(b))] = value
        if cut is not None:
            b = b[: int(cut * len(b))]
        work.write_bytes(bytes(b))
        try:
            vecs, ids = _read(work, **pick)
        except VeczError:
            return
        assert vecs.ndim == 2 and vecs.dtype in (np.float16, np.float32)
        assert ids is None or (ids.dtype == np.int64 and ids.shape == (len(vecs),))

    check()


# --------------------------------------------------------------------------- result writers


def _results(nq: int = 4, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1000, (nq, k)).astype(np.int64)
    ids[1, 2] = -1
    ids[3, 1:] = -1
    return ids, rng.standard_normal((nq, k)).astype(np.float32)


def test_write_results_npy(tmp_path):
    ids, scores = _results()
    paths = write_results(tmp_path / "out" / "res.npy", ids.astype(np.int32), scores.astype(np.float64))
    assert paths == [tmp_path / "out" / "res.npy", tmp_path / "out" / "res.scores.npy"]
    got_ids, got_scores = (np.load(p, allow_pickle=False) for p in paths)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_scores, scores)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["res.npy", "res.scores.npy"]


def test_write_results_parquet_drops_empty_slots(tmp_path):
    ids, scores = _results()
    [path] = write_results(tmp_path / "res.parquet", ids, scores)
    t = pq.read_table(path)
    assert t.schema.types == [pa.int64(), pa.int32(), pa.int64(), pa.float32()]
    assert t.column_names == ["query", "rank", "id", "score"]
    q, r = np.nonzero(ids != -1)
    np.testing.assert_array_equal(t["query"].to_numpy(), q)
    np.testing.assert_array_equal(t["rank"].to_numpy(), r)
    np.testing.assert_array_equal(t["id"].to_numpy(), ids[q, r])
    np.testing.assert_array_equal(t["score"].to_numpy(), scores[q, r])
    assert t.num_rows == 12 - 3
    assert [p.name for p in tmp_path.iterdir()] == ["res.parquet"]


def test_write_results_errors_and_atomicity(tmp_path, monkeypatch):
    ids, scores = _results()
    with pytest.raises(InvalidInput, match=r"\.npy or \.parquet, found suffix '\.csv'"):
        write_results(tmp_path / "r.csv", ids, scores)
    with pytest.raises(InvalidInput, match="one shape"):
        write_results(tmp_path / "r.npy", ids, scores[:, :2])
    with pytest.raises(InvalidInput, match="integer"):
        write_results(tmp_path / "r.npy", scores, scores)
    target = tmp_path / "r.parquet"
    target.write_bytes(b"previous results")

    def failing_write(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(importers.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_results(target, ids, scores)
    assert target.read_bytes() == b"previous results"
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]


@pytest.mark.parametrize("fmt", ["npy", "npy-fortran", "npy-big-endian", "npy-f16", "fvecs", "parquet"])
def test_sample_draws_distinct_rows_from_the_whole_source_in_file_order(tmp_path, fmt):
    x = _data(n=3000, seed=9)
    if fmt == "npy-f16":
        x = x.astype(np.float16)
    path = tmp_path / ("a.fvecs" if fmt == "fvecs" else "a.parquet" if fmt == "parquet" else "a.npy")
    if fmt == "fvecs":
        write_fvecs(path, x)
    elif fmt == "parquet":
        write_parquet(path, _table(x))
    else:
        np.save(path, np.asfortranarray(x) if fmt == "npy-fortran" else x.astype(">f4") if fmt == "npy-big-endian" else x)
    with open_vectors(path) as src:
        got = src.sample(700, seed=3)
        again = src.sample(700, seed=3)
        other = src.sample(700, seed=4)
        everything = src.sample(5000, seed=3)
    np.testing.assert_array_equal(got, again)                  # seeded
    assert not np.array_equal(got, other)
    assert got.shape == (700, x.shape[1])
    np.testing.assert_array_equal(everything, x.astype(everything.dtype))  # n >= rows: all of them
    # each sampled row is a distinct row of the source, in file order, from all over the file
    lookup = {row.tobytes(): i for i, row in enumerate(x.astype(got.dtype))}
    where = np.array([lookup[row.tobytes()] for row in got])
    assert (np.diff(where) > 0).all() and where[0] < 300 and where[-1] > 2700
    with open_vectors(path) as src:  # with_rows: the file row of each sampled vector
        same, rows = src.sample(700, seed=3, with_rows=True)
        _, all_rows = src.sample(5000, seed=3, with_rows=True)
    np.testing.assert_array_equal(same, got)
    np.testing.assert_array_equal(rows, where)
    np.testing.assert_array_equal(all_rows, np.arange(len(x)))


def test_read_ids_checks_the_range_before_the_cast(tmp_path):
    np.save(tmp_path / "gt.npy", np.full((3, 4), 2**63 + 5, dtype=np.uint64))
    with pytest.raises(InvalidInput, match=r"in \[0, 20\), found 9223372036854775813\.\.9223372036854775813"):
        read_ids(tmp_path / "gt.npy", 3, 20)
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.uint64).reshape(3, 4))
    got = read_ids(tmp_path / "ok.npy", 2, 20)
    assert got.dtype == np.int64 and got.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_read_texts_refuses_other_encodings_and_fake_gzip(tmp_path):
    (tmp_path / "t.txt").write_bytes("caf\u00e9\n".encode("latin-1") + b"b\n")
    with pytest.raises(InvalidInput, match=r"t\.txt: texts: expected UTF-8 text, found byte 0xe9 at offset 3"):
        read_texts(tmp_path / "t.txt", 2, "texts")
    (tmp_path / "t.txt.gz").write_bytes(b"not gzip\n")
    with pytest.raises(FormatError, match=r"t\.txt\.gz: texts: expected gzip data"):
        read_texts(tmp_path / "t.txt.gz", 1, "texts")
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"a\nb\n" * 100)[:-8])
    with pytest.raises(FormatError, match=r"cut\.txt\.gz: texts: expected gzip data"):
        read_texts(tmp_path / "cut.txt.gz", 200, "texts")
    (tmp_path / "ok.txt.gz").write_bytes(gzip.compress("caf\u00e9\nb\n".encode()))
    assert read_texts(tmp_path / "ok.txt.gz", 2, "texts") == ["caf\u00e9", "b"]


def test_write_results_refuses_a_folder_that_is_a_file(tmp_path):
    ids, scores = _results()
    (tmp_path / "afile").write_bytes(b"")
    for target in (tmp_path / "afile" / "r.npy", tmp_path / "afile" / "sub" / "r.parquet"):
        with pytest.raises(InvalidInput, match=r"expected a directory .*, found a file at '.*afile'"):
            write_results(target, ids, scores)
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(InvalidInput, match=r"d\.npy: expected a results file, found a directory"):
        write_results(tmp_path / "d.npy", ids, scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.npy"] and not any((tmp_path / "d.npy").iterdir())


@pytest.mark.parametrize("claimed", [8, 12])
def test_parquet_whose_row_counts_all_understate_or_overstate_the_data_is_refused(tmp_path, claimed):
    """The footer and the row group both edited to another row count (thrift metadata has no
    checksum): pyarrow read that many rows and dropped the rest, with no error. The column
    chunks' value count (10 rows x 4) now gives it away."""
    import struct

    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"emb": pa.array(list(x), pa.list_(pa.float32(), 4))}), path, compression="none")
    data = path.read_bytes()
    length = struct.unpack("<I", data[-8:-4])[0]
    footer = bytearray(data[-8 - length:-8])
    at = [i for i in range(len(footer) - 1) if footer[i:i + 2] == b"\x16\x14"]  # num_rows: i64 field, zigzag 10
    assert len(at) == 2  # the file's and the row group's
    for i in at:
        footer[i + 1] = 2 * claimed
    path.write_bytes(data[:-8 - length] + bytes(footer) + data[-8:])
    with open_vectors(path) as source:
        assert source.n == claimed
        with pytest.raises(FormatError, match=f"holds 40 values, but its {claimed} rows of 4 need {claimed * 4}"):
            list(source.batches(3))
