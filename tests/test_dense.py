"""kernels/dense.py against tests/reference/dense.py: exact float16 widening for every bit
pattern, and the Flat/F16 scans."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import dense
from tests.reference.dense import dense_candidates_ref
from tests.reference.ivf import random_layout, random_probes
from tests.reference.topk import assert_topk_close, assert_topk_exact

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
    got_s, got_i = dense.dense_scan_batch(qs, x, ids, offsets, probes, bias, is_l2, k)
    for q in range(nq):
        s, i = dense.dense_scan(qs[q], x, ids, offsets, probes[q], bias[q], is_l2, k)
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
                            np.zeros(1, np.int64), np.full(1, 100.0, np.float32), True, 3)
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
)
def test_dense_rescore_matches_reference(nq, n, dim, depth, metric, seed, layout):
    from tests.reference.dense import dense_rescore_ref

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[0] = 0.0  # a zero vector: cosine 0
    if n > 2:
        vectors[2] = vectors[1]  # duplicates must score bit-identically
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    if layout == "strided":
        queries = np.repeat(queries, 2, axis=1)[:, ::2]
    slots = rng.integers(-1, n, size=(nq, depth))
    ref = dense_rescore_ref(queries, vectors, slots, metric)
    for fn in (dense.dense_rescore, dense.dense_rescore_batch):
        got = fn(queries, vectors, slots, metric)
        assert got.dtype == np.float64 and got.shape == slots.shape
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        if n > 2:
            for i in range(nq):
                a, b = got[i][slots[i] == 1], got[i][slots[i] == 2]
                if a.size and b.size:
                    assert a[0] == b[0]
