"""Inverted-file helpers: coarse assignment, list layout and probing.

- `ivf_assign(x, centroids, metric)`: int64 (n,) list of each row: nearest centroid in L2
  for `l2`, largest inner product for `ip` (for unit vectors the two agree).
- `ivf_layout(lists, nlist)`: a stable order that groups rows by list and the offsets
  int64 (nlist + 1,) of each list in that order, so each list's codes are contiguous.
- `ivf_probe(q, centroids, nprobe, metric)`: the nprobe best lists per query, int64
  (nq, nprobe) best first, with their similarity (ip) or negated distance (l2).
Reference: tests/reference/ivf.py.
"""

from __future__ import annotations

import numpy as np

from .kmeans import kmeans_assign
from .topk import topk_select_batch

__all__ = ["ivf_assign", "ivf_layout", "ivf_probe"]


def _similarity(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    ip = x @ centroids.T
    if metric == "ip":
        return ip
    c_norms = np.einsum("ij,ij->i", centroids, centroids)
    x_norms = np.einsum("ij,ij->i", x, x)
    return 2.0 * ip - c_norms[None, :] - x_norms[:, None]  # -|x - c|^2


def ivf_assign(x: np.ndarray, centroids: np.ndarray, metric: str, block: int = 8192) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "l2":
        return kmeans_assign(x, centroids)[0]
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], block):
        out[start : start + block] = np.argmax(x[start : start + block] @ centroids.T, axis=1)
    return out


def ivf_layout(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    lists = np.asarray(lists, dtype=np.int64)
    order = np.argsort(lists, kind="stable")
    counts = np.bincount(lists, minlength=nlist)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return order, offsets


def ivf_probe(q: np.ndarray, centroids: np.ndarray, nprobe: int, metric: str):
    q = np.ascontiguousarray(q, dtype=np.float32)
    sim = np.ascontiguousarray(_similarity(q, centroids, metric), dtype=np.float32)
    return topk_select_batch(sim, np.arange(centroids.shape[0], dtype=np.int64), min(nprobe, centroids.shape[0]))
