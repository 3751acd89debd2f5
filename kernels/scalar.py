"""Scalar quantization (SQ8, SQ4) and half precision (F16) kernels.

SQ<b>: per dimension a trained range [vmin, vmin + vdiff]; a value codes to
u = round((x - vmin) / vdiff * (2**b - 1)) clipped to [0, 2**b - 1] and decodes to
vmin + u * vdiff / (2**b - 1). A dimension whose range is zero (real embeddings have
dimensions that are constant, even zero, in every vector) gets vdiff = 0: it codes to 0 and
decodes to vmin exactly, never NaN.

Layouts: SQ8 codes uint8 (n, dim); SQ4 codes uint8 (n, ceil(dim/2)), dimension 2j in the
low nibble; F16 codes are float16 (n, dim) viewed as bytes by the codec.

Scans (larger is better, kernels/topk.py): for ip the score is
bias + sum_d w_d * u_d with w_d = q_d * vdiff_d / L (L = 2**b - 1) and bias = <q, vmin>;
for l2 it is -sum_d (a_d * u_d - c_d)**2 with a_d = vdiff_d / L, c_d = q_d - vmin_d.
Both take the same inverted-list arguments as kernels/pq.py (rows with id < 0 are never
returned). Reference: tests/reference/scalar.py.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit, jit_batch, jit_fast
from .topk import topk_finish, topk_init_floor, topk_push

__all__ = [
    "sq_train",
    "sq_encode",
    "sq_decode",
    "sq_query_terms",
    "sq_scan",
    "sq_scan_batch",
]


def sq_train(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (vmin, vdiff) float32 from the min and max of the sample."""
    x = np.asarray(x, dtype=np.float32)
    vmin = x.min(axis=0)
    vdiff = x.max(axis=0) - vmin
    return vmin.astype(np.float32), vdiff.astype(np.float32)


@jit_batch
def _encode_batch(x, vmin, vdiff, nbits):
    n, dim = x.shape
    levels = (1 << nbits) - 1
    width = dim if nbits == 8 else (dim + 1) // 2
    out = np.zeros((n, width), dtype=np.uint8)
    inv = np.empty(dim, dtype=np.float32)
    for d in range(dim):
        inv[d] = levels / vdiff[d] if vdiff[d] > 0 else np.float32(0.0)
    for i in prange(n):
        for d in range(dim):
            u = np.rint((x[i, d] - vmin[d]) * inv[d])  # zero-range dims: inv = 0 -> code 0
            u = min(max(u, 0.0), levels)
            if nbits == 8:
                out[i, d] = np.uint8(u)
            elif d % 2 == 0:
                out[i, d >> 1] |= np.uint8(u)
            else:
                out[i, d >> 1] |= np.uint8(u) << 4
    return out


def sq_encode(x: np.ndarray, vmin: np.ndarray, vdiff: np.ndarray, nbits: int) -> np.ndarray:
    """Codes uint8: (n, dim) for 8 bits, (n, ceil(dim/2)) packed nibbles for 4 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    vmin = np.ascontiguousarray(vmin, dtype=np.float32)
    vdiff = np.ascontiguousarray(vdiff, dtype=np.float32)
    return _encode_batch(x, vmin, vdiff, nbits)


def sq_unpack(codes: np.ndarray, dim: int, nbits: int) -> np.ndarray:
    """uint8 (n, dim) level indices from stored codes."""
    if nbits == 8:
        return np.asarray(codes)
    out = np.empty((codes.shape[0], codes.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = codes & 15
    out[:, 1::2] = codes >> 4
    return out[:, :dim]


def sq_decode(codes: np.ndarray, vmin: np.ndarray, vdiff: np.ndarray, nbits: int) -> np.ndarray:
    """float32 (n, dim) reconstruction."""
    levels = (1 << nbits) - 1
    u = sq_unpack(codes, vmin.shape[0], nbits).astype(np.float32)
    return (vmin + u * (vdiff / levels)).astype(np.float32)


def sq_query_terms(q: np.ndarray, vmin: np.ndarray, vdiff: np.ndarray, nbits: int, metric: str):
    """Per-query weights (nq, dim) and constants (nq,) for `sq_scan` (see module docstring),
    dim wide: SQ4 codes of an odd dim hold a last half byte, which `sq_scan` reads, so pad
    both to an even width with zeros first (it refuses tables narrower than the codes)."""
    q = np.atleast_2d(np.asarray(q, dtype=np.float32))
    step = (vdiff / ((1 << nbits) - 1)).astype(np.float32)
    if metric == "ip":
        w = q * step
        return np.ascontiguousarray(w, dtype=np.float32), (q @ vmin).astype(np.float32)
    c = q - vmin
    # weights carry a_d, and the second array c_d per query.
    return np.ascontiguousarray(np.broadcast_to(step, q.shape), dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32)


@jit_fast
def _sq8_ip(w, codes, i):
    acc = np.float32(0.0)
    for d in range(codes.shape[1]):
        acc += w[d] * np.float32(codes[i, d])
    return acc


@jit_fast
def _sq8_l2(a, c, codes, i):
    acc = np.float32(0.0)
    for d in range(codes.shape[1]):
        diff = a[d] * np.float32(codes[i, d]) - c[d]
        acc += diff * diff
    return -acc


@jit_fast
def _sq4_ip(w, codes, i):
    acc = np.float32(0.0)
    for j in range(codes.shape[1]):
        b = codes[i, j]
        acc += w[2 * j] * np.float32(b & 15) + w[2 * j + 1] * np.float32(b >> 4)
    return acc


@jit_fast
def _sq4_l2(a, c, codes, i):
    acc = np.float32(0.0)
    for j in range(codes.shape[1]):
        b = codes[i, j]
        d0 = a[2 * j] * np.float32(b & 15) - c[2 * j]
        d1 = a[2 * j + 1] * np.float32(b >> 4) - c[2 * j + 1]
        acc += d0 * d0 + d1 * d1
    return -acc


@jit
def _check_sq_width(w_width, c_width, code_bytes, nbits, is_l2):
    """ValueError unless the tables cover every dim the codes hold (2 a byte for SQ4): the
    scan would read past them."""
    dims = code_bytes * 2 if nbits == 4 else code_bytes
    if w_width < dims or (is_l2 and c_width < dims):
        raise ValueError("sq_scan: expected tables as wide as the dims the codes hold (SQ4: pad an odd dim "
                         "with a zero column), found them narrower")


@jit
def sq_scan(w, c, codes, ids, list_offsets, probes, probe_bias, nbits, is_l2, k, floor):
    """One query. ip: w (dim,) weights, probe_bias holds <q, vmin> (+ list terms).
    l2: w holds a_d, c (L, dim') holds q - vmin per table (L = 1 or P), padded to even width
    for SQ4. Returns the sorted top-k of the rows scoring >= floor (-inf: all; kernels/topk.py).
    ValueError when w (or, for l2, c) is narrower than the dims the codes hold."""
    _check_sq_width(w.shape[0], c.shape[1], codes.shape[1], nbits, is_l2)
    heap_scores, heap_ids = topk_init_floor(k, floor)
    n_tables = c.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        cp = c[p if n_tables > 1 else 0]
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            if nbits == 8:
                s = _sq8_l2(w, cp, codes, i) if is_l2 else _sq8_ip(w, codes, i) + probe_bias[p]
            else:
                s = _sq4_l2(w, cp, codes, i) if is_l2 else _sq4_ip(w, codes, i) + probe_bias[p]
            s = np.float32(s)
            if (s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0])) and ids[i] >= 0:
                topk_push(heap_scores, heap_ids, s, ids[i])
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def sq_scan_batch(w, c, codes, ids, list_offsets, probes, probe_bias, nbits, is_l2, k, floors):
    """`sq_scan` for every query: w (nq, dim'), c (nq, L, dim'), probes/probe_bias (nq, P),
    floors (nq,)."""
    nq = w.shape[0]
    # checked here: an error raised inside the prange below would not reach the caller
    _check_sq_width(w.shape[1], c.shape[2], codes.shape[1], nbits, is_l2)
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = sq_scan(w[qi], c[qi], codes, ids, list_offsets, probes[qi], probe_bias[qi], nbits, is_l2, k,
                       floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids
