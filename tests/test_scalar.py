"""kernels/scalar.py against tests/reference/scalar.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import scalar
from tests.reference.ivf import random_layout, random_probes
from tests.reference.scalar import (
    sq4_pack_ref,
    sq_candidates_ref,
    sq_decode_ref,
    sq_levels_ref,
    sq_train_ref,
)
from tests.reference.topk import assert_topk_close, no_floors

SETTINGS = settings(max_examples=40, deadline=None, database=None)
DIMS = st.sampled_from([1, 2, 3, 7, 13, 16, 65])
NBITS = st.sampled_from([4, 8])


def _data(rng, n, dim, const_cols):
    """float32 rows with some constant columns (zero range): all-zero or a constant."""
    x = (rng.standard_normal((n, dim)) * rng.choice([1e-2, 1.0, 50.0], size=dim)).astype(np.float32)
    for d in range(dim):
        if const_cols and rng.random() < 0.3:
            x[:, d] = 0.0 if rng.random() < 0.5 else np.float32(rng.standard_normal())
    return x


def _user_input(x, dtype, layout):
    x = x.astype(dtype)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros((x.shape[0], 3 * x.shape[1]), dtype=dtype)
        wide[:, ::3] = x
        return wide[:, ::3]
    return x


def _unpack(codes, dim, nbits):
    return np.asarray(scalar.sq_unpack(codes, dim, nbits))


@SETTINGS
@given(n=st.integers(1, 30), dim=DIMS, seed=st.integers(0, 2**32 - 1), const=st.booleans())
def test_train_matches_reference(n, dim, seed, const):
    x = _data(np.random.default_rng(seed), n, dim, const)
    vmin, vdiff = scalar.sq_train(x)
    ref_min, ref_diff = sq_train_ref(x)
    assert vmin.dtype == np.float32 and vdiff.dtype == np.float32
    np.testing.assert_array_equal(vmin, ref_min.astype(np.float32))
    np.testing.assert_allclose(vdiff, ref_diff, rtol=1e-6)
    assert np.all(vdiff >= 0)


@SETTINGS
@given(n=st.integers(0, 30), dim=DIMS, nbits=NBITS, seed=st.integers(0, 2**32 - 1), const=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float16, np.float64]),
       layout=st.sampled_from(["c", "fortran", "strided"]))
def test_encode_matches_reference(n, dim, nbits, seed, const, dtype, layout):
    rng = np.random.default_rng(seed)
    train = _data(rng, 20, dim, const)
    vmin, vdiff = scalar.sq_train(train)
    # rows inside and outside the trained range (clipped)
    x = np.concatenate([train[: n // 2], _data(rng, n - n // 2, dim, False) * 2]).astype(dtype).astype(np.float32)
    codes = scalar.sq_encode(_user_input(x, dtype, layout), vmin, vdiff, nbits)
    assert codes.dtype == np.uint8 and codes.flags.c_contiguous
    assert codes.shape == ((n, dim) if nbits == 8 else (n, (dim + 1) // 2))
    np.testing.assert_array_equal(codes, scalar.sq_encode(x, vmin, vdiff, nbits))
    raw, ref_u = sq_levels_ref(x, vmin, vdiff, nbits)
    u = _unpack(codes, dim, nbits)
    # equal to the float64 reference except where the level lies within rounding of .5
    diff = u.astype(np.int64) != ref_u.astype(np.int64)
    near_half = np.abs(np.abs(raw - np.floor(raw)) - 0.5) < 1e-4 * (1 + np.abs(raw))
    assert not np.any(diff & ~near_half)
    assert np.all(np.abs(u.astype(np.int64) - ref_u.astype(np.int64)) <= 1)
    if nbits == 4:
        np.testing.assert_array_equal(codes, sq4_pack_ref(u))


@SETTINGS
@given(n=st.integers(1, 30), dim=DIMS, nbits=NBITS, seed=st.integers(0, 2**32 - 1))
def test_zero_range_dimensions_decode_exactly(n, dim, nbits, seed):
    # A constant column (zero or not) trains vdiff = 0: it codes to 0, never NaN, and
    # decodes to the constant bit for bit.
    rng = np.random.default_rng(seed)
    x = _data(rng, n, dim, False)
    const_dims = rng.random(dim) < 0.5
    const_dims[0] = True
    x[:, const_dims] = np.where(rng.random(const_dims.sum()) < 0.5, 0.0, rng.standard_normal(const_dims.sum()))
    vmin, vdiff = scalar.sq_train(x)
    np.testing.assert_array_equal(vdiff[const_dims], 0.0)
    codes = scalar.sq_encode(x, vmin, vdiff, nbits)
    u = _unpack(codes, dim, nbits)
    np.testing.assert_array_equal(u[:, const_dims], 0)
    dec = scalar.sq_decode(codes, vmin, vdiff, nbits)
    assert dec.dtype == np.float32 and not np.any(np.isnan(dec))
    np.testing.assert_array_equal(dec[:, const_dims], x[:, const_dims])


@SETTINGS
@given(n=st.integers(0, 30), dim=DIMS, nbits=NBITS, seed=st.integers(0, 2**32 - 1), const=st.booleans())
def test_decode_matches_reference_and_error_bound(n, dim, nbits, seed, const):
    rng = np.random.default_rng(seed)
    x = _data(rng, max(n, 1), dim, const)[:n]
    vmin, vdiff = scalar.sq_train(x if n else np.zeros((1, dim), np.float32))
    codes = scalar.sq_encode(x, vmin, vdiff, nbits)
    dec = scalar.sq_decode(codes, vmin, vdiff, nbits)
    assert dec.shape == (n, dim) and dec.dtype == np.float32
    u = _unpack(codes, dim, nbits)
    ref = sq_decode_ref(u, vmin, vdiff, nbits)
    np.testing.assert_allclose(dec, ref, rtol=1e-6, atol=1e-6 * (1 + np.abs(ref).max(initial=0)))
    # training rows reconstruct within half a level (plus float32 rounding)
    half = vdiff.astype(np.float64) / ((1 << nbits) - 1) / 2
    slack = 1e-5 * (np.abs(vmin.astype(np.float64)) + vdiff)
    assert np.all(np.abs(dec - x.astype(np.float64)) <= half + slack + 1e-30)


@SETTINGS
@given(n=st.integers(0, 6), dim=st.integers(1, 15), seed=st.integers(0, 2**32 - 1))
def test_sq4_unpack_inverts_packing(n, dim, seed):
    u = np.random.default_rng(seed).integers(0, 16, size=(n, dim)).astype(np.uint8)
    np.testing.assert_array_equal(scalar.sq_unpack(sq4_pack_ref(u), dim, 4), u)


def _scan_case(rng, nq, n, dim, nbits, nlist, n_probe, is_l2, const):
    """Inputs laid out as engine/codecs.py builds them: weights padded to an even width for
    SQ4, c (nq, L, width) per table, probe_bias + <q, vmin> for ip."""
    x = _data(rng, max(n, 1), dim, const)
    vmin, vdiff = scalar.sq_train(x)
    x = x[:n]
    if n > 2:
        x[n - 1] = x[0]  # duplicate row: equal scores, ties by id
    codes = scalar.sq_encode(x, vmin, vdiff, nbits)
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    n_tab = n_probe if is_l2 else 1
    qs = _data(rng, nq * n_tab, dim, False).reshape(nq, n_tab, dim)
    width = dim + (dim % 2 if nbits == 4 else 0)
    w = np.zeros((nq, width), np.float32)
    c = np.zeros((nq, n_tab, width), np.float32)
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32) if not is_l2 else np.zeros((nq, n_probe), np.float32)
    ref_bias = bias.copy()
    if is_l2:
        # one row of a_d per query (it does not depend on the table), c_d per table
        wa, cc = scalar.sq_query_terms(qs.reshape(nq * n_tab, dim), vmin, vdiff, nbits, "l2")
        w[:, :dim] = wa.reshape(nq, n_tab, dim)[:, 0]
        c[:, :, :dim] = cc.reshape(nq, n_tab, dim)
    else:
        w[:, :dim], const_term = scalar.sq_query_terms(qs[:, 0], vmin, vdiff, nbits, "ip")
        bias = np.ascontiguousarray(bias + const_term[:, None], dtype=np.float32)
    return qs, vmin, vdiff, codes, ids, offsets, probes, w, c, bias, ref_bias


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), dim=DIMS, nbits=NBITS, nlist=st.integers(1, 3),
       n_probe=st.integers(1, 4), is_l2=st.booleans(), k=st.integers(1, 45), const=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_scan_matches_reference(nq, n, dim, nbits, nlist, n_probe, is_l2, k, const, seed):
    rng = np.random.default_rng(seed)
    qs, vmin, vdiff, codes, ids, offsets, probes, w, c, bias, ref_bias = _scan_case(
        rng, nq, n, dim, nbits, nlist, n_probe, is_l2, const)
    for a in (w, c, codes, ids, offsets, probes, bias):
        a.setflags(write=False)  # memory-mapped inputs are read-only
    got_s, got_i = scalar.sq_scan_batch(w, c, codes, ids, offsets, probes, bias, nbits, is_l2, k, no_floors(w))
    u = _unpack(codes, dim, nbits)
    for q in range(nq):
        s, i = scalar.sq_scan(w[q], c[q], codes, ids, offsets, probes[q], bias[q], nbits, is_l2, k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = sq_candidates_ref(qs[q], u, vmin, vdiff, nbits, ids, offsets, probes[q], ref_bias[q], is_l2)
        assert_topk_close(s, i, cand_s, cand_i, k, rtol=1e-4, atol=1e-4)


def test_scan_refuses_tables_narrower_than_the_codes():
    # SQ4 at an odd dim: `sq_query_terms` gives dim-wide tables, the codes hold dim + 1 half
    # bytes; unpadded, the l2 scan read one weight past each query's table (query 0 scored
    # with query 1's first term: off by 7.5 at dim 3) and NUMBA_BOUNDSCHECK=1 caught the read
    rng = np.random.default_rng(0)
    dim, n, nq = 3, 5, 2
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    vmin, vdiff = scalar.sq_train(x)
    codes = scalar.sq_encode(x, vmin, vdiff, 4)
    ids, offsets, probes = np.arange(n, dtype=np.int64), np.array([0, n]), np.zeros((nq, 1), np.int64)
    bias = np.zeros((nq, 1), np.float32)
    for is_l2 in (True, False):
        w, c = scalar.sq_query_terms(q, vmin, vdiff, 4, "l2" if is_l2 else "ip")
        c = c[:, None, :] if is_l2 else np.zeros((nq, 1, dim), np.float32)
        with pytest.raises(ValueError, match="as wide as the dims the codes hold"):
            scalar.sq_scan_batch(w, c, codes, ids, offsets, probes, bias, 4, is_l2, n, no_floors(w))
        with pytest.raises(ValueError, match="as wide as the dims the codes hold"):
            scalar.sq_scan(w[0], c[0], codes, ids, offsets, probes[0], bias[0], 4, is_l2, n, -np.inf)
        # (padded with a zero column, as the engine pads them, it scans: test_scan_matches_reference)
