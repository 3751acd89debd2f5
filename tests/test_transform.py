"""kernels/transform.py: orthogonal rotations, the ITQ objective, Matryoshka truncation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import transform

SETTINGS = settings(max_examples=30, deadline=None, database=None)
DIMS = st.sampled_from([1, 2, 3, 7, 13, 16, 65])


def _user_input(x, dtype, layout):
    x = x.astype(dtype)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@SETTINGS
@given(dim=DIMS, seed=st.integers(0, 2**32 - 1))
def test_random_rotation_orthogonal_and_seeded(dim, seed):
    r = transform.random_rotation(dim, seed)
    assert r.shape == (dim, dim) and r.dtype == np.float32 and r.flags.c_contiguous
    r64 = r.astype(np.float64)
    np.testing.assert_allclose(r64 @ r64.T, np.eye(dim), atol=1e-5)
    np.testing.assert_allclose(r64.T @ r64, np.eye(dim), atol=1e-5)
    np.testing.assert_array_equal(r, transform.random_rotation(dim, seed))


def _itq_error(x, rot):
    """min over B in {-1, 1}^(n x d) of |B - x R|_F^2 = n d + |x|^2 - 2 |x R|_1."""
    v = x.astype(np.float64) @ rot.astype(np.float64)
    return ((np.where(v >= 0, 1.0, -1.0) - v) ** 2).sum()


@SETTINGS
@given(n=st.integers(2, 60), dim=DIMS, seed=st.integers(0, 2**32 - 1), n_iter=st.integers(1, 20),
       scale=st.sampled_from([0.1, 1.0, 3.0]))
def test_itq_is_orthogonal_and_lowers_quantization_error(n, dim, seed, n_iter, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * rng.random(dim) * scale).astype(np.float32)
    x -= x.mean(axis=0)
    s = seed % 1000
    rot = transform.itq_rotation(x, s, n_iter=n_iter)
    assert rot.shape == (dim, dim) and rot.dtype == np.float32 and rot.flags.c_contiguous
    r64 = rot.astype(np.float64)
    np.testing.assert_allclose(r64 @ r64.T, np.eye(dim), atol=1e-5)
    start = transform.random_rotation(dim, s)
    e_start, e_itq = _itq_error(x, start), _itq_error(x, rot)
    assert e_itq <= e_start * (1 + 1e-5) + 1e-5, (e_itq, e_start)


@SETTINGS
@given(n=st.integers(0, 12), dim=DIMS, keep=st.integers(1, 65), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float16, np.float64]),
       layout=st.sampled_from(["c", "fortran", "strided"]), renorm=st.booleans())
def test_mrl_truncate(n, dim, keep, seed, dtype, layout, renorm):
    rng = np.random.default_rng(seed)
    keep = min(keep, dim)
    x = rng.standard_normal((n, dim)).astype(dtype).astype(np.float32)
    if n:
        x[0] = 0.0  # an all-zero row
    if n > 1:
        x[1, :keep] = 0.0  # a row that is zero only after truncation
    got = transform.mrl_truncate(_user_input(x, dtype, layout), keep, renorm)
    assert got.shape == (n, keep) and got.dtype == np.float32 and got.flags.c_contiguous
    head = x[:, :keep].astype(np.float64)
    norms = np.linalg.norm(head, axis=1)
    if not renorm:
        np.testing.assert_array_equal(got, x[:, :keep])
        return
    zero = norms == 0
    np.testing.assert_array_equal(got[zero], 0.0)
    assert not np.any(np.isnan(got))
    np.testing.assert_allclose(np.linalg.norm(got[~zero].astype(np.float64), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got[~zero], head[~zero] / norms[~zero, None], rtol=1e-6, atol=1e-7)


@SETTINGS
@given(n=st.integers(0, 12), dim=DIMS, seed=st.integers(0, 2**32 - 1),
       magnitude=st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e15]))
def test_normalize_rows(n, dim, seed, magnitude):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * magnitude).astype(np.float32)
    if n:
        x[-1] = 0.0
    got = transform.normalize_rows(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous and not np.any(np.isnan(got))
    norms = np.linalg.norm(got.astype(np.float64), axis=1)
    nz = np.any(x != 0, axis=1)
    np.testing.assert_allclose(norms[nz], 1.0, atol=1e-6)
    np.testing.assert_array_equal(got[~nz], 0.0)


@settings(max_examples=10, deadline=None, database=None)
@given(dim=DIMS, seed=st.integers(0, 2**32 - 1), magnitude=st.sampled_from([1e-30, 1e-22, 1e20, 1e30]))
def test_normalize_rows_extreme_but_finite_magnitudes(dim, seed, magnitude):
    # The contract (unit rows; only zero rows stay zero) holds for every finite nonzero
    # row. A float32 sum of squares underflows (|x| < ~1e-19) or overflows (> ~1e19).
    x = (np.random.default_rng(seed).standard_normal((2, dim)) * magnitude).astype(np.float32)
    x[:, 0] = np.float32(magnitude)  # nonzero rows
    got = transform.normalize_rows(x)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=1e-6)


@SETTINGS
@given(n=st.integers(1, 50), dim=DIMS, seed=st.integers(0, 2**32 - 1), flip=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
       cap=st.sampled_from([0, 3, 10**9]))
def test_itq_sign_step_keeps_xtb_current(n, dim, seed, flip, cap):
    # One sign step: b becomes sign(v) (+1 at 0) whatever the cap; with at most `cap` flips
    # mt is updated to (x^T b)^T (float64) and the flips are counted, above it -1 is returned.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    b = np.where(rng.random((n, dim)) < 0.5, np.float32(1.0), np.float32(-1.0))
    v = b * rng.random((n, dim)).astype(np.float32)
    v[rng.random((n, dim)) < flip] *= -1
    v[rng.random((n, dim)) < 0.05] = 0.0  # ties: zero has sign +1
    mt = (b.astype(np.float64).T @ x.astype(np.float64))
    new_b = np.where(v >= 0, np.float32(1.0), np.float32(-1.0))
    flips = int((new_b != b).sum())
    got = transform._itq_signs(x, v, b, mt, cap)
    np.testing.assert_array_equal(b, new_b)
    if flips > cap:
        assert got == -1
        return
    assert got == flips
    np.testing.assert_allclose(mt, new_b.astype(np.float64).T @ x.astype(np.float64), rtol=1e-12, atol=1e-9)


@SETTINGS
@given(n=st.integers(1, 60), dim=DIMS, seed=st.integers(0, 2**32 - 1), n_iter=st.integers(0, 12),
       dup=st.booleans())
def test_itq_sparse_updates_match_dense_recomputation(n, dim, seed, n_iter, dup):
    # Updating x^T B from the flipped signs or recomputing it with a matrix product every
    # iteration (_ITQ_SPARSE_FRACTION = 0) give the same rotation up to rounding, and both
    # are orthogonal; one row and duplicate rows included.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if dup and n > 1:
        x[n // 2:] = x[0]
    s = seed % 1000
    sparse = transform.itq_rotation(x, s, n_iter=n_iter)
    saved = transform._ITQ_SPARSE_FRACTION
    try:
        transform._ITQ_SPARSE_FRACTION = 0.0
        dense = transform.itq_rotation(x, s, n_iter=n_iter)
    finally:
        transform._ITQ_SPARSE_FRACTION = saved
    r64 = sparse.astype(np.float64)
    np.testing.assert_allclose(r64 @ r64.T, np.eye(dim), atol=1e-5)
    # the two may part ways only where a row's projection sits at zero to rounding
    e_sparse, e_dense = _itq_error(x, sparse), _itq_error(x, dense)
    assert abs(e_sparse - e_dense) <= 1e-4 * (1 + e_dense), (e_sparse, e_dense)


def _sequential_product(x, w):
    """numpy reference of matmul_rows: out += x[:, i] * w[i] for i in order, all float32."""
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], w.shape[1]), dtype=np.float32)
    for i in range(x.shape[1]):
        out += x[:, i : i + 1] * w[i]
    return out


@SETTINGS
@given(n=st.integers(0, 40), dim=st.sampled_from([1, 2, 7, 8, 9, 16, 17, 65]), m=st.sampled_from([1, 3, 16, 33]),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float16, np.float64]),
       layout=st.sampled_from(["c", "fortran", "strided"]), scale=st.sampled_from([1e-20, 1.0, 1e18]))
def test_matmul_rows_equals_the_sequential_sums_bit_for_bit(n, dim, m, seed, dtype, layout, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * (1.0 if dtype == np.float16 else scale)).astype(dtype)
    w = rng.standard_normal((dim, m)).astype(np.float32)
    ref = _sequential_product(x, w)
    for fn in (transform.matmul_rows, transform.matmul_rows_batch):
        got = fn(_user_input(x, dtype, layout), w)
        assert got.dtype == np.float32 and got.shape == (n, m) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, ref)
    # and it is the product: a float32 sum of dim terms errs by at most ~dim x 2^-24 x sum |x w|
    x64 = x.astype(np.float64)
    assert np.all(np.abs(ref - x64 @ w) <= 1e-5 * (np.abs(x64) @ np.abs(w)) + 1e-300)
    out = np.full((n, m), np.nan, dtype=np.float32)
    assert transform.matmul_rows_batch(x, w, out=out) is out
    np.testing.assert_array_equal(out, ref)


@SETTINGS
@given(n=st.integers(1, 300), dim=st.sampled_from([3, 24, 65]), seed=st.integers(0, 2**32 - 1),
       cut=st.integers(1, 299), dup=st.booleans())
def test_matmul_rows_of_a_row_do_not_depend_on_its_batch(n, dim, seed, cut, dup):
    # what BLAS does not promise: the same row gives the same bits first, last, reversed,
    # alone or in a chunk (a row's code must not depend on the rows encoded beside it)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if dup:
        x[n // 2 :] = x[0]
    w = transform.random_rotation(dim, seed % 1000)
    whole = transform.matmul_rows_batch(x, w)
    np.testing.assert_array_equal(transform.matmul_rows_batch(x[::-1], w)[::-1], whole)
    cut = min(cut, n)
    np.testing.assert_array_equal(
        np.concatenate([transform.matmul_rows_batch(x[:cut], w), transform.matmul_rows(x[cut:], w)]), whole)
    np.testing.assert_array_equal(transform.matmul_rows(x[n - 1 : n], w), whole[n - 1 : n])
    if dup:
        np.testing.assert_array_equal(whole[n // 2 :], np.broadcast_to(whole[0], whole[n // 2 :].shape))


def test_matmul_rows_rejects_mismatched_shapes():
    import pytest

    with pytest.raises(ValueError, match=r"expected x \(n, d\) and w \(d, m\)"):
        transform.matmul_rows(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        transform.matmul_rows(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32),
                              out=np.zeros((3, 3), np.float32))
