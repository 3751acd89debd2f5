"""Uncompressed scans: Flat (float32 rows) and F16 (half-precision rows, as uint16 bits).

Numba has no float16 type, so F16 rows are passed as their uint16 bit patterns and widened
with LLVM's `fpext half -> float` (`f16_to_f32`), which vectorises to VCVTPH2PS.

Scores are larger-is-better (kernels/topk.py): the inner product plus `probe_bias` for ip,
the negated squared distance to `q` for l2 (for residual lists the caller passes q - centre
per probe in `qs` (L, dim), L = 1 or P). Same inverted-list arguments as kernels/pq.py.
`dense_rescore(_batch)` re-scores a shortlist exactly (the store's re-ranking): float64
accumulation in eight fixed lanes, so identical rows get bit-identical scores wherever they
sit (ties then fall to the smaller id) and the result does not depend on SIMD width.

Reference: tests/reference/dense.py.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from ._jit import jit, jit_batch, jit_fast
from .topk import topk_init, topk_push, topk_sort

__all__ = ["f16_to_f32", "dense_scan", "dense_scan_batch", "dense_rescore", "dense_rescore_batch",
           "RESCORE_IP", "RESCORE_COSINE", "RESCORE_L2"]

RESCORE_IP, RESCORE_COSINE, RESCORE_L2 = 0, 1, 2


@intrinsic
def _widen(typingctx, value):
    # float32 rows pass through; uint16 rows are float16 bit patterns.
    if isinstance(value, types.Float):
        sig = types.float32(value)

        def codegen(context, builder, signature, args):
            return context.cast(builder, args[0], signature.args[0], types.float32)

        return sig, codegen
    if isinstance(value, types.Integer) and value.bitwidth == 16:
        sig = types.float32(value)

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return sig, codegen
    return None


@jit
def f16_to_f32(bits):
    """Widen a float16 given as its uint16 bit pattern to float32 (exact)."""
    return _widen(np.uint16(bits))


@jit_fast
def _row_score(q, x, i, is_l2):
    acc = np.float32(0.0)
    if is_l2:
        for d in range(x.shape[1]):
            diff = q[d] - _widen(x[i, d])
            acc += diff * diff
        return -acc
    for d in range(x.shape[1]):
        acc += q[d] * _widen(x[i, d])
    return acc


@jit
def dense_scan(qs, x, ids, list_offsets, probes, probe_bias, is_l2, k):
    """One query: qs (L, dim) float32; x float32 (n, dim) or uint16 (n, dim) holding f16."""
    heap_scores, heap_ids = topk_init(k)
    n_tables = qs.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        q = qs[p if n_tables > 1 else 0]
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            s = _row_score(q, x, i, is_l2)
            if not is_l2:
                s += probe_bias[p]
            s = np.float32(s)
            if s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0]):
                topk_push(heap_scores, heap_ids, s, ids[i])
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def dense_scan_batch(qs, x, ids, list_offsets, probes, probe_bias, is_l2, k):
    """`dense_scan` for every query: qs (nq, L, dim), probes/probe_bias (nq, P)."""
    nq = qs.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = dense_scan(qs[qi], x, ids, list_offsets, probes[qi], probe_bias[qi], is_l2, k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def _dot_lanes(a, b, sub):
    """sum_j a[j] * (b[j] - sub[j]) ** e: e = 1 when sub is empty (a dot product), else the
    squared distance sum_j (a[j] - sub[j]) ** 2 with b ignored. float64, 8 fixed lanes."""
    lanes = np.zeros(8, dtype=np.float64)
    dim = a.shape[0]
    head = dim - dim % 8
    if sub.shape[0] == 0:
        for j in range(0, head, 8):
            for t in range(8):
                lanes[t] += np.float64(a[j + t]) * np.float64(b[j + t])
        for j in range(head, dim):
            lanes[j - head] += np.float64(a[j]) * np.float64(b[j])
    else:
        for j in range(0, head, 8):
            for t in range(8):
                d = np.float64(a[j + t]) - np.float64(sub[j + t])
                lanes[t] += d * d
        for j in range(head, dim):
            d = np.float64(a[j]) - np.float64(sub[j])
            lanes[j - head] += d * d
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@jit
def _rescore_one(query, vectors, norms, slots, metric, out):
    empty = np.empty(0, dtype=np.float32)
    q_norm = np.sqrt(_dot_lanes(query, query, empty)) if metric == RESCORE_COSINE else 1.0
    worst = np.inf if metric == RESCORE_L2 else -np.inf
    for r in range(slots.shape[0]):
        s = slots[r]
        if s < 0:
            out[r] = worst
        elif metric == RESCORE_L2:
            out[r] = _dot_lanes(vectors[s], vectors[s], query)
        else:
            dot = _dot_lanes(query, vectors[s], empty)
            if metric == RESCORE_COSINE:
                den = q_norm * norms[s]
                dot = dot / den if den > 0 else 0.0
            out[r] = dot


@jit
def _row_norms(vectors, metric):
    norms = np.ones(vectors.shape[0], dtype=np.float64)
    if metric == RESCORE_COSINE:
        empty = np.empty(0, dtype=np.float32)
        for i in range(vectors.shape[0]):
            norms[i] = np.sqrt(_dot_lanes(vectors[i], vectors[i], empty))
    return norms


@jit
def dense_rescore(queries, vectors, slots, metric):
    """Exact scores float64 (nq, R) of queries float32 (nq, dim) against rows of vectors
    float32 (u, dim) named by slots int64 (nq, R) (-1: empty, scored -inf, or +inf for l2).

    metric: RESCORE_IP (<q, v>), RESCORE_COSINE (<q, v> / (|q| |v|), 0 for a zero vector)
    or RESCORE_L2 (|q - v|^2)."""
    norms = _row_norms(vectors, metric)
    out = np.empty(slots.shape, dtype=np.float64)
    for i in range(queries.shape[0]):
        _rescore_one(queries[i], vectors, norms, slots[i], metric, out[i])
    return out


@jit_batch
def dense_rescore_batch(queries, vectors, slots, metric):
    """`dense_rescore` with queries spread over threads (same results)."""
    norms = _row_norms(vectors, metric)
    out = np.empty(slots.shape, dtype=np.float64)
    for i in prange(queries.shape[0]):
        _rescore_one(queries[i], vectors, norms, slots[i], metric, out[i])
    return out
