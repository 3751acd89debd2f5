"""kernels/pq.py against tests/reference/pq.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from vecz.kernels import pq
from tests.reference.ivf import random_layout, random_probes
from tests.reference.pq import (
    pq4_pack_ref,
    pq_cell_errors_ref,
    pq_decode_ref,
    pq_encode_ref,
    pq_lut_ref,
    pq_pad_ref,
    pq_scan_candidates_ref,
    probe_luts_ref,
    pq_sub_dists_ref,
)
from tests.reference.topk import assert_floored, assert_topk_close, assert_topk_exact, draw_floors, no_floors

SETTINGS = settings(max_examples=40, deadline=None, database=None)
DIMS = st.sampled_from([1, 3, 7, 8, 13, 16, 65])
MS = st.sampled_from([1, 2, 3, 4, 5, 8])


def _user_input(x, dtype, layout):
    x = x.astype(dtype)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=dtype)
        wide[:, 1::2] = x
        return wide[:, 1::2]
    return x


def _books(rng, m, nbits, dsub, kind):
    shape = (m, 1 << nbits, dsub)
    if kind == "int":
        return rng.integers(-3, 4, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@SETTINGS
@given(n=st.integers(0, 5), dim=DIMS, m=MS)
def test_pad_and_dsub(n, dim, m):
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + 1
    assert pq.pq_dsub(dim, m) == -(-dim // m)
    got = pq.pq_pad(x, m)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, pq_pad_ref(x, m))


@SETTINGS
@given(n=st.integers(0, 30), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_encode_exact_on_integer_data(n, dim, m, nbits, seed):
    # Small integers: every sub-distance is exact, so the codes (first nearest centroid,
    # ties included) equal brute force exactly.
    rng = np.random.default_rng(seed)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "int")
    x = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)
    codes = pq.pq_encode(x, books)
    assert codes.dtype == np.uint8 and codes.shape == (n, m)
    np.testing.assert_array_equal(codes, pq_encode_ref(x, books))


@SETTINGS
@given(n=st.integers(0, 30), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float16, np.float64]),
       layout=st.sampled_from(["c", "fortran", "strided"]))
def test_encode_float_data_any_dtype_and_layout(n, dim, m, nbits, seed, dtype, layout):
    rng = np.random.default_rng(seed)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "float")
    x32 = rng.standard_normal((n, dim)).astype(dtype).astype(np.float32)
    codes = pq.pq_encode(_user_input(x32, dtype, layout), books)
    np.testing.assert_array_equal(codes, pq.pq_encode(x32, books))
    if n == 0:
        return
    d = pq_sub_dists_ref(x32, books)
    chosen = np.take_along_axis(d, codes.astype(np.intp)[:, :, None], axis=2)[:, :, 0]
    best = d.min(axis=2)
    assert np.all(chosen <= best + 1e-5 * (1 + best))


@SETTINGS
@given(n=st.integers(1, 16), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1),
       dup=st.booleans())
def test_training_vectors_encode_and_decode_exactly(n, dim, m, nbits, seed, dup):
    # n <= ksub: each sub-space codebook holds the training sub-vectors themselves, so each
    # training vector's code decodes to the vector bit for bit (padded dims dropped).
    rng = np.random.default_rng(seed)
    n = min(n, 1 << nbits)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if dup and n > 1:
        x[-1] = x[0]
    books = pq.pq_train(x, m, nbits, seed=seed % 100, n_iter=3)
    assert books.shape == (m, 1 << nbits, pq.pq_dsub(dim, m)) and books.dtype == np.float32
    # trained on zero-padded vectors, so the padded coordinates of every centroid are zero
    # and contribute nothing to an l2 table
    flat = books.transpose(1, 0, 2).reshape(1 << nbits, -1)
    np.testing.assert_array_equal(flat[:, dim:], 0.0)
    codes = pq.pq_encode(x, books)
    np.testing.assert_array_equal(pq.pq_decode(codes, books, dim), x)


# No shrinking: each example trains M codebooks through the parallel k-means assignment,
# so a failure would spend tens of seconds shrinking an input that is already small.
@settings(max_examples=8, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(n=st.integers(17, 40), m=st.sampled_from([2, 3]), seed=st.integers(0, 2**32 - 1),
       const=st.sampled_from([0.0, 0.75, -3.5]))
def test_constant_subspace_decodes_exactly(n, m, seed, const):
    # More training rows than ksub, but one sub-space holds a single distinct sub-vector (a
    # constant dimension, common in real embeddings). Its value is a training sub-vector, so
    # it must encode and decode exactly (kmeans_fit: "a training vector always encodes to
    # itself").
    rng = np.random.default_rng(seed)
    dim = 2 * m
    x = rng.standard_normal((n, dim)).astype(np.float32)  # n > ksub = 16
    x[:, -2:] = np.float32(const)  # the last sub-space (dsub = 2) is constant
    books = pq.pq_train(x, m, 4, seed=seed % 100, n_iter=3)
    dec = pq.pq_decode(pq.pq_encode(x, books), books, dim)
    np.testing.assert_array_equal(dec[:, -2:], x[:, -2:])


@SETTINGS
@given(n=st.integers(0, 20), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_decode_matches_reference(n, dim, m, nbits, seed):
    rng = np.random.default_rng(seed)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "float")
    codes = rng.integers(0, 1 << nbits, size=(n, m)).astype(np.uint8)
    got = pq.pq_decode(codes, books, dim)
    assert got.shape == (n, dim) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, pq_decode_ref(codes, books, dim))


@SETTINGS
@given(nq=st.integers(0, 4), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1),
       metric=st.sampled_from(["ip", "l2"]), dtype=st.sampled_from([np.float32, np.float16]),
       layout=st.sampled_from(["c", "fortran", "strided"]))
def test_lut_matches_reference(nq, dim, m, nbits, seed, metric, dtype, layout):
    rng = np.random.default_rng(seed)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "float")
    q = rng.standard_normal((nq, dim)).astype(dtype).astype(np.float32)
    lut = pq.pq_lut(_user_input(q, dtype, layout), books, metric)
    assert lut.shape == (nq, m, 1 << nbits) and lut.dtype == np.float32 and lut.flags.c_contiguous
    ref = pq_lut_ref(q, books, metric)
    scale = 1.0 + (np.abs(ref).max() if ref.size else 0.0)
    np.testing.assert_allclose(lut, ref, rtol=1e-5, atol=1e-5 * scale)


@SETTINGS
@given(nq=st.integers(1, 20), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_lut_sums_in_dimension_order_whatever_the_batch(nq, dim, m, nbits, seed):
    # pq_lut sums each entry in float32 in the sub-space's dimension order, one query at a
    # time: the numpy expression doing the same equals it bit for bit, in the serial loop (a
    # few queries), the parallel one (from LUT_PARALLEL_MIN), with the books' transposed copy
    # given or made, and a query's tables do not depend on its batch
    rng = np.random.default_rng(seed)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "float")
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    qp = pq_pad_ref(q, m).astype(np.float32).reshape(nq, m, -1)
    want = np.zeros((nq, m, books.shape[1]), dtype=np.float32)
    for t in range(qp.shape[2]):
        want = want + qp[:, :, t, None] * books[None, :, :, t]
    got = pq.pq_lut(q, books, "ip")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pq.pq_lut(q, books, "ip", pq.pq_lut_books(books)), want)
    for i in range(nq):
        np.testing.assert_array_equal(pq.pq_lut(q[i], books, "ip"), want[i:i + 1])
    bt = pq.pq_lut_books(books)
    for bad in (bt.astype(np.float64), np.zeros((m, bt.shape[1], bt.shape[2] + 1), np.float32),
                np.zeros((m, bt.shape[1], 2 * bt.shape[2]), np.float32)[:, :, ::2]):
        with pytest.raises(ValueError, match="books_t"):
            pq.pq_lut(q, books, "ip", bad)  # another dtype, shape, or not contiguous
    # l2: the books' squared lengths given (made once by the engine) or made here, the same bits
    norms = pq.pq_book_norms(books)
    np.testing.assert_allclose(norms, (books.astype(np.float64) ** 2).sum(axis=2), rtol=1e-6)
    l2 = pq.pq_lut(q, books, "l2")
    np.testing.assert_array_equal(pq.pq_lut(q, books, "l2", bt, norms), l2)
    for bad in (norms.astype(np.float64), norms[:, :-1]):
        with pytest.raises(ValueError, match="book_norms"):
            pq.pq_lut(q, books, "l2", bt, np.ascontiguousarray(bad))


def test_lut_of_one_vector():
    books = np.arange(2 * 16 * 2, dtype=np.float32).reshape(2, 16, 2)
    q = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(pq.pq_lut(q, books, "l2"), pq_lut_ref(q[None], books, "l2"), rtol=1e-6)


@SETTINGS
@given(n=st.integers(0, 12), m=st.integers(1, 17), seed=st.integers(0, 2**32 - 1))
def test_pq4_pack_unpack(n, m, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    packed = pq.pq4_pack(codes)
    assert packed.shape == (n, (m + 1) // 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, pq4_pack_ref(codes))
    np.testing.assert_array_equal(pq.pq4_unpack(packed, m), codes)
    packed.setflags(write=False)
    np.testing.assert_array_equal(pq.pq4_unpack(packed, m), codes)


def _scan_inputs(rng, nq, n, m, nbits, nlist, n_probe, per_probe, kind):
    ksub = 1 << nbits
    n_tab = n_probe if per_probe else 1
    if kind == "int":  # integer tables: every sum is exact whatever the order
        luts = rng.integers(-8, 9, size=(nq, n_tab, m, ksub)).astype(np.float32)
        bias = rng.integers(-4, 5, size=(nq, n_probe)).astype(np.float32)
    else:
        luts = rng.standard_normal((nq, n_tab, m, ksub)).astype(np.float32)
        bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    codes = rng.integers(0, ksub, size=(n, m)).astype(np.uint8)
    if n > 2:
        codes[n - 1] = codes[0]  # a duplicate row: equal scores, ties by id
    offsets, ids = random_layout(rng, n, nlist)
    probes = random_probes(rng, nq, nlist, n_probe)
    for a in (luts, bias, codes, offsets, ids, probes):
        a.setflags(write=False)  # memory-mapped inputs are read-only
    return luts, codes, ids, offsets, probes, bias


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 50), m=MS, nbits=st.sampled_from([4, 8]),
       nlist=st.integers(1, 4), n_probe=st.integers(1, 5), per_probe=st.booleans(), k=st.integers(1, 60),
       kind=st.sampled_from(["int", "float"]), seed=st.integers(0, 2**32 - 1))
def test_lut_scan_matches_reference(nq, n, m, nbits, nlist, n_probe, per_probe, k, kind, seed):
    rng = np.random.default_rng(seed)
    luts, codes, ids, offsets, probes, bias = _scan_inputs(rng, nq, n, m, nbits, nlist, n_probe, per_probe, kind)
    got_s, got_i = pq.pq_lut_scan_batch(luts, codes, ids, offsets, probes, bias, k, no_floors(luts))
    for q in range(nq):
        s, i = pq.pq_lut_scan(luts[q], codes, ids, offsets, probes[q], bias[q], k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = pq_scan_candidates_ref(luts[q], codes, ids, offsets, probes[q], bias[q])
        if kind == "int":
            assert_topk_exact(s, i, cand_s, cand_i, k)
        else:
            assert_topk_close(s, i, cand_s, cand_i, k, rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None, database=None)
@given(n=st.integers(1, 40), dim=st.sampled_from([3, 13, 16]), m=st.sampled_from([2, 4, 5]),
       metric=st.sampled_from(["ip", "l2"]), seed=st.integers(0, 2**32 - 1))
def test_lut_scan_end_to_end_equals_decoded_scores(n, dim, m, metric, seed):
    # Flat index: one list, L = 1. The score of a row is the metric between the query and
    # the row's reconstruction.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    books = _books(rng, m, 4, pq.pq_dsub(dim, m), "float")
    flat = books.transpose(1, 0, 2).reshape(16, -1)
    flat[:, dim:] = 0  # as in trained books: padded coordinates are zero
    books = np.ascontiguousarray(flat.reshape(16, m, -1).transpose(1, 0, 2))
    codes = pq.pq_encode(x, books)
    q = rng.standard_normal((1, dim)).astype(np.float32)
    lut = pq.pq_lut(q, books, metric)[:, None]
    ids = np.arange(n, dtype=np.int64)
    s, i = pq.pq_lut_scan(lut[0], codes, ids, np.array([0, n], np.int64), np.zeros(1, np.int64),
                          np.zeros(1, np.float32), 5, -np.inf)
    rec = pq.pq_decode(codes, books, dim).astype(np.float64)
    if metric == "ip":
        exact = rec @ q[0].astype(np.float64)
    else:
        exact = -((rec - q[0].astype(np.float64)) ** 2).sum(axis=1)
    assert_topk_close(s, i, exact, ids, 5, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None, database=None)
@given(n=st.integers(0, 2500), dim=st.sampled_from([1, 3, 7, 8, 13, 16, 65]), m=MS,
       nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["int", "float"]),
       dup=st.booleans())
def test_encode_drivers_agree_with_reference(n, dim, m, nbits, seed, kind, dup):
    # The one-pass encoder (every sub-space of a row in turn; serial, and parallel over
    # chunks of rows that span several chunks here) equals brute force on integer data (ties
    # to the first centroid, duplicate rows and centroids included) and agrees with itself.
    rng = np.random.default_rng(seed)
    dsub = pq.pq_dsub(dim, m)
    books = _books(rng, m, nbits, dsub, kind)
    if kind == "int":
        x = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    if dup and n > 2:
        x[n // 2:] = x[0]
        books[:, -1] = books[:, 0]  # a duplicate centroid in every sub-space: the first wins
    codes = pq.pq_encode(x, books)
    assert codes.dtype == np.uint8 and codes.shape == (n, m)
    if dsub < 24:  # the one-pass drivers (wider sub-spaces take kmeans_assign's BLAS path)
        xp = pq.pq_pad(x, m)
        cts = np.ascontiguousarray(books.transpose(0, 2, 1))
        np.testing.assert_array_equal(pq._encode_serial(xp, cts), codes)
        np.testing.assert_array_equal(pq._encode_batch(xp, cts), codes)
    if kind == "int":
        np.testing.assert_array_equal(codes, pq_encode_ref(x, books))
    elif n:
        d = pq_sub_dists_ref(x, books)
        chosen = np.take_along_axis(d, codes.astype(np.intp)[:, :, None], axis=2)[:, :, 0]
        assert np.all(chosen <= d.min(axis=2) + 1e-5 * (1 + d.min(axis=2)))


def test_encode_one_row_odd_dims_and_read_only_input():
    rng = np.random.default_rng(7)
    books = rng.standard_normal((5, 256, 3)).astype(np.float32)  # 13 dims: padded to 15
    x = rng.standard_normal((1, 13)).astype(np.float32)
    x.setflags(write=False)
    books.setflags(write=False)
    np.testing.assert_array_equal(pq.pq_encode(x, books), pq_encode_ref(x, books))



def test_encode_pads_rows_to_the_books_width_and_refuses_wider_ones():
    # books of 2 sub-spaces of 10 dims, rows of 11 (an old right-padded codec's width can
    # be any below M * dsub): the second sub-space is the row's 11th dim and 9 zeros. It was
    # padded to 2 * ceil(11 / 2) = 12 dims and read its last 8 from the next row (or past
    # the array: NUMBA_BOUNDSCHECK=1 caught it)
    rng = np.random.default_rng(3)
    for books, width in ((rng.standard_normal((2, 16, 10)).astype(np.float32), 11),
                         (rng.standard_normal((4, 16, 4)).astype(np.float32), 12)):
        x = rng.standard_normal((3, width)).astype(np.float32)
        np.testing.assert_array_equal(pq.pq_encode(x, books), pq_encode_ref(x, books))
        with pytest.raises(ValueError, match="expected rows"):
            pq.pq_encode(rng.standard_normal((3, books.shape[0] * books.shape[2] + 1)).astype(np.float32), books)

@SETTINGS
@given(n=st.integers(0, 30), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["int", "float", "own"]))
def test_code_errors_are_the_distance_to_the_decoded_row(n, dim, m, nbits, seed, kind):
    # |r - decode(code)| from the codes without decoding: equal to the float64 reference on
    # any code (not only the nearest one), zero for rows that are their own reconstruction.
    rng = np.random.default_rng(seed)
    m = min(m, dim)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "int" if kind == "int" else "float")
    codes = rng.integers(0, 1 << nbits, size=(n, m)).astype(np.uint8)
    if kind == "own":
        r = pq_decode_ref(codes, books, dim).astype(np.float32)
    else:
        r = (rng.integers(-3, 4, size=(n, dim)) if kind == "int" else rng.standard_normal((n, dim))).astype(np.float32)
    got = pq.pq_code_errors(r, codes, books)
    assert got.dtype == np.float32 and got.shape == (n,)
    want = np.sqrt(((r.astype(np.float64) - pq_decode_ref(codes, books, dim)) ** 2).sum(axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if kind == "own":
        assert np.all(got == 0)


@SETTINGS
@given(n=st.integers(1, 40), dim=DIMS, m=MS, nbits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1),
       prior=st.sampled_from([0.0, 1.0, 4.0]), dup=st.booleans())
def test_cell_errors_and_the_scales_they_give_a_code(n, dim, m, nbits, seed, prior, dup):
    # per cell, the mean squared error of its rows (shrunk toward the sub-space's mean: a cell
    # no row reached gets the mean), against a loop reference; odd dims (padded sub-spaces),
    # one row, duplicate rows, non-contiguous rows; summed over a code's cells, the scale
    rng = np.random.default_rng(seed)
    m = min(m, dim)
    books = _books(rng, m, nbits, pq.pq_dsub(dim, m), "float")
    r = rng.standard_normal((n, 2 * dim)).astype(np.float32)[:, ::2]
    if dup:
        r[n // 2:] = r[0]
    codes = pq.pq_encode(np.ascontiguousarray(r), books) if seed % 2 else \
        rng.integers(0, 1 << nbits, size=(n, m)).astype(np.uint8)  # nearest, or any code
    got = pq.pq_cell_errors(r, codes, books, prior)
    want = pq_cell_errors_ref(r, codes, books, prior)
    assert got.dtype == np.float32 and got.shape == (m, 1 << nbits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all() and (got >= 0).all()
    used = np.zeros(got.shape, dtype=bool)
    used[np.arange(m)[None, :], codes] = True
    table = np.where(used, want, rng.random(want.shape)).astype(np.float32)  # unused cells never count
    scales = pq.pq_code_error_scales(codes, table)
    assert scales.dtype == np.float32 and scales.shape == (n,)
    np.testing.assert_allclose(scales, np.sqrt(table[np.arange(m)[None, :], codes].astype(np.float64).sum(axis=1)),
                               rtol=1e-6)


def test_cell_errors_of_a_cell_are_its_rows_mean_error():
    # without shrinkage, a cell's value is exactly the mean squared error of the rows there;
    # a row that is its own reconstruction adds 0
    books = np.array([[[0.0, 0.0], [1.0, 1.0]]], dtype=np.float32)  # M = 1, ksub = 2, dsub = 2
    r = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0]], dtype=np.float32)
    codes = np.array([[0], [0], [1], [1]], dtype=np.uint8)
    np.testing.assert_allclose(pq.pq_cell_errors(r, codes, books, 0.0), [[0.5, 2.0]])
    # shrunk by 4 rows of the mean 1.25: (1 + 4 * 1.25) / 6
    np.testing.assert_allclose(pq.pq_cell_errors(r, codes, books, 4.0)[0, 0], 6.0 / 6.0)
    with pytest.raises(ValueError, match="at least one row"):
        pq.pq_cell_errors(r[:0], codes[:0], books)
    with pytest.raises(ValueError, match="prior_rows >= 0"):
        pq.pq_cell_errors(r, codes, books, -1.0)


# ------------------------------------------------------------ cosine to the reconstruction


def _cosine_ref(lut, bias, books, centroid, codes, rows):
    """The kernel's arithmetic for `rows`: the score's float32 sum in sub-quantizer order plus
    bias, times `_inv_norm_ref` (1 for a zero-length reconstruction)."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    c = codes[rows]
    m = c.shape[1]
    s = np.cumsum(lut[np.arange(m), c], axis=1, dtype=np.float32)[:, -1]
    return (np.float32(bias) + s).astype(np.float32) * _inv_norm_ref(books, centroid, c)


def _inv_norm_ref(books, centroid, codes):
    """The cosine scan's 1 / |x_hat| of each row of `codes`: per sub-space the float64 squares
    of c + book summed in dimension order, those sums added in sub-space order,
    float32(1 / sqrt), 1 for a length^2 <= 1e-12."""
    width = centroid.shape[0]
    m, _, dsub = books.shape
    rec = centroid.astype(np.float64) + pq.pq_decode(codes, books, width).astype(np.float64)
    n2 = np.zeros(codes.shape[0])
    for j in range(m):
        part = rec[:, j * dsub:min((j + 1) * dsub, width)]
        n2 = n2 + (np.cumsum(part * part, axis=1)[:, -1] if part.shape[1] else 0.0)
    with np.errstate(divide="ignore"):
        return np.where(n2 > 1e-12, 1.0 / np.sqrt(n2), 1.0).astype(np.float32)


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), m=MS, width=st.integers(1, 20), nlist=st.integers(1, 4),
       n_probe=st.integers(1, 5), k=st.integers(1, 50), dead=st.integers(0, 5), zero_row=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_cosine_scan_matches_reference(nq, n, m, width, nlist, n_probe, k, dead, zero_row, seed):
    # odd n (the 4-row blocks and their tail), k > n, duplicate rows, dead rows (id -1), IVF
    # lists (probed twice, not at all, -1), widths M does not divide, negative scores (the
    # filter's lower bound) and a zero-length reconstruction (scored as is)
    m = min(m, width)
    rng = np.random.default_rng(seed)
    dsub = pq.pq_dsub(width, m)
    luts = rng.standard_normal((nq, m, 256)).astype(np.float32)
    bias = rng.standard_normal((nq, n_probe)).astype(np.float32)
    books = (0.3 * rng.standard_normal((m, 256, dsub))).astype(np.float32)
    centroids = rng.standard_normal((nlist, width)).astype(np.float32)
    codes = rng.integers(0, 256, size=(n, m)).astype(np.uint8)
    if n > 2:
        codes[n - 1] = codes[0]
    offsets, ids = random_layout(rng, n, nlist)
    ids = ids.copy()
    ids[rng.choice(n, min(dead, n), replace=False)] = -1
    if zero_row and n > 0:  # row 0's reconstruction is the zero vector
        lst0 = int(np.searchsorted(offsets, 0, side="right") - 1)
        centroids[lst0] = 0
        books[np.arange(m), codes[0]] = 0
    probes = random_probes(rng, nq, nlist, n_probe)
    inv = pq.pq_inv_norm_bounds(books, centroids, codes, offsets)
    tables = pq.pq_list_sub_norms(books, centroids)  # each row's norm from M lookups, or decoded
    decode = np.zeros((1, 0, 0))
    got_s, got_i = pq.pq_lut_scan_cosine_batch(luts, codes, ids, offsets, probes, bias, books, centroids, tables,
                                               *inv, k, no_floors(luts))
    dec_s, dec_i = pq.pq_lut_scan_cosine_batch(luts, codes, ids, offsets, probes, bias, books, centroids, decode,
                                               *inv, k, no_floors(luts))
    np.testing.assert_array_equal(dec_s, got_s)  # the tables give the decoded value bit for bit
    np.testing.assert_array_equal(dec_i, got_i)
    for bad in (tables[:, :, :-1], np.concatenate([tables, tables]), np.zeros((0, 0, 0))):
        with pytest.raises(ValueError, match="sub_norms"):  # a table the kernel would read past
            pq.pq_lut_scan_cosine_batch(luts, codes, ids, offsets, probes, bias, books, centroids,
                                        np.ascontiguousarray(bad), *inv, k, no_floors(luts))
    floors = draw_floors(got_s, got_i, rng)  # a floor only drops the rows below it (its norm filter too)
    assert_floored(*pq.pq_lut_scan_cosine_batch(luts, codes, ids, offsets, probes, bias, books, centroids, tables,
                                                *inv, k, floors), got_s, got_i, floors)
    for q in range(nq):
        s, i = pq.pq_lut_scan_cosine(luts[q], codes, ids, offsets, probes[q], bias[q], books, centroids, decode,
                                     *inv, k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_s, cand_i = [], []
        for p, lst in enumerate(probes[q]):
            if lst < 0:
                continue
            rows = np.arange(offsets[lst], offsets[lst + 1])
            rows = rows[ids[rows] >= 0]
            cand_s.append(_cosine_ref(luts[q], bias[q, p], books, centroids[lst], codes, rows))
            cand_i.append(ids[rows])
        cand_s = np.concatenate(cand_s) if cand_s else np.zeros(0, np.float32)
        cand_i = np.concatenate(cand_i) if cand_i else np.zeros(0, np.int64)
        # a list probed twice offers its rows twice: keep each id once (same score)
        cand_i, first = np.unique(cand_i, return_index=True)
        assert_topk_exact(s, i, cand_s[first], cand_i, k)


@settings(max_examples=15, deadline=None, database=None)
@given(dim=st.sampled_from([3, 13, 16, 17]), m=st.sampled_from([1, 2, 4, 5]), seed=st.integers(0, 2**32 - 1))
def test_norm_table_gives_reconstruction_norms(dim, m, seed):
    # |c + decode(code)|^2 = norm0 + sum_j norms[j, code_j], padded dims (m does not divide
    # dim) not counted
    rng = np.random.default_rng(seed)
    books = rng.standard_normal((m, 256, pq.pq_dsub(dim, m))).astype(np.float32)
    c = rng.standard_normal(dim).astype(np.float32)
    codes = rng.integers(0, 256, size=(30, m)).astype(np.uint8)
    norms, norm0 = pq.pq_norm_table(books, c)
    got = norm0 + norms[np.arange(m), codes].astype(np.float64).sum(axis=1)
    rec = c.astype(np.float64) + pq.pq_decode(codes, books, dim).astype(np.float64)
    np.testing.assert_allclose(got, (rec ** 2).sum(axis=1), rtol=1e-5, atol=1e-5)


def _inv_norms_ref(books, centroids, codes, offsets):
    """`_inv_norm_ref` of every row with its list's centroid."""
    out = np.ones(codes.shape[0], np.float32)
    for lst in range(len(offsets) - 1):
        rows = np.arange(offsets[lst], offsets[lst + 1])
        if rows.size:
            out[rows] = _inv_norm_ref(books, centroids[lst], codes[rows])
    return out


@settings(max_examples=60, deadline=None, database=None)
@given(dim=st.sampled_from([1, 3, 13, 16, 17]), m=st.sampled_from([1, 2, 4, 5]), n=st.integers(0, 60),
       nlist=st.integers(1, 3), scale=st.sampled_from([1e-7, 1e-3, 1.0, 1e3]), cancel=st.integers(0, 6),
       near=st.sampled_from([0.0, 1e-9, 1e-6, 1e-3]), same=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_inv_norm_bounds_hold_the_scans_value(dim, m, n, nlist, scale, cancel, near, same, seed):
    # every row's byte gives an interval holding the value the cosine scan multiplies its
    # score by, also where the reconstruction cancels: books equal to minus the centroid's
    # sub-vector (exactly or nearly, down to a zero-length reconstruction), tiny or huge
    # books against the centroids, all rows the same; every row gets a narrow bucket (two
    # grid steps)
    m = min(m, dim)
    rng = np.random.default_rng(seed)
    dsub = pq.pq_dsub(dim, m)
    centroids = rng.standard_normal((nlist, dim)).astype(np.float32)
    books = (scale * rng.standard_normal((m, 256, dsub))).astype(np.float32)
    codes = rng.integers(0, 256, size=(n, m)).astype(np.uint8)
    if same and n:
        codes[:] = codes[0]
    offsets, _ = random_layout(rng, n, nlist)
    for r in rng.choice(n, min(cancel, n), replace=False) if n else ():
        lst = int(np.searchsorted(offsets, r, side="right") - 1)
        padded = np.zeros(m * dsub, np.float32)
        padded[:dim] = centroids[lst]
        for j in range(m):  # the reconstruction c + book cancels in every sub-space, up to `near`
            books[j, codes[r, j]] = -padded[j * dsub:(j + 1) * dsub] * np.float32(1 + near)
    got, inv_lo, inv_hi = pq.pq_inv_norm_bounds(books, centroids, codes, offsets)
    assert got.dtype == np.uint8 and got.shape == (n,)
    assert inv_lo.dtype == inv_hi.dtype == np.float32 and inv_lo.shape == inv_hi.shape == (pq.INV_BUCKETS,)
    assert np.isfinite(inv_lo).all() and np.isfinite(inv_hi).all() and (0 < inv_lo).all() and (inv_lo <= inv_hi).all()
    inv = _inv_norms_ref(books, centroids, codes, offsets)
    bad = (inv_lo[got] > inv) | (inv > inv_hi[got])
    assert not bad.any(), (np.flatnonzero(bad)[:5], inv[bad][:5], inv_lo[got][bad][:5], inv_hi[got][bad][:5])
    if n:
        # each row's exact value picks its bucket, so none needs the whole range
        assert (got < pq.INV_BUCKETS - 1).all(), np.flatnonzero(got == pq.INV_BUCKETS - 1)[:5]
        grid = inv_hi[-1] / inv_lo[-1]  # the whole range, a little widened
        assert (inv_hi[got] <= inv_lo[got] * grid ** (2 / pq.INV_BUCKETS) * 1.0001).all()
    else:
        assert (inv_lo == 1).all() and (inv_hi == 1).all()


@settings(max_examples=30, deadline=None, database=None)
@given(dim=st.sampled_from([1, 3, 13, 16, 17]), m=st.sampled_from([1, 2, 3, 5, 8]), n=st.integers(0, 100),
       nlist=st.integers(1, 3), scale=st.sampled_from([1e-3, 1.0, 1e3]), zero=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_block_inv_norms_are_each_block_rows_reconstruction(dim, m, n, nlist, scale, zero, seed):
    # The fast scan's cosine factor of each block row (PQ x4 under cosine): 1 / |c + decode|
    # of the row's own code and list, through the blocks' nibble packing (odd M leaves a
    # pair half used); padding rows 0; a zero-length reconstruction 1, as the 8-bit scan
    from vecz.kernels import fastscan

    m = min(m, dim)
    rng = np.random.default_rng(seed)
    centroids = (scale * rng.standard_normal((nlist, dim))).astype(np.float32)
    books = (scale * rng.standard_normal((m, 16, pq.pq_dsub(dim, m)))).astype(np.float32)
    if zero:
        centroids[0] = 0.0
        books[:, 0] = 0.0
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    if zero and n:
        codes[0] = 0
    offsets, _ = random_layout(rng, n, nlist)
    blocks, block_ids, block_offsets = fastscan.fs_layout(codes, np.arange(n, dtype=np.int64), offsets)
    got = pq.pq4_block_inv_norms(blocks, block_ids, block_offsets, books, centroids)
    assert got.dtype == np.float32 and got.shape == block_ids.shape
    ref = _inv_norms_ref(books, centroids, codes, offsets)
    real = block_ids >= 0
    np.testing.assert_array_equal(got[~real], 0.0)
    # the norm tables' float32 entries are rounded by 2^-24 of their terms' magnitudes (the
    # sums of |2 c_d b_d + b_d^2| and c_d^2), which matter where the terms cancel
    mag = np.zeros(n)
    dsub = books.shape[2]
    for lst in range(nlist):
        for r in range(offsets[lst], offsets[lst + 1]):
            c = np.zeros(m * dsub)
            c[:dim] = centroids[lst]
            b = books[np.arange(m), codes[r]].astype(np.float64).reshape(-1)
            terms = (2 * c * b + b * b)[:dim]
            mag[r] = (c[:dim] ** 2).sum() + np.abs(terms).sum()
    want = ref[block_ids[real]].astype(np.float64)
    n2 = 1 / want ** 2
    tol = want * (2.0**-22 * mag[block_ids[real]] / n2 + 2.0**-22)
    assert (np.abs(got[real] - want) <= tol).all()


def test_inv_norm_bounds_are_narrow_on_a_trained_ivf_pq():
    # real-ish codes: every row gets a narrow bucket (two of 256 grid steps over the
    # index's range), so the cosine scan decodes little beyond the rows that enter its heap
    rng = np.random.default_rng(5)
    dim, m, nlist = 32, 8, 4
    x = rng.standard_normal((2000, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = x[:nlist].copy()
    lists = np.argmax(x @ centroids.T, axis=1)
    order = np.argsort(lists, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))]).astype(np.int64)
    r = (x - centroids[lists])[order]
    books = pq.pq_train(r, m, 8, seed=1)
    codes = pq.pq_encode(r, books)
    got, inv_lo, inv_hi = pq.pq_inv_norm_bounds(books, centroids, codes, offsets)
    inv = _inv_norms_ref(books, centroids, codes, offsets)
    assert ((inv_lo[got] <= inv) & (inv <= inv_hi[got])).all()
    assert (got < pq.INV_BUCKETS - 1).all()
    assert np.median(inv_hi[got] / inv_lo[got]) < 1.01


# --------------------------------------------------------------------------- OPQ


@SETTINGS
@given(st.integers(1, 60), DIMS, MS, st.sampled_from([4, 8]), st.integers(0, 2**31 - 1))
def test_pq_means_is_one_lloyd_update(n, dim, m, nbits, seed):
    m = min(m, dim)
    rng = np.random.default_rng(seed)
    dsub = pq.pq_dsub(dim, m)
    y = rng.standard_normal((n, dim)).astype(np.float32)
    books = _books(rng, m, nbits, dsub, "float")
    codes = rng.integers(0, min(3, 1 << nbits), size=(n, m)).astype(np.uint8)  # few codes: most unused
    out = pq._pq_means(y, codes, books)
    want = books.copy()
    yp = pq_pad_ref(y, m)
    for j in range(m):
        width = max(0, min(dsub, dim - j * dsub))  # a sub-space may be all padding
        for c in range(1 << nbits):
            rows = codes[:, j] == c
            if rows.any() and width:
                want[j, c, :width] = yp[rows, j * dsub:j * dsub + width].mean(axis=0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # the padded dims are never moved
    flat = out.transpose(1, 0, 2).reshape(1 << nbits, m * dsub)
    assert np.array_equal(flat[:, dim:], books.transpose(1, 0, 2).reshape(1 << nbits, m * dsub)[:, dim:])


def _anisotropic(n, dim, seed):
    """Rows whose variance is concentrated in a few directions, then randomly rotated: plain
    PQ's contiguous sub-spaces each get a mix of strong and weak directions."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim)) * (0.8 ** np.arange(dim))[None, :]
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    return (z @ rot).astype(np.float32)


@pytest.mark.parametrize("dim,m,nbits,seed", [(16, 4, 4, 0), (24, 6, 4, 1), (13, 3, 4, 2)])
def test_opq_rotation_is_orthogonal_and_codes_better_than_pq(dim, m, nbits, seed):
    x = _anisotropic(3000, dim, seed)
    rot, books = pq.opq_train(x, m, nbits, seed=seed, n_iter=10)
    assert rot.shape == (dim, dim) and rot.dtype == np.float32 and rot.flags.c_contiguous
    np.testing.assert_allclose(rot @ rot.T, np.eye(dim), atol=2e-5)
    assert books.shape == (m, 1 << nbits, pq.pq_dsub(dim, m))
    y = x @ rot
    opq_err = ((y - pq.pq_decode(pq.pq_encode(y, books), books, dim)) ** 2).sum(1).mean()
    plain = pq.pq_train(x, m, nbits, seed=seed)
    pq_err = ((x - pq.pq_decode(pq.pq_encode(x, plain), plain, dim)) ** 2).sum(1).mean()
    assert opq_err < 0.75 * pq_err, (opq_err, pq_err)  # measured 0.34-0.63


def test_opq_on_tiny_inputs_and_bad_iterations():
    x = np.arange(12, dtype=np.float32).reshape(1, 12)
    rot, books = pq.opq_train(x, 3, 4, seed=5)  # one row: no iterations, a random rotation
    np.testing.assert_allclose(rot @ rot.T, np.eye(12), atol=2e-5)
    y = x @ rot
    np.testing.assert_allclose(pq.pq_decode(pq.pq_encode(y, books), books, 12), y, atol=1e-5)
    with pytest.raises(ValueError, match="pq_iter >= 1, found 0"):
        pq.opq_train(_anisotropic(50, 8, 0), 2, 4, pq_iter=0)


# ------------------------------------------------------------ l2 on residuals: per-list terms


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 40), m=MS, nbits=st.sampled_from([4, 8]), width=st.integers(1, 20),
       nlist=st.integers(1, 4), n_probe=st.integers(1, 5), k=st.integers(1, 50), dead=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_l2_tables_from_list_terms(nq, n, m, nbits, width, nlist, n_probe, k, dead, seed):
    # 2 <q, b> - terms[l] is the l2 table of q - c_l less |q - c_l|^2 per sub-space (padded
    # dims not counted); the fused scan equals pq_lut_scan over those tables bit for bit
    # (floors, dead rows, empty lists, probes -1, k > n)
    m = min(m, width)
    ksub = 1 << nbits
    rng = np.random.default_rng(seed)
    dsub = pq.pq_dsub(width, m)
    books = rng.standard_normal((m, ksub, dsub)).astype(np.float32)
    books *= np.arange(m * dsub).reshape(m, 1, dsub) < width  # padded dims 0, as training leaves them
    centroids = rng.standard_normal((nlist, width)).astype(np.float32)
    q = rng.standard_normal((nq, width)).astype(np.float32)
    terms = pq.pq_list_terms(books, centroids)
    assert terms.shape == (nlist, m, ksub) and terms.dtype == np.float32
    for lst in range(nlist):
        np.testing.assert_array_equal(terms[lst], pq.pq_norm_table(books, centroids[lst])[0])
    ip = pq.pq_lut(q, books, "ip")
    probes = random_probes(rng, nq, nlist, n_probe)
    luts = probe_luts_ref(ip, terms, probes)
    assert luts.shape == (nq, n_probe, m, ksub)
    for qi in range(nq):
        for p, lst in enumerate(probes[qi]):
            if lst < 0:
                assert not luts[qi, p].any()
                continue
            np.testing.assert_array_equal(luts[qi, p], np.float32(2) * ip[qi] - terms[lst])
            t = q[qi] - centroids[lst]
            t_sq = (pq_pad_ref(t[None], m)[0].reshape(m, dsub).astype(np.float64) ** 2).sum(axis=1)
            full = pq.pq_lut(t, books, "l2")[0]
            np.testing.assert_allclose(luts[qi, p] - t_sq[:, None], full, rtol=1e-4, atol=1e-4)
    if nbits == 4:  # the fused 4-bit scans: tests/test_fastscan.py test_scan_l2_fused_equals_materialized
        return
    codes = rng.integers(0, ksub, size=(n, m)).astype(np.uint8)
    offsets, ids = random_layout(rng, n, nlist)
    ids[rng.choice(n, min(dead, n), replace=False)] = -1
    bias = -rng.random((nq, n_probe)).astype(np.float32)
    ip2 = np.float32(2) * ip
    want = pq.pq_lut_scan_batch(luts, codes, ids, offsets, probes, bias, k, no_floors(luts))
    got = pq.pq_lut_scan_l2_batch(ip2, terms, codes, ids, offsets, probes, bias, k, no_floors(luts))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    floors = draw_floors(*want, rng)
    assert_floored(*pq.pq_lut_scan_l2_batch(ip2, terms, codes, ids, offsets, probes, bias, k, floors), *want, floors)
    for qi in range(nq):  # serial twin
        s, i = pq.pq_lut_scan_l2(ip2[qi], terms, codes, ids, offsets, probes[qi], bias[qi], k, -np.inf)
        np.testing.assert_array_equal(s, want[0][qi])
        np.testing.assert_array_equal(i, want[1][qi])


@SETTINGS
@given(nq=st.integers(1, 3), n=st.integers(0, 50), m=MS, nlist=st.integers(1, 4), n_probe=st.integers(1, 5),
       k=st.integers(1, 60), kind=st.sampled_from(["int", "float"]), dead=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_scaled_scan_matches_reference(nq, n, m, nlist, n_probe, k, kind, dead, seed):
    # PQ x8 under ip with row norms: g_i * (bias + sum_j lut[j, code_j]), g a float16 given
    # by its bits: zero, subnormal, negative, large and ordinary scales; odd n (the 4-row
    # blocks and their tail), k > n, a duplicate row, dead rows, lists probed twice or not
    rng = np.random.default_rng(seed)
    luts, codes, ids, offsets, probes, bias = _scan_inputs(rng, nq, n, m, 8, nlist, n_probe, False, kind)
    ids = ids.copy()
    ids[rng.choice(n, min(dead, n), replace=False)] = -1
    if kind == "int":  # powers of two: every product exact, the reference exact too
        g = np.ldexp(1.0, rng.integers(-3, 4, size=n)) * rng.choice([1.0, 0.0, -1.0], size=n, p=[0.8, 0.1, 0.1])
    else:
        g = rng.choice([rng.uniform(0.5, 2.0), 6e-8, 3e-5, 50000.0, -1.5], size=n, p=[0.8, 0.05, 0.05, 0.05, 0.05])
        g = g * rng.uniform(0.9, 1.1, size=n)
    scale = np.ascontiguousarray(g.astype(np.float16)).view(np.uint16)
    g32 = scale.view(np.float16).astype(np.float64)
    got_s, got_i = pq.pq_lut_scan_scaled_batch(luts[:, 0], codes, ids, scale, offsets, probes, bias, k,
                                               no_floors(luts))
    floors = draw_floors(got_s, got_i, rng)
    assert_floored(*pq.pq_lut_scan_scaled_batch(luts[:, 0], codes, ids, scale, offsets, probes, bias, k, floors),
                   got_s, got_i, floors)
    row_of = {}
    for r in range(n):
        if ids[r] >= 0:
            row_of[int(ids[r])] = r
    for q in range(nq):
        s, i = pq.pq_lut_scan_scaled(luts[q, 0], codes, ids, scale, offsets, probes[q], bias[q], k, -np.inf)
        np.testing.assert_array_equal(got_i[q], i)  # batch driver = serial twin
        np.testing.assert_array_equal(got_s[q], s)
        cand_i, cand_s = pq_scan_candidates_ref(luts[q], codes, ids, offsets, probes[q], bias[q])
        live = cand_i >= 0
        cand_i, cand_s = cand_i[live], cand_s[live]
        cand_s = cand_s * np.array([g32[row_of[int(c)]] for c in cand_i])
        cand_i, first = np.unique(cand_i, return_index=True)  # a list probed twice: each id once
        if kind == "int":
            assert_topk_exact(s, i, cand_s[first], cand_i, k)
        else:
            assert_topk_close(s, i, cand_s[first], cand_i, k, rtol=1e-5, atol=1e-5)


def _listed_codes(rng, n, width, m, nlist, ksub):
    """Random books (M <= width sub-quantizers of ksub centroids), centroids, codes (n, M)
    and list offsets: (m, books, centroids, codes, offsets)."""
    m = min(m, width)
    books = rng.standard_normal((m, ksub, pq.pq_dsub(width, m))).astype(np.float32)
    centroids = rng.standard_normal((nlist, width)).astype(np.float32)
    codes = rng.integers(0, ksub, size=(n, m)).astype(np.uint8)
    offsets, _ = random_layout(rng, n, nlist)
    return m, books, centroids, codes, offsets


@settings(max_examples=15, deadline=None, database=None)
@given(n=st.integers(0, 30), width=st.sampled_from([1, 3, 13, 16]), m=st.sampled_from([1, 2, 4, 5]),
       nlist=st.integers(1, 3), ksub=st.sampled_from([4, 256]), seed=st.integers(0, 2**32 - 1))
@example(n=30, width=13, m=4, nlist=2, ksub=4, seed=1)  # both lists take the tables
def test_row_inv_norms_are_the_reconstructions(n, width, m, nlist, ksub, seed):
    # 1 / |c_l + decode(code)| per row in list order; 1 for a zero-length reconstruction;
    # decoded, or (lists of more than ksub rows) from the list's sub-space tables
    rng = np.random.default_rng(seed)
    m, books, centroids, codes, offsets = _listed_codes(rng, n, width, m, nlist, ksub)
    if n:
        lst0 = int(np.searchsorted(offsets, 0, side="right") - 1)
        centroids[lst0] = 0
        books[np.arange(m), codes[0]] = 0
    got = pq.pq_row_inv_norms(books, centroids, codes, offsets)
    lists = np.repeat(np.arange(nlist), np.diff(offsets))
    rec = centroids[lists].astype(np.float64) + pq_decode_ref(codes, books, width)
    length = np.linalg.norm(rec, axis=1)
    want = np.where(length > 1e-6, 1.0 / np.maximum(length, 1e-300), 1.0)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(got, _inv_norms_ref(books, centroids, codes, offsets))  # the scan's order
    # the float64 sub-space tables add up to the same float64 sum, so to the same float32 value
    tables = pq.pq_list_sub_norms(books, centroids)
    assert tables.dtype == np.float64 and tables.shape == (nlist, m, ksub)
    n2 = tables[lists[:, None], np.arange(m), codes]
    sums = np.zeros(n)
    for j in range(m):
        sums = sums + n2[:, j]
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(got, np.where(sums > 1e-12, 1.0 / np.sqrt(sums), 1.0).astype(np.float32))
    if n:
        assert got[0] == 1.0


@settings(max_examples=15, deadline=None, database=None)
@given(n=st.integers(0, 30), width=st.sampled_from([1, 3, 13, 16]), m=st.sampled_from([1, 2, 4, 5]),
       nlist=st.integers(1, 3), shuffled=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_own_list_terms_are_each_rows_l2_term(n, width, m, nlist, shuffled, seed):
    # PQ x4 under l2 on residuals keeps |r_hat|^2 + 2 <c, r_hat> a row (c its own list's
    # centroid, r_hat = decode(code)): -|q - c - r_hat|^2 = -(|q - c|^2 - 2 <q, r_hat> + term).
    # Rows in input order, lists through `order` (every row once); 4-bit codes one a byte
    rng = np.random.default_rng(seed)
    m, books, centroids, codes, offsets = _listed_codes(rng, n, width, m, nlist, 16)
    order = rng.permutation(n) if shuffled else np.arange(n)
    got = pq.pq_own_list_terms(codes, order, offsets, books, centroids)
    lists = np.empty(n, dtype=np.int64)
    lists[order] = np.repeat(np.arange(nlist), np.diff(offsets))
    r = pq_decode_ref(codes, books, width)
    c = centroids[lists].astype(np.float64)
    want = (r * r).sum(axis=1) + 2.0 * (c * r).sum(axis=1)
    assert got.dtype == np.float32 and got.shape == (n,)
    # float32 table entries, each rounded by 2^-24 of its terms' magnitudes
    mag = (r * r).sum(axis=1) + 2.0 * np.abs(c * r).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * mag.max(initial=1.0))
