"""kernels/kmeans.py against tests/reference/kmeans.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import kmeans
from tests.reference.kmeans import (
    kmeans_assign_ref,
    kmeans_objective_ref,
    kmeans_pp_init_ref,
    lloyd_update_ref,
    sq_dists_ref,
)

SETTINGS = settings(max_examples=40, deadline=None, database=None)
# Widths on both sides of kmeans.BLAS_MIN_DIM (24): jitted loop below, BLAS at and above.
DIMS = st.sampled_from([1, 2, 3, 7, 13, 23, 24, 25, 65])


def _data(rng, shape, kind):
    if kind == "int":  # small integers: every distance is exact in float32
        return rng.integers(-4, 5, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _as_user_input(x, layout, dtype):
    """The same values as float16/float64, or as a non-contiguous view."""
    x = x.astype(dtype)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@SETTINGS
@given(n=st.integers(0, 40), k=st.integers(1, 9), dim=DIMS, seed=st.integers(0, 2**32 - 1))
def test_assign_exact_on_integer_data(n, k, dim, seed):
    # Integer coordinates make every distance exact, so labels (first nearest, ties
    # included: duplicates are likely) and distances must equal brute force exactly.
    rng = np.random.default_rng(seed)
    x, c = _data(rng, (n, dim), "int"), _data(rng, (k, dim), "int")
    if k > 1 and rng.random() < 0.5:
        c[k - 1] = c[0]  # duplicate centroid: the first one must win
    labels, dists = kmeans.kmeans_assign(x, c)
    ref_l, ref_d = kmeans_assign_ref(x, c)
    assert labels.dtype == np.int64 and dists.dtype == np.float32
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_array_equal(dists, ref_d.astype(np.float32))


@SETTINGS
@given(n=st.integers(0, 40), k=st.integers(1, 9), dim=DIMS, seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]),
       layout=st.sampled_from(["c", "fortran", "strided"]))
def test_assign_float_data_any_layout(n, k, dim, seed, dtype, layout):
    rng = np.random.default_rng(seed)
    x32 = _data(rng, (n, dim), "float").astype(dtype).astype(np.float32)
    c = _data(rng, (k, dim), "float")
    labels, dists = kmeans.kmeans_assign(_as_user_input(x32, layout, dtype), c)
    d = sq_dists_ref(x32, c)
    assert labels.shape == (n,) and dists.shape == (n,)
    if n == 0:
        return
    best = d.min(axis=1)
    tol = 1e-4 * (1.0 + best + np.abs(x32.astype(np.float64)).sum(axis=1) ** 2 / max(dim, 1))
    # the chosen centroid is nearest up to rounding, and the distance is its distance
    assert np.all(d[np.arange(n), labels] <= best + tol)
    np.testing.assert_allclose(dists, d[np.arange(n), labels], rtol=1e-4, atol=float(tol.max()))
    # identical to the call on a contiguous float32 copy
    l2, d2 = kmeans.kmeans_assign(x32, c)
    np.testing.assert_array_equal(labels, l2)
    np.testing.assert_array_equal(dists, d2)


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 10), dim=st.sampled_from([1, 2, 3, 7, 13]),
       seed=st.integers(0, 2**32 - 1), dup=st.booleans())
def test_pp_init_matches_reference_on_integer_data(n, k, dim, seed, dup):
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "int")
    if dup:
        x = x[rng.integers(0, max(1, n // 3), size=n)]  # few distinct rows: zero-D^2 fallback
    u = rng.random(k)
    got = kmeans.kmeans_pp_init(x, k, u)
    np.testing.assert_array_equal(got, kmeans_pp_init_ref(x, k, u))


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 8), dim=st.sampled_from([1, 3, 13]),
       seed=st.integers(0, 2**32 - 1))
def test_update_sums_and_counts(n, k, dim, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "int")
    labels = rng.integers(0, k, size=n).astype(np.int64)
    sums, counts = kmeans._update(x, labels, k)
    ref_sums, ref_counts = lloyd_update_ref(x, labels, k)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(sums, ref_sums)


@SETTINGS
@given(n=st.integers(1, 60), k=st.integers(1, 12), dim=DIMS, seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["int", "float"]))
def test_fit_deterministic_finite_shape(n, k, dim, seed, kind):
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), kind)
    c1 = kmeans.kmeans_fit(x, k, n_iter=5, seed=seed % 1000)
    c2 = kmeans.kmeans_fit(x, k, n_iter=5, seed=seed % 1000)
    assert c1.shape == (k, dim) and c1.dtype == np.float32
    assert np.all(np.isfinite(c1))
    np.testing.assert_array_equal(c1, c2)


@SETTINGS
@given(n=st.integers(1, 16), extra=st.integers(0, 6), dim=DIMS, seed=st.integers(0, 2**32 - 1))
def test_fit_n_le_k_returns_the_points(n, extra, dim, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "float")
    k = n + extra
    c = kmeans.kmeans_fit(x, k, seed=seed % 1000)
    np.testing.assert_array_equal(c, x[np.resize(np.arange(n), k)])


@SETTINGS
@given(distinct=st.integers(1, 6), extra_k=st.integers(0, 4), copies=st.integers(2, 5),
       dim=st.sampled_from([1, 2, 3, 7]), seed=st.integers(0, 2**32 - 1))
def test_fit_few_distinct_rows_become_centroids(distinct, extra_k, copies, dim, seed):
    # kmeans_fit's docstring: "With fewer distinct rows than k, the rows themselves become
    # centroids (repeated), so a training vector always encodes to itself". Repeated rows
    # are common in practice (constant or zero-padded PQ sub-vectors), with n > k.
    rng = np.random.default_rng(seed)
    base = _data(rng, (distinct, dim), "int") + np.arange(distinct, dtype=np.float32)[:, None] * 10
    x = base[rng.permutation(np.repeat(np.arange(distinct), copies))]
    k = distinct + extra_k
    if x.shape[0] <= k:
        x = np.concatenate([x, x])
    c = kmeans.kmeans_fit(x, k, n_iter=5, seed=seed % 1000)
    assert np.all(np.isfinite(c))
    for row in base:
        assert np.any(np.all(c == row, axis=1)), f"training row {row} is not a centroid of {c}"
    labels, dists = kmeans.kmeans_assign(x, c)
    np.testing.assert_array_equal(dists, 0.0)


@SETTINGS
@given(n=st.integers(2, 60), k=st.integers(2, 12), dim=st.sampled_from([1, 2, 5, 13, 30]),
       seed=st.integers(0, 2**32 - 1), n_iter=st.integers(1, 8))
def test_fit_does_not_worsen_its_initial_objective(n, k, dim, seed, n_iter):
    # Distinct rows (continuous data), more rows than k: Lloyd iterations from the k-means++
    # start may only lower the objective. The start is reproduced from the seed: for inputs
    # this small kmeans_fit neither subsamples nor draws anything before the init uniforms.
    rng = np.random.default_rng(seed)
    x = _data(rng, (n + k, dim), "float")
    s = seed % 1000
    c = kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s)
    init = x[kmeans_pp_init_ref(x, k, np.random.default_rng(s).random(k))]
    f_init = kmeans_objective_ref(x, init)
    f_fit = kmeans_objective_ref(x, c)
    assert f_fit <= f_init * (1 + 1e-5) + 1e-6, (f_fit, f_init)


@SETTINGS
@given(n=st.integers(5, 80), k=st.integers(2, 20), dim=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**32 - 1), zero=st.booleans())
def test_fit_empty_clusters_never_nan(n, k, dim, seed, zero):
    # Heavily duplicated data (and all-zero data) empties clusters at every iteration.
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), np.float32) if zero else rng.integers(0, 2, size=(n, dim)).astype(np.float32)
    c = kmeans.kmeans_fit(x, k, n_iter=4, seed=seed % 1000)
    assert c.shape == (k, dim)
    assert np.all(np.isfinite(c))


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 6), dim=DIMS, seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float16, np.float64]), layout=st.sampled_from(["c", "fortran", "strided"]))
def test_fit_user_dtypes_and_layouts(n, k, dim, seed, dtype, layout):
    rng = np.random.default_rng(seed)
    x32 = _data(rng, (n, dim), "float").astype(dtype).astype(np.float32)
    got = kmeans.kmeans_fit(_as_user_input(x32, layout, dtype), k, n_iter=3, seed=1)
    np.testing.assert_array_equal(got, kmeans.kmeans_fit(x32, k, n_iter=3, seed=1))


@settings(max_examples=15, deadline=None, database=None)
@given(n=st.integers(30, 120), k=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_fit_subsamples_deterministically(n, k, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, 3), "float")
    c1 = kmeans.kmeans_fit(x, k, n_iter=3, seed=5, max_points_per_centroid=4, init_sample=8)
    c2 = kmeans.kmeans_fit(x, k, n_iter=3, seed=5, max_points_per_centroid=4, init_sample=8)
    np.testing.assert_array_equal(c1, c2)
    assert np.all(np.isfinite(c1))


def test_fit_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kmeans.kmeans_fit(np.zeros((3, 2), np.float32), 0)
    with pytest.raises(ValueError):
        kmeans.kmeans_fit(np.zeros((0, 2), np.float32), 2)


def test_assign_empty_input():
    labels, dists = kmeans.kmeans_assign(np.zeros((0, 5), np.float32), np.zeros((3, 5), np.float32))
    assert labels.shape == (0,) and labels.dtype == np.int64
    assert dists.shape == (0,) and dists.dtype == np.float32


@SETTINGS
@given(k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["float", "ties", "zeros", "tiny", "huge", "inf", "negzero"]))
def test_first_min_is_numpy_argmin(k, seed, kind):
    # The integer-key argmin of squared distances (>= 0) equals numpy's first argmin,
    # ties included; -0.0 counts as 0.0.
    rng = np.random.default_rng(seed)
    d = np.abs(rng.standard_normal(k)).astype(np.float32)
    if kind == "ties":
        d = rng.integers(0, 3, size=k).astype(np.float32)
    elif kind == "zeros":
        d[:] = 0.0
    elif kind == "tiny":
        d *= np.float32(1e-42)  # subnormals
    elif kind == "huge":
        d *= np.float32(1e37)
    elif kind == "inf":
        d[rng.random(k) < 0.5] = np.inf
    elif kind == "negzero":
        d = rng.integers(0, 2, size=k).astype(np.float32)
        d[d == 0] = -0.0
    assert kmeans._first_min(d) == int(np.argmin(np.where(d == 0, np.float32(0.0), d)))


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 10), dim=st.sampled_from([1, 7, 24, 25, 65, 130]),
       seed=st.integers(0, 2**32 - 1), dup=st.booleans())
def test_pp_init_matches_reference_on_wide_integer_data(n, k, dim, seed, dup):
    # Wide rows (the float32 distance sums vectorise; exact on small integers), k > n allowed
    # (the zero-D^2 fallback picks uniformly) and duplicate rows.
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "int")
    if dup:
        x = x[rng.integers(0, max(1, n // 3), size=n)]
    u = rng.random(k)
    np.testing.assert_array_equal(kmeans.kmeans_pp_init(x, k, u), kmeans_pp_init_ref(x, k, u))


@SETTINGS
@given(n=st.integers(1, 3000), dim=st.sampled_from([1, 3, 8, 13]), k=st.sampled_from([1, 2, 16, 33, 256]),
       seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["int", "float"]))
def test_assign_small_serial_and_batch_agree(n, dim, k, seed, kind):
    # Both narrow drivers (serial, and parallel over chunks of rows) give the same labels
    # and distances bit for bit, and the labels are nearest up to rounding.
    rng = np.random.default_rng(seed)
    x, c = _data(rng, (n, dim), kind), _data(rng, (k, dim), kind)
    l1, d1 = kmeans.kmeans_assign_small(x, c)
    l2, d2 = kmeans.kmeans_assign_small_batch(x, c)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(d1, d2)
    ref = sq_dists_ref(x, c)
    best = ref.min(axis=1)
    assert np.all(ref[np.arange(n), l1] <= best + 1e-5 * (1 + best))
    if kind == "int":
        np.testing.assert_array_equal(l1, kmeans_assign_ref(x, c)[0])


@SETTINGS
@given(n=st.integers(2, 80), k=st.integers(1, 12), dim=st.sampled_from([1, 2, 5, 13, 30]),
       seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["int", "float", "dups"]))
def test_fit_fixed_point_stop_changes_nothing(n, k, dim, seed, kind):
    # tol = 0 stops only at a fixed point (an assignment equal to the previous one), which
    # further iterations would repeat: the result equals running every iteration (tol < 0).
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "float" if kind == "float" else "int")
    if kind == "dups":
        x = x[rng.integers(0, max(1, n // 2), size=n)]
    s = seed % 1000
    for n_iter in (1, 3, 12):
        np.testing.assert_array_equal(kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, tol=0.0),
                                      kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, tol=-1.0))


@settings(max_examples=25, deadline=None, database=None)
@given(n=st.integers(2, 80), k=st.integers(1, 12), dim=st.sampled_from([1, 2, 5, 30]),
       seed=st.integers(0, 2**32 - 1), tol=st.sampled_from([1e-6, kmeans.KMEANS_TOL, 1e-2, 0.5]),
       kind=st.sampled_from(["int", "float", "dups"]))
def test_fit_tol_stops_after_some_prefix_of_the_iterations(n, k, dim, seed, tol, kind):
    # An early stop performs the first M iterations of the full run: the centroids equal
    # those of n_iter = M without early stops, for some M <= n_iter.
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "float" if kind == "float" else "int")
    if kind == "dups":
        x = x[rng.integers(0, max(1, n // 2), size=n)]
    s = seed % 1000
    n_iter = 8
    got = kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, tol=tol)
    prefixes = [kmeans.kmeans_fit(x, k, n_iter=m, seed=s, tol=-1.0) for m in range(1, n_iter + 1)]
    assert any(np.array_equal(got, p) for p in prefixes)


@SETTINGS
@given(n=st.integers(1, 20), k=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["normal", "ties", "signed_zero", "inf", "tiny", "huge"]))
def test_argmin_rows_is_numpy_argmin(n, k, seed, kind):
    # The BLAS path's fused pass: first argmin of g + |c|^2 (integer keys), -0.0 equal to
    # 0.0, and the distance max(min + |x|^2, 0), written at the given offset.
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, k)).astype(np.float32)
    c_norms = np.abs(rng.standard_normal(k)).astype(np.float32)
    if kind != "normal":
        g = rng.integers(-2, 3, size=(n, k)).astype(np.float32)
        c_norms = rng.integers(0, 2, size=k).astype(np.float32)
    if kind == "signed_zero":
        c_norms[:] = 0.0
        g[g == 0] = np.where(rng.random(int((g == 0).sum())) < 0.5, -0.0, 0.0)
    elif kind == "inf":
        g[g == 2] = np.inf
    elif kind == "tiny":
        g *= np.float32(1e-42)
        c_norms *= np.float32(1e-42)
    elif kind == "huge":
        g *= np.float32(1e37)
        c_norms *= np.float32(1e37)
    x_norms = np.abs(rng.standard_normal(n)).astype(np.float32)
    labels = np.full(n + 2, -7, dtype=np.int64)
    dists = np.full(n + 2, -7, dtype=np.float32)
    kmeans._argmin_rows(g, c_norms, x_norms, labels, dists, 2)
    total = g + c_norms[None, :]
    want = np.argmin(total, axis=1)
    np.testing.assert_array_equal(labels[:2], -7)
    np.testing.assert_array_equal(labels[2:], want)
    np.testing.assert_array_equal(dists[2:], np.maximum(total[np.arange(n), want] + x_norms, np.float32(0.0)))


# ---------------------------------------------------------------- the large-problem economies


@SETTINGS
@given(n=st.integers(1, 60), k=st.integers(1, 20), dim=st.sampled_from([1, 3, 24, 40]),
       seed=st.integers(0, 2**32 - 1), m_extra=st.integers(0, 25))
def test_assign_near_is_the_nearest_candidate(n, k, dim, seed, m_extra):
    # Integer data: every distance is exact. Each row's label is the first nearest among the
    # candidates of its current centroid (sorted ids, itself included), its distance exact;
    # with every centroid a candidate, it is the full assignment.
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "int")
    c = _data(rng, (k, dim), "int")
    m = min(k, 1 + m_extra)
    near = kmeans.near_centroids(c, m)
    assert near.shape == (k, m) and near.dtype == np.int64
    assert all(j in near[j] for j in range(k)) and np.all(np.diff(near, axis=1) > 0)
    current = rng.integers(0, k, size=n)
    labels, dists = kmeans.kmeans_assign_near(x, c, current, near)
    d = sq_dists_ref(x, c)
    for i in range(n):
        cand = near[current[i]]
        assert labels[i] == cand[np.argmin(d[i, cand])]
        assert dists[i] == d[i, labels[i]] <= d[i, current[i]]
    if m == k:
        np.testing.assert_array_equal(labels, kmeans_assign_ref(x, c)[0])


@SETTINGS
@given(k=st.integers(2, 30), dim=st.sampled_from([1, 5, 24, 33]), seed=st.integers(0, 2**32 - 1),
       m=st.integers(1, 30))
def test_near_centroids_are_the_m_nearest(k, dim, seed, m):
    rng = np.random.default_rng(seed)
    c = _data(rng, (k, dim), "int")
    m = min(m, k)
    near = kmeans.near_centroids(c, m)
    d = sq_dists_ref(c, c)
    np.fill_diagonal(d, -1.0)
    for j in range(k):
        # the m smallest distances (ties may pick either centroid)
        np.testing.assert_array_equal(np.sort(d[j, near[j]]), np.sort(d[j])[:m])


@SETTINGS
@given(n=st.integers(30, 120), k=st.integers(6, 20), dim=st.sampled_from([24, 40]),
       seed=st.integers(0, 2**32 - 1), n_iter=st.integers(1, 8), near=st.integers(2, 5))
def test_fit_with_near_candidates_does_not_worsen_its_initial_objective(n, k, dim, seed, n_iter, near):
    # Wide rows, k > near: iterations after the first assign among `near` candidates, which
    # include the current centroid, so the objective still falls from the k-means++ start;
    # with near >= k it is plain Lloyd, bit for bit.
    rng = np.random.default_rng(seed)
    x = _data(rng, (n, dim), "float")
    s = seed % 1000
    c = kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, near=near)
    init = x[kmeans_pp_init_ref(x, k, np.random.default_rng(s).random(k))]
    assert kmeans_objective_ref(x, c) <= kmeans_objective_ref(x, init) * (1 + 1e-5) + 1e-6
    np.testing.assert_array_equal(kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, near=k),
                                  kmeans.kmeans_fit(x, k, n_iter=n_iter, seed=s, near=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_warm_phase_on_narrow_rows(monkeypatch, seed):
    # Narrow rows with enough points per centroid: iterations run on a subsample first, then
    # at most refine_iter on all. Deterministic; better than its k-means++ start (reproduced:
    # the subsample, then the seeding uniforms, from the seed's generator); and
    # warm_points_per_centroid=0, or a problem below WARM_MIN_WORK, is plain Lloyd.
    monkeypatch.setattr(kmeans, "WARM_MIN_WORK", 0)
    rng = np.random.default_rng(seed)
    k, dim = 8, 4
    centres = rng.standard_normal((k, dim)).astype(np.float32) * 10
    x = (centres[rng.integers(0, k, 4000)] + rng.standard_normal((4000, dim))).astype(np.float32)
    kw = {"seed": seed, "max_points_per_centroid": 1000}  # all 4,000 points: no first subsample
    warm = kmeans.kmeans_fit(x, k, warm_points_per_centroid=16, refine_iter=2, **kw)
    np.testing.assert_array_equal(warm, kmeans.kmeans_fit(x, k, warm_points_per_centroid=16, refine_iter=2, **kw))
    plain = kmeans.kmeans_fit(x, k, warm_points_per_centroid=0, **kw)
    assert not np.array_equal(warm, plain)  # the warm path ran
    r = np.random.default_rng(seed)
    sub = x[np.sort(r.choice(x.shape[0], 16 * k, replace=False))]
    init = sub[kmeans_pp_init_ref(sub, k, r.random(k))]
    assert kmeans_objective_ref(x, warm) < kmeans_objective_ref(x, init)
    monkeypatch.setattr(kmeans, "WARM_MIN_WORK", 1 << 60)
    np.testing.assert_array_equal(kmeans.kmeans_fit(x, k, warm_points_per_centroid=16, **kw), plain)
