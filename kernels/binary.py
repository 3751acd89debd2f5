"""Recurrent binarization (RB) and Hamming kernels.

RB<b> codes a (centred, rotated) vector r of width dim with b sign levels. Level l holds
the signs of what levels < l left over, at the fixed weight 2**-l relative to a per-vector
scale t: r_hat = t * sum_l 2**-l * s_l with s_l in {-1, +1}**dim. The scale t is chosen per
vector to maximise cos(r, r_hat) over a grid (a least-squares fit of t alone would only
rescale; the grid search changes which signs the residual levels take). With weights halving
per level the b levels together form a uniform 2**b-point grid per dimension.

Scoring is RaBitQ's unbiased estimator: ``<q, r> ~= <q, s> * |r|**2 / <s, r>`` with
s = sum_l 2**-l s_l, so every vector carries two float32 factors:
`factors[:, 0] = g = |r|**2 / <s, r>` and `factors[:, 1] = |r|**2` (used by l2 and decode).

Layouts:

- bits uint8 (n, b, nbytes), nbytes = ceil(dim / 8); bit t of byte j of level l is the sign
  of dimension 8j + t (1 = positive), little-endian within the byte; padding bits are 0.
- asymmetric tables `rb_lut` float32 (b * nbytes, 256): entry [l * nbytes + j, v] is
  2**-l * sum_t q[8j + t] * (2 * bit_t(v) - 1), so summing over the code's bytes gives <q, s>.
- Hamming words uint64 (n, n_words): the bit planes padded to 8-byte words.

Scans never return a row whose id is < 0 (marked dead).

References: tests/reference/binary.py.
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from ._jit import jit, jit_batch
from .pq import lut_sum
from .topk import topk_finish, topk_init, topk_init_floor, topk_push, topk_sort

__all__ = [
    "popcount64",
    "rb_nbytes",
    "rb_encode",
    "rb_encode_batch",
    "rb_decode",
    "rb_error_norms",
    "rb_sign_dots",
    "rb_lut",
    "rb_lut_scan",
    "rb_lut_scan_batch",
    "rb_words",
    "rb_nibbles",
    "rb_nibble_lut",
    "hamming_scan",
    "hamming_scan_batch",
    "rb_sdc_scan",
    "rb_sdc_scan_batch",
    "sign_pack",
]

# Candidate scales t, relative to the vector's RMS. A coarse grid then a fine one around the
# best: the cosine is unimodal enough in t that this finds the optimum to within 0.1%.
_T_COARSE = np.linspace(0.3, 2.4, 22).astype(np.float32)
_T_FINE_STEP = np.float32(0.1 / 8)


@intrinsic
def popcount64(typingctx, x):
    """Population count of a uint64 through LLVM's ctpop (one POPCNT instruction)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        (val,) = args
        val = context.cast(builder, val, signature.args[0], types.uint64)
        return builder.ctpop(val)

    return sig, codegen


def rb_nbytes(dim: int) -> int:
    """Bytes per level: ceil(dim / 8)."""
    return (dim + 7) // 8


@jit
def _dot_fixed(a, b):
    """sum_t a[t] * b[t] in float32 in one fixed order: 8 interleaved partial sums, then a
    fixed pairwise tree. No fastmath, so LLVM neither reorders nor contracts into FMA: the
    encoder's factors come out bit-identical on every CPU Numba targets (AVX-512, AVX2,
    SSE2), while the 8 independent chains still vectorize."""
    n = a.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    m = n - n % 8
    for t in range(0, m, 8):
        s0 += a[t] * b[t]
        s1 += a[t + 1] * b[t + 1]
        s2 += a[t + 2] * b[t + 2]
        s3 += a[t + 3] * b[t + 3]
        s4 += a[t + 4] * b[t + 4]
        s5 += a[t + 5] * b[t + 5]
        s6 += a[t + 6] * b[t + 6]
        s7 += a[t + 7] * b[t + 7]
    tail = np.float32(0.0)
    for t in range(m, n):
        tail += a[t] * b[t]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


@jit
def _levels_values(r, inv_scale, n_levels, tmp, res):
    # Greedy residual signs at weights 2**-l relative to 1/inv_scale: tmp[t] = sum_l 2**-l s_l.
    # Levels outer, dimensions inner: elementwise float32 maths the compiler vectorizes
    # without reordering anything (res: float64 scratch of the same width).
    dim = r.shape[0]
    for t in range(dim):
        res[t] = r[t] * inv_scale
        tmp[t] = np.float32(0.0)
    w = np.float32(1.0)
    for _ in range(n_levels):
        for t in range(dim):
            s = w if res[t] >= 0 else -w
            tmp[t] += s
            res[t] -= s
        w *= np.float32(0.5)


@jit
def _levels_cos(r, inv_scale, n_levels, tmp, res):
    # cos(r, r_hat) of the levels at this scale (tmp receives r_hat's values).
    _levels_values(r, inv_scale, n_levels, tmp, res)
    sq = _dot_fixed(tmp, tmp)
    if sq <= 0:
        return np.float32(-2.0)
    return _dot_fixed(tmp, r) / np.sqrt(sq)


@jit
def rb_encode(r, n_levels, t_coarse, t_step):
    """Encode one vector: bits uint8 (b, nbytes) and factors float32 (2,).

    Float maths in a fixed order without fastmath (`_dot_fixed`): the same input rows give
    the same bits and factors on every CPU."""
    dim = r.shape[0]
    bits = np.zeros((n_levels, (dim + 7) // 8), dtype=np.uint8)
    factors = np.zeros(2, dtype=np.float32)
    _rb_encode_into(r, n_levels, t_coarse, t_step, np.empty(dim, dtype=np.float32),
                    np.empty(dim, dtype=np.float64), bits, factors)
    return bits, factors


@jit
def _rb_encode_into(r, n_levels, t_coarse, t_step, tmp, res, bits, factors):
    """`rb_encode` into bits (b, nbytes) and factors (2,), which it overwrites, with scratch
    tmp float32 (dim,) and res float64 (dim,): no allocation per row."""
    dim = r.shape[0]
    rr = _dot_fixed(r, r)
    factors[0] = np.float32(0.0)
    factors[1] = rr
    if rr <= 0 or dim == 0:
        # A zero residual: all-positive signs with g = 0 decode and score to exactly zero.
        for lv in range(n_levels):
            for j in range(bits.shape[1]):
                bits[lv, j] = np.uint8(0)
            for t in range(dim):
                bits[lv, t >> 3] |= np.uint8(1 << (t & 7))
        return
    rms = np.sqrt(rr / dim)
    best_t = t_coarse[0]
    best_cos = np.float32(-3.0)
    if n_levels > 1:
        for i in range(t_coarse.shape[0]):
            c = _levels_cos(r, np.float32(1.0) / (t_coarse[i] * rms), n_levels, tmp, res)
            if c > best_cos:
                best_cos = c
                best_t = t_coarse[i]
        center = best_t
        for i in range(-8, 9):
            tt = center + i * t_step
            if tt <= 0:
                continue
            c = _levels_cos(r, np.float32(1.0) / (tt * rms), n_levels, tmp, res)
            if c > best_cos:
                best_cos = c
                best_t = tt
    # Final pass at the chosen scale: write the bits and the factors.
    inv = np.float32(1.0) / (best_t * rms)
    if n_levels == 1:
        # one level: a byte's eight signs at once (the same test, r[t] * inv >= 0), without
        # a branch per sign; the per-level loop below branches on every sign, half of them
        # mispredicted: 0.20 s against 0.045 s for RB1 on 117,647 x 384 rows
        for j in range(dim >> 3):
            byte = 0
            for u in range(8):
                if r[8 * j + u] * inv >= 0:
                    byte |= 1 << u
            bits[0, j] = np.uint8(byte)
        if dim & 7:
            byte = 0
            for t in range(dim & ~7, dim):
                if r[t] * inv >= 0:
                    byte |= 1 << (t & 7)
            bits[0, dim >> 3] = np.uint8(byte)
    else:
        for lv in range(n_levels):
            for j in range(bits.shape[1]):
                bits[lv, j] = np.uint8(0)
        for t in range(dim):
            rt = r[t] * inv
            w = np.float32(1.0)
            for lv in range(n_levels):
                if rt >= 0:
                    bits[lv, t >> 3] |= np.uint8(1 << (t & 7))
                    rt -= w
                else:
                    rt += w
                w *= np.float32(0.5)
    _levels_values(r, inv, n_levels, tmp, res)
    dot = _dot_fixed(tmp, r)
    factors[0] = rr / dot if dot > 0 else np.float32(0.0)


# rows per task of `rb_encode_batch`: scratch is allocated once per task, not per row (a
# small share of the time: the one-level sign packing above is what made RB1 fast)
_ENCODE_TASK_ROWS = 256


@jit_batch
def rb_encode_batch(r, n_levels, t_coarse, t_step):
    """`rb_encode` over rows: bits uint8 (n, b, nbytes), factors float32 (n, 2)."""
    n, dim = r.shape
    nbytes = (dim + 7) // 8
    bits = np.empty((n, n_levels, nbytes), dtype=np.uint8)
    factors = np.empty((n, 2), dtype=np.float32)
    n_tasks = (n + _ENCODE_TASK_ROWS - 1) // _ENCODE_TASK_ROWS
    for task in prange(n_tasks):
        tmp = np.empty(dim, dtype=np.float32)
        res = np.empty(dim, dtype=np.float64)
        for i in range(task * _ENCODE_TASK_ROWS, min(n, (task + 1) * _ENCODE_TASK_ROWS)):
            _rb_encode_into(r[i], n_levels, t_coarse, t_step, tmp, res, bits[i], factors[i])
    return bits, factors


def rb_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """s = sum_l 2**-l s_l as float32 (n, dim) from bits (n, b, nbytes)."""
    n, n_levels, _ = bits.shape
    planes = np.unpackbits(bits, axis=2, bitorder="little")[:, :, :dim].astype(np.float32)
    weights = (0.5 ** np.arange(n_levels)).astype(np.float32)
    return np.einsum("nld,l->nd", 2.0 * planes - 1.0, weights).astype(np.float32)


def rb_decode(bits: np.ndarray, factors: np.ndarray, dim: int) -> np.ndarray:
    """Least-squares reconstruction alpha * s, alpha = <s, r>/|s|^2 = |r|^2 / (g |s|^2)."""
    s = rb_signs(bits, dim)
    s_sq = np.einsum("nd,nd->n", s, s)
    g = factors[:, 0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(g > 0, factors[:, 1] / (g * s_sq), 0.0)
    return (s * alpha[:, None]).astype(np.float32)


@jit_batch
def _rb_error_norms(bits, factors, n_levels, nbytes, dim, out):
    for i in prange(bits.shape[0]):
        g = np.float64(factors[i, 0])
        rr = np.float64(factors[i, 1])
        if n_levels == 1:
            s_sq = np.float64(dim)
        else:
            s_sq = 0.0
            for d in range(dim):
                byte = d >> 3
                bit = d & 7
                v = 0.0
                w = 1.0
                for lv in range(n_levels):
                    v += w if (bits[i, lv * nbytes + byte] >> bit) & 1 else -w
                    w *= 0.5
                s_sq += v * v
        e = g * g * s_sq - rr
        out[i] = np.float32(np.sqrt(e)) if e > 0.0 else np.float32(0.0)


def rb_error_norms(codes: np.ndarray, n_levels: int, dim: int) -> np.ndarray:
    """|r - g s| per row of RB codes uint8 (n, b * nbytes + 8) (bits, then the factors
    g and |r|^2 as little-endian float32): the norm of the error of the estimator
    ``<q, r> ~= g <q, s>``, so ``|<q, r> - g <q, s>| <= |q| * err`` always (Cauchy-Schwarz)
    and about ``|q| * err / sqrt(dim)`` for a query direction independent of the error
    (RaBitQ's bound: err / |r| = sqrt(1 - <o_bar, o>**2) / <o_bar, o>). From the code alone:
    ``<s, r> = |r|**2 / g``, hence ``|r - g s|**2 = g**2 |s|**2 - |r|**2``. float32 (n,)."""
    codes = np.asarray(codes, dtype=np.uint8)
    nbytes = rb_nbytes(dim)
    n_bits = n_levels * nbytes
    if codes.ndim != 2 or codes.shape[1] < n_bits + 8:
        raise ValueError(f"expected RB codes (n, >= {n_bits + 8}), found {codes.shape}")
    factors = np.ascontiguousarray(codes[:, n_bits : n_bits + 8]).view("<f4").astype(np.float32)
    out = np.empty(codes.shape[0], dtype=np.float32)
    _rb_error_norms(codes, factors, n_levels, nbytes, dim, out)
    return out


@jit_batch
def _rb_sign_dots(codes, vecs, order, starts, n_levels, nbytes, out):
    # per vector g (the rows order[starts[g]:starts[g + 1]] share it): its nibble tables
    # (`_nibble_row`, here in float64), then each row's level-weighted sum of lookups
    n_sym = 2 * nbytes
    for g in prange(starts.shape[0] - 1):
        if starts[g] == starts[g + 1]:
            continue
        table = np.empty((n_sym, 16), dtype=np.float64)
        _nibble_row(vecs[g], n_sym, table)
        for r in range(starts[g], starts[g + 1]):
            i = order[r]
            total = 0.0
            w = 1.0
            for lv in range(n_levels):
                acc = 0.0
                base = lv * nbytes
                for j in range(nbytes):
                    byte = codes[i, base + j]
                    acc += table[2 * j, byte & 15] + table[2 * j + 1, byte >> 4]
                total += w * acc
                w *= 0.5
            out[i] = total


def rb_sign_dots(codes: np.ndarray, n_levels: int, vecs: np.ndarray, order: np.ndarray,
                 starts: np.ndarray) -> np.ndarray:
    """<vecs[g], s_i> for the rows i = order[starts[g]:starts[g + 1]] of RB codes uint8
    (n, >= b * nbytes) (their sign bits first; an IVF layout's list order and offsets,
    `ivf.ivf_layout`), with s = sum_l 2**-l s_l the code's level-weighted sign vector
    (`rb_signs`) and vecs (m, dim) in the rotated space: what the fast scan's tables of
    that vector (`rb_nibble_lut`) sum for the row, in float64 (each nibble's table summed
    in the order of its 4 dims, then the row's entries in a fixed order). float64 (n,),
    input order. `order` must be a permutation of 0..n-1 and `starts` (m + 1,) rise from 0
    to n (checked)."""
    codes = np.asarray(codes, dtype=np.uint8)
    vecs = np.ascontiguousarray(vecs, dtype=np.float64)
    order = np.ascontiguousarray(order, dtype=np.int64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if vecs.ndim != 2:
        raise ValueError(f"expected vecs (m, dim), found shape {vecs.shape}")
    n = codes.shape[0] if codes.ndim == 2 else -1
    nbytes = rb_nbytes(vecs.shape[1])
    if n < 0 or codes.shape[1] < n_levels * nbytes:
        raise ValueError(f"expected codes (n, >= {n_levels * nbytes}), found {codes.shape}")
    if order.shape != (n,) or (n and (int(order.min()) < 0 or int(order.max()) >= n
                                      or np.bincount(order, minlength=n).max() != 1)):
        raise ValueError(f"order: expected a permutation of 0..{n - 1}, found shape {order.shape}")
    if starts.shape != (vecs.shape[0] + 1,) or starts[0] != 0 or starts[-1] != n or (np.diff(starts) < 0).any():
        raise ValueError(f"starts: expected {vecs.shape[0] + 1} values rising from 0 to {n}, found {starts}")
    out = np.empty(n, dtype=np.float64)
    _rb_sign_dots(codes, vecs, order, starts, n_levels, nbytes, out)
    return out


def _sign_tables(q: np.ndarray, n_levels: int, symbol_bits: int) -> np.ndarray:
    # Tables over symbols of `symbol_bits` consecutive sign bits (8: a byte, 4: a nibble):
    # entry [(l, symbol j), v] = 2**-l * sum_t q[symbol_bits * j + t] * (2 * bit_t(v) - 1).
    q = np.atleast_2d(np.asarray(q, dtype=np.float32))
    nq, dim = q.shape
    nbytes = rb_nbytes(dim)
    qp = np.zeros((nq, nbytes * 8), dtype=np.float32)
    qp[:, :dim] = q
    n_symbols = nbytes * 8 // symbol_bits
    qp = qp.reshape(nq, n_symbols, symbol_bits)
    values = np.arange(1 << symbol_bits, dtype=np.uint8)[:, None]
    pm = 2.0 * np.unpackbits(values, axis=1, bitorder="little")[:, :symbol_bits] - 1.0
    # one BLAS product (einsum took 7 ms per 1000 queries at 384-d, a fifth of an IVF search)
    base = qp.reshape(nq * n_symbols, symbol_bits) @ pm.T.astype(np.float32)
    base = base.reshape(nq, n_symbols, 1 << symbol_bits)
    weights = (0.5 ** np.arange(n_levels)).astype(np.float32)
    out = weights[None, :, None, None] * base[:, None, :, :]
    return np.ascontiguousarray(out.reshape(nq, n_levels * n_symbols, 1 << symbol_bits), dtype=np.float32)


def rb_lut(q: np.ndarray, n_levels: int) -> np.ndarray:
    """Asymmetric tables float32 (nq, b * nbytes, 256) for queries q (nq, dim) (rotated)."""
    return _sign_tables(q, n_levels, 8)


@jit
def _rb_scan_list(lut, codes, factors, ids, start, stop, bias, q_sq, is_l2, heap_scores, heap_ids):
    for i in range(start, stop):
        est = factors[i, 0] * lut_sum(lut, codes, i)
        if is_l2:
            s = -(q_sq - 2.0 * est + factors[i, 1])
        else:
            s = bias + est
        s = np.float32(s)
        if (s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0])) and ids[i] >= 0:
            topk_push(heap_scores, heap_ids, s, ids[i])


@jit
def rb_lut_scan(luts, codes, factors, ids, list_offsets, probes, probe_bias, probe_q_sq, is_l2, k):
    """One query, asymmetric: luts (L, b * nbytes, 256), codes uint8 (n, b * nbytes).

    ip: score = probe_bias + g * <q, s>. l2 (tables built from q - centre):
    score = -(|q - c|^2 - 2 g <q - c, s> + |r|^2), |q - c|^2 given in `probe_q_sq`.
    """
    heap_scores, heap_ids = topk_init(k)
    n_tables = luts.shape[0]
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        _rb_scan_list(luts[t], codes, factors, ids, list_offsets[lst], list_offsets[lst + 1],
                      probe_bias[p], probe_q_sq[p], is_l2, heap_scores, heap_ids)
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def rb_lut_scan_batch(luts, codes, factors, ids, list_offsets, probes, probe_bias, probe_q_sq, is_l2, k):
    """`rb_lut_scan` for every query, parallel over queries."""
    nq = luts.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = rb_lut_scan(luts[qi], codes, factors, ids, list_offsets, probes[qi],
                           probe_bias[qi], probe_q_sq[qi], is_l2, k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


def rb_nibbles(bits: np.ndarray) -> np.ndarray:
    """bits uint8 (n, b, nbytes) -> 4-bit sub-codes uint8 (n, 2 * b * nbytes) for the fast scan:
    byte j of level l gives sub-codes (low nibble: dims 8j..8j+3, high: dims 8j+4..8j+7)."""
    n = bits.shape[0]
    flat = bits.reshape(n, bits.shape[1] * bits.shape[2])  # not -1: n may be 0
    out = np.empty((n, 2 * flat.shape[1]), dtype=np.uint8)
    out[:, 0::2] = flat & 15
    out[:, 1::2] = flat >> 4
    return out


def rb_nibble_lut(q: np.ndarray, n_levels: int) -> np.ndarray:
    """Fast-scan tables float32 (nq, 2 * b * nbytes, 16) matching `rb_nibbles`: entry
    [(l * nbytes + j) * 2 + h, v] = 2**-l * sum_t q[8j + 4h + t] * (2 * bit_t(v) - 1),
    summed in float32 from +0 in the order t = 0, 1, 2, 3 (q past dim counts as 0), whatever
    the number of queries: a query's tables never depend on its batch."""
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(q)), dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"expected queries (nq, dim), found shape {q.shape}")
    if not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
        raise ValueError(f"n_levels: expected an integer >= 1, found {n_levels!r}")
    n_symbols = 2 * rb_nbytes(q.shape[1])
    out = np.empty((q.shape[0], n_levels * n_symbols, 16), dtype=np.float32)
    _nibble_tables(q, n_levels, n_symbols, out)
    return out


@jit
def _query_value(q, t, dim):
    return q[t] if t < dim else np.float32(0.0)


@jit
def _nibble_row(q, n_symbols, out):
    """Level 0's tables of one query q (dim,) into out (>= n_symbols, 16)."""
    dim = q.shape[0]
    for j in range(n_symbols):
        a0 = _query_value(q, 4 * j, dim)
        a1 = _query_value(q, 4 * j + 1, dim)
        a2 = _query_value(q, 4 * j + 2, dim)
        a3 = _query_value(q, 4 * j + 3, dim)
        for v in range(16):
            # from +0 as a BLAS product sums (a zero entry gives +0.0, not -0.0)
            s = np.float32(0.0) + (a0 if v & 1 else -a0)
            s = s + a1 if v & 2 else s - a1
            s = s + a2 if v & 4 else s - a2
            out[j, v] = s + a3 if v & 8 else s - a3


@jit_batch
def _nibble_tables(q, n_levels, n_symbols, out):
    # One compiled pass instead of a BLAS product and five numpy temporaries: 4.1 against
    # 11.6 us for one 384-d query, 0.22 against 4.86 ms for 1,000 (Zen 4).
    nq = q.shape[0]
    for i in prange(nq):
        _nibble_row(q[i], n_symbols, out[i])
        w = np.float32(1.0)
        for lv in range(1, n_levels):
            w *= np.float32(0.5)
            for j in range(n_symbols):
                for v in range(16):
                    out[i, lv * n_symbols + j, v] = w * out[i, j, v]


def rb_words(bits: np.ndarray) -> np.ndarray:
    """bits uint8 (n, b, nbytes) -> uint64 (n, b, n_words), each level padded to 8 bytes."""
    n, n_levels, nbytes = bits.shape
    n_words = (nbytes + 7) // 8
    padded = np.zeros((n, n_levels, n_words * 8), dtype=np.uint8)
    padded[:, :, :nbytes] = bits
    return padded.view("<u8").reshape(n, n_levels, n_words)


def sign_pack(x: np.ndarray) -> np.ndarray:
    """Plain sign binarization: uint8 (n, ceil(dim/8)), bit set where x >= 0."""
    return np.packbits(np.asarray(x) >= 0, axis=1, bitorder="little")


@jit
def hamming_scan(q_words, db_words, ids, k):
    """One query: Hamming distance to every row of db_words uint64 (n, W); top-k smallest.

    Scores are the negated distances (larger is better), as float32.
    """
    heap_scores, heap_ids = topk_init(k)
    n, n_words = db_words.shape
    for i in range(n):
        dist = np.uint64(0)
        for w in range(n_words):
            dist += popcount64(q_words[w] ^ db_words[i, w])
        s = -np.float32(dist)
        if (s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0])) and ids[i] >= 0:
            topk_push(heap_scores, heap_ids, s, ids[i])
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def hamming_scan_batch(q_words, db_words, ids, k):
    """`hamming_scan` for every row of q_words (nq, W), parallel over queries."""
    nq = q_words.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = hamming_scan(q_words[qi], db_words, ids, k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def _sdc_weighted_hamming(q_words, words, i):
    # sum over level pairs of 2**(top - la - lb) * hamming(q_la, x_lb), top = (bq - 1) + (bx - 1):
    # integer weights keep the sum exact; indexing words[i, lb, w] avoids a view per row.
    n_levels = q_words.shape[0]
    n_words = q_words.shape[1]
    x_levels = words.shape[1]
    top = (n_levels - 1) + (x_levels - 1)
    weighted = np.int64(0)
    for la in range(n_levels):
        for lb in range(x_levels):
            h = np.uint64(0)
            for w in range(n_words):
                h += popcount64(q_words[la, w] ^ words[i, lb, w])
            weighted += np.int64(h) << (top - la - lb)
    return weighted


@jit
def _sdc_constants(n_levels, x_levels, dim):
    # <s_q, s_x> = c0 - c1 * weighted, with s = sum_l 2**-l s_l and <s_a, s_b> = dim - 2 hamming.
    wsum_q = 2.0 - 2.0 ** (1 - n_levels)
    wsum_x = 2.0 - 2.0 ** (1 - x_levels)
    return dim * wsum_q * wsum_x, 2.0 / 2.0 ** ((n_levels - 1) + (x_levels - 1))


@jit
def _sdc_dot(q_words, words, i, dim):
    """<s_q, s_x> for row i of words (n, bx, W), exact."""
    c0, c1 = _sdc_constants(q_words.shape[0], words.shape[1], dim)
    return c0 - c1 * np.float64(_sdc_weighted_hamming(q_words, words, i))


@jit
def rb_sdc_scan(q_words, q_scale, words, factors, ids, list_offsets, probes, probe_bias, probe_q_sq,
                is_l2, dim, k, floor):
    """One query, symmetric: the query is RB-coded too, once per table: q_words (L, b, W) and
    q_scale (L,) with L = 1 (ip: the query itself) or P (l2: q - centre per probe).

    est = q_scale * g * <s_q, s_x>, each level pair scored with popcount; the score is
    probe_bias + est (ip) or -(|q - c|^2 - 2 est + |r|^2) (l2), as in `rb_lut_scan`. Only
    rows scoring >= floor (-inf: all; kernels/topk.py) are kept.
    """
    heap_scores, heap_ids = topk_init_floor(k, floor)
    n_tables = q_words.shape[0]
    c0, c1 = _sdc_constants(q_words.shape[1], words.shape[1], dim)
    for p in range(probes.shape[0]):
        lst = probes[p]
        if lst < 0:
            continue
        t = p if n_tables > 1 else 0
        qw = q_words[t]
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            est = q_scale[t] * factors[i, 0] * (c0 - c1 * np.float64(_sdc_weighted_hamming(qw, words, i)))
            if is_l2:
                s = np.float32(-(probe_q_sq[p] - 2.0 * est + factors[i, 1]))
            else:
                s = np.float32(probe_bias[p] + est)
            if (s > heap_scores[0] or (s == heap_scores[0] and ids[i] < heap_ids[0])) and ids[i] >= 0:
                topk_push(heap_scores, heap_ids, s, ids[i])
    topk_finish(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def rb_sdc_scan_batch(q_words, q_scale, words, factors, ids, list_offsets, probes, probe_bias, probe_q_sq,
                      is_l2, dim, k, floors):
    """`rb_sdc_scan` for every query (floors (nq,)), parallel over queries."""
    nq = q_words.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = rb_sdc_scan(q_words[qi], q_scale[qi], words, factors, ids, list_offsets,
                           probes[qi], probe_bias[qi], probe_q_sq[qi], is_l2, dim, k, floors[qi])
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids
