"""Dense-scan oracles: float16 widening by numpy and every candidate's exact score."""

from __future__ import annotations

import numpy as np

from .ivf import probed_rows

__all__ = ["widen_ref", "dense_candidates_ref"]


def widen_ref(x):
    """float64 rows from float32 rows, or from uint16 rows holding float16 bit patterns."""
    x = np.asarray(x)
    if x.dtype == np.uint16:
        return x.view(np.float16).astype(np.float64)
    return x.astype(np.float64)


def dense_candidates_ref(qs, x, ids, list_offsets, probes, probe_bias, is_l2):
    """Every candidate of one query: ids and float64 scores.

    ip: probe_bias + <q, x_i>; l2: -|q_t - x_i|^2 with qs (L, dim), L = 1 or P."""
    xw = widen_ref(x)
    qs = np.asarray(qs, dtype=np.float64)
    out_ids, out_s = [], []
    for p, t, i in probed_rows(list_offsets, probes, len(qs)):
        if is_l2:
            sc = -float(((qs[t] - xw[i]) ** 2).sum())
        else:
            sc = float(probe_bias[p]) + float(qs[t] @ xw[i])
        out_ids.append(ids[i])
        out_s.append(sc)
    return np.array(out_ids, dtype=np.int64), np.array(out_s, dtype=np.float64)


def dense_rescore_ref(queries: np.ndarray, vectors: np.ndarray, slots: np.ndarray, metric: int) -> np.ndarray:
    """Exact float64 scores of `vecz.kernels.dense.dense_rescore`: 0 ip, 1 cosine, 2 squared l2;
    empty slots (-1) score -inf (+inf for l2); a zero vector's cosine is 0."""
    q = np.asarray(queries, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    out = np.empty(slots.shape, dtype=np.float64)
    for i in range(slots.shape[0]):
        for r in range(slots.shape[1]):
            s = slots[i, r]
            if s < 0:
                out[i, r] = np.inf if metric == 2 else -np.inf
            elif metric == 2:
                out[i, r] = float(((q[i] - v[s]) ** 2).sum())
            else:
                dot = float(q[i] @ v[s])
                if metric == 1:
                    den = np.linalg.norm(q[i]) * np.linalg.norm(v[s])
                    dot = dot / den if den > 0 else 0.0
                out[i, r] = dot
    return out
