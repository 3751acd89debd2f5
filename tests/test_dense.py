"""kernels/dense.py against tests/reference/dense.py: exact float16 widening for every bit
pattern, and the Flat/F16 scans."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import dense
from tests.reference.dense import dense_candidates_ref
from tests.reference.ivf import random_layout, random_probes
from tests.reference.topk import assert_topk_close, assert_topk_exact, no_floors

SETTINGS = settings(max_examples=40, deadline=None, database=None)


@numba.njit(cache=True)
def _widen_all(bits):
    out = np.empty(bits.shape[0], dtype=np.float32)
    for i in range(bits.shape[0]):
        out[i] = dense.f16_to_f32(bits[i])
    return out


def test_f16_to_f32_exact_for_every_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = _widen_all(bits)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    # bit for bit (keeps -0.0, subnormals, infinities)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def _rows(rng, n, dim, kind, f16):
    if kind == "int":  # small integers: every sum exact, so scores are exact
        x = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    if n > 2:
        x[n - 1] = x[0]  # duplicate row: equal scores, ties by id
    if f16:
        return x.astype(np.float16).view(np.uint16)
    return x


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), dim=st.sampled_from([1, 3, 7, 8, 13, 65]),
       nlist=st.integers(1, 3), n_probe=st.integers(1, 4), is_l2=st.booleans(), per_probe=st.booleans(),
       k=st.integers(1, 45), kind=st.sampled_from(["int", "float"]), f16=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_scan_matches_reference(nq, n, dim, nlist, n_probe, is_l2, per_probe, k, kind, f16, seed):
    rng = np.random.default_rng(seed)
    x = _rows(rng, n, dim, kind, f16)
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    n_tab = n_probe if per_probe else 1
    if kind == "int":
        qs = rng.integers(-3, 4, size=(nq, n_tab, dim)).astype(np.float32)
        bias = rng.integers(-3, 4, size=(nq, n_probe)).astype(np.float32)
    else:
        qs = rng.standard_normal((nq, n_tab, dim)).astype(np.float32)
        bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    for a in (qs, x, ids, offsets, probes, bias):
        a.setflags(write=False)  # memory-mapped inputs are read-only
    got_s, got_i = dense.dense_scan_batch(qs, x, ids, offsets, probes, bias, is_l2, k, no_floors(qs))
    for q in range(nq):
        s, i = dense.dense_scan(qs[q], x, ids, offsets, probes[q], bias[q], is_l2, k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = dense_candidates_ref(qs[q], x, ids, offsets, probes[q], bias[q], is_l2)
        if kind == "int":
            assert_topk_exact(s, i, cand_s, cand_i, k)
        else:
            assert_topk_close(s, i, cand_s, cand_i, k, rtol=1e-5, atol=1e-5)


def test_l2_ignores_probe_bias():
    x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    qs = np.zeros((1, 2), np.float32)
    s, i = dense.dense_scan(qs, x, np.array([5, 6], np.int64), np.array([0, 2], np.int64),
                            np.zeros(1, np.int64), np.full(1, 100.0, np.float32), True, 3, -np.inf)
    np.testing.assert_array_equal(i, [5, 6, -1])
    np.testing.assert_array_equal(s, [-1.0, -4.0, -np.inf])


@SETTINGS
@given(
    nq=st.integers(1, 5),
    n=st.integers(1, 12),
    dim=st.integers(1, 41),
    depth=st.integers(1, 9),
    metric=st.sampled_from([dense.RESCORE_IP, dense.RESCORE_COSINE, dense.RESCORE_L2]),
    seed=st.integers(0, 2**16),
    layout=st.sampled_from(["c", "strided"]),
    f16=st.booleans(),
)
def test_dense_rescore_matches_reference(nq, n, dim, depth, metric, seed, layout, f16):
    from tests.reference.dense import dense_rescore_ref

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[0] = 0.0  # a zero vector: cosine 0
    if n > 2:
        vectors[2] = vectors[1]  # duplicates must score bit-identically
    stored = vectors.astype(np.float16) if f16 else vectors
    passed = stored.view(np.uint16) if f16 else stored
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    if layout == "strided":
        queries = np.repeat(queries, 2, axis=1)[:, ::2]
    rows = rng.integers(-1, n, size=(nq, depth))
    ref = dense_rescore_ref(queries, stored.astype(np.float32), rows, metric)
    for fn in (dense.dense_rescore, dense.dense_rescore_batch):
        out = np.full(rows.shape, 7.0)
        n_read = fn(queries, passed, rows, metric, out)
        assert n_read == int((rows >= 0).sum())
        np.testing.assert_allclose(out[rows >= 0], ref[rows >= 0], rtol=1e-12, atol=1e-12)
        assert (out[rows < 0] == 7.0).all()  # slots not in this file are left alone
        if n > 2:
            for i in range(nq):
                a, b = out[i][rows[i] == 1], out[i][rows[i] == 2]
                if a.size and b.size:
                    assert a[0] == b[0]


@SETTINGS
@given(nq=st.integers(1, 4), depth=st.integers(1, 12), k=st.integers(1, 15), is_l2=st.booleans(),
       seed=st.integers(0, 2**16))
def test_rerank_topk_matches_lexsort(nq, depth, k, is_l2, seed):
    rng = np.random.default_rng(seed)
    exact = rng.integers(0, 4, size=(nq, depth)).astype(np.float64)  # many ties
    ids = rng.permutation(1000)[: nq * depth].reshape(nq, depth).astype(np.int64)
    ids[rng.random((nq, depth)) < 0.2] = -1
    for fn, dtype in ((dense.rerank_topk, np.float32), (dense.rerank_topk_batch, np.float32),
                      (dense.rerank_topk64, np.float64), (dense.rerank_topk64_batch, np.float64)):
        got_s, got_i = fn(exact, ids, k, is_l2)
        assert got_s.dtype == dtype and got_i.shape == (nq, k)
        for i in range(nq):
            keep = ids[i] >= 0
            key = exact[i][keep] if is_l2 else -exact[i][keep]
            order = np.lexsort((ids[i][keep], key))[:k]
            want_i = np.full(k, -1)
            want_i[: order.size] = ids[i][keep][order]
            np.testing.assert_array_equal(got_i[i], want_i)
            worst = np.inf if is_l2 else -np.inf
            want_s = np.full(k, worst, dtype=np.float32)
            want_s[: order.size] = exact[i][keep][order]
            np.testing.assert_array_equal(got_s[i], want_s)


def _strided(x):
    """The same values with stride 2 (the kernels' scalar loop)."""
    wide = np.repeat(x[None, :], 2, axis=0).T.copy()
    return wide[:, 0]


@SETTINGS
@given(dim=st.integers(1, 70), f16=st.booleans(), special=st.sampled_from(["none", "finite", "nonfinite"]),
       seed=st.integers(0, 2**32 - 1))
def test_lane_sums_in_vector_ir_equal_the_scalar_loop(dim, f16, special, seed):
    # _dot_lanes / _dist_lanes run in vector IR for unit-stride rows and as scalar lanes
    # otherwise: the same float64 operations, so bit-identical, also for float16 rows with
    # subnormals and -0 ("finite") and infinities and NaN ("nonfinite"; the widening without
    # F16C is bit arithmetic: run with NUMBA_CPU_NAME=x86-64 NUMBA_CPU_FEATURES="" too, as
    # CI does).
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(dim).astype(np.float32)
    v = rng.standard_normal(dim).astype(np.float32)
    if f16:
        v = v.astype(np.float16).view(np.uint16)
        pool = [0x0001, 0x03FF, 0x8001, 0x8000, 0x0000, 0x0400, 0x3C00, 0x83FF]
        if special == "nonfinite":
            pool += [0x7C00, 0xFC00, 0x7E00]
    else:
        pool = [0.0, -0.0, 1e-40, -1e-42, 1.0] + ([np.inf, -np.inf, np.nan] if special == "nonfinite" else [])
    if special != "none":
        pick = rng.random(dim) < 0.5
        v[pick] = rng.choice(np.array(pool, dtype=v.dtype), size=int(pick.sum()))
    qn = float(np.sqrt(dense._dot_lanes(q, q)))

    def cosine(a, b):  # <q, v> and <v, v> in one pass (vector) or two (scalar)
        return dense._score_row(a, b, dense.RESCORE_COSINE, qn)

    for fn, a, b in ((dense._dot_lanes, q, v), (dense._dist_lanes, q, v), (dense._dot_lanes, v, v), (cosine, q, v)):
        fast, slow = np.float64(fn(a, b)), np.float64(fn(_strided(a), _strided(b)))
        assert _strided(a).strides[0] == 2 * a.itemsize
        assert np.isnan(fast) == np.isnan(slow)
        if not np.isnan(fast):
            assert fast.view(np.int64) == slow.view(np.int64), (fast, slow)


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(1, 12), dim=st.integers(1, 70), depth=st.integers(1, 13),
       metric=st.sampled_from([dense.RESCORE_IP, dense.RESCORE_COSINE, dense.RESCORE_L2]), f16=st.booleans(),
       special=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rescore_four_rows_at_once_equals_one_at_a_time(nq, n, dim, depth, metric, f16, special, seed):
    # dense_rescore scores four unit-stride rows at once (_score_rows4: four rows' float64
    # chains in one pass) and strided rows one at a time in scalar lanes: the same float64
    # operations per row, so bit-identical scores, also for duplicate rows, rows repeated in
    # a shortlist, zero rows, non-finite values and dims that are not a multiple of 8.
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[0] = 0.0
    if n > 2:
        vectors[2] = vectors[1]
    if special:
        pick = rng.random((n, dim)) < 0.1
        vectors[pick] = rng.choice(np.array([np.inf, -np.inf, np.nan, 1e-40, -0.0], dtype=np.float32),
                                   size=int(pick.sum()))
    passed = vectors.astype(np.float16).view(np.uint16) if f16 else vectors
    strided = np.repeat(passed, 2, axis=1)[:, ::2]
    assert strided.strides[1] == 2 * passed.itemsize
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    rows = rng.integers(-1, n, size=(nq, depth))
    for fn in (dense.dense_rescore, dense.dense_rescore_batch):
        four = np.full(rows.shape, 7.0)
        one = np.full(rows.shape, 7.0)
        assert fn(queries, passed, rows, metric, four) == fn(queries, strided, rows, metric, one)
        np.testing.assert_array_equal(np.isnan(four), np.isnan(one))
        assert (four[~np.isnan(four)].view(np.int64) == one[~np.isnan(one)].view(np.int64)).all()


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 5), c=st.integers(0, 40), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_walk_order_equals_numpy(nq, c, seed, ties):
    # `walk_order` replaces AutoWalk's numpy steps; the same order (stable: ties in
    # shortlist order), the same bounds bit for bit (+-0 and -inf for invalid candidates
    # included) and the same counts
    rng = np.random.default_rng(seed)
    better = rng.standard_normal((nq, c))
    if ties:
        better = np.round(better, 1)
        better[rng.random((nq, c)) < 0.2] = 0.0
        better[rng.random((nq, c)) < 0.1] = -0.0
    z_hi = rng.choice([0.0, 0.5, 1e300], size=(nq, c)) if ties else rng.random((nq, c))
    scale = rng.choice([0.0, 1.0, 2.0], size=(nq, c)) if ties else rng.random((nq, c))
    valid = rng.random((nq, c)) < 0.8
    upper = np.where(valid, better + z_hi * scale, -np.inf)
    want_order = np.argsort(-upper, axis=1, kind="stable")
    want_up = np.take_along_axis(upper, want_order, axis=1)
    order, up, n_valid = dense.walk_order(better, z_hi, scale, valid)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_array_equal(up.view(np.int64), want_up.view(np.int64))  # bits: -0.0 stays -0.0
    np.testing.assert_array_equal(n_valid, valid.sum(axis=1))


@SETTINGS
@given(nq=st.integers(1, 4), c=st.integers(0, 12), n_seg=st.integers(1, 3), seed=st.integers(0, 2**16),
       mapped=st.booleans())
def test_sole_segment_and_mapped_rows_equal_numpy(nq, c, n_seg, seed, mapped):
    # the re-rank's one-segment path: which segment holds every candidate, and their rows in
    # its dense file, against the numpy steps they replace (`search._locate`)
    rng = np.random.default_rng(seed)
    seg_of = rng.integers(-1, n_seg, size=(nq, c)).astype(np.int64)
    rows = np.where(seg_of >= 0, rng.integers(0, 20, size=(nq, c)), -1).astype(np.int64)
    present = np.unique(seg_of[seg_of >= 0])
    want = -1 if not present.size else (int(present[0]) if present.size == 1 else -2)
    assert dense.sole_segment(seg_of) == want
    dense_row = rng.permutation(20).astype(np.uint32) if mapped else None
    for g in range(n_seg):
        got = dense.mapped_rows(seg_of, rows, g, dense_row)
        at = seg_of == g
        want_rows = np.full((nq, c), -1, dtype=np.int64)
        want_rows[at] = dense_row[rows[at]] if mapped else rows[at]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want_rows)


@SETTINGS
@given(nq=st.integers(1, 4), n=st.integers(1, 12), dim=st.sampled_from([1, 5, 16, 33]), depth=st.integers(1, 12),
       k=st.integers(1, 15), metric=st.sampled_from([dense.RESCORE_IP, dense.RESCORE_COSINE, dense.RESCORE_L2]),
       f16=st.booleans(), seed=st.integers(0, 2**16))
def test_rerank_rows_equals_rescore_then_topk(nq, n, dim, depth, k, metric, f16, seed):
    # one call for a few queries' re-rank: bit for bit `dense_rescore` into zeros and then
    # `rerank_topk64`, the two calls it replaces (duplicate rows and empty slots included)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    passed = vectors.astype(np.float16).view(np.uint16) if f16 else vectors
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    rows = rng.integers(-1, n, size=(nq, depth)).astype(np.int64)
    ids = np.where(rows >= 0, rng.permutation(10 * depth * nq)[: nq * depth].reshape(nq, depth), -1)
    exact = np.zeros(rows.shape)
    n_read = dense.dense_rescore(queries, passed, rows, metric, exact)
    want_s, want_i = dense.rerank_topk64(exact, ids, k, metric == dense.RESCORE_L2)
    got_s, got_i, got_n = dense.rerank_rows(queries, passed, rows, ids, k, metric)
    assert got_n == n_read == int((rows >= 0).sum())
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s.view(np.int64), want_s.view(np.int64))


@SETTINGS
@given(nq=st.integers(1, 4), c=st.integers(0, 12), n_readers=st.integers(1, 3), k=st.integers(1, 15),
       metric=st.sampled_from([dense.RESCORE_IP, dense.RESCORE_COSINE, dense.RESCORE_L2]), seed=st.integers(0, 2**16))
def test_walk_read_equals_the_numpy_steps(nq, c, n_readers, k, metric, seed):
    # `AutoWalk.result`'s numpy steps in one call: the same top k (bits) and per-file
    # counts (ties in the exact scores, rows not read holding scores)
    rng = np.random.default_rng(seed)
    done = rng.random((nq, c)) < 0.6
    exact = rng.integers(-3, 4, size=(nq, c)).astype(np.float64)  # ties; not-read slots hold junk too
    ids = rng.permutation(10 * (nq * c + 1))[: nq * c].reshape(nq, c).astype(np.int64)
    reader_ix = rng.integers(0, n_readers, size=(nq, c)).astype(np.int64)
    is_l2 = metric == dense.RESCORE_L2
    user = np.where(done, (-1.0 if is_l2 else 1.0) * exact, 0.0)
    want_s, want_i = dense.rerank_topk64(user, np.where(done, ids, -1), k, is_l2)
    user_got, keep, counts = dense.walk_read(done, exact, ids, reader_ix, n_readers, metric)
    got_s, got_i = dense.rerank_topk64(user_got, keep, k, is_l2)
    np.testing.assert_array_equal(user_got.view(np.int64), user.view(np.int64))
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s.view(np.int64), want_s.view(np.int64))
    np.testing.assert_array_equal(counts, [np.count_nonzero(done & (reader_ix == j)) for j in range(n_readers)])


def test_dense_kernels_refuse_float64_rows_and_queries():
    # the vector loads read any dtype but float32 as float16 bits: float64 rows gave NaN and
    # the wrong top k where a strided (scalar) read of the same rows was right; now neither
    # compiles (a review found it)
    from numba.core.errors import TypingError

    rng = np.random.default_rng(8)
    v = rng.standard_normal((8, 16)).astype(np.float32)
    q = rng.standard_normal((1, 16)).astype(np.float32)
    rows = np.arange(8, dtype=np.int64)[None]
    for qq, vv in [(q, v.astype(np.float64)), (q.astype(np.float64), v),
                   (q, np.repeat(v.astype(np.float64), 2, axis=1)[:, ::2])]:
        with pytest.raises(TypingError, match="expected float32 values or float16 bits"):
            dense.dense_rescore(qq, vv, rows, dense.RESCORE_IP, np.zeros((1, 8)))
        with pytest.raises(TypingError, match="expected float32 values or float16 bits"):
            dense.rerank_rows(qq, vv, rows, rows, 3, dense.RESCORE_IP)
