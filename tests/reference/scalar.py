"""Scalar-quantization oracles (SQ8, SQ4), float64: per-dimension ranges, level indices,
nibble packing, reconstruction and the scan as a list of every candidate's score computed
from the reconstructed vectors (so it checks `sq_query_terms` and `sq_scan` together)."""

from __future__ import annotations

import numpy as np

from .dense import dense_candidates_ref

__all__ = ["sq_train_ref", "sq_levels_ref", "sq4_pack_ref", "sq_decode_ref", "sq_candidates_ref"]


def sq_train_ref(x):
    """(vmin, vdiff) float64 (dim,), columnwise min and max - min, loops."""
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[1]
    vmin = np.array([min(x[:, d]) for d in range(dim)])
    vmax = np.array([max(x[:, d]) for d in range(dim)])
    return vmin, vmax - vmin


def sq_levels_ref(x, vmin, vdiff, nbits):
    """Exact level value (x - vmin) / vdiff * (2**b - 1) (float64, unrounded, unclipped; 0
    where vdiff == 0) and the rounded, clipped level uint8 (n, dim)."""
    levels = (1 << nbits) - 1
    x = np.asarray(x, dtype=np.float64)
    vmin = np.asarray(vmin, dtype=np.float64)
    vdiff = np.asarray(vdiff, dtype=np.float64)
    raw = np.zeros_like(x)
    nz = vdiff > 0
    raw[:, nz] = (x[:, nz] - vmin[nz]) / vdiff[nz] * levels
    u = np.clip(np.round(raw), 0, levels).astype(np.uint8)
    return raw, u


def sq4_pack_ref(u):
    """uint8 (n, ceil(dim/2)): dimension 2j in the low nibble, 2j + 1 in the high one."""
    n, dim = u.shape
    out = np.zeros((n, (dim + 1) // 2), dtype=np.uint8)
    for i in range(n):
        for d in range(dim):
            out[i, d // 2] |= (int(u[i, d]) & 15) << (4 * (d % 2))
    return out


def sq_decode_ref(u, vmin, vdiff, nbits):
    """float64 (n, dim): vmin + u * vdiff / (2**b - 1), from level indices u (n, dim)."""
    levels = (1 << nbits) - 1
    return np.asarray(vmin, np.float64) + np.asarray(u, np.float64) * (np.asarray(vdiff, np.float64) / levels)


def sq_candidates_ref(qs, u, vmin, vdiff, nbits, ids, list_offsets, probes, probe_bias, is_l2):
    """Every candidate of one query: ids and float64 scores from reconstructed rows.

    ip: probe_bias + <q, x_hat>; l2: -|q_t - x_hat|^2, qs (L, dim) with L = 1 or P."""
    return dense_candidates_ref(qs, sq_decode_ref(u, vmin, vdiff, nbits), ids, list_offsets, probes, probe_bias,
                                is_l2)
