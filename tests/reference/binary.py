"""Binary oracles: popcount, Hamming distance, sign packing, the RB bit layout, the greedy
residual-sign encoding at a given scale, asymmetric tables and both RB scans (as lists of
every candidate's score).

Bit layout (kernels/binary.py): bit t of byte j is dimension 8j + t, 1 = positive; level l
of an RB code weighs 2**-l; padding bits are 0.
"""

from __future__ import annotations

import numpy as np

from .ivf import probed_rows

__all__ = [
    "popcount_ref",
    "hamming_ref",
    "sign_pack_ref",
    "rb_words_ref",
    "rb_signs_ref",
    "rb_levels_ref",
    "rb_encode_at_scale_ref",
    "cos_ref",
    "rb_grid_cos_ref",
    "rb_lut_ref",
    "rb_lut_candidates_ref",
    "sdc_dot_ref",
    "rb_sdc_candidates_ref",
]


def popcount_ref(words):
    """Set bits of each uint64, int64, through np.unpackbits."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    bits = np.unpackbits(words.view(np.uint8).reshape(*words.shape, 8), axis=-1)
    return bits.sum(axis=-1).astype(np.int64)


def hamming_ref(q_words, db_words):
    """int64 (n,) Hamming distances between q_words (W,) and each row of db_words (n, W)."""
    x = np.bitwise_xor(np.asarray(db_words, dtype=np.uint64), np.asarray(q_words, dtype=np.uint64)[None, :])
    return popcount_ref(x).sum(axis=-1) if x.shape[0] else np.zeros(0, np.int64)


def sign_pack_ref(x):
    """uint8 (n, ceil(dim/8)), loops: bit t of byte j set iff x[:, 8j + t] >= 0."""
    x = np.asarray(x)
    n, dim = x.shape
    out = np.zeros((n, (dim + 7) // 8), dtype=np.uint8)
    for i in range(n):
        for d in range(dim):
            if x[i, d] >= 0:
                out[i, d // 8] |= 1 << (d % 8)
    return out


def rb_words_ref(bits):
    """uint64 (n, b, ceil(nbytes/8)): byte 8w + t of a level is bits 8t..8t+7 of word w."""
    n, b, nbytes = bits.shape
    n_words = (nbytes + 7) // 8
    out = np.zeros((n, b, n_words), dtype=np.uint64)
    for i in range(n):
        for lv in range(b):
            for j in range(nbytes):
                out[i, lv, j // 8] |= np.uint64(int(bits[i, lv, j]) << (8 * (j % 8)))
    return out


def rb_signs_ref(bits, dim):
    """float64 (n, dim): s = sum_l 2**-l * (+1 if bit else -1), loops over the bits."""
    n, b, _ = bits.shape
    out = np.zeros((n, dim))
    for i in range(n):
        for lv in range(b):
            for d in range(dim):
                bit = (int(bits[i, lv, d // 8]) >> (d % 8)) & 1
                out[i, d] += 2.0**-lv * (1.0 if bit else -1.0)
    return out


def rb_levels_ref(r, scale, n_levels, *, return_residuals=False):
    """Greedy residual signs of r / scale at weights 2**-l: s (dim,) float64 and the
    sign bits (n_levels, dim) bool. float32 arithmetic, as the kernel computes it.

    With return_residuals, also the float32 residual (n_levels, dim) each sign was taken
    from: a residual within rounding of 0 may take either sign in another implementation."""
    r = np.asarray(r, dtype=np.float32)
    res = r * (np.float32(1.0) / np.float32(scale))
    s = np.zeros(r.shape[0])
    signs = np.zeros((n_levels, r.shape[0]), dtype=bool)
    residuals = np.zeros((n_levels, r.shape[0]), dtype=np.float32)
    w = np.float32(1.0)
    for lv in range(n_levels):
        residuals[lv] = res
        pos = res >= 0
        signs[lv] = pos
        step = np.where(pos, w, -w).astype(np.float32)
        s += step
        res = (res - step).astype(np.float32)
        w = np.float32(w * 0.5)
    if return_residuals:
        return s, signs, residuals
    return s, signs


def rb_encode_at_scale_ref(r, scale, n_levels):
    """bits uint8 (b, nbytes) and factors float64 (2,) = (|r|^2 / <s, r>, |r|^2) at one scale."""
    s, signs = rb_levels_ref(r, scale, n_levels)
    dim = len(r)
    bits = np.zeros((n_levels, (dim + 7) // 8), dtype=np.uint8)
    for lv in range(n_levels):
        bits[lv] = sign_pack_ref(np.where(signs[lv], 1.0, -1.0)[None, :])[0]
    r64 = np.asarray(r, dtype=np.float64)
    rr = float(r64 @ r64)
    dot = float(s @ r64)
    return bits, np.array([rr / dot if dot > 0 else 0.0, rr])


def cos_ref(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def rb_grid_cos_ref(r, n_levels, t_grid):
    """cos(r, r_hat) for each scale t * rms(r) of the grid (float64 (len(t_grid),))."""
    r = np.asarray(r, dtype=np.float32)
    rms = np.sqrt(float(np.asarray(r, np.float64) @ np.asarray(r, np.float64)) / r.shape[0])
    return np.array([cos_ref(r, rb_levels_ref(r, float(t) * rms, n_levels)[0]) for t in t_grid])


def rb_lut_ref(q, n_levels):
    """float64 (nq, b * nbytes, 256): 2**-l * sum_t q[8j + t] * (2 * bit_t(v) - 1), loops."""
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    nq, dim = q.shape
    nbytes = (dim + 7) // 8
    out = np.zeros((nq, n_levels * nbytes, 256))
    for qi in range(nq):
        for lv in range(n_levels):
            for j in range(nbytes):
                for v in range(256):
                    acc = 0.0
                    for t in range(8):
                        d = 8 * j + t
                        if d < dim:
                            acc += q[qi, d] * (1.0 if (v >> t) & 1 else -1.0)
                    out[qi, lv * nbytes + j, v] = 2.0**-lv * acc
    return out


def rb_lut_candidates_ref(qs, bits, factors, ids, list_offsets, probes, probe_bias, probe_q_sq, is_l2, dim):
    """Every candidate of one asymmetric RB query: ids and float64 scores.

    est = g * <q_t, s>; ip: probe_bias + est; l2: -(|q - c|^2 - 2 est + |r|^2).
    qs (L, dim) holds the (rotated) query per table, L = 1 or P."""
    s = rb_signs_ref(bits, dim)
    out_ids, out_s = [], []
    qs = np.asarray(qs, dtype=np.float64)
    for p, t, i in probed_rows(list_offsets, probes, len(qs)):
        est = float(factors[i, 0]) * float(s[i] @ qs[t])
        if is_l2:
            sc = -(float(probe_q_sq[p]) - 2.0 * est + float(factors[i, 1]))
        else:
            sc = float(probe_bias[p]) + est
        out_ids.append(ids[i])
        out_s.append(sc)
    return np.array(out_ids, dtype=np.int64), np.array(out_s, dtype=np.float64)


def sdc_dot_ref(q_bits, x_bits, dim):
    """<s_q, s_x> (float64, exact) from bits (b, nbytes) of two RB codes."""
    sq = rb_signs_ref(np.asarray(q_bits)[None], dim)[0]
    sx = rb_signs_ref(np.asarray(x_bits)[None], dim)[0]
    return float(sq @ sx)


def rb_sdc_candidates_ref(q_bits, q_scale, bits, factors, ids, list_offsets, probes, probe_bias, probe_q_sq,
                          is_l2, dim):
    """Every candidate of one symmetric RB query: ids and scores as float32.

    est = q_scale * g * <s_q, s_x>; the product q_scale * g is rounded to float32 first and
    the score once at the end, so integer-exact dot products give bit-identical scores.
    q_bits (L, b, nbytes), q_scale (L,)."""
    out_ids, out_s = [], []
    for p, lst in enumerate(probes):
        if lst < 0:
            continue
        t = p if len(q_bits) > 1 else 0
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            g = float(np.float32(q_scale[t]) * np.float32(factors[i, 0]))
            est = g * sdc_dot_ref(q_bits[t], bits[i], dim)
            if is_l2:
                sc = -(float(probe_q_sq[p]) - 2.0 * est + float(factors[i, 1]))
            else:
                sc = float(probe_bias[p]) + est
            out_ids.append(ids[i])
            out_s.append(np.float32(sc))
    return np.array(out_ids, dtype=np.int64), np.array(out_s, dtype=np.float32)
