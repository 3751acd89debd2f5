"""Query plans scanned over many layouts, and deletes at scan time (engine/layout.py).

- `Codec.plan` once + `CodeIndex.scan` over layouts built from a split of the codes, merged
  by score (ties by smaller id), equals `search` over one layout of all the codes: ids and
  scores bit for bit, for every quantizer family with and without IVF, every metric, RB's
  symmetric scoring, k > n, one row, empty parts.
- `CodeIndex.mark_dead` gives exactly the search over the codes without those rows, on
  every kernel path: one query, groups of queries (multi-query fast scan), IVF list-major
  batches (`LIST_MIN_QUERIES`, `LIST_MIN_QUERIES_PQ`), the parallel drivers
  (`PARALLEL_MIN_QUERIES`); marking twice, marking everything, sparse and repeated ids.
- Every scan kernel skips rows whose id is < 0 (the oracle is the kernel's own full
  ranking without those rows), and `plan`/`scan` keep the small-batch thread policy.

Data are small Gaussian clusters (a few hundred rows of width 12); codecs are trained once
per (spec, metric).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

from vecz.engine import quantizers
from vecz.engine.codecs import Codec, CodeIndex, QueryPlan, ScanResult
from vecz.engine.errors import InvalidInput
from vecz.kernels import binary, dense, fastscan, pq, scalar
from tests.reference.topk import assert_floored, draw_floors, no_floors

METRICS = ("cosine", "ip", "l2")
SPECS = ["Flat", "F16", "SQ8", "SQ4", "PQ4x8", "PQ6x4", "RB1", "RB2",
         "IVF4,Flat", "IVF3,F16", "IVF4,SQ8", "IVF3,SQ4", "IVF4,PQ4x8", "IVF4,PQ6x4", "IVF4,RB1", "IVF3,RB2",
         "MRL9,IVF3,PQ5x4", "MRL10,RB3"]
DIM = 12
# query counts that reach every driver: one query (serial threads), a few (serial, groups),
# PARALLEL_MIN_QUERIES (parallel drivers), past LIST_MIN_QUERIES (RB list-major with IVF),
# past LIST_MIN_QUERIES_PQ (PQ x4 list-major with IVF)
NQS = (1, 3, CodeIndex.PARALLEL_MIN_QUERIES, CodeIndex.LIST_MIN_QUERIES + 1, CodeIndex.LIST_MIN_QUERIES_PQ + 4)

# every (spec, metric) is a test case of its own; hypothesis draws the rest
SETTINGS = settings(max_examples=6, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=3)


def _clusters(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM)) * 3.0
    return (centres[rng.integers(0, 6, n)] + rng.normal(size=(n, DIM))).astype(np.float32)


X = _clusters(300, 0)
X[40:48] = X[3]  # duplicate rows: equal scores, ties broken by id
Q = _clusters(max(NQS), 1)


@functools.lru_cache(maxsize=None)
def _codec(spec: str, metric: str) -> Codec:
    return Codec(spec, DIM, metric, seed=3).train(X)


@functools.lru_cache(maxsize=None)
def _codes(spec: str, metric: str):
    return _codec(spec, metric).encode(X)


def _merge(parts: list[ScanResult], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference merge of per-layout top-k lists: best score first (l2: smallest),
    equal scores by smaller id, padded with -1 and the worst score."""
    scores = np.concatenate([p.scores for p in parts], axis=1)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    nq = scores.shape[0]
    worst = np.inf if metric == "l2" else -np.inf
    out_s = np.full((nq, k), worst, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for r in range(nq):
        real = ids[r] >= 0
        s, i = scores[r][real], ids[r][real]
        order = np.lexsort((i, s if metric == "l2" else -s))[:k]
        out_s[r, : len(order)] = s[order]
        out_i[r, : len(order)] = i[order]
    return out_s, out_i


def _assert_same(got, want) -> None:
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def _worst(metric: str) -> float:
    return np.inf if metric == "l2" else -np.inf


# --------------------------------------------------------------------------- plan once, scan many


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("spec", SPECS)
@SETTINGS
@given(n=st.sampled_from([1, 2, 37, 150, 300]),
       cuts=st.lists(st.floats(0, 1), max_size=4), nq=st.sampled_from(NQS), k=st.integers(1, 40),
       nprobe=st.integers(1, 4), sdc=st.booleans(), local_ids=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_plan_then_scan_of_split_layouts_equals_search(spec, metric, n, cuts, nq, k, nprobe, sdc, local_ids, seed):
    codec = _codec(spec, metric)
    sdc = sdc and codec.quantizer.has_sdc
    enc = _codes(spec, metric)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(300)[:n]  # which rows, in which order
    codes, lists = enc.codes[rows], enc.lists[rows]
    q = Q[rng.permutation(len(Q))[:nq]]
    k = k if rng.random() < 0.7 else n + k  # k > n too
    ref = codec.index(codes, lists).search(q, k, nprobe=nprobe, sdc=sdc)

    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    plan = codec.plan(q, nprobe=nprobe, sdc=sdc)
    assert isinstance(plan, QueryPlan) and plan.nq == nq and plan.lists_probed == ref.stats.lists_probed
    parts = [codec.index(codes[:0], lists[:0]).scan(plan, k)]  # an empty layout adds nothing
    candidates = parts[0].candidates
    for a, b in zip(bounds[:-1], bounds[1:]):
        # the store's way: segment-local ids 0..len-1, mapped back to global row numbers
        ids = None if local_ids else np.arange(a, b)
        res = codec.index(codes[a:b], lists[a:b], ids).scan(plan, k)
        assert res.scores.dtype == np.float32 and res.ids.dtype == np.int64 and res.scores.shape == (nq, k)
        got_ids = np.where(res.ids >= 0, res.ids + a, -1) if local_ids else res.ids
        parts.append(ScanResult(res.scores, got_ids, res.candidates))
        candidates += res.candidates
    _assert_same(_merge(parts, k, metric), ref)
    assert candidates == ref.stats.candidates
    # and the plan is reusable: scanning the whole layout with it is the search itself
    _assert_same(codec.index(codes, lists).scan(plan, k)[:2], ref)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("spec", ["Flat", "SQ4", "PQ4x8", "PQ6x4", "RB2", "IVF3,RB1"])
def test_plan_of_no_queries_and_of_one_row(spec, metric):
    codec = _codec(spec, metric)
    enc = _codes(spec, metric)
    one = codec.index(enc.codes[7:8], enc.lists[7:8], ids=[41])
    res = one.scan(codec.plan(Q[:2], nprobe=3), 4)
    assert (res.ids[:, 0] == 41).all() and (res.ids[:, 1:] == -1).all()
    assert np.isfinite(res.scores[:, 0]).all() and (res.scores[:, 1:] == _worst(metric)).all()
    empty = codec.plan(Q[:0], nprobe=2)
    assert empty.nq == 0
    res = one.scan(empty, 3)
    assert res.scores.shape == (0, 3) and res.ids.shape == (0, 3) and res.candidates == 0


def test_scan_refuses_a_plan_of_another_codec_and_bad_k():
    a = _codec("PQ4x8", "ip")
    other = Codec("PQ4x8", DIM, "ip", seed=4).train(X)  # same spec, trained otherwise
    index = a.index(*_codes("PQ4x8", "ip"))
    with pytest.raises(InvalidInput):
        index.scan(other.plan(Q[:2]), 3)
    with pytest.raises(InvalidInput):
        index.scan(Q[:2], 3)
    for bad in (0, -1, 2.5, None):
        with pytest.raises(InvalidInput):
            index.scan(a.plan(Q[:2]), bad)
    # an equal codec (same config and state, another object) is accepted
    twin = Codec.from_config(a.to_config(), a.state())
    _assert_same(index.scan(twin.plan(Q[:3]), 5)[:2], index.search(Q[:3], 5))
    with pytest.raises(InvalidInput):
        a.plan(Q[:2], nprobe=0)
    with pytest.raises(InvalidInput):
        a.plan(Q[:2], sdc=True)


def test_queries_per_plan_bounds_the_tables(monkeypatch):
    # PQ under l2 on residuals: at 8 bits the scan makes each probe's table from one
    # inner-product table a query and the per-list terms (engine/quantizers.py
    # PQ.probe_tables); at 4 bits one table a query serves every list, each row's own-list
    # term in the layout (PQ.own_list_tables). A query's tables count once (4 * 16 float
    # bytes per sub-quantizer at 4 bits, 4 * 256 at 8), unless the 8-bit list terms are
    # over their budget: then one table per probed list
    codec = _codec("IVF4,PQ4x4", "l2")
    assert codec.queries_per_plan(nprobe=2) == CodeIndex.TABLE_BUDGET // (4 * 4 * 16)
    monkeypatch.setattr(CodeIndex, "TABLE_BUDGET", 4 * 4 * 16 * 3 * 5)
    assert codec.queries_per_plan(nprobe=3) == 15
    plan = codec.plan(Q[:5], nprobe=3)
    assert plan.tables["qluts"].shape[:2] == (5, 1) and plan.tables["q_sq"].shape == (5, 3)
    enc = _codes("IVF4,PQ4x4", "l2")
    index = codec.index(*enc)
    _assert_same(index.search(Q[:23], 9, nprobe=3), index.scan(codec.plan(Q[:23], nprobe=3), 9)[:2])
    # RB likewise, except symmetric scoring: it encodes each probe's residual
    rb = _codec("IVF4,RB1", "l2")
    unit = rb.quantizer.table_bytes(rb.width)
    monkeypatch.setattr(CodeIndex, "TABLE_BUDGET", unit * 3 * 5)
    assert rb.queries_per_plan(nprobe=3) == 15 and rb.queries_per_plan(nprobe=3, sdc=True) == 5
    codec8 = _codec("IVF4,PQ4x8", "l2")
    monkeypatch.setattr(CodeIndex, "TABLE_BUDGET", 4 * 4 * 256 * 5)
    assert codec8.queries_per_plan(nprobe=3) == 5
    assert codec8.plan(Q[:5], nprobe=3).tables["ip2"].shape == (5, 4, 256)
    monkeypatch.setattr(quantizers, "LIST_TERMS_BUDGET", 0)
    assert codec8.queries_per_plan(nprobe=3) == 1
    assert codec8.plan(Q[:5], nprobe=3).tables["luts"].shape == (5, 3, 4, 256)
    monkeypatch.setattr(CodeIndex, "TABLE_BUDGET", 4 * 4 * 16 * 3 * 5)
    assert codec.queries_per_plan(nprobe=3) == 15 and codec.queries_per_plan(nprobe=99) == 15  # no list terms
    # search plans by chunks of that size: the same results as one plan
    got = index.search(Q[:23], 9, nprobe=3)
    _assert_same(got, index.scan(codec.plan(Q[:23], nprobe=3), 9)[:2])


# --------------------------------------------------------------------------- deletes at scan time


@pytest.mark.parametrize("nq", NQS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("spec", SPECS)
@FEW
@given(n=st.sampled_from([1, 33, 300]),
       dead_fraction=st.sampled_from([0.0, 0.1, 0.5, 0.97, 1.0]), k=st.integers(1, 40),
       nprobe=st.integers(1, 4), keep_rows=st.booleans(), sdc=st.booleans(),
       id_kind=st.sampled_from(["rows", "sparse", "shuffled"]), seed=st.integers(0, 2**32 - 1))
def test_mark_dead_equals_search_without_those_rows(spec, metric, n, dead_fraction, nq, k, nprobe, keep_rows, sdc,
                                                    id_kind, seed):
    codec = _codec(spec, metric)
    sdc = sdc and codec.quantizer.has_sdc  # without kept rows: the popcount words from the blocks
    enc = _codes(spec, metric)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(300)[:n]
    codes, lists = enc.codes[rows], enc.lists[rows]
    ids = {"rows": np.arange(n), "sparse": 10**12 + 7 * rng.permutation(n),  # the sorted map, not the inverse
           "shuffled": rng.permutation(n)}[id_kind].astype(np.int64)
    dead = rng.random(n) < dead_fraction
    q = Q[rng.permutation(len(Q))[:nq]]
    index = codec.index(codes, lists, ids, keep_rows=keep_rows)
    # in two calls that overlap, with an id the index does not hold
    first = ids[dead][: int(dead.sum()) // 2 + 1]
    assert index.mark_dead(np.append(first, -5)) == first.size
    assert index.mark_dead(ids[dead]) == int(dead.sum()) - first.size
    assert index.n_dead == int(dead.sum()) and len(index) == n
    got = index.search(q, k, nprobe=nprobe, sdc=sdc)
    # the reference keeps its rows: an index without them (symmetric scoring from the
    # blocks) must score the same
    ref = codec.index(codes[~dead], lists[~dead], ids[~dead], keep_rows=True).search(q, k, nprobe=nprobe, sdc=sdc)
    _assert_same(got, ref)
    assert got.stats.candidates >= ref.stats.candidates  # dead rows are still scanned


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("spec", SPECS)
def test_marking_every_row_returns_nothing(spec, metric):
    codec = _codec(spec, metric)
    enc = _codes(spec, metric)
    index = codec.index(*enc)
    assert index.mark_dead(np.arange(300)) == 300
    assert index.mark_dead(np.arange(300)) == 0  # again: nothing new
    assert index.n_dead == 300
    for nq in NQS:
        for sdc in ((False, True) if codec.quantizer.has_sdc else (False,)):
            scores, ids = index.search(Q[:nq], 5, nprobe=codec.nlist, sdc=sdc)
            assert (ids == -1).all() and (scores == _worst(metric)).all()


def test_mark_dead_twice_and_repeated_ids():
    codec = _codec("IVF4,RB2", "cosine")
    enc = _codes("IVF4,RB2", "cosine")
    ids = np.repeat(np.arange(150), 2)  # every id on two rows
    index = codec.index(enc.codes, enc.lists, ids)
    assert index.mark_dead([3, 3, 3]) == 2  # both rows of id 3
    assert index.mark_dead(np.array([3], dtype=np.uint32)) == 0
    assert index.mark_dead([]) == 0 and index.n_dead == 2
    _, got = index.search(Q[:20], 300, nprobe=4)
    assert not (got == 3).any() and ((got >= 0).sum(axis=1) == 298).all()
    with pytest.raises(InvalidInput):
        index.mark_dead([1.5])


def test_mark_dead_builds_its_map_once_and_counts_it():
    codec = _codec("PQ6x4", "l2")
    index = codec.index(*_codes("PQ6x4", "l2"), keep_rows=False)
    before = index.nbytes
    index.mark_dead([5])
    assert index.nbytes > before  # the position map, once
    after = index.nbytes
    index.mark_dead([6, 7])
    assert index.nbytes == after and index.n_dead == 3


# --------------------------------------------------------------------------- kernels skip ids < 0


def _oracle(kernel_all, kernel_k, ids, dead, k):
    """A kernel run with dead ids set to -1 must equal its own full ranking (k = n, nothing
    dead) with the dead rows removed, cut to k."""
    full_s, full_i = kernel_all
    got_s, got_i = kernel_k
    dead_ids = set(ids[dead].tolist())
    for r in range(full_s.shape[0]):
        keep = np.array([i >= 0 and int(i) not in dead_ids for i in full_i[r]], dtype=bool)
        want_s, want_i = full_s[r][keep][:k], full_i[r][keep][:k]
        np.testing.assert_array_equal(got_i[r, : len(want_i)], want_i)
        np.testing.assert_array_equal(got_s[r, : len(want_s)], want_s)
        assert (got_i[r, len(want_i):] == -1).all() and (got_s[r, len(want_s):] == -np.inf).all()


@settings(max_examples=30, deadline=None, database=None)
@given(n=st.integers(1, 90), nq=st.integers(1, 4), k=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_row_scan_kernels_skip_negative_ids(n, nq, k, seed):
    rng = np.random.default_rng(seed)
    dim, m = 10, 5
    ids = rng.permutation(4 * n)[:n].astype(np.int64)
    dead = rng.random(n) < 0.4
    marked = np.where(dead, -1, ids)
    offsets = np.array([0, n // 3, n], dtype=np.int64)
    probes = np.tile(np.array([1, 0], dtype=np.int64), (nq, 1))
    bias = rng.normal(size=(nq, 2)).astype(np.float32)
    q_sq = np.abs(rng.normal(size=(nq, 2))).astype(np.float32)

    def check(kernel, *args, tail=(), floored=True):
        # kernel(*args, ids, offsets, probes, bias, *tail, k[, floors])
        def run(i, kk, fl=None):
            if not floored:
                return kernel(*args, i, offsets, probes, bias, *tail, kk)
            return kernel(*args, i, offsets, probes, bias, *tail, kk, no_floors(probes) if fl is None else fl)
        _oracle(run(ids, n), run(marked, k), ids, dead, k)
        if floored:  # a floor (the engine's threshold for a later segment) only drops the rows below it
            s, i = run(marked, k)
            floors = draw_floors(s, i, rng)
            assert_floored(*run(marked, k, floors), s, i, floors)

    # PQ x8
    luts = rng.normal(size=(nq, 1, m, 256)).astype(np.float32)
    check(pq.pq_lut_scan_batch, luts, rng.integers(0, 256, size=(n, m)).astype(np.uint8))
    # SQ8 / SQ4, ip and l2
    for nbits, is_l2 in ((8, False), (8, True), (4, False), (4, True)):
        sq_codes = rng.integers(0, 256, size=(n, dim if nbits == 8 else dim // 2)).astype(np.uint8)
        w = rng.normal(size=(nq, dim)).astype(np.float32)
        c = rng.normal(size=(nq, 1, dim)).astype(np.float32)
        check(scalar.sq_scan_batch, w, c, sq_codes, tail=(nbits, is_l2))
    # Flat and F16 rows
    qs = rng.normal(size=(nq, 1, dim)).astype(np.float32)
    for rows in (rng.normal(size=(n, dim)).astype(np.float32),
                 rng.normal(size=(n, dim)).astype(np.float16).view(np.uint16)):
        for is_l2 in (False, True):
            check(dense.dense_scan_batch, qs, rows, tail=(is_l2,))
    # RB: asymmetric float tables, symmetric popcount
    levels, nbytes = 2, 2
    bits = rng.integers(0, 256, size=(n, levels, nbytes)).astype(np.uint8)
    factors = np.abs(rng.normal(size=(n, 2))).astype(np.float32)
    rb_luts = rng.normal(size=(nq, 1, levels * nbytes, 256)).astype(np.float32)
    words = binary.rb_words(bits)
    q_words = binary.rb_words(rng.integers(0, 256, size=(nq, levels, nbytes)).astype(np.uint8))[:, None]
    q_scale = np.abs(rng.normal(size=(nq, 1))).astype(np.float32)
    for is_l2 in (False, True):
        check(binary.rb_lut_scan_batch, rb_luts, bits.reshape(n, -1), factors, tail=(q_sq, is_l2), floored=False)
        check(binary.rb_sdc_scan_batch, q_words, q_scale, words, factors, tail=(q_sq, is_l2, 8 * nbytes))
    # plain Hamming (no lists)
    db, qw = np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(q_words[:, 0, 0])
    _oracle(binary.hamming_scan_batch(qw, db, ids, n), binary.hamming_scan_batch(qw, db, marked, k), ids, dead, k)


@settings(max_examples=30, deadline=None, database=None)
@given(n=st.integers(1, 200), nq=st.integers(1, 2 * fastscan.LANES + 3), k=st.integers(1, 30),
       levels=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
def test_fast_scan_drivers_skip_negative_ids(n, nq, k, levels, seed):
    # the drivers skip padding rows (id -1) already; rows marked dead are the same to them
    rng = np.random.default_rng(seed)
    m = 4 * levels
    ids = rng.permutation(4 * n)[:n].astype(np.int64)
    dead = rng.random(n) < 0.4
    offsets = np.array([0, n // 2, n], dtype=np.int64)
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, ids, offsets)
    marked = block_ids.copy()
    marked[np.isin(marked, ids[dead])] = -1
    qluts, steps, biases = fastscan.fs_quantize_lut(rng.normal(size=(nq, 1, m // levels, 16)).astype(np.float32))
    probes = np.tile(np.array([0, 1], dtype=np.int64), (nq, 1))
    bias = rng.normal(size=(nq, 2)).astype(np.float32)
    q_sq = np.abs(rng.normal(size=(nq, 2))).astype(np.float32)
    groups = np.append(np.arange(0, nq, fastscan.LANES), nq).astype(np.int64)
    rf = fastscan.fs_row_values(np.abs(rng.normal(size=(n, 2))).astype(np.float32), block_ids.shape[0], offsets)
    runs = []

    def _floors(fl):
        return no_floors(qluts) if fl is None else fl

    if levels == 1:  # PQ x4 drivers: (qluts, steps, biases, blocks, block_ids, block_offsets, probes, bias, ...)
        runs += [
            lambda b, kk, fl=None: fastscan.fs_scan_batch(qluts, steps, biases, blocks, b, block_offsets, probes,
                                                          bias, kk, _floors(fl)),
            lambda b, kk, fl=None: fastscan.fs_scan_multi_batch(qluts, steps, biases, blocks, b, block_offsets,
                                                                probes, bias, groups, kk, _floors(fl)),
            lambda b, kk, fl=None: fastscan.fs_scan_lists_batch(qluts, steps, biases, blocks, b, block_offsets,
                                                                probes, bias, kk, _floors(fl), 2),
        ]
    for l2 in (False, True):  # RB drivers
        runs += [
            lambda b, kk, fl=None, l2=l2: fastscan.fs_scan_factors_batch(
                qluts, steps, biases, levels, blocks, b, rf, block_offsets, probes, bias, q_sq, l2, kk, _floors(fl)),
            lambda b, kk, fl=None, l2=l2: fastscan.fs_scan_factors_multi_batch(
                qluts, steps, biases, levels, blocks, b, rf, block_offsets, probes, bias, q_sq, l2, groups, kk,
                _floors(fl)),
            lambda b, kk, fl=None, l2=l2: fastscan.fs_scan_factors_lists_batch(
                qluts, steps, biases, levels, blocks, b, rf, block_offsets, probes, bias, q_sq, l2, kk,
                _floors(fl), 2),
        ]
    for run in runs:
        _oracle(run(block_ids, n), run(marked, k), ids, dead, k)
        # a floor (the engine's threshold for a later segment) only drops the rows below it
        s, i = run(marked, k)
        floors = draw_floors(s, i, rng)
        assert_floored(*run(marked, k, floors), s, i, floors)


# --------------------------------------------------------------------------- thread policy


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("nq", [1, CodeIndex.PARALLEL_MIN_QUERIES - 1, CodeIndex.PARALLEL_MIN_QUERIES, 300])
def test_plan_and_scan_each_keep_the_batch_thread_policy(nq, monkeypatch):
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    codec = _codec("SQ8", "ip")
    index = codec.index(*_codes("SQ8", "ip"))
    q = np.tile(Q, (2, 1))[:nq]
    seen: dict[str, tuple] = {}

    def spy(name, fn):
        def wrapped(*args, **kw):
            seen[name] = (numba.get_num_threads(), _blas_threads())
            return fn(*args, **kw)
        return wrapped

    monkeypatch.setattr(scalar, "sq_query_terms", spy("plan", scalar.sq_query_terms))
    monkeypatch.setattr(scalar, "sq_scan_batch", spy("scan", scalar.sq_scan_batch))
    for limit in (2, None):
        with threadpool_limits(limit, user_api="blas"):
            numba_before, blas_before = numba.get_num_threads(), _blas_threads()
            plan = codec.plan(q)
            assert numba.get_num_threads() == numba_before and _blas_threads() == blas_before
            index.scan(plan, 5)
            assert numba.get_num_threads() == numba_before and _blas_threads() == blas_before
            for step in ("plan", "scan"):
                threads, blas = seen.pop(step)
                if nq < CodeIndex.PARALLEL_MIN_QUERIES:
                    assert threads == 1, step
                else:
                    assert threads == numba_before, step
                if nq >= 2:  # any batch: OpenBLAS's spinning threads would slow the scan after it
                    assert blas == [1] * len(blas), step
                else:  # a lone query makes its products without BLAS: no BLAS scope
                    assert blas == blas_before, step


def test_thread_scopes_nest_and_the_outermost_decides(monkeypatch):
    if numba.get_num_threads() < 2:
        pytest.skip("needs Numba with at least 2 threads")
    from vecz.engine.threads import query_threads

    codec = _codec("SQ8", "ip")
    index = codec.index(*_codes("SQ8", "ip"))
    seen = []
    real = scalar.sq_scan_batch
    monkeypatch.setattr(scalar, "sq_scan_batch", lambda *a: seen.append(numba.get_num_threads()) or real(*a))
    before = numba.get_num_threads()
    plan = codec.plan(Q[:1])
    with query_threads(1, CodeIndex.PARALLEL_MIN_QUERIES):  # a store searching one query
        assert numba.get_num_threads() == 1
        inner = codec.plan(Q[:1])
        for _ in range(3):
            index.scan(inner, 4)
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with query_threads(300, CodeIndex.PARALLEL_MIN_QUERIES):  # the outer scope holds no limit
        index.scan(plan, 4)
    assert seen == [1, 1, 1, before] and numba.get_num_threads() == before


def test_blas_scope_limits_blas_from_a_worker_thread():
    # threadpoolctl 3.8's OpenBLAS set_num_threads does nothing outside the first thread
    # that set it; the scope must hold BLAS to one thread for a search in a server's worker
    # thread too, and give the count back
    import threading

    from vecz.engine.threads import _SerialBlas
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    with threadpool_limits(2, user_api="blas"):
        if max(_blas_threads()) < 2:
            pytest.skip("BLAS runs on one thread here")
        before = _blas_threads()
        with _SerialBlas():  # this (main) thread first: threadpoolctl's controlling thread
            assert _blas_threads() == [1] * len(before)
        seen = []

        def worker():
            with _SerialBlas():
                seen.append(_blas_threads())
            seen.append(_blas_threads())

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert seen == [[1] * len(before), before]
        assert _blas_threads() == before
