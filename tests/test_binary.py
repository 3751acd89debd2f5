"""kernels/binary.py against tests/reference/binary.py: popcount and Hamming bit for bit,
bit layouts exactly, RB encoding by its own contract, and the RB scans."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import binary
from tests.reference.binary import (
    cos_ref,
    hamming_ref,
    popcount_ref,
    rb_encode_at_scale_ref,
    rb_grid_cos_ref,
    rb_lut_candidates_ref,
    rb_levels_ref,
    rb_lut_ref,
    rb_sdc_candidates_ref,
    rb_signs_ref,
    rb_words_ref,
    sdc_dot_ref,
    sign_pack_ref,
)
from tests.reference.ivf import random_layout, random_probes
from tests.reference.topk import assert_topk_close, assert_topk_exact, no_floors

SETTINGS = settings(max_examples=40, deadline=None, database=None)
DIMS = st.sampled_from([1, 3, 7, 8, 13, 64, 65, 130])
LEVELS = st.integers(1, 4)


@numba.njit(cache=True)
def _popcount_all(words):
    out = np.empty(words.shape[0], dtype=np.int64)
    for i in range(words.shape[0]):
        out[i] = binary.popcount64(words[i])
    return out


def _vectors(rng, n, dim, kind):
    """float32 rows: gaussian, with exact zeros and repeated values, or heavy-tailed; no
    denormals (a sign is only meaningful above the flush-to-zero range)."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if kind == "sparse":
        x[rng.random((n, dim)) < 0.4] = 0.0
        x[rng.random((n, dim)) < 0.2] = 1.0
    elif kind == "heavy":
        x = (x ** 3 * rng.choice([1e-2, 1.0, 1e2], size=(n, 1))).astype(np.float32)
        x[np.abs(x) < 1e-6] = 0.0
    return x


def test_popcount64_edge_values():
    edge = [0, 2**64 - 1, 2**63, 2**63 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA] + [1 << b for b in range(64)]
    words = np.array(edge, dtype=np.uint64)
    got = _popcount_all(words)
    np.testing.assert_array_equal(got, popcount_ref(words))
    np.testing.assert_array_equal(got[:6], [0, 64, 1, 63, 32, 32])
    np.testing.assert_array_equal(got[6:], 1)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_popcount64_random(seed):
    words = np.random.default_rng(seed).integers(0, 2**64, size=64, dtype=np.uint64)
    np.testing.assert_array_equal(_popcount_all(words), popcount_ref(words))


@SETTINGS
@given(n=st.integers(0, 6), dim=DIMS, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["gauss", "sparse"]))
def test_sign_pack_matches_reference(n, dim, seed, kind):
    x = _vectors(np.random.default_rng(seed), n, dim, kind)
    got = binary.sign_pack(x)
    assert got.shape == (n, binary.rb_nbytes(dim)) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, sign_pack_ref(x))
    np.testing.assert_array_equal(got, np.packbits(x >= 0, axis=1, bitorder="little"))


@SETTINGS
@given(n=st.integers(0, 5), b=LEVELS, nbytes=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_rb_words_layout(n, b, nbytes, seed):
    bits = np.random.default_rng(seed).integers(0, 256, size=(n, b, nbytes)).astype(np.uint8)
    words = binary.rb_words(bits)
    assert words.dtype == np.uint64 and words.shape == (n, b, (nbytes + 7) // 8)
    np.testing.assert_array_equal(words, rb_words_ref(bits))
    # padding bytes are zero, so a popcount of the words counts the same bits as the bytes
    np.testing.assert_array_equal(popcount_ref(words).sum(axis=-1), np.unpackbits(bits, axis=-1).sum(axis=-1))


def _hamming_inputs(rng, nq, n, n_words, kind):
    if kind == "few":  # few distinct rows: many equal distances
        pool = rng.integers(0, 2**64, size=(3, n_words), dtype=np.uint64)
        db = pool[rng.integers(0, 3, size=n)]
        qs = pool[rng.integers(0, 3, size=nq)]
    else:
        db = rng.integers(0, 2**64, size=(n, n_words), dtype=np.uint64)
        qs = rng.integers(0, 2**64, size=(nq, n_words), dtype=np.uint64)
    if kind == "edge" and n:
        db[0] = 0
        db[-1] = np.uint64(2**64 - 1)
    return qs, db


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 60), n_words=st.integers(1, 5), k=st.integers(1, 70),
       kind=st.sampled_from(["random", "few", "edge"]), seed=st.integers(0, 2**32 - 1))
def test_hamming_scan_exact(nq, n, n_words, k, kind, seed):
    rng = np.random.default_rng(seed)
    qs, db = _hamming_inputs(rng, nq, n, n_words, kind)
    ids = rng.permutation(3 * n + 1)[:n].astype(np.int64)
    for a in (qs, db, ids):
        a.setflags(write=False)
    got_s, got_i = binary.hamming_scan_batch(qs, db, ids, k)
    for q in range(nq):
        s, i = binary.hamming_scan(qs[q], db, ids, k)
        np.testing.assert_array_equal(got_i[q], i)
        np.testing.assert_array_equal(got_s[q], s)
        dist = hamming_ref(qs[q], db)
        assert_topk_exact(s, i, -dist.astype(np.float32), ids, k)


def test_hamming_distance_of_complements_is_full_width():
    q = np.zeros((1, 2), np.uint64)
    db = np.array([[2**64 - 1, 2**64 - 1], [1, 0]], dtype=np.uint64)
    s, i = binary.hamming_scan(q[0], db, np.array([0, 1], np.int64), 2)
    np.testing.assert_array_equal(i, [1, 0])
    np.testing.assert_array_equal(s, [-1.0, -128.0])


def _encode(r, b):
    return binary.rb_encode(r, b, binary._T_COARSE, binary._T_FINE_STEP)


@SETTINGS
@given(dim=DIMS, b=LEVELS, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["gauss", "sparse", "heavy"]))
def test_rb_encode_self_consistent(dim, b, seed, kind):
    r = _vectors(np.random.default_rng(seed), 1, dim, kind)[0]
    bits, factors = _encode(r, b)
    nbytes = binary.rb_nbytes(dim)
    assert bits.shape == (b, nbytes) and bits.dtype == np.uint8
    assert factors.shape == (2,) and factors.dtype == np.float32
    # padding bits past dim are zero
    planes = np.unpackbits(bits, axis=1, bitorder="little")
    np.testing.assert_array_equal(planes[:, dim:], 0)
    r64 = r.astype(np.float64)
    rr = float(r64 @ r64)
    np.testing.assert_allclose(factors[1], rr, rtol=1e-5)
    if rr == 0:
        np.testing.assert_array_equal(factors, 0.0)
        np.testing.assert_array_equal(planes[:, :dim], 1)  # documented: all-positive signs
        np.testing.assert_array_equal(binary.rb_decode(bits[None], factors[None], dim), 0.0)
        return
    # level 0 is the sign of r
    np.testing.assert_array_equal(bits[0], sign_pack_ref(r[None])[0])
    s = rb_signs_ref(bits[None], dim)[0]
    np.testing.assert_allclose(binary.rb_signs(bits[None], dim)[0], s, rtol=0, atol=0)
    sr = float(s @ r64)
    assert sr > 0
    np.testing.assert_allclose(factors[0], rr / sr, rtol=1e-4)


@SETTINGS
@given(dim=DIMS, b=LEVELS, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["gauss", "sparse", "heavy"]))
def test_rb_encode_beats_signs_and_the_coarse_grid(dim, b, seed, kind):
    r = _vectors(np.random.default_rng(seed), 1, dim, kind)[0]
    if not np.any(r):
        return
    bits, factors = _encode(r, b)
    r_hat = binary.rb_decode(bits[None], factors[None], dim)[0]
    cos_rb = cos_ref(r, r_hat)
    cos_sign = cos_ref(r, np.where(r >= 0, 1.0, -1.0))
    assert cos_rb >= cos_sign - 1e-6, (cos_rb, cos_sign)
    # the chosen scale is at least as good as every scale of the coarse grid
    cos_chosen = cos_ref(r, rb_signs_ref(bits[None], dim)[0])
    best_grid = rb_grid_cos_ref(r, b, binary._T_COARSE).max()
    assert cos_chosen >= best_grid - 1e-5, (cos_chosen, best_grid)
    # decoding is the least-squares fit along s: r - r_hat is orthogonal to r_hat
    r64 = r.astype(np.float64)
    assert abs(float((r64 - r_hat) @ r_hat)) <= 1e-4 * float(r64 @ r64)


@SETTINGS
@given(dim=DIMS, b=LEVELS, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["gauss", "sparse", "heavy"]))
def test_rb_encode_at_a_pinned_scale_is_the_greedy_reference(dim, b, seed, kind):
    # A one-point grid and a zero fine step pin the scale to t * rms(r): the bits must be
    # the greedy residual signs at weights 2**-l (the scale rounded in float32, as the
    # kernel does). A dimension may differ only from a level whose residual lies within
    # rounding of zero (r / scale a dyadic value such as exactly 1.0 for dim = 1).
    r = _vectors(np.random.default_rng(seed), 1, dim, kind)[0]
    if not np.any(r):
        return
    t = np.array([np.random.default_rng(seed + 1).choice(binary._T_COARSE)], dtype=np.float32)
    bits, factors = binary.rb_encode(r, b, t, np.float32(0.0))
    rms = np.sqrt(np.float32(np.dot(r, r) / np.float32(dim)))
    scale = np.float32(t[0] * rms)
    ref_bits, ref_factors = rb_encode_at_scale_ref(r, scale, b)
    _, _, residuals = rb_levels_ref(r, scale, b, return_residuals=True)
    planes = np.unpackbits(bits, axis=1, bitorder="little")[:, :dim]
    ref_planes = np.unpackbits(ref_bits, axis=1, bitorder="little")[:, :dim]
    for d in np.flatnonzero((planes != ref_planes).any(axis=0)):
        first = int(np.argmax(planes[:, d] != ref_planes[:, d]))
        assert abs(float(residuals[first, d])) <= 1e-5 * (1.0 + abs(float(r[d]) / float(scale))), (d, first)
    if np.array_equal(bits, ref_bits):
        np.testing.assert_allclose(factors, ref_factors, rtol=1e-4)


@SETTINGS
@given(n=st.integers(0, 12), dim=DIMS, b=LEVELS, seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["gauss", "sparse", "heavy"]))
def test_rb_encode_batch_equals_serial(n, dim, b, seed, kind):
    x = _vectors(np.random.default_rng(seed), n, dim, kind)
    if n:
        x[0] = 0.0
    bits, factors = binary.rb_encode_batch(x, b, binary._T_COARSE, binary._T_FINE_STEP)
    assert bits.shape == (n, b, binary.rb_nbytes(dim)) and factors.shape == (n, 2)
    for i in range(n):
        bi, fi = _encode(x[i], b)
        np.testing.assert_array_equal(bits[i], bi)
        np.testing.assert_array_equal(factors[i], fi)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("dim", [1, 8, 13, 64])
def test_rb_encode_batch_over_several_tasks(b, dim):
    # more rows than one task of the batch kernel (its scratch is per task, not per row),
    # zero rows at a task's edges, a strided (non-contiguous) input
    n = 2 * binary._ENCODE_TASK_ROWS + 37
    wide = _vectors(np.random.default_rng(dim * 10 + b), n, 2 * dim, "gauss")
    x = wide[:, ::2]
    x[[0, binary._ENCODE_TASK_ROWS - 1, binary._ENCODE_TASK_ROWS, n - 1]] = 0.0
    bits, factors = binary.rb_encode_batch(x, b, binary._T_COARSE, binary._T_FINE_STEP)
    for i in range(n):
        bi, fi = _encode(np.ascontiguousarray(x[i]), b)
        np.testing.assert_array_equal(bits[i], bi)
        np.testing.assert_array_equal(factors[i], fi)


@SETTINGS
@given(nq=st.integers(0, 3), dim=st.sampled_from([1, 3, 8, 13, 17]), b=LEVELS, seed=st.integers(0, 2**32 - 1))
def test_rb_lut_matches_reference(nq, dim, b, seed):
    q = np.random.default_rng(seed).standard_normal((nq, dim)).astype(np.float32)
    lut = binary.rb_lut(q, b)
    assert lut.shape == (nq, b * binary.rb_nbytes(dim), 256) and lut.dtype == np.float32
    np.testing.assert_allclose(lut, rb_lut_ref(q, b), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(nq=st.integers(0, 3), dim=st.sampled_from([1, 3, 4, 5, 8, 13, 17, 64]), b=LEVELS,
       layout=st.sampled_from(["c", "strided", "f16", "zeros"]), seed=st.integers(0, 2**32 - 1))
def test_rb_nibble_lut_matches_reference(nq, dim, b, layout, seed):
    # Entry [(l, symbol j), v] = 2**-l * sum_t q[4j + t] * (+1 if bit t of v else -1), summed
    # in float32 in the order t = 0..3: equal bit for bit to that sum in numpy, and to the
    # float64 definition within float32 rounding; level l exactly 2**-l times level 0; a
    # query's tables the same alone and in a batch; float16 and strided queries accepted.
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    if layout == "strided":
        q = np.repeat(q, 2, axis=1)[:, ::2]
    elif layout == "f16":
        q = q.astype(np.float16)
    elif layout == "zeros":  # signed zeros: every table entry of an all-zero group is +0.0
        q[:, ::3] = -0.0
        q[:, 1::3] = 0.0
    lut = binary.rb_nibble_lut(q, b)
    n_sym = 2 * binary.rb_nbytes(dim)
    assert lut.shape == (nq, b * n_sym, 16) and lut.dtype == np.float32
    qp = np.zeros((nq, 4 * n_sym), np.float32)
    qp[:, :dim] = q
    qp = qp.reshape(nq, n_sym, 4)
    sign = 2.0 * ((np.arange(16)[:, None] >> np.arange(4)) & 1) - 1.0  # (16, 4)
    ordered = np.float32(0.0) + qp[:, :, None, 0] * sign[:, 0].astype(np.float32)
    for t in range(1, 4):
        ordered = (ordered + qp[:, :, None, t] * sign[:, t].astype(np.float32)).astype(np.float32)
    exact = np.einsum("qjt,vt->qjv", qp.astype(np.float64), sign)
    for lv in range(b):
        level = lut[:, lv * n_sym:(lv + 1) * n_sym]
        # bit for bit, signed zeros included (assert_array_equal takes -0.0 for +0.0)
        np.testing.assert_array_equal(level.view(np.uint32), (ordered * np.float32(0.5 ** lv)).view(np.uint32))
        np.testing.assert_allclose(level, exact * 0.5 ** lv, rtol=1e-6, atol=1e-6)
    for i in range(nq):
        np.testing.assert_array_equal(binary.rb_nibble_lut(q[i:i + 1], b)[0], lut[i])


def test_rb_nibble_lut_refuses_no_levels():
    with pytest.raises(ValueError, match="n_levels"):
        binary.rb_nibble_lut(np.ones((2, 8), np.float32), 0)


def _rb_db(rng, n, dim, b, kind):
    x = _vectors(rng, n, dim, kind)
    if n > 2:
        x[n - 1] = x[0]  # duplicate row: equal scores, ties by id
    if n > 3:
        x[1] = 0.0  # zero residual: g = 0
    bits, factors = binary.rb_encode_batch(x, b, binary._T_COARSE, binary._T_FINE_STEP)
    return bits, factors


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), dim=st.sampled_from([1, 3, 8, 13, 65]), b=LEVELS,
       nlist=st.integers(1, 3), n_probe=st.integers(1, 4), is_l2=st.booleans(), k=st.integers(1, 45),
       kind=st.sampled_from(["gauss", "sparse"]), seed=st.integers(0, 2**32 - 1))
def test_rb_lut_scan_matches_reference(nq, n, dim, b, nlist, n_probe, is_l2, k, kind, seed):
    rng = np.random.default_rng(seed)
    bits, factors = _rb_db(rng, n, dim, b, kind)
    codes = np.ascontiguousarray(bits.reshape(n, b * binary.rb_nbytes(dim)))
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    n_tab = n_probe if is_l2 else 1
    qs = rng.standard_normal((nq, n_tab, dim)).astype(np.float32)
    luts = np.ascontiguousarray(binary.rb_lut(qs.reshape(nq * n_tab, dim), b).reshape(nq, n_tab, -1, 256))
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    q_sq = np.einsum("qtd,qtd->qt", qs, qs).astype(np.float32) if is_l2 else np.zeros((nq, n_probe), np.float32)
    for a in (luts, codes, factors, ids, offsets, probes, bias, q_sq):
        a.setflags(write=False)
    got_s, got_i = binary.rb_lut_scan_batch(luts, codes, factors, ids, offsets, probes, bias, q_sq, is_l2, k)
    for q in range(nq):
        s, i = binary.rb_lut_scan(luts[q], codes, factors, ids, offsets, probes[q], bias[q], q_sq[q], is_l2, k)
        np.testing.assert_array_equal(got_i[q], i)
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = rb_lut_candidates_ref(qs[q], bits, factors, ids, offsets, probes[q], bias[q], q_sq[q],
                                               is_l2, dim)
        assert_topk_close(s, i, cand_s, cand_i, k, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(b_q=LEVELS, b_x=LEVELS, dim=DIMS, seed=st.integers(0, 2**32 - 1))
def test_sdc_dot_exact(b_q, b_x, dim, seed):
    rng = np.random.default_rng(seed)
    nbytes = binary.rb_nbytes(dim)
    mask = np.packbits(np.arange(nbytes * 8) < dim, bitorder="little")  # padding bits zero
    qb = rng.integers(0, 256, size=(b_q, nbytes)).astype(np.uint8) & mask
    xb = rng.integers(0, 256, size=(b_x, nbytes)).astype(np.uint8) & mask
    got = binary._sdc_dot(binary.rb_words(qb[None])[0], binary.rb_words(xb[None]), 0, dim)
    assert got == sdc_dot_ref(qb, xb, dim)


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), dim=st.sampled_from([1, 3, 8, 13, 65]), b=LEVELS,
       nlist=st.integers(1, 3), n_probe=st.integers(1, 4), is_l2=st.booleans(), k=st.integers(1, 45),
       kind=st.sampled_from(["gauss", "sparse"]), seed=st.integers(0, 2**32 - 1))
def test_rb_sdc_scan_exact(nq, n, dim, b, nlist, n_probe, is_l2, k, kind, seed):
    # Integer-exact popcount dot products and no fastmath: scores are reproducible exactly.
    rng = np.random.default_rng(seed)
    bits, factors = _rb_db(rng, n, dim, b, kind)
    words = binary.rb_words(bits)
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    n_tab = n_probe if is_l2 else 1
    qs = _vectors(rng, nq * n_tab, dim, kind)
    q_bits, q_factors = binary.rb_encode_batch(qs, b, binary._T_COARSE, binary._T_FINE_STEP)
    q_words = np.ascontiguousarray(binary.rb_words(q_bits).reshape(nq, n_tab, b, -1))
    q_scale = np.ascontiguousarray(q_factors[:, 0].reshape(nq, n_tab))
    q_bits = q_bits.reshape(nq, n_tab, b, -1)
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    q_sq = rng.random((nq, n_probe)).astype(np.float32) * 4 if is_l2 else np.zeros((nq, n_probe), np.float32)
    for a in (q_words, q_scale, words, factors, ids, offsets, probes, bias, q_sq):
        a.setflags(write=False)
    got_s, got_i = binary.rb_sdc_scan_batch(q_words, q_scale, words, factors, ids, offsets, probes, bias, q_sq,
                                            is_l2, dim, k, no_floors(q_words))
    for q in range(nq):
        s, i = binary.rb_sdc_scan(q_words[q], q_scale[q], words, factors, ids, offsets, probes[q], bias[q],
                                  q_sq[q], is_l2, dim, k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = rb_sdc_candidates_ref(q_bits[q], q_scale[q], bits, factors, ids, offsets, probes[q],
                                               bias[q], q_sq[q], is_l2, dim)
        assert_topk_exact(s, i, cand_s, cand_i, k)


@settings(max_examples=15, deadline=None, database=None)
@given(n=st.integers(1, 30), dim=st.sampled_from([8, 13, 64]), b=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_rb_lut_scan_estimates_inner_products(n, dim, b, seed):
    # Unbiased-estimator sanity on its own terms: g * <x, s> recovers |x|^2 exactly.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    bits, factors = binary.rb_encode_batch(x, b, binary._T_COARSE, binary._T_FINE_STEP)
    s = rb_signs_ref(bits, dim)
    est = factors[:, 0].astype(np.float64) * np.einsum("nd,nd->n", s, x.astype(np.float64))
    np.testing.assert_allclose(est, np.einsum("nd,nd->n", x.astype(np.float64), x.astype(np.float64)), rtol=1e-4)


@SETTINGS
@given(n=st.integers(0, 20), dim=st.sampled_from([1, 3, 8, 13, 64, 100]), levels=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1), zero_rows=st.booleans())
def test_error_norms_are_the_estimator_error(n, dim, levels, seed, zero_rows):
    # err = |r - g s| from the code alone (g^2 |s|^2 - |r|^2), checked against the vectors
    # themselves; |<q, r> - g <q, s>| <= |q| err for any q (Cauchy-Schwarz: a hard bound).
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n, dim)).astype(np.float32)
    if zero_rows and n:
        r[0] = 0.0
    bits, factors = binary.rb_encode_batch(r, levels, binary._T_COARSE, binary._T_FINE_STEP)
    codes = np.concatenate([bits.reshape(n, levels * binary.rb_nbytes(dim)), factors.astype("<f4").view(np.uint8)],
                           axis=1)
    err = binary.rb_error_norms(codes, levels, dim)
    assert err.dtype == np.float32 and err.shape == (n,)
    s = rb_signs_ref(bits, dim)
    want = np.linalg.norm(r - factors[:, :1].astype(np.float64) * s, axis=1)
    # g^2 |s|^2 - |r|^2 cancels when err << |r| (dim 1, deep levels): float32 factors give
    # err to within about sqrt(float32 eps) |r|
    norm = np.linalg.norm(r, axis=1)
    assert (np.abs(err - want) <= 2e-3 * want + 1e-3 * norm + 1e-6).all()
    q = rng.standard_normal((5, dim))
    gap = np.abs(q @ r.T.astype(np.float64) - (q @ s.T) * factors[:, 0])
    assert (gap <= np.linalg.norm(q, axis=1)[:, None] * (err + 1e-3 * norm + 1e-6)[None, :] * (1 + 1e-3)).all()


@SETTINGS
@given(n=st.integers(0, 25), dim=st.sampled_from([1, 3, 8, 13, 64, 100]), levels=st.integers(1, 4),
       m=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), strided=st.booleans())
def test_rb_sign_dots_are_the_level_weighted_sign_products(n, dim, levels, m, seed, strided):
    # <vecs[which[i]], s_i> with s the code's level-weighted signs (numpy: rb_signs_ref), the
    # rows grouped by vector as an IVF layout orders them, also for odd dims, one row, no
    # rows and vectors handed in strided; an order that is no permutation is refused, and
    # starts that do not rise from 0 to n
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n, dim)).astype(np.float32)
    bits, factors = binary.rb_encode_batch(r, levels, binary._T_COARSE, binary._T_FINE_STEP)
    codes = np.concatenate([bits.reshape(n, levels * binary.rb_nbytes(dim)), factors.astype("<f4").view(np.uint8)],
                           axis=1)
    vecs = rng.standard_normal((m, 2 * dim)).astype(np.float32)[:, ::2] if strided else \
        rng.standard_normal((m, dim)).astype(np.float32)
    which = rng.integers(0, m, n)
    order = np.argsort(which, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=m))])
    got = binary.rb_sign_dots(codes, levels, vecs, order, starts)
    assert got.dtype == np.float64 and got.shape == (n,)
    want = np.einsum("nd,nd->n", rb_signs_ref(bits, dim).astype(np.float64), vecs[which].astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * dim)
    if n:
        with pytest.raises(ValueError, match="order"):
            binary.rb_sign_dots(codes, levels, vecs, np.full(n, n), starts)
        with pytest.raises(ValueError, match="starts"):
            binary.rb_sign_dots(codes, levels, vecs, order, starts[::-1].copy())


@settings(max_examples=30, deadline=None, database=None)
@given(nq=st.integers(1, 4), dim=st.sampled_from([1, 7, 8, 13, 64, 65]), nlist=st.integers(1, 5),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), near=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rb_nibble_tables_are_linear(nq, dim, nlist, scale, near, seed):
    # l2 on residuals makes each probe's level-0 table as the query's less the list's
    # (engine/quantizers.py RB.probe_tables): rb_nibble_lut(qR - cR) equals
    # rb_nibble_lut(qR) - rb_nibble_lut(cR) to within the float32 rounding of four-term sums
    # of either, also when q is near c (the residual small against both)
    rng = np.random.default_rng(seed)
    rotated = (rng.standard_normal((nlist, dim)) * scale).astype(np.float32)
    qr = (rng.standard_normal((nq, dim)) * scale).astype(np.float32)
    if near:
        qr = (rotated[rng.integers(0, nlist, nq)] + qr * np.float32(1e-3)).astype(np.float32)
    tq, tl = binary.rb_nibble_lut(qr, 1), binary.rb_nibble_lut(rotated, 1)
    assert tq.shape == (nq, 2 * binary.rb_nbytes(dim), 16) and tl.shape == (nlist,) + tq.shape[1:]
    for lst in range(nlist):
        want = binary.rb_nibble_lut(qr - rotated[lst], 1)
        got = tq - tl[lst]
        mag = np.abs(tq).max() + np.abs(tl[lst]).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=8 * np.finfo(np.float32).eps * mag)
