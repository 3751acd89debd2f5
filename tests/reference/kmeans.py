"""k-means oracles: brute-force assignment, the objective, k-means++ seeding with given
uniforms, and one Lloyd update; all in float64."""

from __future__ import annotations

import numpy as np

__all__ = ["sq_dists_ref", "kmeans_assign_ref", "kmeans_objective_ref", "kmeans_pp_init_ref", "lloyd_update_ref"]


def sq_dists_ref(x, centroids):
    """float64 (n, k) squared L2 distances, one row at a time (no |x|^2 - 2xc + |c|^2 trick)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    out = np.empty((x.shape[0], c.shape[0]))
    for i in range(x.shape[0]):
        out[i] = ((x[i][None, :] - c) ** 2).sum(axis=1)
    return out


def kmeans_assign_ref(x, centroids):
    """Labels (first nearest centroid) int64 (n,) and squared distances float64 (n,)."""
    d = sq_dists_ref(x, centroids)
    if d.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0)
    labels = np.argmin(d, axis=1).astype(np.int64)
    return labels, d[np.arange(d.shape[0]), labels]


def kmeans_objective_ref(x, centroids):
    """Sum over rows of the squared distance to the nearest centroid (float64)."""
    return float(kmeans_assign_ref(x, centroids)[1].sum())


def kmeans_pp_init_ref(x, k, uniforms):
    """k-means++ (D^2 sampling) driven by the given uniforms in [0, 1).

    First centre: row floor(u0 * n). Next ones: the first row whose running sum of D^2
    exceeds u_j * total (uniform pick floor(u_j * n) when every D^2 is zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    chosen = [min(int(uniforms[0] * n), n - 1)]
    min_d = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = min_d.sum()
        if total <= 0:
            c = min(int(uniforms[j] * n), n - 1)
        else:
            above = np.flatnonzero(np.cumsum(min_d) > uniforms[j] * total)
            c = int(above[0]) if above.size else n - 1
        chosen.append(c)
        min_d = np.minimum(min_d, ((x - x[c]) ** 2).sum(axis=1))
    return np.array(chosen, dtype=np.int64)


def lloyd_update_ref(x, labels, k):
    """Per-cluster sums float64 (k, dim) and counts int64 (k,)."""
    x = np.asarray(x, dtype=np.float64)
    sums = np.zeros((k, x.shape[1]))
    counts = np.zeros(k, dtype=np.int64)
    for i, j in enumerate(labels):
        sums[j] += x[i]
        counts[j] += 1
    return sums, counts
