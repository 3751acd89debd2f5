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
from numba import prange

from ._jit import jit, jit_batch, jit_fast
from .kmeans import float_order_key
from .topk import topk_init, topk_push, topk_sort
from .transform import matmul_rows_batch

__all__ = ["ivf_assign", "ivf_layout", "ivf_probe"]


@jit_fast
def _row_similarity(x, centroids):
    """<x[0], c> for every centroid c, float32 (1, nlist): a lone query's probe without BLAS
    (5.1 us for 256 x 384 against BLAS's 4.8; see `_similarity`)."""
    q = x[0]
    out = np.empty((1, centroids.shape[0]), dtype=np.float32)
    for c in range(centroids.shape[0]):
        row = centroids[c]
        acc = np.float32(0.0)
        for t in range(q.shape[0]):
            acc += q[t] * row[t]
        out[0, c] = acc
    return out


def _similarity(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    # one row (a lone query) in a compiled loop: its search holds no BLAS scope
    # (engine/threads.py), and BLAS would run this product on all its threads
    ip = _row_similarity(x, centroids) if x.shape[0] == 1 else x @ centroids.T
    if metric == "ip":
        return ip
    c_norms = np.einsum("ij,ij->i", centroids, centroids)
    x_norms = np.einsum("ij,ij->i", x, x)
    return 2.0 * ip - c_norms[None, :] - x_norms[:, None]  # -|x - c|^2


@jit
def _argmax_rows(sim, out, start):
    """First argmax of each row of sim into out[start + i], as an integer min over
    (-key << 32 | j), key = `kmeans.float_order_key` of the value:
    by value descending, then index; it vectorises where a compare-and-keep loop does not."""
    n, k = sim.shape
    row = np.empty(k, dtype=np.float32)
    bits = row.view(np.int32)
    for i in range(n):
        for j in range(k):
            row[j] = sim[i, j] + np.float32(0.0)  # -0.0 -> +0.0
        best = np.int64(0x7FFFFFFFFFFFFFFF)
        for j in range(k):
            best = min(best, (-np.int64(float_order_key(bits[j])) << 32) | j)
        out[start + i] = best & 0xFFFFFFFF


def ivf_assign(x: np.ndarray, centroids: np.ndarray, metric: str, block: int = 8192) -> np.ndarray:
    # The products come from `transform.matmul_rows_batch`, not BLAS: a row's list must not
    # depend on the rows encoded beside it (BLAS's last bits do, and a near tie then moves
    # the row to another list and changes its whole code). Cost: 0.55 s against BLAS's
    # 0.50 s for 117,647 x 384 rows and 1,024 lists (2 threads, Zen 5).
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape[0], dtype=np.int64)
    if x.shape[0] == 0:
        return out
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if metric == "l2":  # the largest 2 x.c - |c|^2 is the nearest (|x|^2 is the same for all)
        ct = np.ascontiguousarray(c.T * np.float32(2.0))  # exact: a power of two
        c_norms = np.einsum("ij,ij->i", c, c)
    else:
        ct = np.ascontiguousarray(c.T)
    buf = np.empty((min(block, x.shape[0]), ct.shape[1]), dtype=np.float32)  # reused per block
    for start in range(0, x.shape[0], block):
        xb = x[start : start + block]
        sim = buf[: xb.shape[0]]
        matmul_rows_batch(xb, ct, out=sim)
        if metric == "l2":
            np.subtract(sim, c_norms, out=sim)
        _argmax_rows(sim, out, start)
    return out


@jit
def _counting_order(lists, nlist, order, offsets):
    # a counting sort: stable, O(n + nlist) (argsort's merge sort took ~1 s per 10M rows)
    for i in range(lists.shape[0]):
        offsets[lists[i] + 1] += 1
    for j in range(nlist):
        offsets[j + 1] += offsets[j]
    fill = offsets[:-1].copy()
    for i in range(lists.shape[0]):
        lst = lists[i]
        order[fill[lst]] = i
        fill[lst] += 1


def ivf_layout(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    if lists.size and (lists.min() < 0 or lists.max() >= nlist):
        raise ValueError(f"list numbers must lie in [0, {nlist}), found {lists.min()}..{lists.max()}")
    order = np.empty(lists.shape[0], dtype=np.int64)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    _counting_order(lists, nlist, order, offsets)
    return order, offsets


_LOW32 = np.uint64(0xFFFFFFFF)
_SIGN32 = np.uint64(0x80000000)


@jit
def _select_row(row, k, out_scores, out_ids):
    """`topk_select` of one row (ids 0..n-1) into out_scores / out_ids (k,), identical
    results, without a heap over all n entries (20-30 us per query at n = 1024, k = 64-128:
    as much as the codes scan). A 256-bin histogram between the row's min and max finds a
    value t with at least k entries >= t and few more; those entries are sorted by score,
    ties by the smaller id (one uint64 key each), and the first k kept. Rows with a NaN or
    an infinite entry (or 2**32 entries or more) take the heap."""
    n = row.shape[0]
    n_bins = 256
    lo = np.inf
    hi = -np.inf
    finite = True
    for j in range(n):
        x = row[j]
        if not np.isfinite(x):
            finite = False
        lo = min(lo, x)
        hi = max(hi, x)
    if not finite or k >= n or not hi > lo or n >= 1 << 32:
        hs, hid = topk_init(k)
        for j in range(n):
            topk_push(hs, hid, row[j], j)
        topk_sort(hs, hid)
        out_scores[:] = hs
        out_ids[:] = hid
        return
    scale = (n_bins - 1) / (np.float64(hi) - np.float64(lo))
    counts = np.zeros(n_bins, dtype=np.int64)
    for j in range(n):
        counts[int((np.float64(row[j]) - lo) * scale)] += 1
    top = n_bins - 1
    above = counts[top]
    while above < k:
        top -= 1
        above += counts[top]
    thr = np.float32(np.inf)  # the smallest entry in bins >= top: >= k entries reach it
    for j in range(n):
        if int((np.float64(row[j]) - lo) * scale) >= top:
            thr = min(thr, row[j])
    # Each candidate as one uint64 key, (score descending, id ascending), sorted once: the
    # order a stable sort by score gives, 7.6 -> 5.5 us a query at n = 256, k = 128 (a
    # mergesort of the scores with an index array before). Finite scores map to uint32 in
    # their order (x + 0 turns -0.0 into +0.0: equal scores tie by id, as in topk_select).
    vals = np.empty(n, dtype=np.float32)
    cand = np.empty(n, dtype=np.int64)
    c = 0
    for j in range(n):
        if row[j] >= thr:
            vals[c] = row[j] + np.float32(0.0)
            cand[c] = j
            c += 1
    bits = vals[:c].view(np.uint32)
    keys = np.empty(c, dtype=np.uint64)
    for i in range(c):
        u = np.uint64(bits[i])
        rank = (_LOW32 - u) if u >> np.uint64(31) else (u | _SIGN32)  # ascending in the score
        keys[i] = ((_LOW32 - rank) << np.uint64(32)) | np.uint64(cand[i])
    keys.sort()
    for r in range(k):
        j = np.int64(keys[r] & _LOW32)
        out_scores[r] = row[j]
        out_ids[r] = j


@jit_batch
def _select_batch(sim, k):
    """Row-wise `_select_row` of sim (nq, n), one query per thread."""
    nq = sim.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        _select_row(sim[qi], k, out_scores[qi], out_ids[qi])
    return out_scores, out_ids


@jit
def _select_serial(sim, k):
    """Serial twin of `_select_batch`: a few queries do not pay for waking the thread pool
    (on 2 cores that wake-up waited for a scheduler tick, ~8 ms, behind BLAS's spinning
    threads after the query's rotation product)."""
    nq = sim.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in range(nq):
        _select_row(sim[qi], k, out_scores[qi], out_ids[qi])
    return out_scores, out_ids


# Fewer queries than this select their lists serially (as vecz.engine.codecs.CodeIndex scans).
PARALLEL_MIN_QUERIES = 8


def ivf_probe(q: np.ndarray, centroids: np.ndarray, nprobe: int, metric: str):
    q = np.ascontiguousarray(q, dtype=np.float32)
    sim = np.ascontiguousarray(_similarity(q, centroids, metric), dtype=np.float32)
    select = _select_batch if q.shape[0] >= PARALLEL_MIN_QUERIES else _select_serial
    return select(sim, min(nprobe, centroids.shape[0]))
