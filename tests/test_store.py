"""vecz.Store: round trips, reopen equality, deletes and compaction, reads counted, errors,
and a hypothesis state machine checked against a brute-force model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vecz.engine import (
    DimensionMismatch,
    InvalidInput,
    ReadOnlyStore,
    Store,
    StoreCorrupted,
    StoreLocked,
    StoreNotFound,
    check_store,
)
from vecz.engine.store import FORMAT_ID

DIM = 24


def _data(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


def _exact(base: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 exact scores (nq, n): larger is better for cosine/ip, squared distance for l2."""
    b = base.astype(np.float64)
    x = q.astype(np.float64)
    if metric == "cosine":
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    # elementwise products and one sum per pair (not BLAS, whose last bit may depend on a
    # row's position): duplicate vectors must tie exactly so the smaller id wins
    if metric == "l2":
        return ((x[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return (x[:, None, :] * b[None, :, :]).sum(-1)


def _brute(base: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str):
    s = _exact(base, q, metric)
    key = s if metric == "l2" else -s
    order = np.lexsort((np.broadcast_to(ids, s.shape), key), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("spec,dense", [("RB2", "f32"), ("IVF4,PQ8x8", "f16"), ("SQ8", None), ("PQ12x4", "f32")])
def test_round_trip_reopen_identical(tmp_path, metric, spec, dense):
    x = _data(700)
    q = _data(9, seed=1)
    with Store.create(tmp_path / "s", dim=DIM, metric=metric, codec=spec, dense=dense) as s:
        a = s.add(x[:400])
        b = s.add(x[400:], ids=np.arange(10_000, 10_300))
        assert a.tolist() == list(range(400)) and b[0] == 10_000
        rerank = 0 if dense is None else 30
        before = s.search(q, 7, nprobe=s.codec.nlist, rerank=rerank)
        info = s.info()
    with Store.open(tmp_path / "s") as r:
        after = r.search(q, 7, nprobe=r.codec.nlist, rerank=rerank)
        assert r.info()["version"] == info["version"] and len(r) == 700
        assert r.spec == spec and r.metric == metric
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert before.scores.dtype == np.float32 and before.ids.dtype == np.int64
    if dense is not None:
        # re-ranked scores are exact (f16 tier: exact for the stored half-precision vectors)
        stored = x.astype(np.float16).astype(np.float32) if dense == "f16" else x
        all_ids = np.concatenate([a, b])
        for i in range(len(q)):
            rows = np.searchsorted(all_ids, after.ids[i])
            want = _exact(stored[rows], q[i : i + 1], metric)[0]
            np.testing.assert_allclose(after.scores[i], want, rtol=1e-4, atol=1e-4)


def test_rerank_exact_topk_with_full_depth(tmp_path):
    """With R >= n every live row is re-scored: the result is the exact top-k."""
    x = _data(300)
    q = _data(20, seed=3)
    for metric in ("cosine", "ip", "l2"):
        with Store.create(tmp_path / metric, dim=DIM, metric=metric, codec="RB1") as s:
            ids = s.add(x)
            res = s.search(q, 10, rerank=300)
        want_s, want_i = _brute(x, ids, q, 10, metric)
        np.testing.assert_array_equal(res.ids, want_i)
        np.testing.assert_allclose(res.scores, want_s, rtol=1e-5, atol=1e-5)


def test_get_returns_exact_vectors_and_missing_ids_raise(tmp_path):
    x = _data(50)
    with Store.create(tmp_path / "s", dim=DIM, codec="SQ8", dense="f32") as s:
        ids = s.add(x, ids=np.arange(100, 150))
        np.testing.assert_array_equal(s.get([149, 100, 120, 120]), x[[49, 0, 20, 20]])
        with pytest.raises(KeyError):
            s.get([5])
        s.delete([120])
        with pytest.raises(KeyError):
            s.get([120])
        assert 121 in s and 120 not in s
        np.testing.assert_array_equal(s.ids(), np.delete(ids, 20))


def test_delete_and_compact(tmp_path):
    x = _data(500)
    q = _data(6, seed=2)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB2") as s:
        ids = s.add(x[:250])
        ids = np.concatenate([ids, s.add(x[250:])])
        gone = ids[::3]
        assert s.delete(gone) == len(gone)
        assert s.delete(gone) == 0  # already deleted: ignored
        assert s.delete([10**9]) == 0  # unknown: ignored
        res = s.search(q, 20, rerank=500)
        assert not np.isin(res.ids, gone).any()
        keep = np.setdiff1d(ids, gone)
        want_s, want_i = _brute(x[keep], keep, q, 20, "cosine")
        np.testing.assert_array_equal(res.ids, want_i)
        files_before = {p.name for p in (tmp_path / "s").iterdir()}
        version = s.version
        s.compact()
        assert s.version == version + 1 and s.info()["segments"] == 1 and s.n_deleted == 0
        assert len(s) == len(keep)
        after = s.search(q, 20, rerank=500)
        np.testing.assert_array_equal(after.ids, res.ids)
        np.testing.assert_allclose(after.scores, res.scores, rtol=1e-6)
        # the new version names no segment of the old one (the retention rule keeps their
        # files for the versions still retained)
        import vecz.formats.manifest as mf

        assert not any(seg["file"] in files_before for seg in mf.read_manifest(tmp_path / "s")["segments"])
        # an id deleted and added again names the new row only
        s.add(x[:1] * 2, ids=[int(gone[0])])
        np.testing.assert_array_equal(s.get([int(gone[0])]), x[:1] * 2)
        s.compact()  # nothing deleted, one segment + one new: merged
        assert s.info()["segments"] == 1
    assert check_store(tmp_path / "s") == []


def test_delete_everything_then_search_and_compact(tmp_path):
    x = _data(40)
    with Store.create(tmp_path / "s", dim=DIM, codec="PQ6x4") as s:
        ids = s.add(x)
        s.delete(ids)
        res = s.search(x[:2], 5)
        assert (res.ids == -1).all() and np.isneginf(res.scores).all()
        s.compact()
        assert len(s) == 0 and s.info()["segments"] == 0
    with Store.open(tmp_path / "s") as r:
        assert len(r) == 0 and (r.search(x[:1], 3).ids == -1).all()
        # the query checks of a store with rows hold with none live (a zero query under
        # cosine was answered "no neighbours" here, refused on a store with rows)
        with pytest.raises(InvalidInput, match="row 1 all zeros"):
            r.search(np.vstack([x[:1], np.zeros((1, DIM), np.float32)]), 3)


def test_reported_reads_equal_actual_reads(tmp_path, monkeypatch):
    """The rows and bytes a search reports equal what a counting double of the read path
    saw: the shortlist's rows (at most R per query), each from the dense file holding it,
    and nothing for rerank=0. Reads go through the map, so the double wraps the kernel that
    reads through it (serial and threaded twins alike) and checks the array it is given is
    a dense file's map."""
    import vecz.engine.search as store_mod

    seen: list[tuple[np.ndarray, np.ndarray]] = []

    maps: list[np.ndarray] = []

    def counting(real):
        def wrapper(queries, values, rows, metric, out):
            # the plan's |q - c|^2 to the probed centroids runs the same kernel (a centred
            # cosine or l2 plan on residuals, `quantizers._probe_sq_dist`): not a read
            if any(values.base is m.base for m in maps):
                seen.append((values, np.asarray(rows).copy()))
            return real(queries, values, rows, metric, out)
        return wrapper

    for name in ("dense_rescore", "dense_rescore_batch"):
        monkeypatch.setattr(store_mod.dense_kernels, name, counting(getattr(store_mod.dense_kernels, name)))
    x = _data(400)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1", dense="f16") as s:
        s.add(x[:200])
        s.add(x[200:])
        maps += [reader.values for seg in s._segments for reader in seg.dense]
        for nq in (3, 20):  # serial and threaded re-scoring
            q = _data(nq, seed=5)
            seen.clear()
            res = s.search(q, 5, rerank=40)
            n_rows = sum(int((rows >= 0).sum()) for _, rows in seen)
            assert res.stats.rows_read == n_rows and 5 * nq <= n_rows <= 40 * nq
            assert res.stats.bytes_read == n_rows * DIM * 2
            for values, rows in seen:
                assert any(values.base is m.base and values.shape == m.shape for m in maps)
                assert rows.max() < values.shape[0]
                assert ((rows >= 0).sum(axis=1) <= 40).all()
        seen.clear()
        res0 = s.search(_data(4, seed=6), 5, rerank=0)
        assert seen == [] and res0.stats.rows_read == 0 and res0.stats.bytes_read == 0


def test_reader_pins_its_version_and_refresh_moves_on(tmp_path):
    x = _data(200)
    w = Store.create(tmp_path / "s", dim=DIM, codec="RB1")
    w.add(x[:100])
    r = Store.open(tmp_path / "s")
    before = r.search(x[:3], 5, rerank=50)
    w.add(x[100:])
    w.delete([0, 1, 2])
    np.testing.assert_array_equal(r.search(x[:3], 5, rerank=50).ids, before.ids)
    assert len(r) == 100
    assert r.refresh() == w.version and len(r) == 197
    assert not np.isin(r.search(x[:3], 5, rerank=50).ids, [0, 1, 2]).any()
    w.compact()  # removes files the reader's old version used; the reader still works
    assert len(r.search(x[:3], 5, rerank=50).ids) == 3
    r.close()
    kept = np.array(w.info()["versions"])  # a numpy integer version is an integer (it was "expected an int")
    with Store.open(tmp_path / "s", version=kept[-1]) as old:
        assert old.version == int(kept[-1]) and type(old.version) is int
    w.close()


def test_one_writer_and_read_only(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as w:
        with pytest.raises(StoreLocked, match="another writer"):
            Store.open(tmp_path / "s", mode="a")
        with Store.open(tmp_path / "s") as r:
            with pytest.raises(ReadOnlyStore):
                r.add(_data(2))
            with pytest.raises(ReadOnlyStore):
                r.delete([0])
        w.add(_data(3))
    with Store.open(tmp_path / "s", mode="a") as w2:  # lock released on close
        assert len(w2) == 3


def test_failed_commit_changes_nothing(tmp_path, monkeypatch):
    import vecz.formats.manifest as mf

    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(50))
        files = sorted(p.name for p in (tmp_path / "s").iterdir())

        def boom(*a, **kw):
            raise OSError("disk full")

        monkeypatch.setattr(mf, "write_manifest", boom)
        with pytest.raises(OSError):
            s.add(_data(10, seed=9))
        with pytest.raises(OSError):
            s.delete([1, 2])
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == files
        assert len(s) == 50 and s.version == 2
        monkeypatch.undo()
        s.add(_data(10, seed=9))
        assert len(s) == 60


def test_bad_input_is_typed_and_changes_nothing(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="IVF2,RB1", dense=None) as s:
        s.add(_data(30))
        v = s.version
        bad = _data(3)
        bad[1, 2] = np.nan
        cases = [
            (lambda: s.add(bad), InvalidInput, "finite"),
            (lambda: s.add(_data(3, dim=DIM + 1)), DimensionMismatch, "expected width"),
            (lambda: s.add(np.zeros((0, DIM), np.float32)), InvalidInput, "at least 1 row"),
            (lambda: s.add(np.ones((2, DIM), np.int32)), InvalidInput, "float16/32/64"),
            (lambda: s.add(_data(2), ids=[5, 5]), InvalidInput, "distinct"),
            (lambda: s.add(_data(2), ids=[-1, 3]), InvalidInput, ">= 0"),
            (lambda: s.add(_data(2), ids=[3, 100]), InvalidInput, "already in the store"),
            (lambda: s.add(_data(2), ids=[1]), InvalidInput, "one per vector"),
            (lambda: s.search(_data(1), 0), InvalidInput, "k must be"),
            (lambda: s.search(_data(1), 5, nprobe=3), InvalidInput, "nprobe"),
            (lambda: s.search(_data(1), 5, rerank=10), InvalidInput, "dense tier"),
            (lambda: s.get([1]), InvalidInput, "dense tier"),
            (lambda: s.train(_data(10)), InvalidInput, "empty store"),
        ]
        for call, err, text in cases:
            with pytest.raises(err, match=text):
                call()
        assert s.version == v and len(s) == 30
    with Store.create(tmp_path / "t", dim=DIM, codec="RB1") as s:
        s.add(_data(30))
        with pytest.raises(InvalidInput, match="rerank must be 0 or >= k"):
            s.search(_data(1), 10, rerank=5)
        # float64 and non-contiguous input are accepted and converted
        x = _data(40).astype(np.float64)[:, ::1][::2]
        s.add(np.asfortranarray(x))
        assert s.search(x[:2], 3).ids.shape == (2, 3)
    with pytest.raises(InvalidInput, match="non-empty"):
        Store.create(tmp_path / "t", dim=DIM)
    with pytest.raises(StoreNotFound):
        Store.open(tmp_path / "missing")
    with pytest.raises(InvalidInput, match="dense"):
        Store.create(tmp_path / "u", dim=DIM, dense="f64")


def test_k_larger_than_store_pads(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, metric="l2", codec="RB1") as s:
        res = s.search(_data(2), 4)  # empty, untrained store
        assert (res.ids == -1).all() and np.isposinf(res.scores).all()
        s.add(_data(3))
        res = s.search(_data(2), 6, rerank=6)
        assert (res.ids[:, :3] >= 0).all() and (res.ids[:, 3:] == -1).all()
        assert np.isposinf(res.scores[:, 3:]).all() and np.isfinite(res.scores[:, :3]).all()


def test_constant_zero_and_duplicate_vectors(tmp_path):
    x = _data(60)
    x[:, 5] = 0.0  # a dimension that is always zero
    x[:, 7] = 3.0  # a constant one
    x[10:20] = x[10]  # duplicates
    with Store.create(tmp_path / "s", dim=DIM, metric="l2", codec="PQ4x8") as s:
        ids = s.add(x)
        res = s.search(x[10:11], 12, rerank=60)
        assert set(res.ids[0, :10]) == set(ids[10:20])
        np.testing.assert_allclose(res.scores[0, :10], 0.0, atol=1e-4)


def test_manifest_and_files_are_what_format_md_says(tmp_path):
    import vecz.formats.manifest as mf

    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(10))
        s.delete([3])
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    # no lock file: the writer locks the directory itself; serials 1 (segment and its dense
    # file) and 2 (the segment's deletion file); codec file named by the version (2)
    assert names == ["MANIFEST-000000000001", "MANIFEST-000000000002", "MANIFEST-000000000003",
                     "codec-000000000002.vzs", "del-000000000002.vzs", "dense-000000000001.arrow",
                     "seg-000000000001.vzs"]
    body = mf.read_manifest(tmp_path / "s")
    assert body["format"] == FORMAT_ID and body["version"] == 3 and body["parent"] == 2 and body["layout"] == 2
    assert body["counts"] == {"rows": 10, "live": 9} and body["retain"] == 8 and body["next_serial"] == 3
    seg = body["segments"][0]
    from vecz.formats.segment import segment_digest

    d = tmp_path / "s"
    assert seg["deletes"] == {"file": "del-000000000002.vzs", "count": 1,
                              "digest": segment_digest(d / "del-000000000002.vzs")} and seg["sorted_ids"]
    assert seg["dense_map"] == "identity" and [d["file"] for d in seg["dense"]] == ["dense-000000000001.arrow"]
    # every segment file a version names is bound to it by its digest, the header's CRC32
    assert seg["digest"] == segment_digest(d / "seg-000000000001.vzs")
    assert body["codec"]["digest"] == segment_digest(d / "codec-000000000002.vzs")
    # any Arrow reader opens the dense file
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(tmp_path / "s" / "dense-000000000001.arrow"))).read_all()
    assert table.column_names == ["id", "vector"] and table.num_rows == 10


def test_missing_file_is_store_corrupted(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(10))
    os.remove(tmp_path / "s" / "dense-000000000001.arrow")
    with pytest.raises(StoreCorrupted, match="missing"):
        Store.open(tmp_path / "s")
    assert check_store(tmp_path / "s")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 9), dtype=st.sampled_from(["f32", "f16"]),
       shift=st.integers(-64, 64))
def test_a_dense_offset_not_where_arrow_puts_the_values_is_caught(rows, dim, dtype, shift):
    """A record whose `offset` is off (but inside the file) would have rows read from other
    bytes: a misaligned one is refused on open, and `check_dense` (vecz check) compares any
    other with the values buffer's place in the Arrow metadata."""
    import dataclasses
    import tempfile

    from vecz.formats.dense import DenseReader, check_dense, write_dense

    with tempfile.TemporaryDirectory() as d:
        info = write_dense(Path(d) / "dense-000000000001.arrow", np.arange(rows, dtype=np.int64),
                           _data(rows, dim=dim), dtype)
        assert check_dense(d, info) == []
        bad = dataclasses.replace(info, offset=info.offset + shift)
        end = bad.offset + rows * bad.row_bytes
        if bad.offset < 8 or end > bad.nbytes - 6:
            with pytest.raises(StoreCorrupted, match="do not fit inside"):
                DenseReader(d, bad)
        elif shift % (4 if dtype == "f32" else 2):
            with pytest.raises(StoreCorrupted, match=f"offset to be a multiple of .* found {bad.offset}"):
                DenseReader(d, bad)
        elif shift:
            DenseReader(d, bad).close()  # opening reads no Arrow metadata ...
            assert check_dense(d, bad) == [f"{Path(d) / info.file}: expected the vector values at offset "
                                           f"{bad.offset} (manifest), found offset {info.offset}"]
        if shift:
            assert check_dense(d, bad)  # ... but vecz check reports every wrong offset
        else:
            assert check_dense(d, bad) == []


def test_crash_leftovers_are_ignored_and_collected(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(10))
    d = tmp_path / "s"
    (d / "seg-000000000009.vzs").write_bytes(b"half a segment")
    (d / ".MANIFEST-000000000003.123.abcd.tmp").write_bytes(b"half a manifest")
    with Store.open(d) as r:  # readers ignore both
        assert len(r) == 10
    with Store.open(d, mode="a") as w:  # a writer collects them
        assert len(w) == 10
    assert not (d / "seg-000000000009.vzs").exists()
    assert not (d / ".MANIFEST-000000000003.123.abcd.tmp").exists()


# --------------------------------------------------------------------------- state machine


class StoreModel(RuleBasedStateMachine):
    """Random add / delete / search / close / reopen / compact against a brute-force model.

    Searches re-rank every live row (rerank >= live count over a flat codec), so the result
    must equal the exact top-k of the model: ids exactly (ties broken by smaller id) and
    scores to float32 precision."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.mkdtemp(prefix="vecz-sm-")
        self.dir = Path(self.tmp) / "s"
        self.rng = np.random.default_rng(0)
        self.vectors: dict[int, np.ndarray] = {}
        self.store: Store | None = None

    @initialize(metric=st.sampled_from(["cosine", "ip", "l2"]), spec=st.sampled_from(["RB1", "PQ4x4", "SQ8", "IVF2,RB2"]),
                n=st.integers(0, 30))
    def create(self, metric, spec, n):
        self.metric = metric
        self.store = Store.create(self.dir, dim=8, metric=metric, codec=spec, dense="f32")
        if n:  # most runs start with rows, so that searches, deletes and gets have work
            self.add(n, explicit=False, scale=1.0)

    @rule(n=st.integers(1, 25), explicit=st.booleans(), scale=st.sampled_from([1.0, 1e-3, 1e3]))
    def add(self, n, explicit, scale):
        x = (self.rng.standard_normal((n, 8)) * scale).astype(np.float32)
        if n > 2:
            x[-1] = x[0]  # a duplicate vector
        if explicit:
            pool = np.setdiff1d(np.arange(0, 400), np.fromiter(self.vectors, dtype=np.int64, count=len(self.vectors)))
            ids = self.rng.choice(pool, size=n, replace=False)
            got = self.store.add(x, ids=ids)
            assert got.tolist() == ids.tolist()
        else:
            got = self.store.add(x)
        for i, v in zip(got.tolist(), x):
            assert i not in self.vectors
            self.vectors[i] = v

    @precondition(lambda self: len(self.vectors) > 0)
    @rule(frac=st.floats(0.05, 1.0), unknown=st.booleans())
    def delete(self, frac, unknown):
        live = np.array(sorted(self.vectors))
        gone = self.rng.choice(live, size=max(1, int(len(live) * frac)), replace=False)
        ask = np.concatenate([gone, [10**6]]) if unknown else gone
        assert self.store.delete(ask) == len(gone)
        for i in gone.tolist():
            del self.vectors[i]

    @rule(k=st.integers(1, 12), nq=st.integers(1, 4))
    def search(self, k, nq):
        q = self.rng.standard_normal((nq, 8)).astype(np.float32)
        live = max(len(self.vectors), k)
        res = self.store.search(q, k, nprobe=self.store.codec.nlist, rerank=live)
        if not self.vectors:
            assert (res.ids == -1).all()
            return
        ids = np.array(sorted(self.vectors))
        base = np.stack([self.vectors[i] for i in ids.tolist()])
        want_s, want_i = _brute(base, ids, q, k, self.metric)
        m = min(k, len(ids))
        np.testing.assert_array_equal(res.ids[:, :m], want_i[:, :m])
        np.testing.assert_allclose(res.scores[:, :m], want_s[:, :m], rtol=2e-5, atol=1e-5 * max(1.0, np.abs(want_s).max()))
        assert (res.ids[:, m:] == -1).all()

    @rule()
    def reopen(self):
        self.store.close()
        self.store = Store.open(self.dir, mode="a")

    @rule()
    def compact(self):
        self.store.compact()

    @precondition(lambda self: len(self.vectors) > 0)
    @rule()
    def get(self):
        ids = np.array(sorted(self.vectors))[:5]
        np.testing.assert_array_equal(self.store.get(ids), np.stack([self.vectors[i] for i in ids.tolist()]))

    @invariant()
    def counts(self):
        if self.store is not None:
            assert len(self.store) == len(self.vectors)

    def teardown(self):
        import shutil

        if self.store is not None:
            self.store.close()
            with Store.open(self.dir) as r:  # reopening read-only shows the same rows
                assert len(r) == len(self.vectors)
            assert check_store(self.dir) == []
        shutil.rmtree(self.tmp, ignore_errors=True)


StoreModel.TestCase.settings = settings(
    max_examples=80, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_store_state_machine = StoreModel.TestCase


def _row_pages_ref(offset, row_bytes, n_rows, rows, page):
    pages = sorted({p for r in set(rows.tolist()) if 0 <= r < n_rows
                    for p in range((offset + r * row_bytes) // page, (offset + (r + 1) * row_bytes - 1) // page + 1)})
    runs: list[list[int]] = []
    for p in pages:
        if runs and p <= runs[-1][1]:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1])
    return [(a * page, b * page) for a, b in runs]


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 5000), row_bytes=st.integers(1, 9000), n_rows=st.integers(0, 60),
       rows=st.lists(st.integers(-3, 70), max_size=40), page=st.sampled_from([64, 4096]))
def test_row_pages_are_the_pages_of_the_rows(offset, row_bytes, n_rows, rows, page):
    from vecz.formats.dense import row_pages

    first, end = row_pages(offset, row_bytes, n_rows, np.array(rows, dtype=np.int64), page)
    assert list(zip(first.tolist(), end.tolist())) == _row_pages_ref(offset, row_bytes, n_rows,
                                                                     np.array(rows, dtype=np.int64), page)


def _recording_will_need(entry):
    """A `DenseReader.will_need` to monkeypatch in, which records ``entry(reader, rows)`` of
    each call in the returned list and then hints as the real one does."""
    import vecz.formats.dense

    real = vecz.formats.dense.DenseReader.will_need
    seen: list = []

    def recording(self, rows):
        seen.append(entry(self, rows))
        return real(self, rows)

    return recording, seen


def test_will_need_advises_the_mapped_pages(tmp_path):
    import mmap

    from vecz.formats.dense import DenseReader, advise_ranges, row_pages, write_dense

    if not hasattr(mmap, "MADV_WILLNEED"):
        pytest.skip("no MADV_WILLNEED on this platform")
    x = _data(3000, dim=40)
    info = write_dense(tmp_path / "d.arrow", np.arange(3000, dtype=np.int64), x, "f32")
    reader = DenseReader(tmp_path, info)
    rows = np.array([2999, 5, 6, 1700, 5, 0], dtype=np.int64)
    reader.will_need(rows)  # no error, the rows read the same afterwards
    np.testing.assert_array_equal(reader.read_rows(np.sort(rows)), x[np.sort(rows)])
    first, end = row_pages(info.offset, info.row_bytes, info.rows, rows, mmap.PAGESIZE)
    addr = reader._mmap.addr
    assert advise_ranges(addr, first, end, mmap.MADV_WILLNEED) == 0
    # the calls reach the kernel: a start that is not page-aligned fails (EINVAL)
    odd = np.array([1], dtype=np.int64)
    assert advise_ranges(addr, odd, odd + mmap.PAGESIZE, mmap.MADV_WILLNEED) == 1
    reader.close()


def test_cached_looks_at_most_once_a_second(tmp_path, monkeypatch):
    """`DenseReader.cached` asks mincore about the file's rows at most once every
    RESIDENCY_RECHECK_S seconds (`mark_uncached` says no until then); a file larger than its
    windows in RESIDENCY_WINDOWS windows inside the rows; cached from RESIDENT_SHARE of the
    pages up, not where mincore cannot answer."""
    import vecz.formats.dense as dense

    x = _data(500, dim=40)
    info = dense.write_dense(tmp_path / "d.arrow", np.arange(500, dtype=np.int64), x, "f32")
    reader = dense.DenseReader(tmp_path, info)
    clock = [1000.0]
    answers = [1.0, dense.RESIDENT_SHARE - 1e-6, None, dense.RESIDENT_SHARE]
    asked: list[tuple[int, int]] = []

    def resident(self, start, length):
        asked.append((start, length))
        return answers[len(asked) - 1]

    monkeypatch.setattr(dense.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(dense._Mapping, "resident", resident)
    assert reader.cached() is True and asked == [(info.offset, info.rows * info.row_bytes)]
    clock[0] += 0.999 * dense.RESIDENCY_RECHECK_S
    assert reader.cached() is True and len(asked) == 1  # the last answer, not looked again
    reader.mark_uncached()  # not cached from now, whatever the last look said; no look for a second
    assert reader.cached() is False and len(asked) == 1
    clock[0] += 0.999 * dense.RESIDENCY_RECHECK_S
    assert reader.cached() is False and len(asked) == 1
    clock[0] += 0.002 * dense.RESIDENCY_RECHECK_S
    assert reader.cached() is False and len(asked) == 2  # a second passed: looked again (just under the share)
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is False and len(asked) == 3  # None (mincore failed) counts as not cached
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is True and len(asked) == 4  # exactly the share counts
    # a file larger than the windows: RESIDENCY_WINDOWS windows inside the rows, their mean
    monkeypatch.setattr(dense, "RESIDENCY_WINDOW_BYTES", 4096)
    monkeypatch.setattr(dense, "RESIDENCY_WINDOWS", 3)
    asked.clear()
    answers[:] = [1.0, 1.0, 0.96]  # mean 0.9867 < 0.99
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is False and len(asked) == 3
    assert all(info.offset <= a and a + n <= info.offset + info.rows * info.row_bytes and n == 4096
               for a, n in asked)
    asked.clear()
    answers[:] = [1.0, 1.0, 0.98]  # mean 0.9933
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is True and len(asked) == 3
    asked.clear()
    answers[:] = [1.0, None, 1.0]
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is False
    # the windows reach from the rows' first byte to their last
    asked.clear()
    answers[:] = [1.0, 1.0, 1.0]
    reader._windows = type("Ends", (), {"integers": staticmethod(lambda lo, hi, n: np.array([lo, hi - 1, hi // 2]))})
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert reader.cached() is True
    end = info.offset + info.rows * info.row_bytes
    assert asked == [(info.offset, 4096), (end - 4096, 4096), (info.offset + (end - info.offset - 4096 + 1) // 2, 4096)]
    reader.close()
    assert reader.cached() is False
    # a process that neither owns the file nor may write it is told every page is cached:
    # it never asks, and never skips its hints
    monkeypatch.setattr(dense, "_may_write", lambda path, owner: False)
    other = dense.DenseReader(tmp_path, info)
    asked.clear()
    clock[0] += dense.RESIDENCY_RECHECK_S
    assert other.cached() is False and asked == []
    other.close()


def test_may_write_decides_whether_mincore_tells_the_truth(tmp_path, monkeypatch):
    import os

    import vecz.formats.dense as dense

    path = tmp_path / "f"
    path.write_bytes(b"x")
    uid = os.stat(path).st_uid
    assert dense._may_write(path, uid) is True  # the owner
    monkeypatch.setattr(dense.os, "geteuid", lambda: uid + 12345)
    monkeypatch.setattr(dense.os, "access", lambda *a, **kw: False)
    assert dense._may_write(path, uid) is False  # neither the owner nor a writer
    monkeypatch.setattr(dense.os, "access", lambda *a, **kw: True)
    assert dense._may_write(path, uid) is True  # a writer
    # uid 0 that does not own the file and may not write it (no CAP_DAC_OVERRIDE, or another
    # uid in a user namespace): mincore would report every page cached
    monkeypatch.setattr(dense.os, "geteuid", lambda: 0)
    monkeypatch.setattr(dense.os, "access", lambda *a, **kw: False)
    assert dense._may_write(path, 4242) is False
    monkeypatch.undo()
    assert dense._may_write(tmp_path / "missing", uid + 1) is False  # not the owner, cannot write it


def test_resident_sees_evicted_pages(tmp_path):
    """`_Mapping.resident` on a real file: after its clean pages are dropped it reports
    them missing, reading rows brings their pages back, and no bytes count as cached."""
    import mmap
    import os

    import vecz.formats.dense as dense

    x = _data(4000, dim=64)  # 1 MiB of rows
    info = dense.write_dense(tmp_path / "d.arrow", np.arange(4000, dtype=np.int64), x, "f32")
    reader = dense.DenseReader(tmp_path, info)  # mapped, no page touched through the map
    length = info.rows * info.row_bytes
    fd = os.open(reader.path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    before = reader._mmap.resident(info.offset, length)
    if before is None or before > 0.5:
        pytest.skip(f"this file system keeps the pages (share {before} after POSIX_FADV_DONTNEED)")
    assert reader._mmap.resident(info.offset + 1, 0) == 1.0  # no bytes: nothing missing
    reader.read_rows(np.arange(0, 4000, 2))  # every page of the rows
    assert reader._mmap.resident(info.offset, length) == 1.0
    page = mmap.PAGESIZE
    assert reader._mmap.resident(info.offset, page) == 1.0
    reader.close()


def test_hints_go_to_the_files_not_cached(tmp_path, monkeypatch):
    """A store of two dense files, one found cached: a single query's fixed and auto
    re-ranks hint only the other file's rows, and answer as with no hints."""
    import vecz.formats.dense

    x = _data(2000)
    q = _data(6, seed=8)
    recording, hinted = _recording_will_need(lambda reader, rows: id(reader))

    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(x[:1000])
        s.add(x[1000:])
        readers = list(s._pool.readers.values())
        assert len(readers) == 2
        s.search(q[:1], 10, rerank="auto")  # the model is measured once
        warm = readers[0]
        monkeypatch.setattr(vecz.formats.dense.DenseReader, "cached", lambda self: self is warm)
        monkeypatch.setattr(vecz.formats.dense.DenseReader, "will_need", recording)
        got = [s.search(q[i:i + 1], 10, rerank=r) for r in (50, "auto") for i in range(len(q))]
        assert hinted and set(hinted) == {id(readers[1])}
        s.prefetch = False
        plain = [s.search(q[i:i + 1], 10, rerank=r) for r in (50, "auto") for i in range(len(q))]
    for a, b in zip(got, plain):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_cached_file_reads_without_page_hints(tmp_path, monkeypatch):
    """A dense file wholly in the page cache: mincore says so (`_Mapping.resident`, on the
    real file), a single query's search (fixed R and auto) asks the kernel for no pages when
    `prefetch` is None, and every answer equals the one with hints forced and with none."""
    import vecz.formats.dense

    recording, asked = _recording_will_need(lambda reader, rows: np.asarray(rows).copy())
    x = _data(400)
    q = _data(6, seed=8)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(x)
        readers = list(s._pool.readers.values())
        for reader in readers:
            reader.read_rows(np.arange(reader.info.rows))  # every page touched: in the page cache
            assert reader._mmap.resident(reader.info.offset, reader.info.rows * reader.info.row_bytes) == 1.0
            assert reader._mmap.resident(reader.info.offset, 0) == 1.0
        s.search(q[:1], 5, rerank="auto")  # the model is measured once
        monkeypatch.setattr(vecz.formats.dense.DenseReader, "will_need", recording)
        got = {}
        for prefetch in (None, True, False):
            s.prefetch = prefetch
            asked.clear()
            got[prefetch] = [s.search(q[i:i + 1], 5, rerank=r) for r in (30, "auto") for i in range(len(q))]
            assert bool(asked) == (prefetch is True)
        assert all(reader.cached() for reader in readers)
    for a, b, c in zip(got[None], got[True], got[False]):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.ids, c.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.scores, c.scores)
        assert a.stats.rows_read == b.stats.rows_read == c.stats.rows_read


def test_auto_asks_for_each_row_before_the_walk_reads_it(tmp_path, monkeypatch):
    """rerank="auto" on one query: the pages of every row the walk reads were asked of the
    kernel before it read them (the first rows together, the rest a chunk at a time when the
    walk pauses), and the answer is the one of the walk without hints."""
    import vecz.formats.dense
    import vecz.engine.search as search_mod

    # (address of the file's rows, rows)
    recording, asked = _recording_will_need(lambda reader, rows: (reader.values.ctypes.data, np.asarray(rows).copy()))
    real_resume = search_mod.dense_kernels.bounded_walk_resume
    calls = []

    def resume(*args):
        vectors, file_ix, dense_row, done = args[1], args[2], args[3], args[11]
        before = done.copy()
        paused = real_resume(*args)
        # what this call read lies within the rows asked for so far, file by file
        new = done & ~before
        for j, values in enumerate(vectors):
            seen = [r for addr, r in asked if addr == values.ctypes.data]
            seen = np.concatenate(seen) if seen else np.empty(0, dtype=np.int64)
            assert np.isin(dense_row[new & (file_ix == j)], seen).all()
        calls.append(int(new.sum()))
        return paused

    x = _data(2000)
    q = _data(12, seed=8)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(x[:1200])
        s.add(x[1200:])  # two segments, two dense files: the hints go to each
        assert len(s._pool.readers) == 2
        s.search(q[:1], 10, rerank="auto")  # the model is measured once
        monkeypatch.setattr(vecz.formats.dense.DenseReader, "cached", lambda self: False)  # as if on disk
        monkeypatch.setattr(vecz.formats.dense.DenseReader, "will_need", recording)
        monkeypatch.setattr(search_mod.dense_kernels, "bounded_walk_resume", resume)
        singles = []
        for i in range(len(q)):
            asked.clear()
            singles.append(s.search(q[i:i + 1], 10, rerank="auto"))
            assert asked  # the first rows at least
        monkeypatch.undo()
        s.prefetch = False
        plain = s.search(q, 10, rerank="auto")
    assert len(calls) > len(q)  # some walks paused for more rows
    np.testing.assert_array_equal(np.concatenate([r.ids for r in singles]), plain.ids)
    np.testing.assert_array_equal(np.concatenate([r.scores for r in singles]), plain.scores)
    np.testing.assert_array_equal([r.stats.rows_read for r in singles], plain.stats.rows_per_query)


def test_prefetch_asks_for_the_shortlist_and_changes_no_result(tmp_path, monkeypatch):
    import vecz.formats.dense

    recording, asked = _recording_will_need(lambda reader, rows: np.asarray(rows).copy())
    monkeypatch.setattr(vecz.formats.dense.DenseReader, "will_need", recording)
    monkeypatch.setattr(vecz.formats.dense.DenseReader, "cached", lambda self: False)  # as if on disk
    x = _data(300)
    q = _data(20, seed=8)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(x)
        one = s.search(q[:1], 5, rerank=30)  # auto: one query prefetches its shortlist
        assert len(asked) == 1 and asked[0].size == one.stats.rows_read == 30
        asked.clear()
        batch = s.search(q, 5, rerank=30)  # auto: a batch does not
        assert asked == []
        s.prefetch = True
        forced = s.search(q, 5, rerank=30)
        assert sum(a.size for a in asked) == 20 * 30
        s.prefetch = False
        asked.clear()
        plain = s.search(q[:1], 5, rerank=30)
        assert asked == []
    np.testing.assert_array_equal(batch.ids, forced.ids)
    np.testing.assert_array_equal(batch.scores, forced.scores)
    np.testing.assert_array_equal(one.ids, plain.ids)
    np.testing.assert_array_equal(batch.ids[:1], one.ids)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("spec", ["RB2", "IVF4,RB1", "IVF4,PQ8x8", "PQ12x4", "IVF4,PQ12x4", "SQ4", "F16"])
def test_segments_scanned_above_the_floor_give_the_merge_of_full_scans(tmp_path, metric, spec):
    # search scans the biggest segment first and every other above the depth-th best code
    # score found before it (kernels/topk.py, floors); the shortlist must be the merge of
    # every segment's full scan: segments of 900, 300, 40 and 1 rows, a batch of queries
    # (list-major and grouped drivers) and one query, duplicates across segments (equal
    # code scores: ties at the floor go to the smaller id)
    from vecz.engine.search import _shortlist, merge_shortlists
    x = _data(1241, seed=3)
    x[1200:1240] = x[:40]  # the 40-row segment repeats rows of the first
    q = _data(70, seed=4)
    with Store.create(tmp_path / "s", dim=DIM, codec=spec, metric=metric, dense=None) as s:
        s.auto_merge_rows = 0
        for a, b in ((0, 900), (900, 1200), (1200, 1240), (1240, 1241)):
            s.add(x[a:b], ids=np.arange(a, b)[::-1].copy())  # ids descending in each: ties need the key
        segs = s._segments
        assert sorted(g.live for g in segs) == [1, 40, 300, 900]
        xs = s.codec._prepare(q, "queries")
        for nq, depth, nprobe in ((70, 50, 2), (1, 50, 4), (70, 7, 4)):
            got = _shortlist(s.codec, segs, xs[:nq], depth, nprobe, False)
            plan = s.codec.plan(xs[:nq], nprobe=nprobe, sdc=False)
            parts = [seg.layout.scan(plan, min(depth, seg.live)) for seg in segs]
            sc = [p.scores for p in parts]
            keys = [np.where(p.ids >= 0, seg.ids[np.maximum(p.ids, 0)], -1) for p, seg in zip(parts, segs)]
            rows = [p.ids for p in parts]
            want_s, want_k, (want_r,) = merge_shortlists(s.codec.metric, sc, keys, [rows], depth)
            np.testing.assert_array_equal(got[3], want_k)
            np.testing.assert_array_equal(got[0], want_s)
            np.testing.assert_array_equal(got[2], want_r)
            assert (got[1][want_k >= 0] >= 0).all()
        # the threshold itself (user's convention, float64 rounded to what float32 scores
        # can reach): the full scan minus the rows that miss it, in order, padded
        worst = np.inf if metric == "l2" else -np.inf
        plan = s.codec.plan(xs, nprobe=2, sdc=False)
        for seg in segs:
            full = seg.layout.scan(plan, 30)
            pick = np.minimum(np.arange(70) % 12, max(0, min(seg.live, 30) - 1))
            t = np.take_along_axis(full.scores, pick[:, None], 1)[:, 0].astype(np.float64)
            t[::5] += (1e-9 if metric == "l2" else -1e-9)  # between two float32: keeps that row
            t[1::5] -= (1e-9 if metric == "l2" else -1e-9)  # drops it
            t[2::7] = worst
            cut = seg.layout.scan(plan, 30, t)
            for i in range(70):
                keep = (full.ids[i] >= 0) & ((full.scores[i] <= t[i]) if metric == "l2" else (full.scores[i] >= t[i]))
                n = int(keep.sum())
                np.testing.assert_array_equal(cut.ids[i, :n], full.ids[i][keep])
                np.testing.assert_array_equal(cut.scores[i, :n], full.scores[i][keep])
                assert (cut.ids[i, n:] == -1).all() and (cut.scores[i, n:] == worst).all()
        with pytest.raises(InvalidInput, match="NaN"):
            segs[0].layout.scan(plan, 5, np.full(70, np.nan))
        with pytest.raises(InvalidInput, match="shape"):
            segs[0].layout.scan(plan, 5, np.zeros(3))


def test_search_scans_the_biggest_segment_first_and_the_rest_above_its_floor(tmp_path, monkeypatch):
    from vecz.engine.layout import CodeIndex
    calls = []
    scan = CodeIndex._scan

    def spy(self, plan, k, floors):
        out = scan(self, plan, k, floors)
        calls.append((int(self._sizes.sum()), np.array(floors), out))
        return out

    x = _data(1300, seed=5)
    with Store.create(tmp_path / "s", dim=DIM, codec="PQ12x4", metric="ip", dense="f16") as s:
        s.auto_merge_rows = 0
        s.add(x[:100])
        s.add(x[100:1300])
        monkeypatch.setattr(CodeIndex, "_scan", spy)
        s.search(_data(9, seed=6), 10, rerank=20)
    (n0, t0, out0), (n1, t1, out1) = calls
    assert (n0, n1) == (1200, 100) and (t0 == -np.inf).all()
    np.testing.assert_array_equal(t1, out0[0][:, 19])  # the 20th best of the big one
    assert ((out1[0] >= t1[:, None]) | (out1[1] < 0)).all()


@pytest.mark.parametrize("codec,metric", [("PQ12x8", "cosine"), ("IVF4,PQ12x4", "l2"), ("IVF4,RB1", "l2")])
def test_search_plans_a_batch_by_chunks_within_the_table_budget(tmp_path, monkeypatch, codec, metric):
    # a store's batch is planned by chunks of Codec.queries_per_plan queries (each plan's
    # tables within CodeIndex.TABLE_BUDGET), over several segments, with the same results as
    # one plan of the whole batch
    from vecz.engine.layout import CodeIndex
    x = _data(700, seed=7)
    q = _data(23, seed=8)
    nprobe = 2 if codec.startswith("IVF") else 1
    with Store.create(tmp_path / "s", dim=DIM, codec=codec, metric=metric, dense="f32") as s:
        s.auto_merge_rows = 0
        s.add(x[:500])
        s.add(x[500:])
        want = s.search(q, 7, nprobe=nprobe, rerank=15)
        nqs = []
        plan = s.codec._plan_rows  # what the search plans with (its queries already checked)

        def spy(queries, *args):
            nqs.append(len(queries))
            return plan(queries, *args)

        monkeypatch.setattr(s.codec, "_plan_rows", spy)
        monkeypatch.setattr(CodeIndex, "TABLE_BUDGET", 5 * s.codec.quantizer.table_bytes(s.codec.width))
        assert s.codec.queries_per_plan(nprobe) == 5
        got = s.search(q, 7, nprobe=nprobe, rerank=15)
        assert nqs == [5, 5, 5, 5, 3]
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.parametrize("codec", ["RB1", "IVF4,RB2"])
def test_search_sdc_scores_a_stores_rb_codes_symmetrically(tmp_path, codec):
    # a store's segments keep no row codes (the fast-scan blocks hold the bits): sdc=True
    # scores from the blocks, across segments and deletes, the same as an index that keeps
    # its rows; it used to refuse every store. Behind IVF under l2 the blocks hold each
    # row's own-list term in place of |r|^2, which the symmetric scan makes back
    # (`RB._sdc_factors`) to within float32 rounding
    x = _data(500, seed=9)
    q = _data(6, seed=10)
    nprobe = 2 if codec.startswith("IVF") else 1
    with Store.create(tmp_path / "s", dim=DIM, codec=codec, metric="l2", dense="f32") as s:
        s.auto_merge_rows = 0
        s.add(x[:300])
        s.add(x[300:])
        s.delete(np.arange(0, 500, 7))
        got = s.search(q, 8, nprobe=nprobe, rerank=0, sdc=True)
        live = np.setdiff1d(np.arange(500), np.arange(0, 500, 7))
        enc = s.codec.encode(x[live])
        want = s.codec.index(enc.codes, enc.lists, live, keep_rows=True).search(q, 8, nprobe=nprobe, sdc=True)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
        layouts = [seg.built for seg in s._segments if seg is not None and seg.built is not None]
        assert layouts and all(lay.rb_own_terms == codec.startswith("IVF") for lay in layouts)
        assert all((getattr(lay, "rb_sdc_factors", None) is not None) == lay.rb_own_terms for lay in layouts)
        exact = s.search(q, 8, nprobe=nprobe, rerank=40, sdc=True)  # a shortlist by sdc scores, re-ranked
        assert (exact.ids >= 0).all() and not np.isin(exact.ids, np.arange(0, 500, 7)).any()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_scan_threshold_at_zero_returns_no_row_below_it(tmp_path, metric):
    # the kernels let rows within FLT_MIN below a floor of 0 through (kernels/topk.py
    # `below`); CodeIndex.scan's threshold is exact: score >= 0 (ip), distance <= 0 (l2)
    tiny = np.finfo(np.float32).tiny
    e = np.eye(4, dtype=np.float32)
    if metric == "ip":
        rows = np.stack([e[1], -tiny * e[0], -1e-39 * e[0], -e[0], 1e-39 * e[0]])  # scores 0, -tiny, -1e-39, -1, 1e-39
        want = {0, 4}
    else:
        rows = np.stack([e[0], e[0] + 1e-20 * e[1], e[1], e[0] * 2])  # distances 0, 1e-40 (subnormal), 2, 1
        want = {0}
    with Store.create(tmp_path / "s", dim=4, codec="Flat", metric=metric, dense=None) as s:
        s.add(rows)
        layout = s._segments[0].layout
        plan = s.codec.plan(e[:1].copy(), nprobe=1, sdc=False)
        full = layout.scan(plan, 5)
        got = layout.scan(plan, 5, np.zeros(1))
        keep = (full.scores[0] >= 0) if metric == "ip" else (full.scores[0] <= 0)
        assert set(got.ids[0][got.ids[0] >= 0].tolist()) == set(full.ids[0][keep].tolist()) == want


def test_memory_bytes_count_the_l2_terms_a_search_derives(tmp_path):
    # an l2 IVF PQ store's first search derives the per-list terms of its tables (nlist x M x
    # 256 float32, engine/quantizers.py PQ.probe_tables) and the books' transposed copy the
    # tables are made from (`pq.pq_lut_books`, the books' size): RAM the codec holds, reported
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=16, metric="l2", codec="IVF4,PQ4x8", dense="f32") as st_:
        st_.add(x)
        before = st_.memory_bytes()["codec"]
        st_.search(x[:3], k=5, nprobe=2, rerank=10)
        books = st_.codec.state()["pq_books"].nbytes
        assert st_.memory_bytes()["codec"] == before + 4 * 4 * 256 * 4 + books
    # flat PQ under l2: the books' transposed copy and their squared lengths (M x 256 float32,
    # `pq.pq_book_norms`), made once for the tables of every search
    with Store.create(tmp_path / "f", dim=16, metric="l2", codec="PQ4x8", dense="f32") as st_:
        st_.add(x)
        before = st_.memory_bytes()["codec"]
        st_.search(x[:3], k=5, rerank=10)
        books = st_.codec.state()["pq_books"].nbytes
        assert st_.memory_bytes()["codec"] == before + books + 4 * 256 * 4


@pytest.mark.parametrize("metric,spec,dense", [("cosine", "IVF4,PQ8x4", "f16"), ("l2", "RB2", "f32"),
                                               ("ip", "SQ8", "f32")])
def test_few_queries_rerank_the_same_as_a_batch(tmp_path, monkeypatch, metric, spec, dense):
    # fewer than PARALLEL_MIN_QUERIES queries whose candidates lie in one segment with one
    # dense file re-rank in three compiled calls (`search._rerank`); a batch takes the
    # general path (`_exact`). Both give the same ids, scores and rows read, whether the
    # segment maps its rows into the file (compacted) or not, and with several segments or
    # dense files (the general path for all); the spy checks which path ran
    from vecz.engine import merge, search
    calls = {"fast": 0, "general": 0}
    orig_exact, orig_rows = search._exact, search.dense_kernels.rerank_rows
    monkeypatch.setattr(search, "_exact", lambda *a: calls.__setitem__("general", calls["general"] + 1)
                        or orig_exact(*a))
    monkeypatch.setattr(search.dense_kernels, "rerank_rows", lambda *a: calls.__setitem__("fast", calls["fast"] + 1)
                        or orig_rows(*a))
    x = _data(700, seed=5)
    x[650:] = x[:50]  # duplicates: equal exact scores, ties to the smaller id
    q = _data(12, seed=6)
    with Store.create(tmp_path / "s", dim=DIM, codec=spec, metric=metric, dense=dense) as s:
        s.auto_merge_rows = 0
        s.add(x[:400])

        def check(fast_alone: bool) -> None:
            for rerank in (10, 40, 2000):
                calls.update(fast=0, general=0)
                batch = s.search(q, 7, rerank=rerank)
                assert calls == {"fast": 0, "general": 1}
                # one query (2-D), one query (1-D), three queries: each row of the batch
                for part, sel in ((q[:1], [0]), (q[3], [3]), (q[4:7], [4, 5, 6])):
                    calls.update(fast=0, general=0)
                    got = s.search(part, 7, rerank=rerank)
                    assert calls == ({"fast": 1, "general": 0} if fast_alone else {"fast": 0, "general": 1})
                    np.testing.assert_array_equal(got.ids, batch.ids[sel])
                    np.testing.assert_array_equal(got.scores.view(np.int32), batch.scores[sel].view(np.int32))
                alone = [s.search(q[i], 7, rerank=rerank) for i in range(len(q))]
                assert sum(r.stats.rows_read for r in alone) == batch.stats.rows_read
                assert sum(r.stats.bytes_read for r in alone) == batch.stats.bytes_read
                np.testing.assert_array_equal(np.concatenate([r.ids for r in alone]), batch.ids)

        check(True)  # one segment, its rows one to one in its file
        s.add(x[400:])
        check(False)  # two segments: candidates in both
        monkeypatch.setattr(merge, "DENSE_COPY_BYTES", 0)
        s.compact()
        assert len(s._segments) == 1 and len(s._segments[0].dense) == 2
        check(False)  # one segment over two dense files
        monkeypatch.setattr(merge, "DENSE_COPY_BYTES", 1 << 30)
        s.add(x[:3])
        s.compact()
        assert len(s._segments) == 1 and len(s._segments[0].dense) == 1 and s._segments[0].dense_row is not None
        check(True)  # compacted: rows mapped into one new file


@pytest.mark.parametrize("spec,metric", [("IVF4,OPQ8x4", "cosine"), ("IVF4,RB1", "l2"), ("OPQ8x8", "ip")])
def test_a_lone_query_sets_no_blas_thread_count(tmp_path, monkeypatch, spec, metric):
    # a lone query's rotation and probe are compiled loops, so its search enters no BLAS
    # scope (engine/threads.py); two queries do, once; the lone query's answer is the one
    # it gets in a batch
    from vecz.engine import threads
    entered = []
    real = threads._SerialBlas.__enter__
    monkeypatch.setattr(threads._SerialBlas, "__enter__", lambda self: entered.append(1) or real(self))
    x = _data(600, seed=7)
    q = _data(9, seed=8)
    with Store.create(tmp_path / "s", dim=DIM, codec=spec, metric=metric, dense="f32") as s:
        s.add(x)
        s.search(q, 5, rerank=50)  # layouts built, calibration aside
        entered.clear()
        alone = [s.search(q[i], 5, rerank=50) for i in range(len(q))]
        assert entered == []
        both = s.search(q[:2], 5, rerank=50)
        assert entered == [1]
        batch = s.search(q, 5, rerank=50)
        np.testing.assert_array_equal(np.concatenate([a.ids for a in alone]), batch.ids)
        np.testing.assert_array_equal(both.ids, batch.ids[:2])


def test_the_largest_id_commits_a_store_that_opens_again(tmp_path):
    """id 2**63-1 makes next_id 2**63: the manifest parser refused it, so every version
    after such an add failed to open (for readers and the writer alike)."""
    top = (1 << 63) - 1
    x = _data(4)
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(x[:1], ids=[top - 1])
        assert s.add(x[1:2]).tolist() == [top]  # the last automatic id
        with pytest.raises(InvalidInput, match="exceed int64"):
            s.add(x[2:3])
        s.add(x[2:3], ids=[3])
    with Store.open(tmp_path / "s", mode="a") as s:
        assert s.next_id == 1 << 63 and s.ids().tolist() == [3, top - 1, top]
        np.testing.assert_array_equal(s.get([top, 3]), x[[1, 2]])
        s.add(x[3:], ids=[4])
    assert check_store(tmp_path / "s") == []


def test_a_build_record_that_is_not_an_object_is_refused_before_any_commit(tmp_path):
    """add(build_progress=) took any JSON value and committed a manifest whose 'build'
    field no reader accepts: the store no longer opened."""
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(3))
        for bad in (["src.npy", 10], "x", 5):
            with pytest.raises(InvalidInput, match="build_progress: expected a dict"):
                s.add(_data(2), build_progress=bad)
        assert s.version == 2 and len(s) == 3
        s.add(_data(2), build_progress={"rows": (1, 2), "by_file": {3: 4}})
        assert s.build_record == {"rows": [1, 2], "by_file": {"3": 4}}  # as a reader reads it (it kept tuples)
    with Store.open(tmp_path / "s") as r:
        assert len(r) == 5 and r.build_record == {"rows": [1, 2], "by_file": {"3": 4}}


def test_publish_refuses_a_manifest_no_reader_accepts(tmp_path):
    """The last guard: a body that would not parse is never linked, and the files of the
    commit are removed, so the store opens at its last version."""
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(3))
        body = s._body.to_json() | {"version": s.version + 1, "parent": s.version, "next_serial": 0}
        (tmp_path / "s" / "stray").write_bytes(b"x")
        with pytest.raises(InvalidInput, match="would not read back.*next_serial"):
            s._lock.publish(s.version + 1, body, ["stray"], "test")
        assert not (tmp_path / "s" / "stray").exists()
    with Store.open(tmp_path / "s") as r:
        assert r.version == 2 and len(r) == 3


def test_in_answers_false_for_what_is_not_an_int64_id(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="RB1") as s:
        s.add(_data(10))
        s.delete([7])
        assert 5 in s and np.int32(5) in s and np.uint64(5) in s
        assert 7 not in s and 10 not in s and -1 not in s
        for other in (5.7, 9.99, 5.0, "5", "a", None, 2 ** 70, -(2 ** 70), np.uint64(2 ** 64 - 1), True, [1, 2]):
            assert other not in s, other
