"""`vecz bench --budget B`: the fastest codec spec that reaches a target recall within a
memory budget, with the runs that prove it.

Role and contract. The budget is code bytes per vector (`codec.code_size`, per-vector
factors included; the 8-byte id every store keeps beside the codes is reported, not
budgeted). The search space (`candidate_specs`) holds, for that budget and the data's
width and size, the largest configuration of each family that fits:

- PQ with 8-bit and with 4-bit (fast scan) sub-quantizers, each also as OPQ (a learned
  rotation first: the same bytes, a lower coding error on real embeddings); under ip each
  code also holds its row's norm (2 bytes), so the sub-codes get the budget less those;
- RB with 1 and 2 levels, and the most levels that fit at full width, truncated by MRL
  when the full width does not fit (never below a quarter of the dims);
- SQ8 and SQ4, truncated the same way;
- behind an IVF partition (nlist ~ 4 sqrt(n), a power of two, at least 64 rows per list)
  for the fastest-scanning families, PQ x4, OPQ x4 and RB1;

and for every spec, the re-ranking depth R (`depth_grid`: 0, then k .. 50k rows read from
the disk tier per query) and, for IVF, nprobe (nlist/32 .. nlist/2).

The search runs in two steps on disjoint halves of the queries, so the figure quoted is not
the one the choice was fitted on:

1. tune: each spec is built as a real store; one codes-only search per nprobe returns the
   best 50k candidates of each tuning query, and the recall@k of re-ranking the first R of
   them exactly (`exact.exact_keys` / `exact.select_exact`, what the store's re-ranking
   computes) gives, for every R, whether the target is met; the smallest such R is kept per
   (spec, nprobe).
2. confirm: each kept (spec, nprobe, R) is searched through the store on the held-out
   queries, timed (batch QPS, p50/p99 of single queries) with rows and bytes read counted;
   a point that misses the target there is retried one depth step deeper.
   Beside the fixed depths, each kept (spec, nprobe) is also searched with
   ``rerank="auto:R"`` (error-bound re-ranking, R the larger of the default cap and the
   deepest fixed depth tried), so the choice may be a mode that reads only the rows its
   bounds cannot rule out.

The recommendation is the confirmed point with the highest QPS among those reaching the
target on the held-out queries; if none does, the point with the best held-out recall, with
the shortfall said. Every run is returned as a row (`BenchResult.rows`) for the report
(`write_outputs`). This module builds on `runner` and `report`; neither imports it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..codecs import code_size
from ..errors import CodecSpecError, InvalidInput
from ..quantizers import PQ4_MAX_M
from .data import Dataset, ground_truth
from .exact import exact_keys, prepare, select_exact
from .faiss_side import FAISS_RABITQ_QB, FaissSide, set_faiss_nprobe
from ..bounds import auto_cap
from .metrics import LATENCY_QUERIES, BenchResult, depth_key, quality_at, recall_at, recall_ats
from .report import (aligned_table, depth_cell, faiss_columns, markdown_rows, measured_columns, num_cell,
                     settings_line)
from .report import write_outputs as _write_report
from .runner import (built_stores, caller_threads, check_common, check_dataset, ivf_nlist, measure_store, set_threads,
                     store_row)

__all__ = ["candidate_specs", "depth_grid", "nprobe_grid", "split_queries", "pick", "recommend", "summary",
           "format_runs", "format_sweeps", "report_markdown", "write_outputs"]

# Deepest re-ranking tried, in multiples of k (50 x k = 500 rows of 1.5 KB per query at k=10).
MAX_DEPTH_FACTOR = 50
# Tuning and held-out query counts are capped so a 10,000-query set costs seconds, not minutes.
MAX_TUNE = 2000
MAX_HELDOUT = 5000


def depth_grid(k: int) -> list[int]:
    """Re-ranking depths tried: 0 (codes only), then k, 2k, 3k, 5k, 7.5k, 10k, 15k, 20k, 30k, 50k."""
    return [0] + sorted({max(k, int(round(f * k))) for f in (1, 2, 3, 5, 7.5, 10, 15, 20, 30, MAX_DEPTH_FACTOR)})


def nprobe_grid(nlist: int) -> list[int]:
    """nprobe values tried for an IVF spec: nlist/32, /16, /8, /4, /2 (at least 1, distinct)."""
    return sorted({max(1, nlist // f) for f in (32, 16, 8, 4, 2)})


def _fits(spec: str, dim: int, metric: str, budget: int) -> int | None:
    try:
        size = code_size(spec, dim, metric)
    except CodecSpecError:
        return None
    return size if size <= budget else None


def _truncated(family: str, dim: int, metric: str, budget: int, step: int = 32) -> str | None:
    """`family` at full width if it fits, else behind the widest MRL<d> (d a multiple of
    `step`, d >= dim / 4 and >= 32) that fits; None when nothing does."""
    if _fits(family, dim, metric, budget) is not None:
        return family
    d = (dim - 1) // step * step
    floor = max(32, dim // 4)
    while d >= floor:
        spec = f"MRL{d},{family}"
        if _fits(spec, dim, metric, budget) is not None:
            return spec
        d -= step
    return None


def candidate_specs(budget: int, dim: int, metric: str, n: int) -> list[str]:
    """Specs searched for a budget of `budget` code bytes per vector (see the module docstring)."""
    if not isinstance(budget, int) or budget < 1:
        raise InvalidInput(f"--budget must be a whole number of bytes per vector >= 1, found {budget!r}")
    out: list[str] = []

    def add(spec: str | None) -> None:
        if spec is not None and spec not in out and _fits(spec, dim, metric, budget) is not None:
            out.append(spec)

    # under ip a PQ code also holds its row's norm (`Codec`'s row_norms): those bytes first
    pq_bytes = budget - (code_size("PQ1x8", dim, metric) - 1)
    m8 = min(pq_bytes, dim)
    add(f"PQ{m8}x8" if m8 >= 1 else None)
    m4 = min(2 * pq_bytes, dim, PQ4_MAX_M) // 2 * 2  # the most 4-bit sub-quantizers that fit
    add(f"PQ{m4}x4" if m4 >= 2 else None)
    add(f"OPQ{m8}x8" if m8 >= 1 else None)
    add(f"OPQ{m4}x4" if m4 >= 2 else None)
    for levels in (1, 2):
        add(_truncated(f"RB{levels}", dim, metric, budget))
    full = max((b for b in range(1, 9) if _fits(f"RB{b}", dim, metric, budget) is not None), default=None)
    if full is not None:
        add(f"RB{full}")
    for sq in ("SQ8", "SQ4"):
        add(_truncated(sq, dim, metric, budget))
    nlist = ivf_nlist(n)
    if nlist is not None:
        fast_pq = (f"PQ{m4}x4", f"OPQ{m4}x4") if m4 >= 2 else ()
        for base in (*fast_pq, _truncated("RB1", dim, metric, budget)):
            if base is None:
                continue
            if base.startswith("MRL"):
                mrl, rest = base.split(",", 1)
                add(f"{mrl},IVF{nlist},{rest}")
            else:
                add(f"IVF{nlist},{base}")
    if not out:
        smallest = code_size("PQ1x8", dim, metric)  # 3 under ip: the code holds its row's norm too
        raise InvalidInput(f"no codec fits {budget} bytes per vector at {dim} dims under {metric}: the smallest is "
                           f"PQ1x8 ({smallest} byte{'s' if smallest > 1 else ''}), RB1 needs "
                           f"{code_size('RB1', dim, metric)}; raise --budget")
    return out


def split_queries(nq: int) -> tuple[slice, slice]:
    """Tuning and held-out halves of the queries (disjoint; capped at MAX_TUNE / MAX_HELDOUT)."""
    if nq < 2:
        raise InvalidInput(f"--budget needs at least 2 queries (one to tune, one to confirm), found {nq}")
    n_tune = min(nq // 2, MAX_TUNE)
    n_held = min(nq - n_tune, MAX_HELDOUT)
    return slice(0, n_tune), slice(n_tune, n_tune + n_held)


def pick(runs: Sequence[dict[str, Any]], key: str, target: float) -> dict[str, Any] | None:
    """The recommended run: the fastest (highest QPS) among those whose held-out `key` reaches
    `target`; when none does, the one with the best `key` (then the fastest). None if empty."""
    ok = [r for r in runs if r.get(key) is not None and r[key] >= target]
    if ok:
        return max(ok, key=lambda r: (r["qps"], r[key]))
    scored = [r for r in runs if r.get(key) is not None]
    return max(scored, key=lambda r: (r[key], r["qps"])) if scored else None


def _sweep(store: Any, xq_tune: np.ndarray, xq_tune_p: np.ndarray, xb_p: np.ndarray, gt_tune: np.ndarray, *,
           k: int, metric: str, nprobe: int | None, depths: Sequence[int], key_at: int) -> dict[int, float]:
    """recall@key_at on the tuning queries for every depth R, from one codes-only search."""
    deepest = min(max(depths), len(xb_p))
    cand = store.search(xq_tune, max(k, deepest), nprobe=nprobe, rerank=0)[1]
    keys = exact_keys(xb_p, xq_tune_p, cand, metric)  # once; each R re-ranks a prefix
    out = {}
    for r in depths:
        if r == 0:
            ids = cand[:, :k]
        else:
            w = min(r, cand.shape[1])
            ids = select_exact(keys[:, :w], cand[:, :w], k, metric)[1]
        out[r] = recall_at(ids, gt_tune, key_at)  # unrounded: compared with the target
    return out


@caller_threads()
def recommend(
    data: Dataset,
    budget: int,
    *,
    target: float = 0.95,
    metric: str = "cosine",
    k: int = 10,
    specs: Sequence[str] | None = None,
    with_faiss: bool = False,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = False,
    work: str | Path | None = None,
    keep_stores: bool = False,
    gt_cache: bool | str | Path = True,
) -> BenchResult:
    """Search the codec space that fits `budget` code bytes per vector for the spec, nprobe and
    re-ranking depth that reach `target` recall@10 (recall@k when k < 10) fastest.

    `specs` replaces the generated candidates (each must fit the budget). `gt_cache` as in
    `runner.run_bench`. Returns a `BenchResult` whose rows are the confirming runs (held-out
    queries) and whose `recommendation` holds the choice, the tuning sweeps and the query split.
    """
    check_common(metric, k, None)
    check_dataset(data)
    if not 0.0 < target <= 1.0:
        raise InvalidInput(f"--target-recall must be in (0, 1], found {target}")
    n, dim = data.base.shape
    if specs is None:
        specs = candidate_specs(budget, dim, metric, n)
    else:
        specs = list(specs)
        for spec in specs:
            size = code_size(spec, dim, metric)
            if size > budget:
                raise InvalidInput(f"spec {spec!r} takes {size} bytes per vector at {dim} dims, over the "
                                   f"budget of {budget}")
    thread_info = set_threads(threads, with_faiss)
    gt = ground_truth(data, metric, cache=gt_cache)
    ats = recall_ats(gt, k)
    key_at = quality_at(ats)
    key = f"recall@{key_at}"
    tune, held = split_queries(len(data.queries))
    xq_tune, xq_held = data.queries[tune], data.queries[held]
    gt_tune, gt_held = gt[tune], gt[held]
    xb_p = prepare(data.base, metric)
    xq_tune_p = prepare(xq_tune, metric)
    depths = depth_grid(k)

    runs: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    found: dict[tuple[str, int], np.ndarray] = {}
    started = time.perf_counter()
    for bar, built, store, ram in built_stores(specs, data.base, metric, seed=seed, work=work,
                                               keep_stores=keep_stores, desc=f"vecz bench --budget {budget}",
                                               progress=progress):
        nlist = store.codec.nlist
        probes: list[int | None] = nprobe_grid(nlist) if nlist > 1 else [None]
        fx = None
        for npr in probes:
            bar.set_postfix_str(f"{built.spec}: tune nprobe={npr}")
            curve = _sweep(store, xq_tune, xq_tune_p, xb_p, gt_tune, k=k, metric=metric, nprobe=npr,
                           depths=depths, key_at=key_at)
            reach = next((r for r in depths if curve[r] >= target), None)
            sweeps.append({"spec": built.spec, "nprobe": npr, "tune_recall": curve, "min_rerank": reach})
            if reach is None:
                continue
            tries = [reach] + [d for d in depths if d > reach][:1]
            for r in tries:
                bar.set_postfix_str(f"{built.spec}: confirm nprobe={npr} R={r}")
                measured, ids = measure_store(store, xq_held, gt_held, k=k, rerank=r, nprobe=npr, ats=ats)
                row = store_row(built, ram, r, npr, measured, **{f"tune_{key}": curve[r]})
                if with_faiss:
                    if fx is None:
                        fx = FaissSide(built.spec, dim, metric, xb_p, built.sample, k, npr)
                    elif npr is not None and fx.index is not None:
                        set_faiss_nprobe(fx.index, npr)
                    row.update(fx.measure(r, xq_held, gt_held, ats, row["qps"]))
                runs.append(row)
                found[(f"{built.spec} nprobe={npr}", r)] = ids
                if row[key] >= target:
                    break
            # error-bound re-ranking beside the fixed depths: it reads only the rows its
            # bounds cannot rule out, up to the cap (no faiss twin: faiss has no such mode)
            auto = f"auto:{max(auto_cap(k), max(tries))}"
            bar.set_postfix_str(f"{built.spec}: confirm nprobe={npr} R={auto}")
            measured, ids = measure_store(store, xq_held, gt_held, k=k, rerank=auto, nprobe=npr, ats=ats)
            runs.append(store_row(built, ram, auto, npr, measured, **{f"tune_{key}": None}))
            found[(f"{built.spec} nprobe={npr}", auto)] = ids
        del fx

    choice = pick(runs, key, target)
    for row in runs:
        row["pareto"] = False
        row["recommended"] = row is choice
    reached = choice is not None and choice[key] >= target
    settings = {
        "dataset": data.name,
        "n": int(n),
        "nq": int(len(data.queries)),
        "dim": int(dim),
        "metric": metric,
        "k": k,
        "budget": budget,
        "target_recall": target,
        "recall_key": key,
        "tune_queries": [tune.start, tune.stop],
        "heldout_queries": [held.start, held.stop],
        "candidates": list(specs),
        "depths": depths,
        "rerank": sorted({r["rerank"] for r in runs}, key=depth_key),
        "nprobe": "swept (nlist/32 .. nlist/2)",
        "threads": thread_info["threads"],
        "thread_settings": thread_info,
        "faiss": with_faiss,
        "faiss_rabitq_qb": FAISS_RABITQ_QB if with_faiss else None,
        "ground_truth": data.gt_source,
        "latency_queries": min(LATENCY_QUERIES, held.stop - held.start),
        "seed": seed,
        "search_s": round(time.perf_counter() - started, 1),
    }
    recommendation = {
        "reached": reached,
        "run": choice,
        "sweeps": sweeps,
        "summary": summary(choice, key, target, budget, reached, dim),
    }
    return BenchResult(runs, settings, found, gt_held, ats, recommendation)


def summary(choice: dict[str, Any] | None, key: str, target: float, budget: int, reached: bool, dim: int) -> str:
    """One paragraph a reader can act on."""
    if choice is None:
        return (f"No candidate reached {key} >= {target} within {budget} bytes per vector even re-ranking "
                f"the best {MAX_DEPTH_FACTOR} x k rows; raise the budget or lower the target.")
    npr = f", nprobe={choice['nprobe']}" if choice.get("nprobe") else ""
    cost = (f"reads {choice['rows_read_per_query']:g} rows ({choice['bytes_read_per_query'] / 1024:.1f} KiB) "
            f"per query from the dense file" if choice["rerank"] else "reads nothing from disk (codes only)")
    head = "Recommended" if reached else f"Target {key} >= {target} not reached; closest"
    text = (f"{head}: {choice['spec']} ({choice['code_size']} B/vector of codes{npr}) with rerank={choice['rerank']}: "
            f"{key} {choice[key]:.3f} on held-out queries, {choice['qps']:,.0f} QPS, p50 {choice['p50_ms']:.2f} ms / "
            f"p99 {choice['p99_ms']:.2f} ms; {cost}; RAM {choice['ram_bytes_per_vector']:.1f} B/vector measured "
            f"(codes, ids, trained arrays), float32 would be {4 * dim} B.")
    if choice.get("faiss_qps"):
        text += (f" faiss {choice['faiss_index']}: {key} {choice['faiss_' + key]:.3f}, "
                 f"{choice['faiss_qps']:,.0f} QPS ({choice['speed_vs_faiss']:.2f}x).")
    return text


def _run_cols(result: BenchResult) -> list[tuple[str, str, Any]]:
    key = result.settings["recall_key"]
    cols = [
        ("spec", "<", lambda row: row["spec"] + ("  <- recommended" if row.get("recommended") else "")),
        ("code B", ">", num_cell("code_size", "d")),
        ("nprobe", ">", lambda row: "-" if row.get("nprobe") is None else str(row["nprobe"])),
        ("R", ">", depth_cell),
        (f"tune {key}", ">", num_cell(f"tune_{key}", ".3f")),
        (f"held-out {key}", ">", num_cell(key, ".3f")),
    ] + measured_columns(",.0f")
    if result.settings.get("faiss"):
        cols += faiss_columns(key, ",.0f")
    return cols


def format_runs(result: BenchResult, markdown: bool = False) -> str:
    """The confirming runs as an aligned text table (or markdown), the recommended one flagged."""
    cols = _run_cols(result)
    head, aligns = [c[0] for c in cols], [c[1] for c in cols]
    lines = [[c[2](row) for c in cols] for row in result.rows]
    if not markdown:
        return aligned_table(head, lines, aligns)
    lines = [[f"**{v}**" for v in line] if row.get("recommended") else line for row, line in zip(result.rows, lines)]
    return markdown_rows(head, lines, aligns)


def format_sweeps(result: BenchResult, markdown: bool = False) -> str:
    """recall on the tuning queries against depth R for every (spec, nprobe) searched."""
    rec = result.recommendation or {}
    depths = result.settings["depths"]
    head = ["spec", "nprobe"] + [f"R={r}" for r in depths] + ["min R"]
    lines = [[s["spec"], "-" if s["nprobe"] is None else str(s["nprobe"])]
             + [f"{s['tune_recall'][r]:.3f}" for r in depths]
             + ["-" if s["min_rerank"] is None else str(s["min_rerank"])]
             for s in rec.get("sweeps", [])]
    aligns = ["<"] + [">"] * (len(head) - 1)
    return (markdown_rows if markdown else aligned_table)(head, lines, aligns)


def report_markdown(result: BenchResult) -> list[str]:
    """The top of report.md for a --budget run: what was searched, the recommendation, the
    confirming runs and the tuning sweeps."""
    s = result.settings
    key = s["recall_key"]
    return [
        f"# vecz bench --budget {s['budget']}: {s['dataset']}",
        "",
        settings_line(s),
        "",
        f"Searched {len(s['candidates'])} specs that fit {s['budget']} code bytes per vector "
        f"({', '.join(s['candidates'])}), re-ranking depths {s['depths']} and, for IVF, nprobe nlist/32 .. "
        f"nlist/2, for the fastest way to {key} >= {s['target_recall']}. Tuned on queries "
        f"{s['tune_queries'][0]}..{s['tune_queries'][1] - 1}, confirmed on held-out queries "
        f"{s['heldout_queries'][0]}..{s['heldout_queries'][1] - 1}; search took {s['search_s']} s.",
        "",
        "**" + result.recommendation["summary"] + "**",
        "",
        "## Confirming runs (held-out queries, through the store)",
        "",
        "R = rows re-scored exactly per query, read from the dense file (rows/q and KiB/q as counted "
        "by the store); QPS over the held-out batch; p50/p99 over "
        f"{s['latency_queries']} queries sent one at a time; build = train + encode + write + fsync.",
        "",
        format_runs(result, markdown=True),
        "",
        f"## Tuning sweeps ({key} on the tuning queries against re-ranking depth R)",
        "",
        format_sweeps(result, markdown=True),
        "",
    ]


def write_outputs(result: BenchResult, out: str | Path, machine: dict[str, Any]) -> list[str]:
    """report.md (the recommendation, confirming runs, tuning sweeps), results.csv,
    results.json and recall_vs_qps.png of a --budget run (`report.write_outputs`)."""
    return _write_report(result, out, machine, body=report_markdown(result))
