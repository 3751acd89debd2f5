"""k-means: seeded k-means++ initialisation, Lloyd iterations, empty-cluster repair.

Inputs are float32 (n, dim) arrays (C-contiguous or not: the driver copies once).
`kmeans_fit` returns float32 (k, dim) centroids; `kmeans_assign` returns int64 (n,) labels
of the nearest centroid in squared L2 and the float32 distances.

Assignment uses a BLAS matrix product (numpy) for wide vectors, where it is several times
faster than any loop we can jit, followed by one fused pass for the argmin; and a parallel
Numba loop for the narrow sub-vectors of product quantization (distances vectorised across
centroids, the argmin as an integer min reduction). Ties go to the first centroid. Training
is bounded: at most `max_points_per_centroid * k` points, drawn with the given seed, as
faiss does, and Lloyd iterations stop at a fixed point or once they gain less than
`KMEANS_TOL` of the objective. Reference: `tests/reference/kmeans.py`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit, jit_batch, jit_batch_fast, jit_fast

__all__ = ["kmeans_fit", "kmeans_assign", "distinct_rows", "kmeans_pp_init", "kmeans_assign_small", "kmeans_assign_small_batch",
           "nearest_column", "float_order_key", "BLAS_MIN_DIM", "PARALLEL_MIN_WORK", "KMEANS_TOL",
           "WARM_POINTS_PER_CENTROID", "REFINE_ITER",
           "WARM_MIN_WORK", "NEAR_CANDIDATES", "kmeans_assign_near", "near_centroids"]

# Below this width a jitted loop beats a BLAS call plus an argmin pass over (n, k).
BLAS_MIN_DIM = 24
# Below this many row-centroid pairs the serial kernel wins (thread wake-up dominates).
PARALLEL_MIN_WORK = 1 << 20
# Lloyd iterations stop once one lowers the objective by at most this fraction. Measured on
# wordnet-minilm (117,647 x 384, all queries; bench/build_speed.py --sweep): IVF1024 stops
# after ~10 of 20 iterations, PQ sub-spaces after ~15, and recall@10 stays within 0.0015
# (codes only) and 0.001 (re-ranked, R = 50) of running all 20 for RB1, PQ48x8 and
# IVF1024,PQ96x4; the objective then still improves by < 0.1% per iteration.
KMEANS_TOL = 1e-3
# Narrow k-means (PQ sub-spaces, below BLAS_MIN_DIM) with at least twice this many training
# points per centroid and at least WARM_MIN_WORK point-centroid pairs run their Lloyd
# iterations first on a random subsample of this many points per centroid (k-means++ seeds
# from it too) until they stop gaining, then at most REFINE_ITER iterations on all points.
# (A small k-means, like the 16-centroid sub-spaces of 4-bit PQ, is cheap and loses more
# from fewer points.)
WARM_POINTS_PER_CENTROID = 16
REFINE_ITER = 4
WARM_MIN_WORK = 1 << 23
# Wide k-means (IVF): after the first iteration, each point is assigned among the
# NEAR_CANDIDATES centroids nearest its current one (`kmeans_assign_near`), not all k.
NEAR_CANDIDATES = 64


@jit_fast
def _sub_sq_dists(x, i, col, ct, d):
    # ct is (dim, k): centroids innermost so the loop vectorises across centroids instead
    # of across the few dims of a PQ sub-vector; the sum over dims runs in order.
    d[:] = 0.0
    for t in range(ct.shape[0]):
        xv = x[i, col + t]
        for j in range(ct.shape[1]):
            diff = xv - ct[t, j]
            d[j] += diff * diff


@jit
def _first_min(d):
    """Index of the first smallest entry of d (float32 >= 0: squared distances).

    The bits of a non-negative float32 order like the float, so (bits << 32 | j) as int64
    orders by distance, then by index: one integer min reduction, which vectorises (a float
    compare-and-keep-index loop does not, and was 60% of an 8-d, 256-centroid assignment).
    The sign bit is cleared: -0.0 counts as 0, and a NaN sorts after every number."""
    di = d.view(np.int32)
    best = np.int64(0x7FFFFFFFFFFFFFFF)
    for j in range(d.shape[0]):
        best = min(best, (np.int64(di[j] & 0x7FFFFFFF) << 32) | j)
    return best & 0xFFFFFFFF


@jit
def nearest_column(x, i, col, ct, d):
    """(label, squared distance) of the column of ct (dim, k) nearest to the sub-row
    x[i, col : col + dim], the first nearest on ties; d is a float32 (k,) scratch buffer.
    Shared with `pq.pq_encode`."""
    _sub_sq_dists(x, i, col, ct, d)
    j = _first_min(d)
    return j, d[j]


@jit
def _assign_rows(x, ct, start, stop, labels, dists, d):
    for i in range(start, stop):
        labels[i], dists[i] = nearest_column(x, i, 0, ct, d)


@jit_fast
def kmeans_assign_small(x, centroids):
    """Nearest centroid (squared L2) for each row: labels int64 (n,), distances float32 (n,)."""
    n = x.shape[0]
    ct = np.ascontiguousarray(centroids.T)
    labels = np.empty(n, dtype=np.int64)
    dists = np.empty(n, dtype=np.float32)
    _assign_rows(x, ct, 0, n, labels, dists, np.empty(ct.shape[1], dtype=np.float32))
    return labels, dists


@jit_batch_fast
def kmeans_assign_small_batch(x, centroids):
    """`kmeans_assign_small`, parallel over chunks of rows (one distance buffer per chunk)."""
    n = x.shape[0]
    ct = np.ascontiguousarray(centroids.T)
    labels = np.empty(n, dtype=np.int64)
    dists = np.empty(n, dtype=np.float32)
    chunk = 256
    for c in prange((n + chunk - 1) // chunk):
        _assign_rows(x, ct, c * chunk, min(n, (c + 1) * chunk), labels, dists, np.empty(ct.shape[1], dtype=np.float32))
    return labels, dists


@jit
def float_order_key(b):
    """The int32 bits b of a float32 (not -0.0) as an int32 that orders like the float: the
    magnitude bits of negatives flipped. A NaN orders by its sign bit: after +inf if clear,
    before -inf if set (x86's inf - inf is such a NaN): callers keep NaN out. (key << 32 |
    index) then orders by value, then index, in one integer min that vectorises."""
    return b ^ np.int32(0x7FFFFFFF) if b < 0 else b


@jit
def _argmin_rows(g, c_norms, x_norms, labels, dists, start):
    """Row-wise first argmin of g[i, j] + c_norms[j] into labels[start + i], with the
    squared distance max(min + x_norms[i], 0) into dists[start + i]: one pass over the block
    instead of numpy's three (add, argmin, gather).

    The argmin is an integer min over (key << 32 | j), key being the value's bits with the
    magnitude bits of negatives flipped (an int32 that orders like the float; -0.0 is made
    +0.0 first, a NaN after +inf or, with its sign bit set, before -inf: callers keep NaN
    out): it orders by value, then index, and vectorises where a
    float compare-and-keep-index loop does not (3.5x faster on 8192 x 1024 blocks)."""
    n, k = g.shape
    row = np.empty(k, dtype=np.float32)
    bits = row.view(np.int32)
    for i in range(n):
        for j in range(k):
            row[j] = (g[i, j] + c_norms[j]) + np.float32(0.0)  # -0.0 -> +0.0
        best = np.int64(0x7FFFFFFFFFFFFFFF)
        for j in range(k):
            best = min(best, (np.int64(float_order_key(bits[j])) << 32) | j)
        best_j = best & 0xFFFFFFFF
        labels[start + i] = best_j
        dists[start + i] = max(row[best_j] + x_norms[i], np.float32(0.0))


def _assign_blas(x: np.ndarray, centroids: np.ndarray, block: int = 8192):
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2 with x.c from BLAS. The centroids are scaled by -2
    # once (exact: a power of two), so the product lands as -2 x.c in a reused buffer.
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dists = np.empty(n, dtype=np.float32)
    c_norms = np.einsum("ij,ij->i", centroids, centroids)
    ct2 = np.ascontiguousarray(centroids.T * np.float32(-2.0))
    buf = np.empty((min(block, n), centroids.shape[0]), dtype=np.float32)
    for start in range(0, n, block):
        xb = x[start : start + block]
        g = buf[: xb.shape[0]]
        np.matmul(xb, ct2, out=g)
        _argmin_rows(g, c_norms, np.einsum("ij,ij->i", xb, xb), labels, dists, start)
    return labels, dists


def kmeans_assign(x: np.ndarray, centroids: np.ndarray):
    """Labels (int64) and squared distances (float32) of each row's nearest centroid."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if x.shape[1] >= BLAS_MIN_DIM:
        return _assign_blas(x, centroids)
    if x.shape[0] * centroids.shape[0] < PARALLEL_MIN_WORK:
        return kmeans_assign_small(x, centroids)  # waking threads costs more than the work
    return kmeans_assign_small_batch(x, centroids)


@jit_fast
def _sq_dist(a, b):
    # float32 with reassociation so the sum vectorizes (4-5x faster than a float64 chain on
    # 384-d rows); exact on the small-integer data the reference test uses.
    s = np.float32(0.0)
    for t in range(a.shape[0]):
        diff = a[t] - b[t]
        s += diff * diff
    return s


@jit
def kmeans_pp_init(x, k, uniforms):
    """k-means++ seeding (D^2 sampling). `uniforms` holds k floats in [0, 1) from the caller's
    seeded generator, so the kernel itself is deterministic. Returns row indices (k,).

    Distances are float32 (`_sq_dist`), their running sums float64 and serial (one order on
    every machine). Each pass lowers the rows' distances to the new centre: in parallel chunks
    for samples of at least `PARALLEL_MIN_WORK` floats (the same values as serially), serially
    below (a pass of a few microseconds costs less than waking the threads)."""
    n = x.shape[0]
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = min(int(uniforms[0] * n), n - 1)
    min_d = np.empty(n, dtype=np.float64)
    c = x[chosen[0]]
    for i in range(n):
        min_d[i] = _sq_dist(x[i], c)
    # Each pass reads the whole sample: wide samples (16,384 x 384 floats is 25 MB, ~0.8 ms a
    # pass) split it over the threads; narrow ones (PQ sub-vectors) stay serial.
    parallel = n * x.shape[1] >= PARALLEL_MIN_WORK
    for j in range(1, k):
        total = 0.0
        for i in range(n):
            total += min_d[i]
        if total <= 0.0:
            # Every point coincides with a chosen centre: fall back to uniform picks.
            ci = min(int(uniforms[j] * n), n - 1)
        else:
            target = uniforms[j] * total
            acc = 0.0
            ci = n - 1
            for i in range(n):
                acc += min_d[i]
                if acc > target:
                    ci = i
                    break
        chosen[j] = ci
        if parallel:
            _pp_lower_parallel(x, x[ci], min_d)
        else:
            _pp_lower(x, x[ci], min_d, 0, n)
    return chosen


@jit
def _pp_lower(x, c, min_d, start, stop):
    # min_d[i] <- min(min_d[i], |x_i - c|^2) for rows start..stop
    for i in range(start, stop):
        d = _sq_dist(x[i], c)
        if d < min_d[i]:
            min_d[i] = d


@jit_batch
def _pp_lower_parallel(x, c, min_d):
    """`_pp_lower` over all rows, in parallel chunks: every row is computed the same way, so
    the result equals the serial pass."""
    n = x.shape[0]
    chunk = 1024
    for b in prange((n + chunk - 1) // chunk):
        _pp_lower(x, c, min_d, b * chunk, min(n, (b + 1) * chunk))


@jit
def _update(x, labels, k):
    n, dim = x.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    for i in range(n):
        j = labels[i]
        counts[j] += 1
        for t in range(dim):
            sums[j, t] += x[i, t]
    return sums, counts


def distinct_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row of the 2-D `x` (byte-equal),
    ascending, int64."""
    keys = np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[1] * x.itemsize))).ravel()
    return np.sort(np.unique(keys, return_index=True)[1]).astype(np.int64)


def _distinct_rows_at_most(x: np.ndarray, k: int) -> np.ndarray | None:
    """The distinct rows of x if there are at most k of them, else None.

    The first 2k rows decide cheaply in the usual case (more than k distinct among them);
    only then is the whole sample deduplicated (0.6 s for 65,536 x 384 rows otherwise)."""
    if distinct_rows(x[: 2 * k]).size > k:
        return None
    rows = x[distinct_rows(x)]
    return rows if rows.shape[0] <= k else None


def kmeans_fit(
    x: np.ndarray,
    k: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    init_sample: int = 16384,
    tol: float = KMEANS_TOL,
    warm_points_per_centroid: int = WARM_POINTS_PER_CENTROID,
    refine_iter: int = REFINE_ITER,
    near: int = NEAR_CANDIDATES,
) -> np.ndarray:
    """Train k centroids on the rows of x (squared L2 k-means).

    With at most k distinct rows, those rows become the centroids (repeated), so a training
    vector always encodes to itself. (Distinct rows are looked for when n <= 64 k, the only
    case where duplicates can leave fewer than k of them in practice.) Empty clusters are re-seeded by splitting the
    most populated cluster (its centroid plus and minus a small symmetric perturbation), as
    faiss does, so no centroid is wasted.

    At most `n_iter` Lloyd iterations. They stop at a fixed point (an assignment equal to the
    previous one: the result is the same as iterating on), and with ``tol > 0`` once an
    assignment lowers the objective sum_i |x_i - c(x_i)|^2 by at most ``tol`` times its
    value (never right after a split, whose perturbation may raise it for one iteration).
    ``tol = 0`` keeps only the fixed-point stop (the result of all `n_iter` iterations);
    ``tol < 0`` runs all `n_iter` iterations (tests compare the early stops against it).

    Two economies for large problems (module constants; set `near=0` and
    `warm_points_per_centroid=0` for plain Lloyd). Wide rows (dim >= BLAS_MIN_DIM): after the
    first iteration on all k centroids, each point is assigned among the `near` centroids
    nearest its current one, which includes it, so the objective still never rises.
    Narrow rows (PQ sub-spaces) with n >= 2 * warm * k and n * k >= WARM_MIN_WORK: the
    iterations run first on `warm_points_per_centroid` * k points drawn at random (k-means++
    seeds from them) until they stop gaining, then at most `refine_iter` iterations on all n.
    On wordnet-minilm (bench/build_speed.py --sweep) they cut IVF1024 training from 4.3 to
    2.3 s and PQ48x8's from 8.8 to 2.4 s at recall@10 within 0.004 of plain Lloyd.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    if k <= 0:
        raise ValueError(f"k-means needs k >= 1, found k={k}")
    if n == 0:
        raise ValueError("k-means needs at least one training vector, found 0")
    rng = np.random.default_rng(seed)
    distinct = _distinct_rows_at_most(x, k) if k < n <= 64 * k else None
    if n <= k or distinct is not None:
        rows = x if n <= k else distinct
        reps = np.resize(np.arange(rows.shape[0]), k)
        return rows[reps].copy()
    limit = max_points_per_centroid * k
    if n > limit:
        x = x[np.sort(rng.choice(n, limit, replace=False))]
        n = limit
    wide = dim >= BLAS_MIN_DIM
    warm = None
    if not wide and warm_points_per_centroid > 0 and n >= 2 * warm_points_per_centroid * k \
            and n * k >= WARM_MIN_WORK:
        warm = x[np.sort(rng.choice(n, warm_points_per_centroid * k, replace=False))]
    start = x if warm is None else warm
    init_rows = start
    if start.shape[0] > max(init_sample, 4 * k):
        init_rows = start[np.sort(rng.choice(start.shape[0], max(init_sample, 4 * k), replace=False))]
    chosen = kmeans_pp_init(init_rows, k, rng.random(k))
    centroids = init_rows[chosen].copy()
    if warm is None:
        return _lloyd(x, centroids, n_iter, tol, rng, near=near if wide else 0)
    centroids = _lloyd(warm, centroids, n_iter, tol, rng)
    return _lloyd(x, centroids, min(n_iter, refine_iter), tol, rng)


@jit
def _group_by_label(labels, k):
    """Counting sort: row indices grouped by label (ascending rows within a label) and the
    (k + 1,) offsets of each label's group."""
    n = labels.shape[0]
    starts = np.zeros(k + 1, dtype=np.int64)
    for i in range(n):
        starts[labels[i] + 1] += 1
    for j in range(k):
        starts[j + 1] += starts[j]
    fill = starts[:k].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[fill[labels[i]]] = i
        fill[labels[i]] += 1
    return order, starts


@jit_fast
def _near_group(x, centroids, rows, cand, out_labels, out_dists):
    # The rows of one group share their candidates: four rows at a time against each
    # candidate, so a candidate's centroid is read once per four rows (the loop is bound by
    # reading centroids, 64 of them per row, from cache).
    m = rows.shape[0]
    dim = x.shape[1]
    g = 0
    while g + 4 <= m:
        i0, i1, i2, i3 = rows[g], rows[g + 1], rows[g + 2], rows[g + 3]
        b0 = b1 = b2 = b3 = np.float32(np.inf)
        j0 = j1 = j2 = j3 = cand[0]
        for t in range(cand.shape[0]):
            j = cand[t]
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for u in range(dim):
                c = centroids[j, u]
                d0 = x[i0, u] - c
                d1 = x[i1, u] - c
                d2 = x[i2, u] - c
                d3 = x[i3, u] - c
                s0 += d0 * d0
                s1 += d1 * d1
                s2 += d2 * d2
                s3 += d3 * d3
            if s0 < b0:
                b0, j0 = s0, j
            if s1 < b1:
                b1, j1 = s1, j
            if s2 < b2:
                b2, j2 = s2, j
            if s3 < b3:
                b3, j3 = s3, j
        out_labels[i0], out_dists[i0] = j0, b0
        out_labels[i1], out_dists[i1] = j1, b1
        out_labels[i2], out_dists[i2] = j2, b2
        out_labels[i3], out_dists[i3] = j3, b3
        g += 4
    for r in range(g, m):
        i = rows[r]
        best = np.float32(np.inf)
        best_j = cand[0]
        for t in range(cand.shape[0]):
            j = cand[t]
            d = _sq_dist(x[i], centroids[j])
            if d < best:
                best, best_j = d, j
        out_labels[i], out_dists[i] = best_j, best


@jit_batch_fast
def kmeans_assign_near(x, centroids, labels, near):
    """For each row i, the nearest (squared L2) of the centroids near[labels[i]]: labels
    int64 (n,) and distances float32 (n,). `near` (k, m) lists each centroid's candidates in
    ascending order, itself among them, so no row moves farther from its centroid; ties go to
    the first candidate. Rows are grouped by their current label (they share candidates),
    groups run in parallel."""
    n = x.shape[0]
    k = near.shape[0]
    out_labels = np.empty(n, dtype=np.int64)
    out_dists = np.empty(n, dtype=np.float32)
    order, starts = _group_by_label(labels, k)
    for c in prange(k):
        if starts[c + 1] > starts[c]:
            _near_group(x, centroids, order[starts[c]:starts[c + 1]], near[c], out_labels, out_dists)
    return out_labels, out_dists


def near_centroids(centroids: np.ndarray, m: int) -> np.ndarray:
    """(k, m) int64: each centroid's m nearest centroids (squared L2, itself included), in
    ascending order of index."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    norms = np.einsum("ij,ij->i", c, c)
    d = norms[:, None] + norms[None, :] - 2.0 * (c @ c.T)
    np.fill_diagonal(d, -np.inf)
    part = np.argpartition(d, m - 1, axis=1)[:, :m]
    return np.sort(part, axis=1).astype(np.int64)


def _lloyd(x: np.ndarray, centroids: np.ndarray, n_iter: int, tol: float, rng: np.random.Generator,
           near: int = 0) -> np.ndarray:
    """At most `n_iter` Lloyd iterations on x from `centroids` (updated in place and
    returned), with `kmeans_fit`'s stops and empty-cluster splits. With ``0 < near < k``
    every iteration after the first assigns each point among the `near` centroids nearest
    its current one (`kmeans_assign_near`: the objective still never rises) instead of all k."""
    k, dim = centroids.shape
    previous = np.inf  # objective of the previous assignment (inf: none, or a split since)
    previous_labels = None
    last = None  # the labels of the previous iteration
    for it in range(n_iter):
        if 0 < near < k and last is not None:
            labels, dists = kmeans_assign_near(x, centroids, last, near_centroids(centroids, near))
        else:
            labels, dists = kmeans_assign(x, centroids)
        last = labels
        sums, counts = _update(x, labels, k)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        if it == n_iter - 1:
            break  # a split now would return perturbed centroids that no point chose
        if tol >= 0 and previous_labels is not None and np.array_equal(labels, previous_labels):
            break  # a fixed point: the same labels give these same centroids again
        objective = float(dists.sum(dtype=np.float64))
        if tol > 0 and previous - objective <= tol * objective:
            break
        previous, previous_labels = objective, labels
        for j in np.flatnonzero(~nonempty):
            big = int(np.argmax(counts))
            eps = np.float32(1.0 / 1024)
            perturb = np.where(rng.random(dim) < 0.5, -eps, eps).astype(np.float32)
            centroids[j] = centroids[big] * (1 + perturb)
            centroids[big] = centroids[big] * (1 - perturb)
            counts[j] = counts[big] // 2
            counts[big] -= counts[j]
            previous, previous_labels = np.inf, None
    return centroids
