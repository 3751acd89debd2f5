"""Top-k selection kernels.

Convention: inside the kernels a score is a similarity, larger is better. Kernels for
`l2` produce negated squared distances, so one top-k serves every metric; the engine
flips the sign back. Ties are broken by the smaller id, so results are deterministic and
comparable with the numpy reference (`tests/reference/topk.py`, a lexsort).

A top-k state is a pair of arrays `(heap_scores float32 (k,), heap_ids int64 (k,))`, a
binary min-heap whose root is the worst kept entry. An empty slot holds score `-inf` and
id -1, so a finished list is padded exactly as DESIGN.md asks (the engine turns `-inf`
into the metric's worst score).

`topk_push` keeps whatever it is given; the scan kernels test a row's id before offering
it and never offer an id < 0 (the padding of fast-scan blocks, rows marked dead by
`vecz.engine.layout.CodeIndex.mark_dead`).

A floor. The engine's scan kernels take, per query, a score `floor` (-inf for none) and
return only the rows scoring at least that: their heaps start full of empty slots scoring
the float32 just below it (`topk_init_floor`, `below`). A scan admits a row when it beats
the heap minimum, or ties it with a smaller id (an empty slot's id -1 is smaller than
every row's), so a row must reach the floor, and the rows kept are exactly those of the
same scan without a floor that reach it, in the same order (for a floor within FLT_MIN of
0 also those just below it, see `below`); a row scoring -inf never enters, with a floor or
without. (`topk_push` alone ranks by `_better`, where a row beats
an empty slot it ties: offered directly, a row scoring exactly `below(floor)` would
enter.) The engine passes the depth-th best score of the segments it has scanned before
(`kth_best_update`): a small segment scanned after a big one then admits almost nothing.
`topk_finish` turns the empty slots left into the padding (-inf, -1).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from ._jit import jit, jit_batch

__all__ = [
    "topk_init",
    "topk_init_floor",
    "below",
    "kth_best_update",
    "topk_push",
    "topk_sort",
    "topk_finish",
    "topk_select",
    "topk_select_batch",
    "topk_merge",
    "topk_positions",
    "topk_positions_batch",
    "tag_candidates",
    "RES_MAX_ID",
    "res_capacity",
    "res_init_floors",
    "res_key",
    "res_cut",
    "res_finish",
]


@jit
def _better(s_a, i_a, s_b, i_b):
    # a ranks before b: higher score, or equal score and smaller id (empty id -1 last).
    if s_a > s_b:
        return True
    if s_a == s_b:
        if i_b < 0:
            return i_a >= 0
        return i_a >= 0 and i_a < i_b
    return False


@jit
def topk_init(k):
    """Empty top-k state of size k: scores -inf, ids -1 (`topk_init_floor` without a floor)."""
    return topk_init_floor(k, np.float32(-np.inf))


_FLT_MIN = np.float32(np.finfo(np.float32).tiny)  # the least positive normal float32


@jit
def below(floor):
    """The empty-slot score of a heap with a floor: the float32 just below `floor` (-inf for
    -inf), which a scan's row beats exactly when it scores >= floor. Never a subnormal: a
    CPU flushing subnormal inputs to zero (DAZ, which some fast-math libraries turn on for
    the whole process) would read the float below a floor of 0 as 0, and a row scoring 0
    would tie the empty slot and lose (a review's case: an l2 duplicate, distance 0,
    dropped). So a floor in (-FLT_MIN, FLT_MIN] (FLT_MIN the least normal float32) gets
    -FLT_MIN, and rows scoring in (-FLT_MIN, floor) come back too (0 and subnormal scores,
    all 0 under DAZ; a row scoring -FLT_MIN ties the slot and loses): more rows than asked,
    never fewer (`CodeIndex.scan` drops them)."""
    b = np.nextafter(np.float32(floor), np.float32(-np.inf))
    if -_FLT_MIN < b < _FLT_MIN:
        return -_FLT_MIN
    return b


@jit
def topk_init_floor(k, floor):
    """Empty top-k state of size k whose scans admit only scores >= floor: k empty slots
    (id -1) scoring `below(floor)`."""
    heap_scores = np.full(k, below(floor), dtype=np.float32)
    heap_ids = np.full(k, -1, dtype=np.int64)
    return heap_scores, heap_ids


@jit
def kth_best_update(heaps, scores, ids):
    """Per query i, offer the scores[i, j] with ids[i, j] >= 0 to heaps[i], a min-heap of
    the k = heaps.shape[1] best scores seen (start it at -inf): heaps[:, 0] is then each
    query's k-th best score so far (-inf until k were offered), the floor for the next
    scan. Scores only: a floor is a value, ties are the scans' business."""
    k = heaps.shape[1]
    if k == 0:  # no k-th best to keep (a heap of none has no root to replace)
        return
    same = np.zeros(k, dtype=np.int64)  # one id for every entry: `_sift_down` orders by score alone
    for i in range(heaps.shape[0]):
        h = heaps[i]
        for j in range(scores.shape[1]):
            s = scores[i, j]
            if ids[i, j] < 0 or not s > h[0]:
                continue
            h[0] = s  # replace the worst and sift it down
            _sift_down(h, same, 0, k)


@jit
def topk_push(heap_scores, heap_ids, score, idx):
    """Offer (score, idx); keep it if it beats the worst kept entry. Returns True if kept."""
    k = heap_scores.shape[0]
    if k == 0 or not _better(score, idx, heap_scores[0], heap_ids[0]):
        return False
    # The sift is written out here rather than calling _sift_down: with the call, LLVM's
    # inlining into the scan loops changed and the PQ8 scan ran 1.5x slower (measured).
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        right = left + 1
        worst = left
        if right < k and _better(heap_scores[left], heap_ids[left], heap_scores[right], heap_ids[right]):
            worst = right
        if _better(heap_scores[worst], heap_ids[worst], score, idx):
            break
        heap_scores[pos] = heap_scores[worst]
        heap_ids[pos] = heap_ids[worst]
        pos = worst
    heap_scores[pos] = score
    heap_ids[pos] = idx
    return True


@jit
def _sift_down(heap_scores, heap_ids, pos, size):
    s = heap_scores[pos]
    i = heap_ids[pos]
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        right = left + 1
        worst = left
        if right < size and _better(heap_scores[left], heap_ids[left], heap_scores[right], heap_ids[right]):
            worst = right
        if _better(heap_scores[worst], heap_ids[worst], s, i):
            break
        heap_scores[pos] = heap_scores[worst]
        heap_ids[pos] = heap_ids[worst]
        pos = worst
    heap_scores[pos] = s
    heap_ids[pos] = i


@jit
def topk_sort(heap_scores, heap_ids):
    """Sort a top-k state in place, best first (heapsort of the min-heap)."""
    _heapsort(heap_scores, heap_ids, heap_scores.shape[0])


@jit
def topk_finish(heap_scores, heap_ids):
    """A scan's last step: `topk_sort`, its empty slots (id < 0: the scans never admit a
    negative id; -inf, or `below` a floor) made the padding (-inf, -1) at the end."""
    size = heap_scores.shape[0]
    if size > 0 and heap_ids[0] < 0:
        # empty slots rank last, so one sits at the root: sort only the m filled entries
        # (a floored heap is mostly empty slots, and a heapsort of all k costs k log k)
        m = 0
        for j in range(size):
            if heap_ids[j] >= 0:
                heap_scores[m] = heap_scores[j]
                heap_ids[m] = heap_ids[j]
                m += 1
        for j in range(m, size):
            heap_scores[j] = -np.inf
            heap_ids[j] = -1
        for j in range(m // 2 - 1, -1, -1):
            _sift_down(heap_scores, heap_ids, j, m)
        size = m
    _heapsort(heap_scores, heap_ids, size)


@jit
def _heapsort(heap_scores, heap_ids, size):
    # the min-heap heap[:size] sorted in place, best first
    while size > 1:
        size -= 1
        s = heap_scores[0]
        i = heap_ids[0]
        heap_scores[0] = heap_scores[size]
        heap_ids[0] = heap_ids[size]
        heap_scores[size] = s
        heap_ids[size] = i
        _sift_down(heap_scores, heap_ids, 0, size)


@jit
def topk_select(scores, ids, k):
    """Best k of one row of scores (ids given per column); sorted best first, padded."""
    heap_scores, heap_ids = topk_init(k)
    for j in range(scores.shape[0]):
        topk_push(heap_scores, heap_ids, scores[j], ids[j])
    topk_sort(heap_scores, heap_ids)
    return heap_scores, heap_ids


@jit_batch
def topk_select_batch(scores, ids, k):
    """Row-wise `topk_select` over a (nq, n) score matrix with shared column ids."""
    nq = scores.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    for qi in prange(nq):
        s, i = topk_select(scores[qi], ids, k)
        out_scores[qi] = s
        out_ids[qi] = i
    return out_scores, out_ids


@jit
def topk_merge(scores_a, ids_a, scores_b, ids_b, k):
    """Merge two (nq, ka) and (nq, kb) result lists sorted best first into (nq, k).

    Used to combine results across blocks, lists or segments whose ids are disjoint.
    """
    nq = scores_a.shape[0]
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    ka = scores_a.shape[1]
    kb = scores_b.shape[1]
    for qi in range(nq):
        a = 0
        b = 0
        for j in range(k):
            take_a = False
            if a < ka and b < kb:
                take_a = not _better(scores_b[qi, b], ids_b[qi, b], scores_a[qi, a], ids_a[qi, a])
            elif a < ka:
                take_a = True
            elif b >= kb:
                break
            if take_a:
                out_scores[qi, j] = scores_a[qi, a]
                out_ids[qi, j] = ids_a[qi, a]
                a += 1
            else:
                out_scores[qi, j] = scores_b[qi, b]
                out_ids[qi, j] = ids_b[qi, b]
                b += 1
    return out_scores, out_ids


@jit
def _keyed_better(s_a, key_a, s_b, key_b):
    # a ranks before b: higher score, or equal score and smaller key
    return s_a > s_b or (s_a == s_b and key_a < key_b)


@jit
def _position_sift_down(heap, size, p, scores, keys):
    # put position p at the root of the min-heap heap[:size] and sift it down
    c = 0
    while True:
        left = 2 * c + 1
        if left >= size:
            break
        worst = left
        right = left + 1
        if right < size and _keyed_better(scores[heap[left]], keys[heap[left]], scores[heap[right]],
                                          keys[heap[right]]):
            worst = right
        w = heap[worst]
        if _keyed_better(scores[p], keys[p], scores[w], keys[w]):
            heap[c] = w
            c = worst
        else:
            break
    heap[c] = p


@jit
def _topk_positions_row(scores, keys, k, out):
    # a min-heap (worst at the root) of positions into scores/keys; keys < 0 are empty slots
    if k <= 0:  # nothing to keep: a heap of none has no root to replace
        return
    heap = np.empty(k, dtype=np.int64)
    size = 0
    for p in range(scores.shape[0]):
        if keys[p] < 0:
            continue
        s = scores[p]
        if size < k:
            # sift up
            c = size
            size += 1
            while c > 0:
                par = (c - 1) >> 1
                q = heap[par]
                if _keyed_better(scores[q], keys[q], s, keys[p]):
                    heap[c] = q
                    c = par
                else:
                    break
            heap[c] = p
            continue
        root = heap[0]
        if not _keyed_better(s, keys[p], scores[root], keys[root]):
            continue
        _position_sift_down(heap, size, p, scores, keys)  # replace the root
    # order best first: repeatedly pop the worst into the back
    for j in range(k):
        out[j] = -1
    n = size
    while n > 0:
        out[n - 1] = heap[0]
        n -= 1
        _position_sift_down(heap, n, heap[n], scores, keys)


@jit
def topk_positions(scores, keys, k):
    """Positions of the k best entries of each row, best first: scores float32 (nq, W)
    (larger is better), keys int64 (nq, W) breaking ties (smaller first; < 0 = empty slot,
    never chosen). Returns int64 (nq, k), -1 past the row's non-empty entries. Used to merge
    per-segment shortlists, whose keys are the rows' user ids."""
    nq = scores.shape[0]
    out = np.empty((nq, k), dtype=np.int64)
    for i in range(nq):
        _topk_positions_row(scores[i], keys[i], k, out[i])
    return out


@jit_batch
def topk_positions_batch(scores, keys, k):
    """`topk_positions` with rows spread over threads (same results)."""
    nq = scores.shape[0]
    out = np.empty((nq, k), dtype=np.int64)
    for i in prange(nq):
        _topk_positions_row(scores[i], keys[i], k, out[i])
    return out


# ---- reservoirs: the fast scans' top k, whose rows come in no useful order
#
# A binary heap pays a sift of log2(k) dependent, unpredictable steps for every row it
# admits. A scan of n rows in no order admits about k (1 + ln(n / k)) of them: on
# wordnet-gemma's flat PQ96x4 fast scan (24,000 rows) 654 a query at k = 100 and 1,166 at
# k = 200, and those pushes took half of the scan (37 / 73 / 112 us a query at k = 10 / 100 /
# 200; 34 with nothing admitted). A reservoir (faiss's ReservoirTopN for its fast scans)
# appends each admitted row to a buffer of `res_capacity(k)` entries and, when it is full,
# cuts it to its best k (a quickselect) and raises its threshold to the k-th of those. The
# threshold lags the heap's minimum, so more rows are admitted (921 at k = 100), but each
# costs an append: the same scan took 38-42 / 49-50 / 59-60 us a query (Zen 4; stop 40 in
# docs/results/scans.md).
#
# An entry is one uint64 key ordered like the heaps' (score, id) total order: the score's
# bits mapped to an unsigned order (-0 kept as 0 with a flag bit, so that it ties +0 as in
# float compares and comes back as -0), then (RES_MAX_ID - id) and the flag. One integer
# compare then ranks two entries, and the cut moves one word per entry. So ids must be in
# [0, RES_MAX_ID]: the fast-scan layouts refuse larger ones (`fastscan.fs_layout`,
# `fs_layout_packed`: ValueError), and `CodeIndex` gives the kernels ranks instead of larger
# ids and maps results back. (`res_key` raises too, but inside a batch driver's prange Numba
# does not pass the error on: the layouts are where ids are checked.) NaN and -inf are never
# admitted (no compare is true), exactly as with the heaps. Under DAZ (a process whose CPU
# reads subnormal floats as 0) a heap ties a subnormal score with 0 and breaks the tie by
# id, where the keys keep the numeric order: the lists can then differ in the order of
# scores within FLT_MIN of 0 (a review's case), never in which rows beat a normal score.
#
# State of n queries: keys uint64 (n, res_capacity(k)), counts int64 (n,), thr_s float32
# (n,) and thr_i int64 (n,). A scan admits (s, idx) when s > thr_s[g] or (s == thr_s[g] and
# idx < thr_i[g]), the heaps' test against their minimum; thr_i starts at -1 (a floor admits
# only s > below(floor), as an empty heap slot does). `res_finish` returns what the heaps'
# `topk_finish` would: the k best admitted, best first, padded with (-inf, -1).

RES_MAX_ID = 2**31 - 1
_SIGN = np.uint32(0x80000000)  # also the bits of -0.0
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_ONE = np.uint64(1)
_MAX_ID64 = np.uint64(RES_MAX_ID)


@jit
def tag_candidates(rows, row_ids, g):
    """A scan's candidates (local rows int64 (nq, k), -1 = none) tagged with their segment
    g and their ids row_ids[rows] (int64 (nq, k) each, -1 where there is no candidate),
    in one call instead of five numpy calls."""
    seg_of = np.full(rows.shape, -1, dtype=np.int64)
    keys = np.full(rows.shape, -1, dtype=np.int64)
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[i, j]
            if r >= 0:
                seg_of[i, j] = g
                keys[i, j] = row_ids[r]
    return seg_of, keys


@intrinsic
def _f32_bits(typingctx, value):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def bits_f32(typingctx, value):
    """The float32 whose bits are a uint32 (compiled code only; kernels/dense.py uses it too)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@jit
def res_capacity(k):
    """Entries a reservoir of depth k holds before it is cut back to k."""
    return 2 * k + 16


@jit
def res_key(s, idx):
    """An admitted (score, id) as a reservoir entry: a uint64 larger for the better entry (s
    not NaN; ValueError for an id above RES_MAX_ID)."""
    if idx > RES_MAX_ID:
        raise ValueError("a reservoir top-k takes ids in [0, 2**31 - 1]")
    u = _f32_bits(s)
    neg0 = np.uint64(0)
    if u == _SIGN:  # -0.0
        u = np.uint32(0)
        neg0 = _ONE
    if u & _SIGN:
        u = ~u
    else:
        u = u | _SIGN
    return (np.uint64(u) << _SHIFT) | ((_MAX_ID64 - np.uint64(idx)) << _ONE) | neg0


@jit
def _res_entry(key):
    # uint64 key -> (score float32, id int64), the inverse of res_key
    low = key & _LOW
    u = np.uint32(key >> _SHIFT)
    if u & _SIGN:
        u = u & ~_SIGN
    else:
        u = ~u
    s = bits_f32(u)
    if low & _ONE:
        s = -s  # the flagged zero: -0.0
    return s, np.int64(_MAX_ID64 - (low >> _ONE))


@jit
def _res_partition(keys, lo, hi, p, equal):
    # Lomuto's partition of keys[lo:hi], advancing by the compare's result instead of
    # branching: the keys > p (equal: == p) first; returns where the others start
    i = lo
    for j in range(lo, hi):
        x = keys[j]
        keys[j] = keys[i]
        keys[i] = x
        i += np.int64(x == p) if equal else np.int64(x > p)
    return i


@jit
def _xorshift(state):
    # the next state of Marsaglia's xorshift64 (never 0 from a nonzero state)
    state ^= state << np.uint64(13)
    state ^= state >> np.uint64(7)
    state ^= state << np.uint64(17)
    return state


@jit
def _res_select(keys, m, k):
    """Reorder keys[:m] (m > k) so that keys[:k] hold the k largest: a quickselect. The pivot
    is the median of three keys drawn by a fixed pseudo-random sequence (the first, middle and
    last keys went quadratic on scores that fall and rise along the scan, a review's case:
    557 ms for one scan at k = 10,000); keys equal to the pivot are gathered in a second pass
    (all-equal keys end in one round). After 2 log2(m) + 8 rounds the rest is sorted
    (mergesort), so a cut costs O(m log m) at worst. The set kept does not depend on the
    pivots: keys that tie are the same entry's bits."""
    limit = 8
    n = m
    while n > 1:
        limit += 2
        n >>= 1
    _res_select_rounds(keys, m, k, limit)


@jit
def _res_select_rounds(keys, m, k, limit):
    # `_res_select` sorting the rest after `limit` rounds (only input built against the
    # fixed pivot sequence gets there; a test forces it with a small limit)
    lo = 0
    hi = m
    want = k
    state = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(m)
    rounds = 0
    while want > 0 and hi - lo > want:
        rounds += 1
        if rounds > limit:
            part = keys[lo:hi].copy()
            order = np.argsort(part, kind="mergesort")
            r = hi - lo
            for j in range(r):
                keys[lo + j] = part[order[r - 1 - j]]  # largest first
            return
        span = np.uint64(hi - lo)
        state = _xorshift(state)
        a = keys[lo + np.int64(state % span)]
        state = _xorshift(state)
        b = keys[lo + np.int64(state % span)]
        state = _xorshift(state)
        c = keys[lo + np.int64(state % span)]
        p = max(min(a, b), min(max(a, b), c))  # the median of three
        i = _res_partition(keys, lo, hi, p, False)
        if i - lo >= want:
            hi = i
            continue
        e = _res_partition(keys, i, hi, p, True)  # the keys equal to p follow the larger ones
        if e - lo >= want:
            return
        want -= e - lo
        lo = e


@jit
def res_init_floors(floors, k):
    """Empty reservoirs for floors.shape[0] queries of depth k, query g admitting only scores
    >= floors[g] (thr_s[g] = below(floors[g]), as an empty heap slot of `topk_init_floor`):
    keys, counts, thr_s, thr_i."""
    n = floors.shape[0]
    keys = np.empty((n, res_capacity(k)), dtype=np.uint64)
    counts = np.zeros(n, dtype=np.int64)
    thr_s = np.empty(n, dtype=np.float32)
    for g in range(n):
        thr_s[g] = below(floors[g])
    thr_i = np.full(n, -1, dtype=np.int64)
    return keys, counts, thr_s, thr_i


@jit
def res_cut(keys, counts, thr_s, thr_i, g, k):
    """Query g's reservoir is full: keep its best k and raise its threshold to the k-th.

    A scan appends an admitted row itself, in its own loop: ``c = counts[g]; keys[g, c] =
    res_key(s, idx); counts[g] = c + 1``, and calls this when c + 1 == keys.shape[1]. (The
    admission test and append written as a function, even inlined by Numba, made the gemma
    group scan at depth 10 / 100 / 200 take 51-54 / 73-80 / 95-125 us a query instead of 38.5
    / 51.4-51.9 / 63-66: measured twice, stop 40.)"""
    row = keys[g]
    _res_select(row, counts[g], k)
    counts[g] = k
    w = row[0]
    for j in range(1, k):
        w = min(w, row[j])
    thr_s[g], thr_i[g] = _res_entry(w)


@jit
def res_finish(keys, counts, k):
    """Each reservoir's k best, best first, padded with (-inf, -1): scores float32 (n, k) and
    ids int64 (n, k), what `topk_finish` gives for heaps fed the same rows."""
    n = counts.shape[0]
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    for g in range(n):
        c = counts[g]
        row = keys[g]
        if c > k:
            _res_select(row, c, k)
            c = k
        kept = np.sort(row[:c])
        for j in range(c):
            out_scores[g, j], out_ids[g, j] = _res_entry(kept[c - 1 - j])
    return out_scores, out_ids
