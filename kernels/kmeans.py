"""k-means: seeded k-means++ initialisation, Lloyd iterations, empty-cluster repair.

Inputs are float32 (n, dim) arrays (C-contiguous or not: the driver copies once).
`kmeans_fit` returns float32 (k, dim) centroids; `kmeans_assign` returns int64 (n,) labels
of the nearest centroid in squared L2 and the float32 distances.

Assignment uses a BLAS matrix product (numpy) for wide vectors, where it is several times
faster than any loop we can jit, and a parallel Numba loop for the narrow sub-vectors of
product quantization. Training is bounded: at most `max_points_per_centroid * k` points,
drawn with the given seed, as faiss does. Reference: `tests/reference/kmeans.py`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit, jit_batch_fast, jit_fast

__all__ = ["kmeans_fit", "kmeans_assign", "kmeans_pp_init", "kmeans_assign_small", "kmeans_assign_small_batch"]

# Below this width a jitted loop beats a BLAS call plus an argmin pass over (n, k).
_BLAS_MIN_DIM = 24
# Below this many row-centroid pairs the serial kernel wins (thread wake-up dominates).
_PARALLEL_MIN_WORK = 1 << 20


@jit_fast
def _assign_rows(x, ct, start, stop, labels, dists, d):
    # ct is (dim, k): centroids innermost so the distance loop vectorises across centroids
    # instead of across the few dims of a PQ sub-vector.
    dim = x.shape[1]
    k = ct.shape[1]
    for i in range(start, stop):
        d[:] = 0.0
        for t in range(dim):
            xv = x[i, t]
            for j in range(k):
                diff = xv - ct[t, j]
                d[j] += diff * diff
        best_j = 0
        best = d[0]
        for j in range(1, k):
            if d[j] < best:
                best = d[j]
                best_j = j
        labels[i] = best_j
        dists[i] = best


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


def _assign_blas(x: np.ndarray, centroids: np.ndarray, block: int = 8192):
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dists = np.empty(n, dtype=np.float32)
    c_norms = np.einsum("ij,ij->i", centroids, centroids)
    for start in range(0, n, block):
        xb = x[start : start + block]
        d = c_norms[None, :] - 2.0 * (xb @ centroids.T)
        lab = np.argmin(d, axis=1)
        labels[start : start + block] = lab
        x_norms = np.einsum("ij,ij->i", xb, xb)
        dists[start : start + block] = np.maximum(d[np.arange(len(xb)), lab] + x_norms, 0.0)
    return labels, dists


def kmeans_assign(x: np.ndarray, centroids: np.ndarray):
    """Labels (int64) and squared distances (float32) of each row's nearest centroid."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if x.shape[1] >= _BLAS_MIN_DIM:
        return _assign_blas(x, centroids)
    if x.shape[0] * centroids.shape[0] < _PARALLEL_MIN_WORK:
        return kmeans_assign_small(x, centroids)  # waking threads costs more than the work
    return kmeans_assign_small_batch(x, centroids)


@jit
def kmeans_pp_init(x, k, uniforms):
    """k-means++ seeding (D^2 sampling). `uniforms` holds k floats in [0, 1) from the caller's
    seeded generator, so the kernel itself is deterministic. Returns row indices (k,)."""
    n, dim = x.shape
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = min(int(uniforms[0] * n), n - 1)
    min_d = np.empty(n, dtype=np.float64)
    c = chosen[0]
    for i in range(n):
        d = 0.0
        for t in range(dim):
            diff = x[i, t] - x[c, t]
            d += diff * diff
        min_d[i] = d
    for j in range(1, k):
        total = 0.0
        for i in range(n):
            total += min_d[i]
        if total <= 0.0:
            # Every point coincides with a chosen centre: fall back to uniform picks.
            c = min(int(uniforms[j] * n), n - 1)
        else:
            target = uniforms[j] * total
            acc = 0.0
            c = n - 1
            for i in range(n):
                acc += min_d[i]
                if acc > target:
                    c = i
                    break
        chosen[j] = c
        for i in range(n):
            d = 0.0
            for t in range(dim):
                diff = x[i, t] - x[c, t]
                d += diff * diff
            if d < min_d[i]:
                min_d[i] = d
    return chosen


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


def _distinct_rows_at_most(x: np.ndarray, k: int) -> np.ndarray | None:
    """The distinct rows of x if there are at most k of them, else None.

    The first 2k rows decide cheaply in the usual case (more than k distinct among them);
    only then is the whole sample deduplicated (0.6 s for 65,536 x 384 rows otherwise)."""
    def unique(rows: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
        _, first = np.unique(keys, return_index=True)
        return rows[np.sort(first)]

    if unique(x[: 2 * k]).shape[0] > k:
        return None
    rows = unique(x)
    return rows if rows.shape[0] <= k else None


def kmeans_fit(
    x: np.ndarray,
    k: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    init_sample: int = 16384,
) -> np.ndarray:
    """Train k centroids on the rows of x (squared L2 k-means).

    With at most k distinct rows, those rows become the centroids (repeated), so a training
    vector always encodes to itself. (Distinct rows are looked for when n <= 64 k, the only
    case where duplicates can leave fewer than k of them in practice.) Empty clusters are re-seeded by splitting the
    most populated cluster (its centroid plus and minus a small symmetric perturbation), as
    faiss does, so no centroid is wasted.
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
    init_rows = x
    if n > max(init_sample, 4 * k):
        init_rows = x[np.sort(rng.choice(n, max(init_sample, 4 * k), replace=False))]
    chosen = kmeans_pp_init(init_rows, k, rng.random(k))
    centroids = init_rows[chosen].copy()
    for it in range(n_iter):
        labels, _ = kmeans_assign(x, centroids)
        sums, counts = _update(x, labels, k)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        if it == n_iter - 1:
            break  # a split now would return perturbed centroids that no point chose
        for j in np.flatnonzero(~nonempty):
            big = int(np.argmax(counts))
            eps = np.float32(1.0 / 1024)
            perturb = np.where(rng.random(dim) < 0.5, -eps, eps).astype(np.float32)
            centroids[j] = centroids[big] * (1 + perturb)
            centroids[big] = centroids[big] * (1 - perturb)
            counts[j] = counts[big] // 2
            counts[big] -= counts[j]
    return centroids
