"""Error-bound re-ranking (`rerank="auto"`, engine/bounds.py) against fixed depths, on the
real datasets in ../shared/data (not a pytest suite).

For each dataset and spec, one store (f16 dense tier, built once and kept in --work), every
query of the dataset, one thread:

- fixed depths R: recall@10, rows read per query, QPS (a batch of all queries, best of 2);
- auto at several confidences (cap: the default `bounds.auto_cap(k)`): recall@10, rows read
  per query (mean and p99), the miss rate (true top-10 ids that the fixed depth equal to
  the cap found and auto did not, over all true top-10 ids: what the bounds cost), the
  queries that ended at the cap, QPS;
- the interval's observed coverage on held-out queries (the dataset's own queries, never
  used to calibrate): the share of (query, shortlist row) pairs whose exact score lies
  under the upper bound, against the promised confidence;
- the oracle (`metrics.least_rows`): the fewest rows per query that any per-query depth
  could read, in code-score order, for a recall, if it knew each query's true top 10 (the
  LP bound of the depth allocation; ranks from a code shortlist of 400). Beside every
  measured row, at that row's recall; and at recall 0.95 / 0.98 / 0.99 / 0.995. Auto's rows
  over the oracle's is what the bounds' uncertainty costs; the oracle itself is what the
  code's ranking allows.

    python bench/rerank_auto.py                          # both datasets, bench/out/rerank-auto/
    python bench/rerank_auto.py --datasets wordnet-minilm --specs "RB1;RB2"
    python bench/rerank_auto.py --datasets wordnet-gemma --specs OPQ52x8 --calibrate-queries 1000
    python bench/rerank_auto.py --datasets wordnet-gemma --truncate 256 --metric l2 --specs "RB1;OPQ32x8"

Recall is against the exact top-10 under the stores' metric: on the dataset's own rows and
queries, gt_ids.npy for ip and, for cosine and l2, the exact top-100 computed once and cached
as `vecz bench` caches it (`vecz.engine.bench.data.dataset_truth`; gt_ids.npy ranks the
float16 rows by inner product, which reorders near ties under cosine). `--truncate D` keeps
the first D dims (a Matryoshka model's prefix: another embedding of the same texts) and
`--metric` builds ip or l2 stores.

Data unlike the shipped sets (results are also judged on embeddings nobody here has seen), made
from them, each computing the exact top-10 again (`reshape`):

- `--rows N` keeps the first N rows;
- `--shift S` adds S times each vector's norm along the rows' unit mean direction, to rows and
  queries: an anisotropic model whose vectors all lean one way (S = 1.5 takes minilm's rows'
  mean cosine to their mean direction from 0.26 to about 0.87, as with OpenAI's ada-002);
- `--lift D` maps rows and queries into D > dim dims by a fixed random orthonormal map and
  adds isotropic noise of norm 0.1 (a wide model whose spectrum lives in fewer dims);
- `--norms S` multiplies each row by a log-normal factor exp(S * N(0, 1)) (for ip or l2: rows
  whose norms differ, as in maximum-inner-product search).

    python bench/rerank_auto.py --datasets wordnet-minilm --shift 1.5 --specs "OPQ96x4;RB1"
    python bench/rerank_auto.py --datasets wordnet-minilm --rows 40000 --lift 1536 --specs "OPQ96x4;RB1"

`--calibrate-queries N` measures the interval on the last N queries (`Store.calibrate`)
instead of pseudo-queries made from the store's rows (`Store.error_model`), and everything
else on the other queries.

Run it alone: two benchmarks on a 2-core machine disturb each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

import numba  # noqa: E402

from vecz import Store  # noqa: E402
from vecz.engine.bench.data import Dataset, dataset_truth, ground_truth  # noqa: E402
from vecz.engine.bench.metrics import least_rows, miss_rate, recall_at, truth_ranks  # noqa: E402
from vecz.engine.bench.report import _cpu_model  # noqa: E402
from vecz.engine.bounds import auto_cap, query_norms  # noqa: E402
from store_bench import has_store  # noqa: E402
from vecz.engine.search import _exact, _scales, _shortlist  # noqa: E402

K = 10
# The code-order shortlist the oracle reads ranks from (ids ranked deeper count as never found).
ORACLE_DEPTH = 400
ORACLE_TARGETS = (0.95, 0.98, 0.99, 0.995)
SPECS = {
    "wordnet-minilm": "RB1;IVF1024,RB1;PQ48x8;RB2",  # 56, 56, 56 and 104 code bytes at 384-d
    "wordnet-gemma": "MRL384,RB1;RB1;IVF1024,RB1",    # 56, 104, 104 code bytes at 768-d
}


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return recall_at(ids, gt, K)


def qps(fn, nq: int) -> float:
    best = np.inf
    for _ in range(2):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nq / best


def code_shortlist(store: Store, q: np.ndarray, depth: int) -> tuple[np.ndarray, tuple]:
    """The queries as the store scores them (float32, unit rows under cosine) and their code
    shortlist of `depth` over all segments at the store's default nprobe (`_shortlist`'s
    (est, seg_of, rows, ids, candidates))."""
    x = q.astype(np.float32)
    if store.metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    nprobe = max(1, store.codec.nlist // 8)
    return x, _shortlist(store.codec, store._segments, x, depth, nprobe, False)


def _line_text(line: tuple) -> str:
    return f"{line[0]:.4f} {line[1]:+.4f} u"


def coverage(store: Store, q: np.ndarray, confidences: list[float], depth: int = 50) -> dict[str, float]:
    """Observed share of pairs under the upper bound (and above the lower), per confidence."""
    model = store.error_model()
    x, (est, seg_of, rows, ids, _) = code_shortlist(store, q, depth)
    valid = ids >= 0
    # exact and code scores larger-is-better, as the walk bounds them (l2: minus the distance)
    sign = -1.0 if store.metric == "l2" else 1.0
    exact = sign * _exact(store.metric, store._segments, x, seg_of, rows, False)[0][valid]
    scale = (query_norms(store.metric, x)[:, None] * _scales(store._segments, seg_of, rows, model.per_row))[valid]
    out = {}
    rank = np.broadcast_to(np.arange(depth), valid.shape)[valid]
    for c in confidences:
        lo, hi = (a[valid] for a in model.query_intervals(c, depth, x))  # the walk's bounds, by query and rank
        e = sign * est[valid].astype(np.float64)
        top = rank < 10
        out[str(c)] = {"upper": float(np.mean(exact <= e + hi * scale + 1e-7)),
                       "lower": float(np.mean(exact >= e + lo * scale - 1e-7)),
                       "lower_top10": float(np.mean((exact >= e + lo * scale - 1e-7)[top])),
                       "bands": [[a, min(b, 1 << 31), list(z)] for a, b, z in model.rank_bands(c)]}
    return out


def code_ranks(store: Store, q: np.ndarray, gt: np.ndarray, depth: int = ORACLE_DEPTH) -> np.ndarray:
    """Where each true top-10 id stands in the code scores' order (-1 beyond `depth`), at the
    store's default nprobe, over all segments, in chunks of 1,000 queries."""
    return np.concatenate([truth_ranks(code_shortlist(store, q[a:a + 1000], depth)[1][3], gt[a:a + 1000], K)
                           for a in range(0, len(q), 1000)])


def oracle(ranks: np.ndarray, recall_value: float) -> dict | None:
    """least_rows at a measured recall, rounded for the report (None: out of reach)."""
    got = least_rows(ranks, recall_value)
    return None if got is None else {"bound": round(got["bound"], 1), "mean": round(got["mean"], 1),
                                     "p99": got["p99"]}


def reshape(base: np.ndarray, queries: np.ndarray, args) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows and queries after --rows, --shift, --lift and --norms (see the module's
    docstring), as float32, and a tag naming what was done ("" for nothing)."""
    rng = np.random.default_rng(20261206)
    tag = ""
    if args.rows:
        if not 1 <= args.rows <= len(base):
            raise SystemExit(f"--rows: expected 1..{len(base)}, found {args.rows}")
        base, tag = base[: args.rows], tag + f"-n{args.rows}"
    base = np.asarray(base, dtype=np.float32)
    if args.shift:
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        direction = unit.mean(axis=0)
        direction /= np.linalg.norm(direction)
        base = base + args.shift * np.linalg.norm(base, axis=1, keepdims=True) * direction
        queries = queries + args.shift * np.linalg.norm(queries, axis=1, keepdims=True) * direction
        tag += f"-shift{args.shift:g}"
    if args.lift:
        dim = base.shape[1]
        if args.lift <= dim:
            raise SystemExit(f"--lift: expected more than the data's {dim} dims, found {args.lift}")
        basis = np.linalg.qr(rng.standard_normal((args.lift, dim)))[0].T.astype(np.float32)  # (dim, D)
        sigma = np.float32(0.1 / np.sqrt(args.lift))
        scale_b = np.linalg.norm(base, axis=1, keepdims=True)
        scale_q = np.linalg.norm(queries, axis=1, keepdims=True)
        base = base @ basis + sigma * scale_b * rng.standard_normal((len(base), args.lift), dtype=np.float32)
        queries = queries @ basis + sigma * scale_q * rng.standard_normal((len(queries), args.lift),
                                                                          dtype=np.float32)
        tag += f"-lift{args.lift}"
    if args.norms:
        base = base * np.exp(args.norms * rng.standard_normal((len(base), 1))).astype(np.float32)
        tag += f"-norms{args.norms:g}"
    return (np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32), tag)


def run(args) -> dict:
    numba.set_num_threads(1)
    out: dict = {"command": " ".join(sys.argv), "cpu": _cpu_model() or platform.machine(), "threads": 1,
                 "k": K, "results": []}
    for name in args.datasets:
        data = Path(args.data) / name
        base = np.load(data / "base.npy")
        queries = np.load(data / "queries.npy").astype(np.float32)
        if args.truncate and not 0 < args.truncate <= base.shape[1]:
            raise SystemExit(f"--truncate: expected 1..{base.shape[1]} for {name}, found {args.truncate}")
        if args.truncate:  # a Matryoshka model's prefix is an embedding of its own
            base, queries = base[:, :args.truncate], queries[:, :args.truncate]
        base, queries, shape_tag = reshape(base, queries, args)
        if args.truncate or shape_tag:  # other rows or queries than the dataset's: their own truth
            data_set = Dataset(name, np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(queries))
            gt = ground_truth(data_set, args.metric, K)  # computed once, cached by content
        else:  # gt_ids.npy for ip, else the exact top-100 computed once and cached (as vecz bench's)
            gt = dataset_truth(data, args.metric).gt[:, :K]  # type: ignore[index]
        cal = None
        if args.calibrate_queries:  # the last N queries calibrate; the others are measured
            if not 0 < args.calibrate_queries < len(queries):
                raise SystemExit(f"--calibrate-queries: expected 1..{len(queries) - 1} for {name}, "
                                 f"found {args.calibrate_queries}")
            cal = queries[-args.calibrate_queries:]
            queries, gt = queries[: -args.calibrate_queries], gt[: -args.calibrate_queries]
        specs = (args.specs or SPECS[name]).split(";")
        for spec in specs:
            tail = "" if args.metric == "cosine" else f"-{args.metric}"
            tail += (f"-d{args.truncate}" if args.truncate else "") + shape_tag
            path = Path(args.work) / f"{name}-{spec.replace(',', '_')}{tail}"
            if path.exists() and not has_store(path, len(base)):  # an interrupted build: built again
                shutil.rmtree(path)
            if not path.exists():
                t = time.perf_counter()
                with Store.create(path, dim=base.shape[1], metric=args.metric, codec=spec, dense="f16") as s:
                    s.add(base)
                print(f"built {path} in {time.perf_counter() - t:.1f} s", flush=True)
            with Store.open(path) as s:
                t = time.perf_counter()
                model = s.error_model() if cal is None else s.calibrate(cal)
                calib = time.perf_counter() - t
                entry = {"dataset": name + (f"[:{args.truncate}]" if args.truncate else "") + shape_tag,
                         "spec": spec,
                         "metric": args.metric, "code_size": s.codec.code_size,
                         "n": len(s), "nq": len(queries), "calibration_s": round(calib, 3), "pairs": model.pairs,
                         "calibrated_on": (f"the last {len(cal)} queries" if cal is not None else
                                           "stored rows" if model.direction is None else
                                           "pseudo-queries from stored rows (shift, spread in the cosine to the "
                                           f"mean: {_line_text(model.shift)}, {_line_text(model.spread)})"),
                         "per_row": model.per_row, "fixed": [], "auto": []}
                ranks = code_ranks(s, queries, gt)
                entry["oracle"] = {str(t): oracle(ranks, t) for t in ORACLE_TARGETS}
                print(name, spec, "oracle", json.dumps(entry["oracle"]), flush=True)
                cap = auto_cap(K)
                found_cap = None
                for r in args.fixed:
                    res = s.search(queries, K, rerank=r)
                    row = {"rerank": r, "recall@10": round(recall(res.ids, gt), 4),
                           "rows_per_query": res.stats.rows_read / len(queries),
                           "qps": round(qps(lambda: s.search(queries, K, rerank=r), len(queries)), 1)}
                    row["oracle"] = oracle(ranks, row["recall@10"])
                    if r == cap:
                        found_cap = res.ids
                    entry["fixed"].append(row)
                    print(name, spec, json.dumps(row), flush=True)
                if found_cap is None:
                    found_cap = s.search(queries, K, rerank=cap).ids
                for c in args.confidences:
                    res = s.search(queries, K, rerank="auto", confidence=c)
                    row = {"confidence": c, "cap": cap, "recall@10": round(recall(res.ids, gt), 4),
                           "rows_mean": round(res.stats.rows_read_mean, 2), "rows_p99": res.stats.rows_read_p99,
                           "miss_rate": round(miss_rate(res.ids, found_cap, gt, K), 5), "capped": res.stats.capped,
                           "qps": round(qps(lambda: s.search(queries, K, rerank="auto", confidence=c),
                                            len(queries)), 1)}
                    row["oracle"] = oracle(ranks, row["recall@10"])
                    entry["auto"].append(row)
                    print(name, spec, json.dumps(row), flush=True)
                entry["coverage"] = coverage(s, queries[: args.nq_coverage], args.confidences)
                print(name, spec, "coverage", json.dumps(entry["coverage"]), flush=True)
                out["results"].append(entry)
    return out


def _oracle_cell(o: dict | None) -> str:
    return "out of reach" if o is None else f"{o['bound']:.1f}"


def markdown(out: dict) -> str:
    lines = [f"`{out['command']}` — {out['cpu']}, {out['threads']} thread, k = {out['k']}", ""]
    for e in out["results"]:
        lines += [f"### {e['dataset']} {e['spec']}, {e.get('metric', 'cosine')} ({e['code_size']} B of code "
                  f"per vector, {e['n']:,} rows, {e['nq']:,} queries)", "",
                  f"Calibration on {e.get('calibrated_on', 'stored rows')}: {e['pairs']:,} pairs, "
                  f"{'per-row' if e['per_row'] else 'one'} error scale, "
                  f"{e['calibration_s']} s.", "",
                  "| rerank | recall@10 | rows/q mean | rows/q p99 | oracle rows/q | miss rate | capped | QPS |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for f in e["fixed"]:
            lines.append(f"| R = {f['rerank']} | {f['recall@10']:.4f} | {f['rows_per_query']:.0f} | "
                         f"{f['rows_per_query']:.0f} | {_oracle_cell(f.get('oracle'))} | - | - | {f['qps']:,.0f} |")
        for a in e["auto"]:
            lines.append(f"| auto, confidence {a['confidence']} (cap {a['cap']}) | {a['recall@10']:.4f} | "
                         f"{a['rows_mean']:.1f} | {a['rows_p99']:.0f} | {_oracle_cell(a.get('oracle'))} | "
                         f"{100 * a['miss_rate']:.2f}% | {a['capped']:,} | {a['qps']:,.0f} |")
        if e.get("oracle"):
            least = ", ".join(f"{t}: {_oracle_cell(v)}" for t, v in e["oracle"].items())
            lines += ["", f"Least rows per query an oracle needs in code order (mean, by recall@10): {least}."]
        cov = ", ".join(f"{c}: {v['upper']:.4f} / {v['lower']:.4f}" for c, v in e["coverage"].items())
        lines += ["", f"Observed coverage on held-out queries (upper / lower side) by confidence: {cov}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--datasets", default="wordnet-minilm,wordnet-gemma")
    p.add_argument("--metric", default="cosine", choices=("cosine", "ip", "l2"),
                   help="the stores' metric (recall against its exact top-10)")
    p.add_argument("--truncate", type=int, default=0,
                   help="keep the first D dims of rows and queries (the exact top-10 computed again)")
    p.add_argument("--rows", type=int, default=0, help="keep the first N rows (the exact top-10 computed again)")
    p.add_argument("--shift", type=float, default=0.0,
                   help="add S x each vector's norm along the rows' mean direction (an anisotropic model)")
    p.add_argument("--lift", type=int, default=0,
                   help="map into D dims by a random orthonormal map, plus noise of norm 0.1 (a wide model)")
    p.add_argument("--norms", type=float, default=0.0,
                   help="multiply each row by exp(S * N(0, 1)) (rows whose norms differ; for ip or l2)")
    p.add_argument("--specs", default=None, help="';'-separated specs (default: per dataset, see SPECS)")
    p.add_argument("--fixed", default="20,30,50,100")
    p.add_argument("--confidences", default="0.99,0.995,0.999")
    p.add_argument("--nq-coverage", type=int, default=1000)
    p.add_argument("--calibrate-queries", type=int, default=0,
                   help="calibrate auto on the last N queries (Store.calibrate) and measure the others "
                        "(default 0: pseudo-queries from the store's rows, Store.error_model)")
    p.add_argument("--work", default="/tmp/vecz-rerank-auto")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "rerank-auto"))
    args = p.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.fixed = [int(v) for v in args.fixed.split(",")]
    args.confidences = [float(v) for v in args.confidences.split(",")]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = run(args)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(out, indent=2))
    (dest / "report.md").write_text(markdown(out))
    print(f"wrote {dest / 'results.json'} and {dest / 'report.md'}")


if __name__ == "__main__":
    main()
