"""Exact search in float32: the truth the benchmark's recall is measured against, and the
exact re-scoring of a shortlist that the store's re-ranking performs.

Contract. Inputs are (n, dim) base and (nq, dim) query arrays of any float dtype
(converted to C-contiguous float32). Scores are higher-is-better inner products for ``ip``
and for ``cosine`` (on unit rows, `prepare`), and squared L2 distances, ascending, for
``l2``. Ties go to the smaller id (`exact_topk`) or keep the candidates' order
(`select_exact`); empty slots hold id -1 with the metric's worst score. Tested in
tests/test_bench.py against a brute-force float64 numpy oracle.
"""

from __future__ import annotations

import numpy as np

from ...kernels import transform
from ...kernels.topk import topk_select_batch
from ..codecs import METRICS
from ..errors import InvalidInput

__all__ = ["GT_DEPTH", "prepare", "exact_topk", "exact_rerank", "exact_keys", "select_exact"]

# Exact neighbours kept per query: recall@100 is the deepest figure reported.
GT_DEPTH = 100

# Work arrays (score blocks, gathered candidate vectors) stay within this many float32s.
BLOCK_FLOATS = 16 << 20


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Float32 vectors as the exact search sees them: unit rows for cosine, unchanged otherwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return transform.normalize_rows(x) if metric == "cosine" else x


def exact_topk(base: np.ndarray, queries: np.ndarray, metric: str, depth: int = GT_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`depth` neighbours in float32, in blocks of queries.

    Scores: ``<q, x>`` for ip, the same on unit rows for cosine (both descending), and
    ``|q - x|^2 = |q|^2 - 2<q, x> + |x|^2`` for l2 (ascending), q and x centred on the
    base's mean (float64) so that data far from the origin keeps its digits. Ties are broken
    by the smaller id. Blocks of queries are scored by one BLAS product each and their top-k
    selected by a parallel Numba heap (`vecz.kernels.topk.topk_select_batch`).

    Returns
    -------
    scores : float32 (nq, min(depth, n))
    ids : int64 (nq, min(depth, n))
    """
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, found {metric!r}")
    xb = prepare(base, metric)
    xq = prepare(queries, metric)
    n = xb.shape[0]
    depth = min(depth, n)
    b_sq = None
    if metric == "l2" and n:
        # |q - x|^2 is shift-invariant; far from the origin 2<q, x> - |x|^2 cancels away the
        # float32 digits that rank neighbours (offset 1000: recall@10 0.45 against float64),
        # so both sides are centred on the base's mean first
        mean = xb.mean(axis=0, dtype=np.float64)
        xb, xq = _centred(xb, mean), _centred(xq, mean)
        b_sq = np.einsum("ij,ij->i", xb, xb)
    block = max(1, BLOCK_FLOATS // max(1, n))
    out_s = np.empty((xq.shape[0], depth), dtype=np.float32)
    out_i = np.empty((xq.shape[0], depth), dtype=np.int64)
    all_ids = np.arange(n, dtype=np.int64)
    for start in range(0, xq.shape[0], block):
        q = xq[start : start + block]
        keys = q @ xb.T  # BLAS, on every thread it is given
        if b_sq is not None:
            # 2<q, x> - |x|^2 orders like -|q - x|^2; |q|^2 is added back for the score
            keys = 2 * keys - b_sq[None, :]
        s, i = topk_select_batch(keys, all_ids, depth)  # Numba, one query per thread
        if b_sq is not None:
            s = np.einsum("ij,ij->i", q, q)[:, None] - s
        out_s[start : start + len(q)] = s
        out_i[start : start + len(q)] = i
    return out_s, out_i


def _centred(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """float32 ``x - mean``, subtracted in float64 a block of rows at a time."""
    out = np.empty(x.shape, dtype=np.float32)
    block = max(1, BLOCK_FLOATS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], block):
        out[start : start + block] = x[start : start + block] - mean
    return out


def exact_rerank(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids exactly and keep the best `k` (the store's disk-tier step).

    Parameters
    ----------
    base : float32 (n, dim)
        Vectors already `prepare`d for the metric (the stand-in for the disk tier).
    queries : float32 (nq, dim)
        Prepared the same way.
    candidates : int64 (nq, R)
        Ids from the codes, -1 for empty slots (which stay last).
    k : int

    Returns
    -------
    scores : float32 (nq, k)
        Exact scores, descending (ip/cosine) or ascending squared distances (l2); empty
        slots hold -1 with the metric's worst score.
    ids : int64 (nq, k)
    """
    return select_exact(exact_keys(base, queries, candidates, metric), candidates, k, metric)


def exact_keys(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """float32 (nq, R) exact keys of the candidates, higher is better (negated squared
    distance for l2), -inf for empty slots (-1). Arguments as `exact_rerank`."""
    nq, r = candidates.shape
    keys_all = np.empty((nq, r), dtype=np.float32)
    block = max(1, BLOCK_FLOATS // max(1, r * base.shape[1]))
    for start in range(0, nq, block):
        c = candidates[start : start + block]
        q = queries[start : start + block]
        valid = c >= 0
        vecs = base[np.where(valid, c, 0)]
        if metric == "l2":
            diff = vecs - q[:, None, :]
            keys = -np.einsum("brd,brd->br", diff, diff)
        else:
            keys = np.einsum("brd,bd->br", vecs, q)
        keys_all[start : start + len(c)] = np.where(valid, keys, -np.inf)
    return keys_all


def select_exact(keys: np.ndarray, candidates: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` of `exact_keys` (stable: equal keys keep the candidates' order); the output
    of `exact_rerank`. Pass a column prefix of both to re-rank only the first R."""
    nq, r = candidates.shape
    is_l2 = metric == "l2"
    out_s = np.full((nq, k), np.float32(np.inf if is_l2 else -np.inf), dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    keep = min(k, r)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :keep]
    s = np.take_along_axis(keys, order, axis=1)
    out_s[:, :keep] = -s if is_l2 else s
    out_i[:, :keep] = np.take_along_axis(np.where(candidates >= 0, candidates, -1), order, axis=1)
    return out_s, out_i
