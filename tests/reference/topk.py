"""Top-k oracle: a lexsort by (-score, id), then the first k, padded with (-inf, -1).

Also the comparison helper used by every scan test: `assert_topk_exact` for kernels whose
scores are exact, `assert_topk_close` for float scans compiled with fastmath, where a
returned list may swap candidates only among scores equal within the tolerance.
"""

from __future__ import annotations

import numpy as np

__all__ = ["topk_ref", "topk_ref_batch", "assert_topk_exact", "assert_topk_close", "no_floors", "draw_floors",
           "reaches_floor", "assert_floored"]


def topk_ref(scores, ids, k):
    """Best k of (scores, ids), best first; equal scores rank by smaller id.

    Returns float32 (k,) scores and int64 (k,) ids, padded with -inf and -1.
    """
    scores = np.asarray(scores, dtype=np.float32).ravel()
    ids = np.asarray(ids, dtype=np.int64).ravel()
    assert scores.shape == ids.shape
    # np.lexsort sorts by the last key first: primary -score, secondary id.
    order = np.lexsort((ids, -scores.astype(np.float64)))[:k]
    out_s = np.full(k, -np.inf, dtype=np.float32)
    out_i = np.full(k, -1, dtype=np.int64)
    out_s[: len(order)] = scores[order]
    out_i[: len(order)] = ids[order]
    return out_s, out_i


def topk_ref_batch(scores, ids, k):
    """`topk_ref` for each row of a (nq, n) score matrix with shared column ids."""
    scores = np.asarray(scores)
    out_s = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for q in range(scores.shape[0]):
        out_s[q], out_i[q] = topk_ref(scores[q], ids, k)
    return out_s, out_i


def assert_topk_exact(got_scores, got_ids, cand_scores, cand_ids, k):
    """The kernel's (scores, ids) equal the oracle's exactly (scores are float32)."""
    ref_s, ref_i = topk_ref(cand_scores, cand_ids, k)
    np.testing.assert_array_equal(np.asarray(got_ids), ref_i)
    np.testing.assert_array_equal(np.asarray(got_scores), ref_s)


def assert_topk_close(got_scores, got_ids, cand_scores, cand_ids, k, *, rtol=1e-4, atol=1e-4):
    """A float top-k is right up to rounding.

    cand_scores (float64) are the exact scores of every candidate (cand_ids distinct). The
    tolerance is `atol * scale + rtol * |score|` with scale the largest candidate magnitude,
    so it follows the data. Checks: the padding, distinct ids drawn from the candidates, each
    returned score close to that candidate's exact score, scores sorted best first, and no
    candidate left out that beats the worst returned one by more than the tolerance; equal
    returned scores come in increasing id order.
    """
    got_scores = np.asarray(got_scores)
    got_ids = np.asarray(got_ids)
    cand_scores = np.asarray(cand_scores, dtype=np.float64).ravel()
    cand_ids = np.asarray(cand_ids, dtype=np.int64).ravel()
    n_valid = min(k, cand_ids.size)
    assert got_scores.shape == (k,) and got_ids.shape == (k,)
    assert got_scores.dtype == np.float32 and got_ids.dtype == np.int64
    np.testing.assert_array_equal(got_ids[n_valid:], -1)
    np.testing.assert_array_equal(got_scores[n_valid:], -np.inf)
    ids = got_ids[:n_valid]
    assert np.all(ids >= 0), got_ids
    assert np.unique(ids).size == n_valid, f"duplicate ids {got_ids}"
    pos = {int(i): j for j, i in enumerate(cand_ids)}
    assert all(int(i) in pos for i in ids), f"ids {ids} not among candidates"
    if n_valid == 0:
        return
    scale = float(np.max(np.abs(cand_scores))) if cand_scores.size else 0.0
    tol = atol * max(scale, 1.0) + rtol * np.abs(cand_scores)
    exact = cand_scores[[pos[int(i)] for i in ids]]
    tol_got = tol[[pos[int(i)] for i in ids]]
    np.testing.assert_array_less(np.abs(got_scores[:n_valid].astype(np.float64) - exact), tol_got + 1e-30)
    assert np.all(np.diff(got_scores[:n_valid].astype(np.float64)) <= 0), got_scores
    # equal returned scores (duplicate rows score bit-identically) are ordered by id
    same = got_scores[1:n_valid] == got_scores[: n_valid - 1]
    assert np.all(ids[1:][same] > ids[:-1][same]), f"ties not ordered by id: {got_scores} {got_ids}"
    left_out = np.ones(cand_ids.size, dtype=bool)
    left_out[[pos[int(i)] for i in ids]] = False
    if left_out.any():
        worst = exact.min()
        best_left = cand_scores[left_out].max()
        assert best_left <= worst + 2 * tol.max(), (
            f"candidate with score {best_left} left out while {worst} was returned"
        )


def no_floors(queries) -> np.ndarray:
    """The floors of a batch scan without one: -inf for each of len(queries) queries."""
    return np.full(len(queries), -np.inf, dtype=np.float32)


def draw_floors(scores, ids, rng) -> np.ndarray:
    """Floors (float32 (nq,)) for a scan whose result without one is (scores, ids), larger
    better: per query one of -inf, a score it returned (so rows tie with the floor), the
    float32 just above one (the row at that score must go), the midpoint of two, +inf."""
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids)
    out = np.full(scores.shape[0], -np.inf, dtype=np.float32)
    for q in range(scores.shape[0]):
        got = scores[q][ids[q] >= 0]
        kind = int(rng.integers(0, 5))
        if kind == 0 or got.size == 0:
            continue
        s = got[int(rng.integers(0, got.size))]
        if kind == 1:
            out[q] = s
        elif kind == 2:
            out[q] = np.nextafter(s, np.float32(np.inf))
        elif kind == 3:
            out[q] = np.float32((np.float64(s) + np.float64(got[int(rng.integers(0, got.size))])) / 2)
        else:
            out[q] = np.inf
    return out


def reaches_floor(scores, floor):
    """The rows a scan kernel with `floor` keeps: scores >= floor, and for a floor in
    (-FLT_MIN, FLT_MIN] (FLT_MIN the least normal float32) those > -FLT_MIN (kernels/topk.py
    `below` never makes a subnormal empty slot, which a DAZ CPU would read as 0; a row
    scoring -FLT_MIN ties that slot and loses)."""
    scores = np.asarray(scores)
    tiny = np.finfo(np.float32).tiny
    if -tiny < float(floor) <= tiny:
        return scores > -tiny
    return scores >= floor


def assert_floored(got_scores, got_ids, scores, ids, floors):
    """A scan with floors (got) equals the same scan without them (scores, ids; larger
    better, padded -inf / -1) minus the rows scoring below the floor, in the same order,
    padded with (-inf, -1)."""
    got_scores = np.asarray(got_scores)
    got_ids = np.asarray(got_ids)
    scores = np.asarray(scores)
    ids = np.asarray(ids)
    assert got_scores.shape == scores.shape and got_ids.shape == ids.shape
    for q in range(scores.shape[0]):
        keep = (ids[q] >= 0) & reaches_floor(scores[q], floors[q])
        n = int(keep.sum())
        np.testing.assert_array_equal(got_ids[q, :n], ids[q][keep], err_msg=f"query {q} floor {floors[q]}")
        np.testing.assert_array_equal(got_scores[q, :n], scores[q][keep])
        np.testing.assert_array_equal(got_ids[q, n:], -1)
        np.testing.assert_array_equal(got_scores[q, n:], -np.inf)
