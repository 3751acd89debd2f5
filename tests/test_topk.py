"""kernels/topk.py against tests/reference/topk.py (a lexsort): exact, ties by smaller id."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.kernels import topk
from tests.reference.topk import reaches_floor, topk_ref, topk_ref_batch

SETTINGS = settings(max_examples=60, deadline=None, database=None)


def _scores(rng, shape, flavor):
    """float32 scores: 'ties' draws from 4 values, 'float' is continuous, 'inf' mixes in +-inf."""
    if flavor == "ties":
        return rng.integers(-2, 2, size=shape).astype(np.float32)
    s = rng.standard_normal(shape).astype(np.float32)
    if flavor == "inf":
        pick = rng.random(shape)
        s[pick < 0.2] = -np.inf
        s[pick > 0.9] = np.inf
    return s


def _ids(rng, n):
    return rng.permutation(4 * n + 3)[:n].astype(np.int64)


@SETTINGS
@given(n=st.integers(0, 40), k=st.integers(0, 50), flavor=st.sampled_from(["ties", "float", "inf"]),
       seed=st.integers(0, 2**32 - 1), readonly=st.booleans())
def test_topk_select_matches_lexsort(n, k, flavor, seed, readonly):
    rng = np.random.default_rng(seed)
    scores, ids = _scores(rng, n, flavor), _ids(rng, n)
    if readonly:
        scores.setflags(write=False)
        ids.setflags(write=False)
    got_s, got_i = topk.topk_select(scores, ids, k)
    ref_s, ref_i = topk_ref(scores, ids, k)
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s)


def test_topk_select_ties_break_by_smaller_id():
    scores = np.zeros(6, dtype=np.float32)
    ids = np.array([9, 3, 7, 0, 5, 1], dtype=np.int64)
    s, i = topk.topk_select(scores, ids, 4)
    np.testing.assert_array_equal(i, [0, 1, 3, 5])
    np.testing.assert_array_equal(s, 0.0)


def test_topk_select_keeps_minus_inf_scores_before_padding():
    # A real candidate scored -inf still ranks ahead of an empty slot (-inf, -1).
    s, i = topk.topk_select(np.array([-np.inf, 1.0], np.float32), np.array([4, 2], np.int64), 4)
    np.testing.assert_array_equal(i, [2, 4, -1, -1])
    np.testing.assert_array_equal(s, [1.0, -np.inf, -np.inf, -np.inf])


@SETTINGS
@given(nq=st.integers(0, 5), n=st.integers(0, 30), k=st.integers(1, 35),
       flavor=st.sampled_from(["ties", "float", "inf"]), seed=st.integers(0, 2**32 - 1))
def test_topk_select_batch_equals_serial_and_reference(nq, n, k, flavor, seed):
    rng = np.random.default_rng(seed)
    scores, ids = _scores(rng, (nq, n), flavor), _ids(rng, n)
    got_s, got_i = topk.topk_select_batch(scores, ids, k)
    assert got_s.shape == (nq, k) and got_i.shape == (nq, k)
    for q in range(nq):
        s, i = topk.topk_select(scores[q], ids, k)
        np.testing.assert_array_equal(got_i[q], i)
        np.testing.assert_array_equal(got_s[q], s)
    ref_s, ref_i = topk_ref_batch(scores, ids, k)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s)


@SETTINGS
@given(n=st.integers(0, 30), k=st.integers(0, 12), flavor=st.sampled_from(["ties", "float", "inf"]),
       seed=st.integers(0, 2**32 - 1))
def test_topk_push_keeps_the_best_after_every_push(n, k, flavor, seed):
    rng = np.random.default_rng(seed)
    scores, ids = _scores(rng, n, flavor), _ids(rng, n)
    hs, hi = topk.topk_init(k)
    np.testing.assert_array_equal(hs, np.full(k, -np.inf, np.float32))
    np.testing.assert_array_equal(hi, np.full(k, -1, np.int64))
    for j in range(n):
        kept = topk.topk_push(hs, hi, scores[j], ids[j])
        after_s, after_i = topk_ref(scores[: j + 1], ids[: j + 1], k)
        # kept exactly when the new entry is in the best k of everything offered so far
        assert bool(kept) == bool(ids[j] in after_i), (j, kept)
        # the heap holds the same entries as the reference (sorted copy)
        cs, ci = hs.copy(), hi.copy()
        topk.topk_sort(cs, ci)
        np.testing.assert_array_equal(ci, after_i)
        np.testing.assert_array_equal(cs, after_s)


@SETTINGS
@given(n=st.integers(0, 30), k=st.integers(0, 12), flavor=st.sampled_from(["ties", "float", "inf"]),
       floor_kind=st.sampled_from(["-inf", "score", "above", "+inf"]), seed=st.integers(0, 2**32 - 1))
def test_floor_heap_keeps_exactly_the_best_reaching_the_floor(n, k, flavor, floor_kind, seed):
    # the scan kernels' heap with a floor: offers as in the scans (their written-out
    # admission test, then topk_push), then topk_finish: the best k of the entries >= floor,
    # padded (-inf, -1), whatever the order of offers; ties with the floor kept, -inf never
    rng = np.random.default_rng(seed)
    scores, ids = _scores(rng, n, flavor), _ids(rng, n)
    finite = scores[np.isfinite(scores)]
    floor = {"-inf": -np.inf, "+inf": np.inf}.get(floor_kind, np.float32(0.0))
    if floor_kind in ("score", "above") and finite.size:
        floor = finite[int(rng.integers(0, finite.size))]
        if floor_kind == "above":
            floor = np.nextafter(floor, np.float32(np.inf))
    hs, hi = topk.topk_init_floor(k, np.float32(floor))
    assert (hi == -1).all() and (hs == topk.below(np.float32(floor))).all()
    assert (hs < floor).all() or floor == -np.inf
    for j in range(n):
        s, i = scores[j], ids[j]
        if k and (s > hs[0] or (s == hs[0] and i < hi[0])):
            topk.topk_push(hs, hi, s, i)
    topk.topk_finish(hs, hi)
    keep = reaches_floor(scores, np.float32(floor)) & (scores > -np.inf)
    ref_s, ref_i = topk_ref(scores[keep], ids[keep], k)
    np.testing.assert_array_equal(hi, ref_i)
    np.testing.assert_array_equal(hs, ref_s)


@SETTINGS
@given(nq=st.integers(0, 4), k=st.integers(1, 9), widths=st.lists(st.integers(0, 12), min_size=1, max_size=4),
       flavor=st.sampled_from(["ties", "float", "inf"]), seed=st.integers(0, 2**32 - 1))
def test_kth_best_update_tracks_the_kth_best_score(nq, k, widths, flavor, seed):
    # the engine's floor for the next segment: the k-th best of the scores of every list
    # offered so far (ids < 0 skipped), -inf until k were offered
    rng = np.random.default_rng(seed)
    heaps = np.full((nq, k), -np.inf, dtype=np.float32)
    seen = [[] for _ in range(nq)]
    for w in widths:
        scores = _scores(rng, (nq, w), flavor)
        ids = np.where(rng.random((nq, w)) < 0.2, -1, 1).astype(np.int64)
        topk.kth_best_update(heaps, scores, ids)
        for q in range(nq):
            seen[q] += scores[q][ids[q] >= 0].tolist()
            want = sorted(seen[q], reverse=True)[k - 1] if len(seen[q]) >= k else -np.inf
            assert heaps[q, 0] == np.float32(want), (q, heaps[q], seen[q])


@SETTINGS
@given(nq=st.integers(0, 4), w=st.integers(0, 12), k=st.integers(0, 14),
       flavor=st.sampled_from(["ties", "float", "inf"]), seed=st.integers(0, 2**32 - 1))
def test_topk_positions_matches_a_sort_by_score_then_key(nq, w, k, flavor, seed):
    # the merge of per-segment shortlists: positions of the k best (score desc, key asc),
    # keys < 0 never chosen, -1 past the non-empty entries; k = 0 gives (nq, 0) (it crashed
    # the process: the heap of none had its root replaced, past its end)
    rng = np.random.default_rng(seed)
    scores = _scores(rng, (nq, w), flavor)
    keys = np.where(rng.random((nq, w)) < 0.2, -1, rng.integers(0, 6, (nq, w))).astype(np.int64)
    want = np.full((nq, k), -1, dtype=np.int64)
    for q in range(nq):
        ok = np.nonzero(keys[q] >= 0)[0]
        order = ok[np.lexsort((ok, keys[q][ok], -scores[q][ok].astype(np.float64)))][:k]
        want[q, :order.size] = order
    for fn in (topk.topk_positions, topk.topk_positions_batch):
        got = fn(scores, keys, k)
        assert got.shape == (nq, k)
        for q in range(nq):  # equal (score, key) pairs may come in either order: compare what each holds
            np.testing.assert_array_equal(got[q] < 0, want[q] < 0)
            at, ref = got[q][got[q] >= 0], want[q][want[q] >= 0]
            np.testing.assert_array_equal(scores[q][at], scores[q][ref])
            np.testing.assert_array_equal(keys[q][at], keys[q][ref])


def test_kth_best_update_with_no_heap_slots_changes_nothing():
    # k = 0: there is no k-th best to keep (it wrote past the empty heaps: NUMBA_BOUNDSCHECK=1 caught it)
    heaps = np.full((2, 0), -np.inf, dtype=np.float32)
    topk.kth_best_update(heaps, np.ones((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.int64))
    assert heaps.shape == (2, 0)

def test_below_is_never_subnormal():
    # a CPU with DAZ reads a subnormal as 0: below a floor of 0 it must still be below 0,
    # else a row scoring 0 (an l2 duplicate) ties the empty slot and is dropped (a review's
    # reproduction with DAZ set)
    tiny = np.finfo(np.float32).tiny
    for floor, want in ((0.0, -tiny), (-0.0, -tiny), (1e-42, -tiny), (-1e-42, -tiny), (tiny, -tiny),
                        (-tiny, np.nextafter(np.float32(-tiny), np.float32(-1))), (1.0, np.nextafter(np.float32(1), 0)),
                        (-np.inf, -np.inf), (np.inf, np.finfo(np.float32).max)):
        got = topk.below(np.float32(floor))
        assert got == np.float32(want) and (got < floor or floor == -np.inf), (floor, got)
        assert not (0 < abs(got) < tiny), (floor, got)


def test_topk_select_keeps_negative_ids_it_is_given():
    # topk_push keeps whatever it is given; only the scans' topk_finish drops ids < 0
    s, i = topk.topk_select(np.array([3, 1, 2], np.float32), np.array([5, -2, 7], np.int64), 4)
    np.testing.assert_array_equal(i, [5, 7, -2, -1])
    np.testing.assert_array_equal(s, [3, 2, 1, -np.inf])


def test_res_init_floors_rows_and_below():
    # the reservoirs replaced the per-query heaps of topk_init_floors (removed): each query's
    # threshold starts at below(floor) with id -1, as an empty heap slot did
    keys, counts, hs, hi = topk.res_init_floors(np.array([1.0, -np.inf, 0.0], np.float32), 2)
    assert keys.shape == (3, topk.res_capacity(2)) and (counts == 0).all()
    assert hs.shape == (3,) and (hi == -1).all()
    assert hs[0] == np.nextafter(np.float32(1.0), np.float32(0.0)) and hs[1] == -np.inf
    assert hs[2] < 0 and hs[2] == topk.below(np.float32(0.0))


def _sorted_list(rng, nq, kk, n_valid, flavor, id_pool):
    s = np.full((nq, kk), -np.inf, dtype=np.float32)
    i = np.full((nq, kk), -1, dtype=np.int64)
    for q in range(nq):
        ids = id_pool[q][:n_valid]
        rs, ri = topk_ref(_scores(rng, len(ids), flavor), ids, kk)
        s[q], i[q] = rs, ri
    return s, i


@SETTINGS
@given(nq=st.integers(0, 4), ka=st.integers(0, 10), kb=st.integers(0, 10), k=st.integers(0, 25),
       fill_a=st.integers(0, 10), fill_b=st.integers(0, 10), flavor=st.sampled_from(["ties", "float", "inf"]),
       seed=st.integers(0, 2**32 - 1))
def test_topk_merge_matches_reference(nq, ka, kb, k, fill_a, fill_b, flavor, seed):
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(64)[:20].astype(np.int64) for _ in range(nq)]
    sa, ia = _sorted_list(rng, nq, ka, min(fill_a, ka), flavor, [p[:10] for p in pools])
    sb, ib = _sorted_list(rng, nq, kb, min(fill_b, kb), flavor, [p[10:] for p in pools])
    got_s, got_i = topk.topk_merge(sa, ia, sb, ib, k)
    assert got_s.shape == (nq, k) and got_i.shape == (nq, k)
    for q in range(nq):
        s = np.concatenate([sa[q], sb[q]])
        i = np.concatenate([ia[q], ib[q]])
        valid = i >= 0
        ref_s, ref_i = topk_ref(s[valid], i[valid], k)
        np.testing.assert_array_equal(got_i[q], ref_i)
        np.testing.assert_array_equal(got_s[q], ref_s)


def test_floor_of_zero_lets_only_the_band_above_minus_flt_min_through():
    # below(0) is -FLT_MIN (never a subnormal): the kernel keeps the scores in (-FLT_MIN, 0)
    # too (CodeIndex.scan drops them), never one at -FLT_MIN or lower
    tiny = np.finfo(np.float32).tiny
    scores = np.array([0.0, -1e-39, -tiny, -1.0, 1e-40, -0.0], np.float32)
    ids = np.arange(6, dtype=np.int64)
    hs, hi = topk.topk_init_floor(6, np.float32(0.0))
    for s, i in zip(scores, ids):
        if s > hs[0] or (s == hs[0] and i < hi[0]):
            topk.topk_push(hs, hi, s, i)
    topk.topk_finish(hs, hi)
    np.testing.assert_array_equal(hi, [4, 0, 5, 1, -1, -1])


def _res_offer(state, scores, ids, k):
    # offer rows to reservoir 0 as the multi-query fast scans do: the admission test against
    # the threshold, the append, a cut when full
    keys, counts, thr_s, thr_i = state
    for s, i in zip(scores, ids):
        if s > thr_s[0] or (s == thr_s[0] and i < thr_i[0]):
            c = counts[0]
            keys[0, c] = topk.res_key(np.float32(s), np.int64(i))
            counts[0] = c + 1
            if c + 1 == keys.shape[1]:
                topk.res_cut(keys, counts, thr_s, thr_i, 0, k)
                assert counts[0] == k


def _res_scan(scores, ids, k, floor):
    state = topk.res_init_floors(np.array([floor], dtype=np.float32), k)
    _res_offer(state, scores, ids, k)
    got_s, got_i = topk.res_finish(state[0], state[1], k)
    return got_s[0], got_i[0]


def _heap_scan(scores, ids, k, floor):
    hs, hi = topk.topk_init_floor(k, np.float32(floor))
    for s, i in zip(scores, ids):
        if s > hs[0] or (s == hs[0] and i < hi[0]):
            topk.topk_push(hs, hi, s, i)
    topk.topk_finish(hs, hi)
    return hs, hi


def _res_scores(rng, n, flavor):
    # the flavours of _scores plus signed zeros, subnormals and NaN (never admitted)
    if flavor == "zeros":
        return rng.choice(np.array([0.0, -0.0, 1e-45, -1e-45], dtype=np.float32), size=n)
    s = _scores(rng, n, "inf" if flavor == "nan" else flavor)
    if flavor == "nan":
        s[rng.random(n) < 0.2] = np.nan
    return s


@SETTINGS
@given(n=st.integers(0, 300), k=st.integers(1, 40), flavor=st.sampled_from(["ties", "float", "inf", "zeros", "nan"]),
       floor_kind=st.sampled_from(["-inf", "score", "+inf"]), big_ids=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_reservoir_equals_the_heap_bit_for_bit(n, k, flavor, floor_kind, big_ids, seed):
    # the reservoir the multi-query fast scans use instead of a heap returns what the heap
    # returns, scores compared by their bits (-0.0 stays -0.0), ids near RES_MAX_ID included;
    # n up to 300 against a capacity of 2k + 16 makes it cut many times
    rng = np.random.default_rng(seed)
    scores = _res_scores(rng, n, flavor)
    ids = _ids(rng, n)
    if big_ids:
        ids = topk.RES_MAX_ID - ids
    finite = scores[np.isfinite(scores)]
    floor = {"-inf": -np.inf, "+inf": np.inf}.get(floor_kind, np.float32(0.0))
    if floor_kind == "score" and finite.size:
        floor = finite[int(rng.integers(0, finite.size))]
    got_s, got_i = _res_scan(scores, ids, k, floor)
    ref_s, ref_i = _heap_scan(scores, ids, k, floor)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s.view(np.uint32), ref_s.view(np.uint32))
    keep = reaches_floor(scores, np.float32(floor)) & (scores > -np.inf) & ~np.isnan(scores)
    lex_s, lex_i = topk_ref(scores[keep], ids[keep], k)
    np.testing.assert_array_equal(got_i, lex_i)


@SETTINGS
@given(a=st.floats(width=32, allow_nan=False), b=st.floats(width=32, allow_nan=False),
       ia=st.integers(0, topk.RES_MAX_ID), ib=st.integers(0, topk.RES_MAX_ID), same=st.booleans())
def test_reservoir_keys_order_like_the_heaps(a, b, ia, ib, same):
    # a key is larger exactly when its entry ranks first by (score desc, id asc), with -0.0
    # tying +0.0; each key decodes to its score's bits and its id
    if same:
        b = a if a != 0 else -a
    ka, kb = topk.res_key(np.float32(a), np.int64(ia)), topk.res_key(np.float32(b), np.int64(ib))
    if not (np.float32(a) == np.float32(b) and ia == ib):  # one id never competes with itself
        assert (ka > kb) == bool(topk._better(np.float32(a), ia, np.float32(b), ib))
    assert (ka == kb) == (np.float32(a) == np.float32(b) and ia == ib and
                          np.signbit(np.float32(a)) == np.signbit(np.float32(b)))
    s, i = topk._res_entry(np.uint64(ka))
    assert i == ia and np.float32(s).view(np.uint32) == np.float32(a).view(np.uint32)


def test_reservoir_refuses_an_id_it_cannot_key():
    import pytest
    topk.res_key(np.float32(1.0), np.int64(topk.RES_MAX_ID))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        topk.res_key(np.float32(1.0), np.int64(topk.RES_MAX_ID + 1))


@SETTINGS
@given(m=st.integers(2, 120), k=st.integers(1, 119), distinct=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_reservoir_select_keeps_the_largest_with_duplicate_keys(m, k, distinct, seed):
    # the quickselect ends and keeps the k largest even when keys repeat (few distinct
    # values, sorted and reversed inputs, a valley and an organ pipe)
    if k >= m:
        k = m - 1
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, distinct, size=m).astype(np.uint64)
    valley = np.abs(np.arange(m) - m // 2).astype(np.uint64)  # made the median of three quadratic
    pipe = np.concatenate([np.arange(m // 2), np.arange(m - m // 2)[::-1]]).astype(np.uint64)
    for arr in (keys.copy(), np.sort(keys), np.sort(keys)[::-1].copy(), valley, pipe):
        want = np.sort(arr)[::-1][:k]
        topk._res_select(arr, m, k)
        np.testing.assert_array_equal(np.sort(arr[:k])[::-1], want)


@SETTINGS
@given(m=st.integers(2, 120), k=st.integers(1, 119), limit=st.integers(0, 3), distinct=st.integers(1, 50),
       seed=st.integers(0, 2**32 - 1))
def test_reservoir_select_after_its_round_limit_sorts_the_rest(m, k, limit, distinct, seed):
    # the quickselect's last resort (a mergesort of what is left once `limit` rounds did not
    # finish; only input built against its pivot sequence reaches it unforced) keeps the k
    # largest and leaves the same multiset of keys
    if k >= m:
        k = m - 1
    keys = np.random.default_rng(seed).integers(0, distinct, size=m).astype(np.uint64)
    arr = keys.copy()
    topk._res_select_rounds(arr, m, k, limit)
    np.testing.assert_array_equal(np.sort(arr[:k])[::-1], np.sort(keys)[::-1][:k])
    np.testing.assert_array_equal(np.sort(arr), np.sort(keys))


@SETTINGS
@given(nq=st.integers(1, 4), k=st.integers(0, 12), n=st.integers(1, 30), g=st.integers(0, 5),
       seed=st.integers(0, 2**16))
def test_tag_candidates_equals_numpy(nq, k, n, g, seed):
    # a scan's candidates tagged with their segment and user id, against the numpy steps it
    # replaces in `search._shortlist_plan` (-1 rows: no candidate, id -1)
    rng = np.random.default_rng(seed)
    rows = rng.integers(-1, n, size=(nq, k)).astype(np.int64)
    row_ids = rng.integers(0, 2**62, size=n).astype(np.int64)
    seg_of, keys = topk.tag_candidates(rows, row_ids, g)
    found = rows >= 0
    np.testing.assert_array_equal(seg_of, np.where(found, g, -1))
    np.testing.assert_array_equal(keys, np.where(found, row_ids[np.maximum(rows, 0)], -1))
    assert seg_of.dtype == keys.dtype == np.int64
