"""kernels/ivf.py against tests/reference/ivf.py."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import ivf
from tests.reference.ivf import ivf_assign_ref, ivf_layout_ref, ivf_probe_ref, ivf_similarity_ref

SETTINGS = settings(max_examples=40, deadline=None, database=None)
DIMS = st.sampled_from([1, 2, 3, 7, 13, 24, 65])
METRICS = st.sampled_from(["ip", "l2"])


def _data(rng, shape, kind):
    if kind == "int":  # exact similarities, frequent ties
        return rng.integers(-3, 4, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@SETTINGS
@given(n=st.integers(0, 40), nlist=st.integers(1, 8), dim=DIMS, metric=METRICS, seed=st.integers(0, 2**32 - 1))
def test_assign_exact_on_integer_data(n, nlist, dim, metric, seed):
    rng = np.random.default_rng(seed)
    x, c = _data(rng, (n, dim), "int"), _data(rng, (nlist, dim), "int")
    got = ivf.ivf_assign(x, c, metric)
    assert got.dtype == np.int64 and got.shape == (n,)
    np.testing.assert_array_equal(got, ivf_assign_ref(x, c, metric))


@SETTINGS
@given(n=st.integers(0, 40), nlist=st.integers(1, 8), dim=DIMS, metric=METRICS, seed=st.integers(0, 2**32 - 1),
       block=st.sampled_from([1, 7, 8192]))
def test_assign_float_data(n, nlist, dim, metric, seed, block):
    rng = np.random.default_rng(seed)
    x, c = _data(rng, (n, dim), "float"), _data(rng, (nlist, dim), "float")
    got = ivf.ivf_assign(x, c, metric, block=block)
    sim = ivf_similarity_ref(x, c, metric)
    if n:
        best = sim.max(axis=1)
        assert np.all(sim[np.arange(n), got] >= best - 1e-4 * (1 + np.abs(best)))


@SETTINGS
@given(n=st.integers(0, 60), nlist=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_layout_groups_rows_by_list(n, nlist, seed):
    rng = np.random.default_rng(seed)
    lists = rng.integers(0, nlist, size=n)
    if rng.random() < 0.5:
        lists = np.where(lists % 2 == 0, lists, 0)  # leave some lists empty
    order, offsets = ivf.ivf_layout(lists, nlist)
    ref_order, ref_offsets = ivf_layout_ref(lists, nlist)
    assert offsets.dtype == np.int64 and offsets.shape == (nlist + 1,)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(offsets, ref_offsets)
    for lst in range(nlist):
        np.testing.assert_array_equal(lists[order[offsets[lst] : offsets[lst + 1]]], lst)


@SETTINGS
@given(nq=st.integers(0, 5), nlist=st.integers(1, 10), nprobe=st.integers(1, 12), dim=DIMS, metric=METRICS,
       seed=st.integers(0, 2**32 - 1))
def test_probe_exact_on_integer_data(nq, nlist, nprobe, dim, metric, seed):
    # Integer coordinates: similarities are exact and ties frequent (duplicate centroids
    # included), so the probed lists equal brute force exactly, ties by smaller list.
    rng = np.random.default_rng(seed)
    q, c = _data(rng, (nq, dim), "int"), _data(rng, (nlist, dim), "int")
    if nlist > 1:
        c[-1] = c[0]
    _, got_i = ivf.ivf_probe(q, c, nprobe, metric)
    p = min(nprobe, nlist)
    assert got_i.shape == (nq, p) and got_i.dtype == np.int64
    _, ref_i = ivf_probe_ref(q, c, nprobe, metric)
    np.testing.assert_array_equal(got_i, ref_i)


@SETTINGS
@given(nq=st.integers(1, 5), nlist=st.integers(1, 10), nprobe=st.integers(1, 12), dim=DIMS, metric=METRICS,
       seed=st.integers(0, 2**32 - 1))
def test_probe_float_data(nq, nlist, nprobe, dim, metric, seed):
    rng = np.random.default_rng(seed)
    q, c = _data(rng, (nq, dim), "float"), _data(rng, (nlist, dim), "float")
    got_s, got_i = ivf.ivf_probe(q, c, nprobe, metric)
    sim = ivf_similarity_ref(q, c, metric)
    p = min(nprobe, nlist)
    for r in range(nq):
        assert np.unique(got_i[r]).size == p
        chosen = sim[r, got_i[r]]
        assert np.all(np.diff(chosen) <= 1e-4 * (1 + np.abs(chosen[1:])))
        others = np.setdiff1d(np.arange(nlist), got_i[r])
        if others.size:
            assert sim[r, others].max() <= chosen.min() + 1e-4 * (1 + abs(chosen.min()))


@SETTINGS
@given(nq=st.integers(1, 4), nlist=st.integers(1, 8), nprobe=st.integers(1, 8), dim=DIMS, metric=METRICS,
       seed=st.integers(0, 2**32 - 1))
def test_probe_scores_are_documented_similarities(nq, nlist, nprobe, dim, metric, seed):
    # Module docstring: "with their similarity (ip) or negated distance (l2)".
    rng = np.random.default_rng(seed)
    q, c = _data(rng, (nq, dim), "int"), _data(rng, (nlist, dim), "int")
    got_s, got_i = ivf.ivf_probe(q, c, nprobe, metric)
    assert got_s.dtype == np.float32
    ref_s, ref_i = ivf_probe_ref(q, c, nprobe, metric)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(nq=st.integers(0, 4), n=st.integers(1, 300), k=st.integers(1, 310), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["normal", "ties", "signed_zero", "inf", "nan", "tiny", "huge"]))
def test_probe_selection_equals_topk_select(nq, n, k, seed, kind):
    # ivf_probe's histogram selection must return topk_select_batch's lists bit for bit
    # (scores, ids, ties by smaller id, -0.0 kept), whatever the values.
    from vecz.kernels.topk import topk_select_batch

    rng = np.random.default_rng(seed)
    k = min(k, n)
    sim = rng.standard_normal((nq, n)).astype(np.float32)
    if kind != "normal":
        sim = rng.integers(-3, 3, size=(nq, n)).astype(np.float32)
    if kind == "signed_zero":
        sim[sim == 0] = -0.0
    elif kind == "inf":
        sim[sim == -3] = -np.inf
        sim[sim == 2] = np.inf
    elif kind == "nan":
        sim[sim == 2] = np.nan
    elif kind == "tiny":
        sim *= np.float32(1e-42)
    elif kind == "huge":
        sim *= np.float32(1e37)
    got_s, got_i = ivf._select_batch(sim, k)
    ref_s, ref_i = topk_select_batch(sim, np.arange(n, dtype=np.int64), k)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s)
    np.testing.assert_array_equal(np.signbit(got_s), np.signbit(ref_s))


@SETTINGS
@given(n=st.integers(1, 600), nlist=st.integers(1, 40), dim=DIMS, metric=METRICS, seed=st.integers(0, 2**32 - 1),
       block=st.sampled_from([1, 7, 256, 8192]), dup=st.booleans())
def test_assign_blocks_exact_with_ties(n, nlist, dim, metric, seed, block, dup):
    # Blocks of rows share one product buffer (the last block shorter): the lists equal
    # brute force exactly on integer data, first best on ties (duplicate centroids and rows).
    rng = np.random.default_rng(seed)
    x, c = _data(rng, (n, dim), "int"), _data(rng, (nlist, dim), "int")
    if dup:
        c[-1] = c[0]
        x[n // 2:] = x[0]
    got = ivf.ivf_assign(x, c, metric, block=block)
    np.testing.assert_array_equal(got, ivf_assign_ref(x, c, metric))


@SETTINGS
@given(n=st.integers(1, 20), k=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["normal", "ties", "signed_zero", "inf", "tiny", "huge"]))
def test_argmax_rows_is_numpy_argmax(n, k, seed, kind):
    # The integer-key argmax equals numpy's first argmax for any finite or infinite values
    # (-0.0 equals 0.0), and writes at the given offset.
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((n, k)).astype(np.float32)
    if kind != "normal":
        sim = rng.integers(-2, 3, size=(n, k)).astype(np.float32)
    if kind == "signed_zero":
        sim[rng.random((n, k)) < 0.5] *= -1
        sim[sim == 0] = np.where(rng.random(int((sim == 0).sum())) < 0.5, -0.0, 0.0)
    elif kind == "inf":
        sim[sim == -2] = -np.inf
        sim[sim == 2] = np.inf
    elif kind == "tiny":
        sim *= np.float32(1e-42)
    elif kind == "huge":
        sim *= np.float32(1e37)
    out = np.full(n + 3, -7, dtype=np.int64)
    ivf._argmax_rows(sim, out, 3)
    np.testing.assert_array_equal(out[:3], -7)
    np.testing.assert_array_equal(out[3:], np.argmax(sim, axis=1))


@SETTINGS
@given(n=st.integers(1, 400), nlist=st.integers(1, 64), dim=DIMS, metric=METRICS, seed=st.integers(0, 2**32 - 1),
       block=st.sampled_from([5, 64, 8192]))
def test_assign_of_a_row_does_not_depend_on_its_batch(n, nlist, dim, metric, seed, block):
    # float data with near ties among many lists: a row's list is the same whatever rows
    # are assigned beside it (reversed, in other blocks, alone), which BLAS products do not
    # promise and encoding (chunks, Ray workers) relies on
    rng = np.random.default_rng(seed)
    c = _data(rng, (nlist, dim), "float")
    x = c[rng.integers(0, nlist, n)] + np.float32(1e-3) * _data(rng, (n, dim), "float")
    whole = ivf.ivf_assign(x, c, metric)
    np.testing.assert_array_equal(ivf.ivf_assign(x[::-1], c, metric, block=block)[::-1], whole)
    np.testing.assert_array_equal(np.concatenate([ivf.ivf_assign(x[i:i + 1], c, metric) for i in range(min(n, 20))]),
                                  whole[:20])


@SETTINGS
@given(nlist=st.integers(1, 40), dim=st.integers(1, 70), metric=METRICS, strided=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_lone_query_similarity_without_blas_matches_numpy(nlist, dim, metric, strided, seed):
    # a lone query's probe products come from a compiled loop (its search holds no BLAS
    # scope): the documented similarities within float32 rounding, for C-contiguous and
    # strided centroids alike, and the same as the row in a batch up to that rounding
    rng = np.random.default_rng(seed)
    q = _data(rng, (3, dim), "float")
    c = _data(rng, (nlist, 2 * dim if strided else dim), "float")
    c = c[:, ::2] if strided else c
    ref = ivf_similarity_ref(q[:1], c, metric)
    got = ivf._similarity(q[:1], c, metric)
    assert got.shape == (1, nlist)
    scale = 1 + np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got, ivf._similarity(q, c, metric)[:1], rtol=0, atol=1e-5 * scale)
