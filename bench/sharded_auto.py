"""Rows read by ``rerank="auto"`` over shards (engine/ray.py): each shard's walk alone (one
round, as before stop 33) against the two rounds with a shared floor (each shard reads its
seed rows, then, of its part of the merged shortlist, only what can reach the k-th best
exact score of all seeds or its own k-th), beside one walk over the whole store; on a real
dataset (not a pytest suite).

One store (f16 dense tier, the dataset's rows added in `--segments` parts, so that shards
can split them; built once and kept in --work), every query of the dataset, its error model
committed (`Store.calibrate`). For each number of shards S the segments are split as
`ShardedStore` splits them (`ray._split`) and each shard's part runs here, in this process,
through the functions the Ray actors run (`ray.auto_in_process`), merged by
`ray.merge_auto`: recall@10 against the dataset's exact cosine top 10 (the store's metric;
`vecz.engine.bench.data.dataset_truth`, computed once for all the queries and cached, not
gt_ids.npy, the float16 rows' inner product), rows read per query (mean, p99). With
``--ray`` the two-round search also runs through `ShardedStore` on a local Ray cluster (2
CPUs) for each S, on the first 1,000 queries, and its answers and rows are checked equal to
the in-process ones.

    python bench/sharded_auto.py                                   # wordnet-minilm, IVF256,RB2
    python bench/sharded_auto.py --spec RB1 --nprobe 1 --shards 2,4,8 --ray

Writes JSON to --out. Run it alone: two benchmarks on a 2-core machine disturb each other.
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

from vecz import Store  # noqa: E402
from vecz.engine.bench.data import dataset_folder, dataset_truth  # noqa: E402
from vecz.engine.bench.metrics import recall_at  # noqa: E402
from vecz.engine.bench.report import _cpu_model  # noqa: E402
from vecz.engine.bounds import DEFAULT_CONFIDENCE, auto_cap  # noqa: E402
from vecz.engine.ray import _split, auto_in_process, merge_auto  # noqa: E402
from vecz.formats import manifest as mf  # noqa: E402
from vecz.formats.body import parse_body  # noqa: E402
from store_bench import has_store  # noqa: E402

K = 10


def build(path: Path, x: np.ndarray, spec: str, segments: int) -> None:
    if has_store(path, len(x), segments, calibrated=True):  # built by an earlier run
        return
    shutil.rmtree(path, ignore_errors=True)  # or cut short: each part commits on its own
    t = time.perf_counter()
    with Store.create(path, dim=x.shape[1], codec=spec, dense="f16", metric="cosine") as s:
        s.auto_merge_rows = 0  # keep the parts as segments: shards split a store by segments
        for part in np.array_split(x, segments):
            s.add(part)
        s.calibrate()
    print(f"built {path} in {time.perf_counter() - t:.1f} s", flush=True)


def sharded(path: Path, q: np.ndarray, shards: int, nprobe: int, cap: int, confidence: float,
            rounds: int) -> dict:
    body = parse_body(mf.read_manifest(path), str(path))
    opened = [Store._open_shard(path, body.version, [r.serial for r in g]) for g in _split(body.segments, shards)]
    try:
        t = time.perf_counter()
        parts = auto_in_process(opened, q, K, nprobe=nprobe, cap=cap, confidence=confidence, prefetch=False,
                                rounds=rounds)
        seconds = time.perf_counter() - t
    finally:
        for s in opened:
            s.close()
    top_s, top_i, capped = merge_auto(body.metric, parts, K)
    per_query = np.sum([p.per_query for p in parts], axis=0)
    return {"shards": len(opened), "rounds": rounds, "ids": top_i, "scores": top_s, "per_query": per_query,
            "capped": capped, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="wordnet-minilm", help="wordnet-minilm or wordnet-gemma ($VECZ_DATA, else "
                                                             "../shared/data)")
    ap.add_argument("--spec", default="IVF256,RB2")
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--shards", default="1,2,4,8,16")
    ap.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    ap.add_argument("--nq", type=int, default=None, help="the first N queries (default all)")
    ap.add_argument("--ray", action="store_true", help="also run ShardedStore and check it equal")
    ap.add_argument("--work", default="/tmp/vecz-sharded-auto")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "sharded_auto.json"))
    args = ap.parse_args(argv)
    data = dataset_folder(args.data)
    if not data.exists():
        print(f"{data} is absent: nothing to measure", file=sys.stderr)
        return 2
    ds = dataset_truth(data, "cosine", nq=args.nq)  # the store is cosine (`build`)
    x, q, gt = ds.base, ds.queries, ds.gt[:, :K]  # type: ignore[index]
    path = Path(args.work) / f"{args.data}-{args.spec}-{args.segments}seg"
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path, x, args.spec, args.segments)
    cap = auto_cap(K)
    with Store.open(path) as st:
        one = st.search(q, K, rerank="auto", nprobe=args.nprobe, confidence=args.confidence)
    rows = [{"shards": 0, "rounds": 0, "recall": recall_at(one.ids, gt, K),
             "rows_mean": float(one.stats.rows_per_query.mean()),
             "rows_p99": float(np.percentile(one.stats.rows_per_query, 99)), "capped": int(one.stats.capped)}]
    print(f"{args.data} {args.spec} nprobe {args.nprobe} confidence {args.confidence}, {q.shape[0]} queries, "
          f"CPU {_cpu_model() or platform.processor()}")
    print("| shards | protocol | recall@10 | rows a query mean / p99 | capped |")
    print("| ---: | --- | ---: | ---: | ---: |")
    print(f"| - | one walk over the store | {rows[0]['recall']:.4f} | {rows[0]['rows_mean']:.1f} / "
          f"{rows[0]['rows_p99']:.0f} | {rows[0]['capped']} |", flush=True)
    for s in [int(v) for v in args.shards.split(",")]:
        for rounds in (1, 2):
            if s == 1 and rounds == 2:
                continue
            r = sharded(path, q, s, args.nprobe, cap, args.confidence, rounds)
            row = {"shards": r["shards"], "rounds": rounds, "recall": recall_at(r["ids"], gt, K),
                   "rows_mean": float(r["per_query"].mean()), "rows_p99": float(np.percentile(r["per_query"], 99)),
                   "capped": int(r["capped"])}
            rows.append(row)
            name = "each shard alone (one round)" if rounds == 1 else "seeds, then the floor (two rounds)"
            print(f"| {row['shards']} | {name} | {row['recall']:.4f} | {row['rows_mean']:.1f} / "
                  f"{row['rows_p99']:.0f} | {row['capped']} |", flush=True)
            if args.ray and rounds == 2 and r["shards"] > 1:
                row["ray_equal"] = check_ray(path, q[:1000], r, s, args, cap)
                print(f"  ShardedStore, {r['shards']} shards, first 1,000 queries: same answers and rows: "
                      f"{row['ray_equal']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "spec": args.spec, "nprobe": args.nprobe,
                               "confidence": args.confidence, "queries": int(q.shape[0]), "cap": cap,
                               "cpu": _cpu_model() or platform.processor(), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


def check_ray(path: Path, q: np.ndarray, local: dict, shards: int, args, cap: int) -> bool:
    import ray

    from vecz.engine.ray import ShardedStore

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ShardedStore(path, shards=shards, cpus_per_shard=2 / shards) as st:
            res = st.search(q, K, rerank=f"auto:{cap}", nprobe=args.nprobe, confidence=args.confidence)
    finally:
        ray.shutdown()
    n = q.shape[0]
    return bool(np.array_equal(res.ids, local["ids"][:n]) and np.array_equal(res.scores, local["scores"][:n])
                and np.array_equal(res.stats.rows_per_query, local["per_query"][:n]))


if __name__ == "__main__":
    sys.exit(main())
