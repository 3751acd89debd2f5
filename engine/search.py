"""Search over a version's segments: prepare the queries once, scan every segment's layout,
merge the shortlists, re-rank the merged shortlist once from the dense files.

1. `Codec.plan` computes what depends on the queries only (normalisation, MRL, IVF probes
   and their biases, lookup tables): once per batch, whatever the number of segments.
2. Each segment's layout is scanned with those tables (`CodeIndex.scan`) for its best
   ``depth`` candidates; dead rows never come back (they are marked in the layout). The
   biggest segment goes first, and each later one only returns candidates reaching the
   depth-th best code score found before it (its scan's threshold): the others cannot
   make the merged shortlist.
3. The per-segment shortlists are merged by code score into the batch's best ``depth``,
   ties broken by the smaller user id (`kernels.topk.topk_positions`), so the result does
   not depend on how rows are split into segments.
4. With ``rerank``, the merged shortlist's exact vectors are read from the dense files —
   each file once per batch, its rows in ascending order, after asking the kernel for their
   pages when the batch is small (`prefetch`) — and the top k by exact score are returned,
   again ties by the smaller id.

Thread-safety: `search_segments` only reads the segments; several threads may search one
store at once (not while it commits).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import NamedTuple

import numpy as np

from ..kernels import dense as dense_kernels
from ..kernels.topk import (kth_best_update, tag_candidates, topk_positions,
                            topk_positions_batch)
from ..kernels.transform import normalize_rows
from .bounds import (DEFAULT_CONFIDENCE, ErrorModel, auto_cap, check_confidence, parse_auto, query_cosines,
                     query_norms)
from .errors import InvalidInput, QueriesUnlikeModel
from .codecs import Codec, CodeIndex, SearchResult, SearchStats
from .segments import Segment
from .threads import query_threads

__all__ = ["search_segments", "check_search_args", "pad_to_k", "merge_shortlists", "calibrate", "PARALLEL_MIN_QUERIES",
           "AUTO_STEP"]

# rerank="auto": rows per later round of the walk (engine/bounds.py `bounded_rerank`); a
# round's rows are fetched together (CPU prefetch), the first round's pages asked of the
# kernel ahead for small batches
AUTO_STEP = 4
# rerank="auto" on a few queries: rows past the first prefetch asked of the kernel together,
# at most this many more a time (`AutoWalk._resume`)
AUTO_AHEAD = 16

# rerank="auto"'s default calibration (`calibrate`): pseudo-queries are stored rows less a
# share of the rows' mean drawn in [0, PSEUDO_MEAN_SHARE) (1: no mean left; a little more
# reaches queries pointing away from it), the mean taken over MEAN_ROWS rows
PSEUDO_MEAN_SHARE = 1.25
MEAN_ROWS = 2048
# ... unless the mean is shorter than this share of the rows' norm (a centred corpus: the
# mean of 2,048 rows is then mostly sampling noise, about 0.02 of a row's norm)
MIN_MEAN_NORM = 0.1
# The code ranks an error model measures (`calibrate`): every rank a walk reads at its
# default cap for k <= 10 (bounds.auto_cap). Ranks past them take the deepest band measured;
# with 64 (before stop 49) ranks 64-99 took ranks 30-63's quantiles, and on small stores
# rerank="auto" lost up to 0.95% of the ids a fixed R = 100 found (RB1, 1,000 Gaussian rows
# of 24 dims, k = 5, at the default confidence; 0.3% now).
CALIBRATION_DEPTH = auto_cap(10)

PARALLEL_MIN_QUERIES = CodeIndex.PARALLEL_MIN_QUERIES
_RESCORE = {"ip": dense_kernels.RESCORE_IP, "cosine": dense_kernels.RESCORE_COSINE, "l2": dense_kernels.RESCORE_L2}


def check_search_args(codec: Codec, dense: str, k: object, nprobe: object, rerank: object, sdc: object,
                      confidence: object) -> tuple[int, int, int, bool, float]:
    """`Store.search`'s arguments checked against the store (codec, dense tier), with the
    defaults filled in: (k, nprobe, rerank depth or cap, auto?, confidence)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
    k = int(k)
    nlist = codec.nlist
    if nprobe is None:
        nprobe = max(1, nlist // 8)
    if not isinstance(nprobe, (int, np.integer)) or isinstance(nprobe, bool) or not 1 <= nprobe <= nlist:
        raise InvalidInput(f"nprobe must be an integer in 1..{nlist} (the store's IVF lists), found {nprobe!r}")
    if rerank is None:
        rerank = 0 if dense == "none" else max(50, 5 * k)
    auto = isinstance(rerank, str)
    if auto:
        rerank = parse_auto(rerank, k)
        if dense == "none":
            raise InvalidInput("rerank='auto' needs a dense tier; this store was created with dense=None")
    if confidence is not None and not auto:
        raise InvalidInput("confidence= applies to rerank='auto' only")
    confidence = DEFAULT_CONFIDENCE if confidence is None else check_confidence(confidence)
    if not isinstance(sdc, (bool, np.bool_)):
        raise InvalidInput(f"sdc: expected True or False, found {sdc!r}")
    if sdc and not codec.quantizer.has_sdc:
        raise InvalidInput(f"sdc=True needs an RB codec, found {codec.spec!r}")
    if sdc and auto:
        raise InvalidInput("rerank='auto' bounds the query's own code scores (sdc=False); sdc=True scores "
                           "have no error model: give a fixed depth (rerank=R) with sdc=True")
    if not isinstance(rerank, (int, np.integer)) or isinstance(rerank, bool) or rerank < 0:
        raise InvalidInput(f"rerank must be an integer >= 0, found {rerank!r}")
    if rerank and dense == "none":
        raise InvalidInput(f"rerank={rerank} needs a dense tier; this store was created with dense=None "
                           f"(use rerank=0)")
    if 0 < rerank < k:
        raise InvalidInput(f"rerank must be 0 or >= k={k} (it re-scores the R best candidates), found {rerank}")
    return k, int(nprobe), int(rerank), auto, confidence


def pad_to_k(out: SearchResult, k: int, metric: str, max_bytes: int) -> SearchResult:
    """A result as wide as the live rows padded up to k (id -1, the worst score, like
    faiss) unless the padding alone would exceed `max_bytes`."""
    nq = out.scores.shape[0]
    width = k if nq * k * 12 <= max_bytes else out.scores.shape[1]
    if out.scores.shape[1] == width:
        return out
    pad = width - out.scores.shape[1]
    scores = np.concatenate([out.scores, np.full((nq, pad), _worst(metric), dtype=np.float32)], axis=1)
    ids = np.concatenate([out.ids, np.full((nq, pad), -1, dtype=np.int64)], axis=1)
    return SearchResult(scores, ids, out.stats)


def shortlist_depth(k: int, rerank: int, live: int) -> int:
    """How many candidates a search shortlists by code score: max(k, rerank) (rerank: the
    fixed depth, or auto's cap), at most the live rows, at least 1."""
    return max(1, min(max(k, rerank), live))


def _worst(metric: str) -> float:
    return np.inf if metric == "l2" else -np.inf


def _shortlist(codec: Codec, segments: list[Segment], x: np.ndarray, depth: int, nprobe: int,
               sdc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The best `depth` candidates by code score over all segments: scores (nq, depth) in the
    user's convention, segment index, local row and user id (nq, depth) (-1 = empty), and the
    candidates scored. Planned by chunks of `Codec.queries_per_plan` queries, as
    `CodeIndex.search` plans, so a batch's tables stay within `CodeIndex.TABLE_BUDGET` (one
    plan of 10,000 cosine queries over PQ48x8 held 490 MB of float tables)."""
    rows = codec.queries_per_plan(nprobe, sdc)
    if x.shape[0] <= rows:
        return _shortlist_plan(codec, segments, x, depth, nprobe, sdc)
    parts = [_shortlist_plan(codec, segments, x[a : a + rows], depth, nprobe, sdc) for a in range(0, x.shape[0], rows)]
    return (*(np.concatenate([p[i] for p in parts]) for i in range(4)), sum(p[4] for p in parts))


def _shortlist_plan(codec: Codec, segments: list[Segment], x: np.ndarray, depth: int, nprobe: int,
                    sdc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """`_shortlist` of queries whose tables make one plan."""
    nq = x.shape[0]
    plan = codec._plan_rows(x, nprobe, sdc)  # x, nprobe and sdc were checked by the caller
    parts_s, parts_r, parts_g, parts_k = [], [], [], []
    candidates = 0
    # Biggest segment first; each later one is scanned above the depth-th best code score
    # found so far (a floor, `CodeIndex.scan`'s threshold): rows below it cannot make the shortlist,
    # and a small segment's heap would otherwise admit most of its candidates (16 segments
    # of 7,353 rows: 427 ms for 1,000 queries at depth 100 against 72 ms for one segment).
    # The layouts are scanned through `_scan` (the plan is this codec's): `scan`'s checks
    # and its threshold's conversion cost ~5-10 us a segment, a single query's whole scan
    # of a small segment as much.
    if len(segments) == 1:
        order = [0] if segments[0].live else []
    else:
        order = sorted((g for g, seg in enumerate(segments) if seg.live), key=lambda g: -segments[g].live)
    l2 = codec.metric == "l2"
    best = np.full((nq, depth), -np.inf, dtype=np.float32) if len(order) > 1 else None
    floors = np.full(nq, -np.inf, dtype=np.float32)  # the kernels' convention: larger is better
    with query_threads(nq, PARALLEL_MIN_QUERIES):  # the scans' thread policy (a caller's own scope nests)
        for g in order:
            seg = segments[g]
            s, r = seg.layout._scan(plan, min(depth, seg.live), floors)
            if best is not None:
                kth_best_update(best, -s if l2 else s, r)
                floors = np.ascontiguousarray(best[:, 0])
            candidates += seg.layout._candidates(plan.probes)
            seg_of, keys = tag_candidates(r, seg.ids, g)  # user ids: the merge's tie key
            parts_s.append(s)
            parts_r.append(r)
            parts_g.append(seg_of)
            parts_k.append(keys)
    if not parts_s:
        empty = np.full((nq, depth), -1, dtype=np.int64)
        return np.full((nq, depth), _worst(codec.metric), dtype=np.float32), empty, empty.copy(), empty.copy(), 0
    if len(parts_s) == 1 and parts_s[0].shape[1] == depth:
        return parts_s[0], parts_g[0], parts_r[0], parts_k[0], candidates
    out_s, out_k, (out_g, out_r) = merge_shortlists(codec.metric, parts_s, parts_k, [parts_g, parts_r], depth)
    return out_s, out_g, out_r, out_k, candidates


def merge_shortlists(metric: str, scores: list[np.ndarray], keys: list[np.ndarray], carried: list[list[np.ndarray]],
                     depth: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The best `depth` of several shortlists (nq, *) by score, ties by the smaller key
    (user id; -1 = empty): scores (float32), keys and each array of `carried` (parts aligned
    with `scores`) at the chosen positions, -1 (worst score) past the candidates. Scores are
    ranked in their own precision: float32 code scores, or float64 exact ones (a distributed
    auto search, engine/ray.py), whose float32 roundings may tie."""
    s = np.concatenate(scores, axis=1)
    k = np.concatenate(keys, axis=1)
    better = -s if metric == "l2" else s
    pick = (topk_positions_batch if s.shape[0] >= PARALLEL_MIN_QUERIES else topk_positions)(
        np.ascontiguousarray(better), k, depth)
    valid = pick >= 0
    safe = np.maximum(pick, 0)
    out_s = np.where(valid, np.take_along_axis(s, safe, 1), _worst(metric)).astype(np.float32)
    out_k = np.where(valid, np.take_along_axis(k, safe, 1), -1)
    return out_s, out_k, [np.where(valid, np.take_along_axis(np.concatenate(c, axis=1), safe, 1), -1)
                          for c in carried]


def _segments_in(seg_of: np.ndarray) -> list[int]:
    """The segment indices >= 0 in seg_of (int64 (nq, C), as every caller passes it),
    ascending (one segment, the usual case, in one compiled call)."""
    g = int(dense_kernels.sole_segment(seg_of))
    if g != -2:
        return [] if g < 0 else [g]
    return [int(v) for v in np.unique(seg_of[seg_of >= 0])]


def _locate(segments: list[Segment], seg_of: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Where each candidate's exact vector lives: index into the returned readers (-1 where
    seg_of < 0) and row within that dense file (-1 there too)."""
    present = _segments_in(seg_of)
    if len(present) == 1 and len(segments[present[0]].dense) == 1:  # the usual case, in fewer steps
        g = present[0]
        seg = segments[g]
        local = dense_kernels.mapped_rows(seg_of, rows, g, seg.dense_row)
        return np.minimum(local, 0), local, [seg.dense[0]]
    reader_ix = np.full(rows.shape, -1, dtype=np.int64)
    dense_row = np.full(rows.shape, -1, dtype=np.int64)
    readers: list = []
    slot: dict[int, int] = {}
    for g in present:
        seg = segments[g]
        at = seg_of == g
        f, r = seg.dense_location(rows[at])
        local_to_pool = np.array([slot.setdefault(id(rd), len(slot)) for rd in seg.dense], dtype=np.int64)
        for rd in seg.dense:
            if slot[id(rd)] == len(readers):
                readers.append(rd)
        reader_ix[at] = local_to_pool[f]
        dense_row[at] = r
    return reader_ix, dense_row, readers


def _exact(metric: str, segments: list[Segment], x: np.ndarray, seg_of: np.ndarray, rows: np.ndarray,
           prefetch: bool | None, located: tuple | None = None) -> tuple[np.ndarray, int, int]:
    """Exact scores (user's convention, float64 (nq, C)) of the candidates whose segment
    index is >= 0, reading each dense file once (rows ascending); others are 0. Returns
    (scores, rows read, bytes read). `located`: `_locate`'s answer, when the caller has it."""
    parallel = x.shape[0] >= PARALLEL_MIN_QUERIES
    reader_ix, dense_row, readers = _locate(segments, seg_of, rows) if located is None else located
    exact = np.zeros(rows.shape, dtype=np.float64)
    rescore = dense_kernels.dense_rescore_batch if parallel else dense_kernels.dense_rescore
    kind = _RESCORE[metric]
    # one file: dense_row is already -1 wherever reader_ix is
    parts = [(0, dense_row)] if len(readers) == 1 else [(j, np.where(reader_ix == j, dense_row, -1))
                                                        for j in range(len(readers))]
    for (j, local), hint in zip(parts, _hints(prefetch, x.shape[0], readers)):
        if hint:
            readers[j].will_need(local)  # -1 (not this file) is skipped
    n_rows = n_bytes = 0
    for j, local in parts:
        reader = readers[j]
        n = int(rescore(x, reader.values, np.ascontiguousarray(local), kind, exact))
        reader.note_read(n)
        n_rows += n
        n_bytes += n * reader.info.row_bytes
    return exact, n_rows, n_bytes


def _hints(prefetch: bool | None, nq: int, readers: list) -> list[bool]:
    """Per dense file, whether to ask the kernel for the rows' pages before reading them: as
    `prefetch` says, or (None) for fewer than PARALLEL_MIN_QUERIES queries, each file unless
    it was found cached at the last look (`DenseReader.cached`)."""
    if prefetch is not None:
        return [bool(prefetch)] * len(readers)
    if nq >= PARALLEL_MIN_QUERIES:
        return [False] * len(readers)
    return [not reader.cached() for reader in readers]


def _rerank(metric: str, segments: list[Segment], x: np.ndarray, seg_of: np.ndarray, rows: np.ndarray,
            ids: np.ndarray, k: int, prefetch: bool | None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Exact top-k of the shortlist, reading each dense file once (rows ascending). A few
    queries whose candidates lie in one dense file (the usual store) re-score and take
    their top k in one compiled call (`dense_kernels.rerank_rows`) instead of `_exact`'s
    steps and a second call (about 20 us of a lone query's search with the numpy steps
    `_locate` had then)."""
    nq = x.shape[0]
    located = _locate(segments, seg_of, rows)
    readers = located[2]
    if nq < PARALLEL_MIN_QUERIES and len(readers) == 1:
        reader, local = readers[0], located[1]  # local: -1 wherever the candidate is not located
        if _hints(prefetch, nq, readers)[0]:
            reader.will_need(local)
        top_s, top_i, n_rows = dense_kernels.rerank_rows(x, reader.values, local, ids, k, _RESCORE[metric])
        n_rows = int(n_rows)
        reader.note_read(n_rows)
        return top_s.astype(np.float32), top_i, n_rows, n_rows * reader.info.row_bytes
    exact, n_rows, n_bytes = _exact(metric, segments, x, seg_of, rows, prefetch, located)
    topk = dense_kernels.rerank_topk_batch if x.shape[0] >= PARALLEL_MIN_QUERIES else dense_kernels.rerank_topk
    top_s, top_i = topk(exact, ids, k, metric == "l2")
    return top_s, top_i, n_rows, n_bytes


def _scales(segments: list[Segment], seg_of: np.ndarray, rows: np.ndarray, per_row: bool) -> np.ndarray:
    """sigma_i of each candidate (engine/bounds.py): its segment's row error, or 1."""
    sigma = np.ones(rows.shape, dtype=np.float64)
    if per_row:
        for g in _segments_in(seg_of):
            errors = segments[g].errors
            if errors is None:
                raise ValueError("per-row error scales asked of a segment without them")
            at = seg_of == g
            sigma[at] = errors[rows[at]]
    return sigma


def per_row_scales(segments: list[Segment]) -> bool:
    """Whether every live segment has per-row error scales (an error model is per row)."""
    live = [seg for seg in segments if seg.live]
    return bool(live) and all(seg.errors is not None for seg in live)


def calibrate(codec: Codec, metric: str, segments: list[Segment], *, nprobe: int, n_queries: int = 256,
              depth: int = CALIBRATION_DEPTH, seed: int = 0, queries: np.ndarray | None = None) -> ErrorModel | None:
    """The error model of engine/bounds.py measured on this store. By default `n_queries`
    pseudo-queries made from live rows drawn at random (seeded: the same store gives the
    same model): row x less a share a of the rows' mean m, a drawn in [0,
    `PSEUDO_MEAN_SHARE`) per query (the search normalises cosine queries), so that the
    calibration spans queries less aligned with the corpus than its own rows are; m is the
    mean of max(n_queries, `MEAN_ROWS`) rows drawn with them (rows of zero norm left out).
    Their best `depth` candidates by code score (the source row left out) are re-scored
    exactly, and the model fits the error's mean and spread as lines in the query's cosine
    to m (`ErrorModel.fit`, "Queries unlike the rows" in engine/bounds.py). Reads about
    MEAN_ROWS + n_queries * (depth + 1) rows of the dense tier (about 28,000), once.

    The rows themselves serve, with no covariate, when m is shorter than `MIN_MEAN_NORM` of
    the rows' norm (a centred corpus) and under MRL, whose error is the truncated tail's: it
    follows the query's own tail, not its alignment with the mean (on wordnet-gemma
    MRL384,RB1 the pseudo-queries' errors sat above real queries' of the same cosine, and
    auto read 95 rows a query at confidence 0.99 instead of 74). With `queries` (float32
    (nq, dim), checked by the caller) those serve instead, every one of them, nothing left
    out, no covariate. None when the store is too small to measure (fewer than
    `bounds.MIN_PAIRS` pairs)."""
    live = [seg for seg in segments if seg.live]
    counts = np.array([seg.live for seg in live], dtype=np.int64)
    total = int(counts.sum())
    if total < 2 or not all(seg.dense for seg in live):
        return None
    if queries is not None:
        return _fit_pairs(codec, metric, segments, np.ascontiguousarray(queries, dtype=np.float32),
                          np.full(len(queries), -1, dtype=np.int64), min(depth, total), nprobe)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(total, size=min(max(n_queries, MEAN_ROWS), total), replace=False)
    picks = np.sort(drawn)
    starts = np.concatenate([[0], np.cumsum(counts)])
    vecs, own = [], []
    for j, seg in enumerate(live):
        mine = picks[(picks >= starts[j]) & (picks < starts[j + 1])] - starts[j]
        if not mine.size:
            continue
        local = seg.live_rows()[mine]
        vecs.append(seg.vectors(local, codec.dim))
        own.append(seg.ids[local])
    rows = np.concatenate(vecs)
    own_id = np.concatenate(own)
    if metric == "cosine":  # as the codec sees them (zero rows stay zero)
        rows = normalize_rows(rows)
    rows = rows.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    usable = norms > 0  # an f16 dense row can round to zeros: no direction, no query
    mean = rows[usable].mean(axis=0) if usable.any() else np.zeros(rows.shape[1])
    # the query rows: the first n_queries drawn (a random subset of the rows read)
    take = np.searchsorted(picks, drawn[:n_queries])
    take = take[usable[take]]
    share = rng.uniform(0.0, PSEUDO_MEAN_SHARE, size=take.size)
    norm = float(np.linalg.norm(mean))
    direction = None
    if codec.mrl is None and usable.any() and norm >= MIN_MEAN_NORM * float(norms[usable].mean()):
        direction = mean / norm
    else:  # MRL, or a (nearly) centred corpus: the rows themselves (see the docstring)
        share[:] = 0.0
    # (cosine queries are normalised by the search itself; a row that is exactly its share
    # of the mean would leave a zero query, which cosine refuses: the row serves instead)
    base = rows[take]
    x = base - share[:, None] * mean[None, :]
    zero = ~x.any(axis=1)
    x[zero] = base[zero]
    return _fit_pairs(codec, metric, segments, np.ascontiguousarray(x, dtype=np.float32), own_id[take],
                      min(depth + 1, total), nprobe, direction)


def _fit_pairs(codec: Codec, metric: str, segments: list[Segment], x: np.ndarray, own_id: np.ndarray, depth: int,
               nprobe: int, direction: np.ndarray | None = None) -> ErrorModel | None:
    """`calibrate`'s model from queries x: their best `depth` candidates by code score, but
    for the id `own_id` of each (-1: none), re-scored exactly; with `direction`, the error's
    mean and spread fitted in each query's cosine to it (`ErrorModel.fit`)."""
    with query_threads(x.shape[0], PARALLEL_MIN_QUERIES):
        est, seg_of, rows, ids, _ = _shortlist(codec, segments, x, depth, nprobe, False)
        keep = (ids >= 0) & (ids != own_id[:, None])
        seg_of = np.where(keep, seg_of, -1)
        exact, _, _ = _exact(metric, segments, x, seg_of, rows, False)
    sign = -1.0 if metric == "l2" else 1.0
    per_row = per_row_scales(segments)
    qn = query_norms(metric, x)
    scale = qn[:, None] * _scales(segments, seg_of, rows, per_row)
    ranks = np.cumsum(keep, axis=1) - 1  # each pair's rank among its query's candidates
    u = None
    if direction is not None:
        u = np.broadcast_to(query_cosines(x, direction)[:, None], est.shape)
    return ErrorModel.fit(np.where(keep, sign * exact, np.nan), sign * est.astype(np.float64), scale, per_row,
                          ranks, u=u, direction=direction, scores=codec.score_rule,
                          q_min=_calibrated_q_min(metric, qn, keep))


def _calibrated_q_min(metric: str, qn: np.ndarray, keep: np.ndarray) -> float:
    """`ErrorModel.q_min`: under l2 the smallest norm of the queries that gave pairs (a zero
    query gives none: a floor of 0 would be no floor), else 0."""
    gave = qn[(qn > 0) & keep.any(axis=1)]
    return float(gave.min()) if metric == "l2" and gave.size else 0.0


def _will_need(readers: list, reader_ix: np.ndarray, dense_row: np.ndarray, order: np.ndarray, start: np.ndarray,
               stop: np.ndarray) -> None:
    """Ask the kernel for the pages of candidates order[i, start[i]:stop[i]] of each of a few
    queries, all at once (their reads then run together instead of one page fault after
    another); files whose reader is None are skipped."""
    picks = [order[i, start[i]:stop[i]] for i in range(order.shape[0])]
    rows = np.concatenate([dense_row[i, c] for i, c in enumerate(picks)])
    if not rows.size:
        return
    if len(readers) == 1:  # (never None: one file not hinted means no fetching walk)
        readers[0].will_need(rows)
        return
    ix = np.concatenate([reader_ix[i, c] for i, c in enumerate(picks)])
    for j, reader in enumerate(readers):
        if reader is not None:  # None: a file not to hint (`_hints`)
            reader.will_need(rows[ix == j])


def _first_reads(readers, reader_ix, dense_row, order, up_sorted, n_valid, better, valid, k) -> np.ndarray:
    """Ask the kernel for the pages of the rows the walk will probably read, together: the
    first round, and every candidate whose upper bound reaches the k-th best code score (the
    walk's final k-th exact score is near it). They are a prefix of each query's order (by
    upper bound); returns its length per query."""
    kk = min(k, better.shape[1])
    guess = -np.partition(-np.where(valid, better, -np.inf), kk - 1, axis=1)[:, kk - 1]
    avail = np.minimum(np.maximum((up_sorted >= guess[:, None]).sum(axis=1), k), n_valid).astype(np.int64)
    _will_need(readers, reader_ix, dense_row, order, np.zeros(order.shape[0], dtype=np.int64), avail)
    return avail


_HERE = os.path.dirname(os.path.abspath(__file__))


def warn_if_unlike(over: int, rows: int, confidence: float) -> None:
    """Warn (`QueriesUnlikeModel`) when `over` of the `rows` a search read beat their upper
    bound, where a calibrated model lets about (1 - confidence) of them: beyond that
    expectation plus five binomial deviations plus 5, so that a lone query or a
    model that holds never warns. On synthetic queries from another distribution than the
    rows, auto lost 0.5-4.9% of the true top-10 with no sign (stop 54's review); there,
    2-30% of the rows read beat their bound."""
    expected = (1.0 - confidence) * rows
    if over > expected + 5.0 * math.sqrt(expected) + 5.0:
        level, frame = 1, sys._getframe(1)  # the caller's line: the first frame outside engine/
        while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE:
            level, frame = level + 1, frame.f_back
        warnings.warn(QueriesUnlikeModel(
            f"rerank='auto': {over:,} of the {rows:,} rows read scored above their upper bound, where the error "
            f"model allows about {expected:,.1f} at confidence {confidence:g}: these queries differ from those it was "
            "measured on, and answers may miss true neighbours. Measure it on a few hundred of them: "
            "Store.calibrate(sample) (vecz calibrate STORE --sample SAMPLE)"), stacklevel=level + 1)


class AutoResult(NamedTuple):
    """What an `AutoWalk` found: the top-k's exact scores (float64, the user's convention)
    and ids, rows and bytes read, rows read per query, and per query the k-th exact score
    `tau` and `reach`, the best score a row beyond the shortlist could have by the bounds
    (both larger-is-better; reach -inf where the shortlist was not full or nothing was
    measured): a query with reach >= tau is counted in ``SearchStats.capped``."""

    scores: np.ndarray
    ids: np.ndarray
    rows: int
    bytes: int
    per_query: np.ndarray
    tau: np.ndarray
    reach: np.ndarray
    over: int = 0  # rows read whose exact score beat their upper bound (`bound_exceeded`)
    checked: int = 0  # rows read at ranks the model measured, of which `over` counts

    @classmethod
    def empty(cls, nq: int, k: int, metric: str) -> "AutoResult":
        """Nothing found and nothing read (no candidate, or no live row)."""
        none = np.full(nq, -np.inf)
        return cls(np.full((nq, k), _worst(metric)), np.full((nq, k), -1, dtype=np.int64), 0, 0,
                   np.zeros(nq, dtype=np.int64), none, none.copy())


class AutoWalk:
    """A ``rerank="auto"`` walk over one shortlist (engine/bounds.py), its candidates ordered
    by upper bound and located in the dense files. `run` walks it to the end (one store, or
    one shard's own walk). A shard of a distributed search (engine/ray.py) walks in two
    parts instead: `seed` reads its first few candidates, and once the seeds of every shard
    are known, `finish` reads the rest that can still reach the k-th best of them (the
    floor) or its own k-th exact score, whichever is higher. With `suffix_max` each rank's
    upper offset is the largest of its own and every later rank's: a shard's shortlist ranks
    its rows at least as well as the whole store's would, and so never bounds them tighter
    than the store would."""

    def __init__(self, metric: str, segments: list[Segment], x: np.ndarray, est: np.ndarray, seg_of: np.ndarray,
                 rows: np.ndarray, ids: np.ndarray, k: int, model: ErrorModel | None, confidence: float,
                 prefetch: bool | None, suffix_max: bool = False) -> None:
        sign = -1.0 if metric == "l2" else 1.0
        self.metric, self.segments, self.x, self.ids, self.k, self.model = metric, segments, x, ids, k, model
        self.est = est  # code scores, the user's convention (nq, C), best first
        self.limit: np.ndarray | None = None  # `finish`'s cap: the shortlist ranks it may read
        self.valid = valid = ids >= 0
        self.better = sign * est.astype(np.float64)
        if model is None:  # nothing measured: every candidate may matter
            z_hi, self.per_row = np.full((x.shape[0], est.shape[1]), 1e300), False
        else:  # the upper offset of each rank in the shortlist (shortlists are best first), per query
            z_hi, self.per_row = model.query_upper(confidence, est.shape[1], x), model.per_row
            if suffix_max:
                z_hi = np.maximum.accumulate(z_hi[:, ::-1], axis=1)[:, ::-1]
        self.z_hi = z_hi
        self.qn = query_norms(metric, x) if model is None else model.query_scales(metric, x)
        self.scale = scale = self.qn[:, None] * _scales(segments, seg_of, rows, self.per_row)
        # the walk (engine/bounds.py `bounded_rerank`, compiled in kernels/dense.py): its
        # candidates by upper bound better + z_hi * scale, best first
        self.order, self.up_sorted, self.n_valid = dense_kernels.walk_order(
            self.better, np.ascontiguousarray(z_hi, dtype=np.float64), np.ascontiguousarray(scale, dtype=np.float64),
            valid)
        self.reader_ix, self.dense_row, self.readers = _locate(segments, np.where(valid, seg_of, -1), rows)
        nq = x.shape[0]
        self.exact = np.zeros(valid.shape, dtype=np.float64)
        self.done = np.zeros(valid.shape, dtype=bool)
        self.tau = np.full(nq, -np.inf)  # the final k-th exact score (larger-is-better)
        self.top: np.ndarray | None = None  # a walk in parts: its state (kernels/dense.py)
        self.state: np.ndarray | None = None
        if not self.readers:  # no candidate
            return
        self.vectors = dense_kernels.vector_list(self.readers[0].values)
        for reader in self.readers[1:]:
            self.vectors.append(reader.values)
        self.hinted = [reader if hint else None
                       for reader, hint in zip(self.readers, _hints(prefetch, nq, self.readers))]
        self.fetch = any(r is not None for r in self.hinted)

    def _args(self) -> tuple:
        return (self.x, self.vectors, self.reader_ix, self.dense_row, self.order, self.up_sorted, self.n_valid,
                self.k, AUTO_STEP, _RESCORE[self.metric], self.exact, self.done, self.tau)

    def _hint(self, start: np.ndarray, stop: np.ndarray) -> None:
        _will_need(self.hinted, self.reader_ix, self.dense_row, self.order, start, stop)

    def _start(self, seeds: int) -> None:
        nq = self.x.shape[0]
        self.top = np.empty((nq, self.k))
        self.state = np.empty((nq, dense_kernels.WALK_STATE), dtype=np.int64)
        dense_kernels.walk_seed(self.k, self.n_valid, seeds, self.top, self.state)

    def _resume_to(self, avail: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """One call of the resumable walk (parallel for a batch) up to `avail`: the walks
        that paused."""
        nq = self.x.shape[0]
        resume = (dense_kernels.bounded_walk_resume_batch if nq >= PARALLEL_MIN_QUERIES
                  else dense_kernels.bounded_walk_resume)
        return resume(*self._args(), self.top, self.state, avail, np.ones(nq, dtype=bool) if active is None else active)

    def _resume(self, avail: np.ndarray) -> None:
        """Advance the walk in parts (`top`, `state`) to its end. For a few queries whose
        rows may not be in the page cache it pauses before a round past `avail` (the pages
        asked for), and the pages of the next candidates it can still reach, up to
        `AUTO_AHEAD` more, are asked for together: a row the walk reads is never a page
        fault of its own, one storage round trip after another. Reads what `bounded_walk`
        reads."""
        nq = self.x.shape[0]
        if nq >= PARALLEL_MIN_QUERIES or not self.fetch:  # a batch, or cached: no pause
            if self.fetch:
                self._hint(self.state[:, 1], self.state[:, 3])
            self._resume_to(self.n_valid)
            return
        active = np.ones(nq, dtype=bool)
        while True:
            active = self._resume_to(avail, active)
            if not active.any():
                return
            st = self.state
            ahead = np.minimum(np.maximum(st[:, 2], np.minimum(st[:, 3], avail + AUTO_AHEAD)), self.n_valid)
            ahead = np.where(active, ahead, avail)
            self._hint(avail, ahead)
            avail = ahead

    def run(self) -> AutoResult:
        """The whole walk, as one store runs it."""
        nq = self.x.shape[0]
        if not self.readers:
            return AutoResult.empty(nq, self.k, self.metric)
        if self.fetch:
            # the pages of the rows it will probably read, asked for together before it starts
            avail = _first_reads(self.hinted, self.reader_ix, self.dense_row, self.order, self.up_sorted,
                                 self.n_valid, self.better, self.valid, self.k)
            if nq < PARALLEL_MIN_QUERIES:
                self._start(self.k)
                self._resume(avail)
                return self.result(self.state[:, 1].copy())
        # a batch (its rows' pages are faulted by several threads at once), or cached
        walk = dense_kernels.bounded_walk_batch if nq >= PARALLEL_MIN_QUERIES else dense_kernels.bounded_walk
        return self.result(walk(*self._args()))

    def seed(self, seeds: int) -> AutoResult:
        """Read the first `seeds` candidates by upper bound (fewer where the shortlist is
        shorter) and pause: the `AutoResult` of those rows alone."""
        nq = self.x.shape[0]
        if not self.readers:
            return AutoResult.empty(nq, self.k, self.metric)
        self._start(seeds)
        avail = self.state[:, 2].copy()
        if self.fetch:
            self._hint(np.zeros(nq, dtype=np.int64), avail)
        self._resume_to(avail)
        return self.result(self.state[:, 1].copy(), note=False)

    def finish(self, floor: np.ndarray, limit: np.ndarray | None = None) -> AutoResult:
        """After `seed` (or from the start if it was not run): read every further candidate
        whose upper bound reaches max(floor, this walk's own k-th exact score), floor (nq,)
        float64 larger-is-better (-inf: none); with `limit` (nq,) only candidates at
        shortlist rank < limit[i] (rows read already stay read). Returns everything read,
        the seeds included."""
        nq = self.x.shape[0]
        if not self.readers:
            return AutoResult.empty(nq, self.k, self.metric)
        if self.state is None:
            self._start(0)
        if limit is not None:
            self._restrict(np.asarray(limit, dtype=np.int64))
        dense_kernels.walk_floor(self.top, self.state, self.up_sorted, self.n_valid, self.k, AUTO_STEP,
                                 np.ascontiguousarray(floor, dtype=np.float64))
        self._resume(self.state[:, 1].copy())
        return self.result(self.state[:, 1].copy())

    def _restrict(self, limit: np.ndarray) -> None:
        """Leave out of the rest of the walk the candidates at shortlist rank >= limit[i]:
        the order keeps the rows read (a prefix), then the others it may still read by upper
        bound as before, then those left out, past n_valid."""
        c = self.valid.shape[1]
        pos = np.arange(c)[None, :]
        allowed = np.take_along_axis(self.valid & (pos < limit[:, None]), self.order, axis=1)
        key = np.where(pos < self.state[:, 1:2], 0, np.where(allowed, 1, 2))
        perm = np.argsort(key, axis=1, kind="stable")
        self.order = np.ascontiguousarray(np.take_along_axis(self.order, perm, axis=1))
        self.up_sorted = np.ascontiguousarray(np.take_along_axis(self.up_sorted, perm, axis=1))
        self.n_valid = (key <= 1).sum(axis=1).astype(np.int64)
        self.limit = limit

    def result(self, per_query: np.ndarray, note: bool = True) -> AutoResult:
        """The top-k of the rows read so far, their counts (each dense file's reader counts
        them when `note`), tau and reach."""
        done, nq, k = self.done, self.x.shape[0], self.k
        user, keep, counts = dense_kernels.walk_read(done, self.exact, self.ids, self.reader_ix, len(self.readers),
                                                     _RESCORE[self.metric])
        topk = dense_kernels.rerank_topk64_batch if nq >= PARALLEL_MIN_QUERIES else dense_kernels.rerank_topk64
        top_s, top_i = topk(user, keep, k, self.metric == "l2")
        n_rows = n_bytes = 0
        for reader, n in zip(self.readers, counts):
            n = int(n)
            if note:
                reader.note_read(n)
            n_rows += n
            n_bytes += n * reader.info.row_bytes
        reach = np.full(nq, -np.inf)
        c = self.better.shape[1]
        if self.model is not None and c:
            # a row beyond the shortlist scored at most the last candidate's code score; with
            # a `limit`, a row left out at most the first left out's
            sigma_max = max((seg.error_max if self.per_row else 1.0) for seg in self.segments if seg.live)
            # a shortlist holding every live row leaves none beyond it
            full = self.valid[:, -1] & (sum(seg.live for seg in self.segments) > c)
            code, z = self.better[:, -1], self.z_hi[:, -1]
            if self.limit is not None:  # the first row left out, where there is one in the shortlist
                cut = self.limit < c
                at = np.minimum(self.limit, c - 1)[:, None]
                left, code_at, z_at = (np.take_along_axis(a, at, axis=1)[:, 0]
                                       for a in (self.valid, self.better, self.z_hi))
                full = np.where(cut, left, full)
                code, z = np.where(cut, code_at, code), np.where(cut, z_at, z)
            # (an offset below zero, which a query's shift allows, is largest at the smallest
            # scale: 0 stands for it)
            reach = np.where(full, code + np.maximum(z, 0.0) * self.qn * sigma_max, -np.inf)
        over, checked = self._over()
        return AutoResult(top_s, top_i, n_rows, n_bytes, per_query, self.tau.copy(), reach, over, checked)

    def _over(self) -> tuple[int, int]:
        """(rows read whose exact score beat their upper bound beyond float32 rounding, rows
        read), both at the shortlist ranks the model measured: a calibrated model lets about
        (1 - confidence) of them do so."""
        if self.model is None or not self.done.any():
            return 0, 0
        # only ranks the model measured: deeper ones (read because k is large) take the last
        # band's offset, which they beat often whatever the queries (a review saw k = 5000
        # over 4,000 rows warn with recall 1.0)
        depth = self.model.measured_depth() or self.done.shape[1]
        done = self.done[:, :depth]
        upper = self.better[:, :depth] + self.z_hi[:, :depth] * self.scale[:, :depth]
        over = done & (self.exact[:, :depth] > upper + 1e-6 * (1.0 + np.abs(upper)))
        return int(np.count_nonzero(over)), int(np.count_nonzero(done))


def _auto_rerank(metric: str, segments: list[Segment], x: np.ndarray, est: np.ndarray, seg_of: np.ndarray,
                 rows: np.ndarray, ids: np.ndarray, k: int, model: ErrorModel | None, confidence: float,
                 prefetch: bool | None) -> AutoResult:
    """`rerank="auto"` over a shortlist (engine/bounds.py): the whole walk (`AutoWalk.run`)."""
    return AutoWalk(metric, segments, x, est, seg_of, rows, ids, k, model, confidence, prefetch).run()


def _shard_walk(codec: Codec, metric: str, segments: list[Segment], x: np.ndarray, k: int, nprobe: int, cap: int,
                model: ErrorModel | None, confidence: float, prefetch: bool | None) -> tuple[AutoWalk | None, int]:
    """A shard's walk over its own shortlist of `cap` (None: no query or no live row) and
    the codes scored."""
    live = sum(s.live for s in segments)
    if x.shape[0] == 0 or live == 0:
        return None, 0
    scores, seg_of, rows, ids, candidates = _shortlist(codec, segments, x, shortlist_depth(k, cap, live), nprobe,
                                                       False)
    walk = AutoWalk(metric, segments, x, scores, seg_of, rows, ids, min(k, live), model, confidence, prefetch,
                    suffix_max=True)
    return walk, int(candidates)


def shard_auto(codec: Codec, metric: str, segments: list[Segment], x: np.ndarray, k: int, *, nprobe: int, cap: int,
               model: ErrorModel | None, confidence: float, prefetch: bool | None) -> tuple[AutoResult, int]:
    """A shard's part of a distributed ``rerank="auto"`` search (engine/ray.py) in one round,
    as a store of one shard runs it: the walk over this shard's shortlist of `cap`, each
    rank's upper offset raised to the largest of the ranks after it (`AutoWalk`'s
    `suffix_max`). Returns its `AutoResult` and the codes scored. x float32 (nq, dim),
    checked; k and cap are clamped to the shard's live rows (its top-k may be narrower)."""
    with query_threads(x.shape[0], PARALLEL_MIN_QUERIES):
        walk, candidates = _shard_walk(codec, metric, segments, x, k, nprobe, cap, model, confidence, prefetch)
        return (AutoResult.empty(x.shape[0], k, metric) if walk is None else walk.run()), candidates


def shard_auto_seed(codec: Codec, metric: str, segments: list[Segment], x: np.ndarray, k: int, *, nprobe: int,
                    cap: int, model: ErrorModel | None, confidence: float, prefetch: bool | None,
                    seeds: int) -> tuple[AutoWalk | None, AutoResult, int]:
    """The first of a shard's two rounds of a distributed ``rerank="auto"`` search
    (engine/ray.py): the walk of `shard_auto`, of which it reads the first `seeds`
    candidates by upper bound. Returns the walk, paused (`shard_auto_finish` goes on; None:
    no query or no live row), the seed rows' `AutoResult` and the codes scored."""
    with query_threads(x.shape[0], PARALLEL_MIN_QUERIES):
        walk, candidates = _shard_walk(codec, metric, segments, x, k, nprobe, cap, model, confidence, prefetch)
        if walk is None:
            return None, AutoResult.empty(x.shape[0], k, metric), 0
        return walk, walk.seed(seeds), candidates


def seeded_shortlist(walk: AutoWalk | None, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded walk's shortlist, code scores (the user's convention) and ids best first,
    for `ray.auto_limits`; (nq, 0) each without a walk (no live row)."""
    if walk is None:
        return np.zeros((nq, 0), dtype=np.float32), np.zeros((nq, 0), dtype=np.int64)
    return walk.est, walk.ids


def shard_auto_finish(walk: AutoWalk | None, floor: np.ndarray, nq: int, k: int, metric: str,
                      limit: np.ndarray | None = None) -> AutoResult:
    """The second round: `walk` (`shard_auto_seed`'s) reads every further candidate whose
    upper bound reaches max(floor, its own k-th exact score); floor (nq,) float64
    larger-is-better, the k-th best exact score of every shard's seeds; `limit` (nq,), if
    given, the length of the prefix of its shortlist it may read from (its part of the
    store's shortlist). Returns what the walk read in both rounds."""
    if walk is None:
        return AutoResult.empty(nq, k, metric)
    with query_threads(nq, PARALLEL_MIN_QUERIES):
        return walk.finish(floor, limit)


def search_segments(codec: Codec, metric: str, segments: list[Segment], x: np.ndarray, k: int, *, nprobe: int,
                    rerank: int, sdc: bool = False, prefetch: bool | None = None,
                    bound: tuple[ErrorModel | None, float] | None = None) -> SearchResult:
    """Top-k of float32 queries `x` (already checked) over `segments` (see the module
    docstring). `rerank` = 0: code scores; else the best `rerank` by code score re-scored
    exactly, or with ``bound=(model, confidence)`` only those of them that can still change
    the top-k (engine/bounds.py; `rerank` is then the cap). k and rerank may exceed the
    live rows: slots past them hold -1."""
    nq = x.shape[0]
    live = sum(s.live for s in segments)
    scan_depth = shortlist_depth(k, rerank, live)
    if nq == 0 or live == 0:
        codec._prepare_rows(x, "queries")  # the checks a search of rows makes (zero rows, norms), answer or not
        scores = np.full((nq, k), _worst(metric), dtype=np.float32)
        return SearchResult(scores, np.full((nq, k), -1, dtype=np.int64), SearchStats(0, 0))
    # One thread policy for the whole search: plan, the scan of every segment and the
    # re-rank (their own scopes nest inside it at no cost), instead of one scope per call.
    with query_threads(nq, PARALLEL_MIN_QUERIES):
        scores, seg_of, rows, ids, candidates = _shortlist(codec, segments, x, scan_depth, nprobe, sdc)
        probes = nq * codec.lists_probed(nprobe)
        stats = SearchStats(candidates, probes)
        if not rerank:
            out_s = np.full((nq, k), _worst(metric), dtype=np.float32)
            out_i = np.full((nq, k), -1, dtype=np.int64)
            w = min(k, scores.shape[1])
            out_s[:, :w], out_i[:, :w] = scores[:, :w], ids[:, :w]
            return SearchResult(out_s, out_i, stats)
        if bound is not None:
            got = _auto_rerank(metric, segments, x, scores, seg_of, rows, ids, k, bound[0], bound[1], prefetch)
            capped = int(np.count_nonzero(got.reach >= got.tau))
            warn_if_unlike(got.over, got.checked, bound[1])  # (nothing counted without a model)
            return SearchResult(got.scores.astype(np.float32), got.ids, stats._replace(
                rows_read=got.rows, bytes_read=got.bytes, rows_per_query=got.per_query, capped=capped,
                bound_exceeded=got.over))
        top_s, top_i, n_rows, n_bytes = _rerank(metric, segments, x, seg_of, rows, ids, k, prefetch)
    return SearchResult(top_s, top_i, stats._replace(rows_read=n_rows, bytes_read=n_bytes))
