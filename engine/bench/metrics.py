"""How quality and speed are measured (DESIGN.md), and how measured rows are judged.

Role and contract. `recall_at` is THE definition of recall@r in vecz: the library's
benchmark, the tests (tests/conftest.py re-exports it) and the scripts in bench/ all use
it. `time_batch` / `time_single` time a search function the same way for vecz and faiss.
`BenchResult` holds the rows a run produced (JSON-ready dicts, one per spec x re-ranking
depth R); `pareto_front`, `best_per_budget` and `best_compressed` read them. Nothing here
builds a store or imports faiss or matplotlib.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..codecs import parse_spec
from ..errors import InvalidInput

__all__ = [
    "ID_BYTES",
    "recall_at",
    "recall_ats",
    "quality_at",
    "LATENCY_QUERIES",
    "time_batch",
    "time_single",
    "BenchResult",
    "pareto_front",
    "NEAR_BEST",
    "best_per_budget",
    "EXAMPLE_RECALL",
    "best_compressed",
    "depth_key",
    "miss_rate",
    "depth_rows",
    "truth_ranks",
    "least_rows",
]


def depth_key(r: int | str) -> tuple[int, int]:
    """Sort key of a re-ranking depth: fixed depths by R, then ``auto:R`` by its cap."""
    if isinstance(r, str):
        return 1, int(r.partition(":")[2] or 0)
    return 0, int(r)


def depth_rows(row: dict[str, Any]) -> float:
    """Rows a result row re-ranks per query: R, or what ``auto`` read on average."""
    r = row.get("rerank", 0)
    if isinstance(r, str):
        return float(row.get("rows_read_per_query") or 0.0)
    return float(r)

# bytes/vector = code bytes + the int64 id a store keeps per row (DESIGN.md's measure, for
# faiss's twin too: its IVF lists keep ids, its flat indexes number rows by position; the
# RAM columns measure what each holds).
ID_BYTES = 8

# Latency is measured on at most this many queries sent one at a time (each call pays the
# per-call Python overhead a single-query user pays).
LATENCY_QUERIES = 200

# Batch timing: at least one round, then repeat the whole batch until this many seconds
# are spent (a 200-query batch on the sample takes ~10 ms, too short to time once on a
# shared machine) or 100 rounds ran; QPS = queries / median round.
_BATCH_SECONDS = 0.25
_BATCH_MAX_ROUNDS = 100


def recall_at(found: np.ndarray, truth: np.ndarray, r: int) -> float:
    """recall@r = |found[:, :r] ∩ truth[:, :r]| / r, averaged over queries (DESIGN.md).

    The intersection is of sets: empty slots (-1) never count, and an id repeated in a
    found row counts once.

    Parameters
    ----------
    found : int (nq, >= 1)
        Returned ids, best first; only the first `r` columns are read.
    truth : int (nq, >= r)
        Exact neighbours in rank order.

    Raises
    ------
    InvalidInput
        `r` is not an integer >= 1, an array is not 2-D, `truth` holds fewer than `r`
        neighbours per query, or the row counts differ.
    """
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:  # (0 divided by zero, -1 gave -3.0)
        raise InvalidInput(f"recall@r: expected an integer r >= 1, found {r!r}")
    truth, found = np.asarray(truth), np.asarray(found)
    for what, arr in (("found", found), ("truth", truth)):
        if arr.ndim != 2:
            raise InvalidInput(f"recall@{r}: expected {what} ids of shape (nq, depth), found shape {arr.shape}")
    if truth.shape[1] < r:
        raise InvalidInput(f"recall@{r} needs at least {r} true neighbours per query, found {truth.shape[1]}")
    f, t = found[:, :r], truth[:, :r]
    if len(f) != len(t):
        raise InvalidInput(f"recall@{r}: expected one found row per query ({len(t)}), found {len(f)}")
    hits = 0
    block = max(1, (4 << 20) // (r * r))  # two (block, r, r) boolean arrays at a time
    for start in range(0, len(t), block):
        fb, tb = f[start : start + block], t[start : start + block]
        in_truth = (fb[:, :, None] == tb[:, None, :]).any(axis=2) & (fb >= 0)
        repeated = np.triu(fb[:, :, None] == fb[:, None, :], k=1).any(axis=1)  # an earlier slot holds it
        hits += int((in_truth & ~repeated).sum())
    return hits / (r * len(t)) if len(t) else float("nan")


def miss_rate(found: np.ndarray, baseline: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the true top-k ids (truth's first k columns, -1 ignored) that `baseline`
    returned and `found` did not: what a cheaper search (rerank="auto") loses against the
    one it stands in for (the fixed depth of its cap)."""
    kk = min(k, truth.shape[1])
    lost = total = 0
    for f, b, t in zip(found, baseline, truth):
        true = set(t[:kk].tolist()) - {-1}
        lost += len((set(b[:kk].tolist()) & true) - set(f[:kk].tolist()))
        total += len(true)
    return lost / max(total, 1)


def truth_ranks(shortlist: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Where each of the true top-k ids (truth's first k columns) stands in `shortlist`
    (int (nq, depth), the code scores' order, best first): int64 (nq, k), -1 when absent
    (or when the truth slot is -1)."""
    sl, t = np.asarray(shortlist), np.asarray(truth)[:, :k]
    if len(sl) != len(t):
        raise InvalidInput(f"truth_ranks: expected one shortlist row per query ({len(t)}), found {len(sl)}")
    out = np.full(t.shape, -1, dtype=np.int64)
    block = max(1, (16 << 20) // max(1, sl.shape[1] * t.shape[1]))
    for a in range(0, len(t), block):
        eq = (sl[a:a + block, :, None] == t[a:a + block, None, :]) & (t[a:a + block, None, :] >= 0)
        hit = eq.any(axis=1)
        out[a:a + block] = np.where(hit, eq.argmax(axis=1), -1)
    return out


def least_rows(ranks: np.ndarray, target: float, min_rows: int | None = None) -> dict[str, Any] | None:
    """The fewest rows per query that any re-ranking reading candidates in code order could
    read for recall `target`, if it knew each query's answer (an oracle's per-query depth).

    `ranks` int (nq, k): `truth_ranks` (-1: not in the shortlist, never found). A query that
    reads its first d rows finds the true ids ranked below d; it reads at least `min_rows`
    (default k: the rows it returns with exact scores). The depths minimising the mean under
    "found >= target x nq x k" form a multiple-choice knapsack; walking each query's lower
    convex hull of (found, rows) segment by segment, cheapest rows-per-id first, gives

    - ``bound``: the LP relaxation's mean rows (the crossing segment taken fractionally):
      no choice of per-query depths reads fewer;
    - ``depths`` (int64 (nq,)) and its ``mean``, ``p99``, ``recall``: the integral
      allocation after that segment, which reaches the target (its total exceeds the bound
      by less than that one segment's rows).

    None when the shortlist holds fewer than target x nq x k true ids."""
    r = np.asarray(ranks)
    nq, k = r.shape
    if nq == 0:
        return None
    floor = k if min_rows is None else int(min_rows)
    need = int(math.ceil(target * nq * k - 1e-9))
    segments: list[tuple[float, int, int, int, int]] = []  # (rows per id, query, found after, rows, ids)
    found0 = np.zeros(nq, dtype=np.int64)
    for qi in range(nq):
        present = np.sort(r[qi][r[qi] >= 0])
        free = int((present < floor).sum())  # found by the rows every query reads
        found0[qi] = free
        pts = [(free, floor)] + [(j + 1, int(p) + 1) for j, p in enumerate(present) if j >= free]
        hull: list[tuple[int, int]] = []
        for pt in pts:  # lower convex hull, x increasing
            while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (pt[0] - hull[-2][0])
                                      >= (pt[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
                hull.pop()
            hull.append(pt)
        for (j0, c0), (j1, c1) in zip(hull, hull[1:]):
            segments.append(((c1 - c0) / (j1 - j0), qi, j1, c1 - c0, j1 - j0))
    if int(found0.sum()) + sum(s[4] for s in segments) < need:
        return None
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    rows = np.full(nq, floor, dtype=np.int64)
    found = found0.copy()
    total, cost = int(found0.sum()), float(nq * floor)
    bound = cost
    for slope, qi, j1, dc, dj in segments:
        if total >= need:
            break
        bound = cost + slope * min(dj, need - total)
        total += dj
        cost += dc
        rows[qi] += dc
        found[qi] = j1
    return {"bound": bound / nq, "mean": float(rows.mean()), "p99": float(np.percentile(rows, 99)),
            "recall": float(found.sum() / (nq * k)), "depths": rows}


def recall_ats(gt: np.ndarray, k: int) -> list[int]:
    """The recall depths reported for k results and `gt`'s depth: 1, 10 and 100 where they
    are <= k, and k itself when 1 < k < 10 (recall@k is then the one ranked by: `quality_at`)."""
    need = min(k, 10)  # the depth `quality_at` ranks by: a narrower truth measured recall@1 instead, silently
    if gt.shape[1] < need:
        raise InvalidInput(f"the ground truth holds {gt.shape[1]} neighbours per query: expected at least {need} "
                           f"for recall@{need} (k={k}), the recall the table, the front and --budget rank by (a "
                           f"truth vecz computes holds at most the base's rows: with fewer, lower k)")
    ats = [r for r in (1, 10, 100) if r <= k and r <= gt.shape[1]]
    if 1 < k < 10 and k <= gt.shape[1]:
        ats.append(k)
    return ats


def quality_at(ats: list[int]) -> int:
    """The recall depth the Pareto front, the recommender, the plots and the examples rank by:
    10 where it is reported, else the deepest (k when k < 10)."""
    return 10 if 10 in ats else max(ats)


def time_batch(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[Any, float]:
    """Run `fn` over the whole batch until `_BATCH_SECONDS` are spent (at least one round,
    at most `_BATCH_MAX_ROUNDS`); returns the last result and queries / median round."""
    # Load (or compile) the Numba kernels and build faiss's lazy tables first: one query takes
    # the single-query paths, 256 every batch path (vecz scans 8 queries at a time, and IVF
    # lists once per chunk of queries from 16 queries, 256 for PQ).
    fn(queries[:1])
    fn(queries[:256])
    rounds: list[float] = []
    out = None
    while not rounds or (sum(rounds) < _BATCH_SECONDS and len(rounds) < _BATCH_MAX_ROUNDS):
        t0 = time.perf_counter()
        out = fn(queries)
        rounds.append(time.perf_counter() - t0)
    return out, len(queries) / max(float(np.median(rounds)), 1e-9)


def time_single(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of `fn` on the first `LATENCY_QUERIES` queries, one at a time."""
    fn(queries[:1])
    lat = []
    for i in range(min(LATENCY_QUERIES, len(queries))):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


@dataclasses.dataclass
class BenchResult:
    """Rows (one per spec x re-ranking depth, JSON-ready dicts) and what produced them.

    `found` maps (spec, R) to the int64 (nq, k) ids vecz returned; `gt` is the truth used.
    `recommendation` is filled by `vecz.engine.bench.budget` for `--budget` runs.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    found: dict[tuple[str, int], np.ndarray]
    gt: np.ndarray
    recall_ats: list[int]
    recommendation: dict[str, Any] | None = None

    @property
    def quality_key(self) -> str:
        """The recall column the Pareto front, the plots and the examples rank by."""
        return f"recall@{quality_at(self.recall_ats)}"


def pareto_front(rows: Sequence[dict[str, Any]], key: str = "recall@10") -> list[bool]:
    """Mark the rows on the recall-versus-memory front, separately for each re-ranking depth.

    Within a group of rows with the same ``rerank``, a row is marked when it has the best
    `key` among all rows at or under its ``bytes_per_vector`` budget, i.e. its recall beats
    (strictly) every row that costs no more memory. Among equal rows the cheaper (then the
    earlier) is marked. Re-ranked rows form their own groups because they also read R rows
    from disk per query, which bytes/vector does not count. Rows whose `key` is None are
    never marked.

    Returns
    -------
    list of bool, aligned with `rows`.
    """
    marks = [False] * len(rows)
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get(key) is not None:
            groups.setdefault(row.get("rerank", 0), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: (rows[i]["bytes_per_vector"], -rows[i][key], i))
        best = -math.inf
        for i in members:
            if rows[i][key] > best:
                marks[i] = True
                best = rows[i][key]
    return marks


# In the best-per-budget table, the fastest spec whose recall is within this of the best is
# named beside the best (recall differences this small are within a few queries' noise).
NEAR_BEST = 0.01


def best_per_budget(result: BenchResult) -> list[dict[str, Any]]:
    """For each budget (every distinct bytes/vector in the rows) and re-ranking depth R, the
    spec with the best quality figure at or under it (the Pareto front read as a lookup
    table) and the fastest spec within `NEAR_BEST` of that figure.

    Returns rows ``{"bytes_per_vector": B, "best": {R: (spec, recall, qps) or None},
    "fastest": {R: (spec, recall, qps) or None}}``, budgets ascending.
    """
    key = result.quality_key
    depths = sorted({row["rerank"] for row in result.rows}, key=depth_key)
    out = []
    for budget in sorted({row["bytes_per_vector"] for row in result.rows}):
        best: dict[int, tuple[str, float, float] | None] = {}
        fastest: dict[int, tuple[str, float, float] | None] = {}
        for r in depths:
            pool = [row for row in result.rows
                    if row["rerank"] == r and row["bytes_per_vector"] <= budget and row.get(key) is not None]
            top = max(pool, key=lambda row: (row[key], -row["bytes_per_vector"], row["qps"]), default=None)
            best[r] = None if top is None else (top["spec"], top[key], top["qps"])
            near = [row for row in pool if top is not None and row[key] >= top[key] - NEAR_BEST]
            quick = max(near, key=lambda row: (row["qps"], row[key]), default=None)
            fastest[r] = None if quick is None else (quick["spec"], quick[key], quick["qps"])
        out.append({"bytes_per_vector": budget, "best": best, "fastest": fastest})
    return out


# The examples show the smallest spec whose recall reaches this, so a reader sees what the
# compressed search returns at a useful operating point.
EXAMPLE_RECALL = 0.95


def best_compressed(result: BenchResult) -> tuple[str, int | str] | None:
    """(spec, R) whose neighbours the examples show: the fewest bytes per vector among rows
    reaching `EXAMPLE_RECALL` (then the best recall, then the shallowest R); when none does,
    the best recall. Flat and F16 are left out since they barely compress.
    """
    key = result.quality_key
    pool = [row for row in result.rows
            if row.get(key) is not None and str(parse_spec(row["spec"])[-1]) not in ("Flat", "F16")]
    if not pool:
        return None
    good = [row for row in pool if row[key] >= EXAMPLE_RECALL]
    if good:
        best = min(good, key=lambda row: (row["bytes_per_vector"], -row[key], depth_rows(row)))
    else:
        best = max(pool, key=lambda row: (row[key], -row["bytes_per_vector"], -depth_rows(row)))
    return best["spec"], best["rerank"]
