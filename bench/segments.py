"""Search over a store split into segments by a stream of commits, beside the same rows in
one segment (after `compact()`), on a real dataset (not a pytest suite).

The default split is the most segments the merge policy leaves on wordnet-minilm's rows
before it merges (engine/merge.py: FANOUT 4, tier t >= 1 holds segments of 4,096 x 4^t to
4^(t+1) rows, tier 0 the smaller ones; at most three in a tier): one of 65,536 rows (tier
2), three of 16,384 (tier 1), three of 986 (tier 0), added in that order with automatic
merges off: 117,646 rows (the dataset's last row left out). ``--split equal:16`` adds sixteen equal parts instead. Both stores hold the
same rows (ids = row numbers) and codes (the one-segment store is the split one,
copied and compacted), f32 dense tier, cosine; they are built once and kept in --work. For each point (spec:rerank:nprobe) and each store: a batch of the first --nq
queries (best of --rounds, one thread) and --single queries one at a time (p50, p99;
dense files cached), recall@10 against the dataset's exact top 10 (the two stores hold the
same codes, so they agree up to ties: search scans segments above the floor of the ones
before and merges them by code score, ties by id), and the time of the shortlist alone
(plan, the scan of every segment, the merge).

    python bench/segments.py                                    # IVF256,OPQ96x4, IVF256,RB2, PQ48x8
    python bench/segments.py --split equal:16 --specs "IVF256,OPQ96x4"

Writes JSON to --out. Run it alone: two benchmarks on a 2-core machine disturb each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numba
import numpy as np
import threadpoolctl

from vecz import Store
from vecz.engine import search as S
from vecz.engine.bench.metrics import recall_at
from vecz.engine.bench.report import _cpu_model
from vecz.engine.threads import query_threads

REPO = Path(__file__).resolve().parents[1]

DATA = REPO.parent / "shared" / "data"
K = 10
DEFAULT_POINTS = "IVF256,OPQ96x4:100:48;IVF256,OPQ96x4:auto:48;IVF256,RB2:30:64;IVF256,RB2:auto:64;PQ48x8:100:1"


def split_sizes(text: str, n: int) -> list[int]:
    if text == "tiers":
        small = (n - 65536 - 3 * 16384) // 3
        return [65536, 16384, 16384, 16384, small, small, small]
    kind, _, parts = text.partition(":")
    if kind != "equal" or not parts.isdigit() or int(parts) < 1:
        raise SystemExit(f"--split: expected 'tiers' or 'equal:<parts>', found {text!r}")
    return [len(p) for p in np.array_split(np.arange(n), int(parts))]


def build(path: Path, one: Path, x: np.ndarray, spec: str, sizes: list[int]) -> None:
    """`path`: the parts added in order, automatic merges off (the codec is trained on the
    first); `one`: a copy of it compacted into one segment (the same codec and codes)."""
    if not any(path.glob("MANIFEST-*")):  # else built by an earlier run
        t = time.perf_counter()
        with Store.create(path, dim=x.shape[1], codec=spec, dense="f32", metric="cosine") as s:
            s.auto_merge_rows = 0
            a = 0
            for n in sizes:
                s.add(x[a:a + n], ids=np.arange(a, a + n))
                a += n
            s.calibrate()
        print(f"built {path.name} in {time.perf_counter() - t:.1f} s", flush=True)
    if not any(one.glob("MANIFEST-*")):
        shutil.rmtree(one, ignore_errors=True)
        shutil.copytree(path, one)
        with Store.open(one, mode="a") as s:
            s.compact()


def measure(path: Path, q: np.ndarray, gt: np.ndarray, rerank, nprobe: int, rounds: int, single: int) -> dict:
    for f in path.glob("dense-*"):
        f.read_bytes()  # cached: this compares the scans, not the disk
    with Store.open(path) as s:
        s.search(q[:50], K, rerank=rerank, nprobe=nprobe)
        best, res = np.inf, None
        for _ in range(rounds):
            t = time.perf_counter()
            res = s.search(q, K, rerank=rerank, nprobe=nprobe)
            best = min(best, time.perf_counter() - t)
        segs, codec = s._segments, s.codec
        x = q / np.linalg.norm(q, axis=1, keepdims=True)
        depth = S.shortlist_depth(K, 100 if rerank == "auto" else rerank, len(s))
        with query_threads(len(x), S.PARALLEL_MIN_QUERIES):
            short = np.inf
            for _ in range(rounds):
                t = time.perf_counter()
                S._shortlist(codec, segs, x, depth, nprobe, False)
                short = min(short, time.perf_counter() - t)
        times = []
        for i in range(single):
            t = time.perf_counter()
            s.search(q[i:i + 1], K, rerank=rerank, nprobe=nprobe)
            times.append(time.perf_counter() - t)
        return {"segments": len(segs), "rows": sorted((g.live for g in segs), reverse=True),
                "batch_ms": best * 1e3, "qps": len(q) / best, "shortlist_ms": short * 1e3,
                "single_p50_ms": float(np.percentile(times, 50)) * 1e3,
                "single_p99_ms": float(np.percentile(times, 99)) * 1e3,
                "recall": recall_at(res.ids, gt, K), "rows_read": res.stats.rows_read / len(q)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wordnet-minilm")
    p.add_argument("--points", default=DEFAULT_POINTS, help="spec:rerank:nprobe;... (rerank an integer or auto)")
    p.add_argument("--specs", default=None, help="keep only the points of these specs (';'-separated)")
    p.add_argument("--split", default="tiers", help="'tiers' (the merge policy's most segments) or 'equal:<parts>'")
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--single", type=int, default=300, help="queries searched one at a time")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default="/tmp/vecz-segments-bench")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "segments.json"))
    args = p.parse_args()
    threadpoolctl.threadpool_limits(1)
    numba.set_num_threads(1)
    d = DATA / args.dataset
    x = np.load(d / "base.npy").astype(np.float32)
    q = np.load(d / "queries.npy").astype(np.float32)[: args.nq]
    gt = np.load(d / "gt_ids.npy")[: args.nq, :K]
    sizes = split_sizes(args.split, x.shape[0])
    x = x[: sum(sizes)]
    keep = None if args.specs is None else set(args.specs.split(";"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in args.points.split(";"):
        spec, rerank, nprobe = point.rsplit(":", 2)
        if keep is not None and spec not in keep:
            continue
        rerank = rerank if rerank == "auto" else int(rerank)
        tag = f"{args.dataset}-{spec.replace(',', '_')}"
        split_dir = work / f"{tag}-{args.split.replace(':', '')}"
        one_dir = split_dir.with_name(split_dir.name + "-one")
        build(split_dir, one_dir, x, spec, sizes)
        got = {name: measure(path, q, gt, rerank, int(nprobe), args.rounds, args.single)
               for name, path in (("split", split_dir), ("one", one_dir))}
        row = {"spec": spec, "rerank": rerank, "nprobe": int(nprobe), **got,
               "batch_ratio": got["split"]["batch_ms"] / got["one"]["batch_ms"],
               "single_ratio": got["split"]["single_p50_ms"] / got["one"]["single_p50_ms"]}
        rows.append(row)
        sp, on = got["split"], got["one"]
        print(f"{spec} R={rerank} np={nprobe}: {sp['segments']} segments {sp['batch_ms']:.1f} ms "
              f"(shortlist {sp['shortlist_ms']:.1f}), one {on['batch_ms']:.1f} ms "
              f"(shortlist {on['shortlist_ms']:.1f}), "
              f"x{row['batch_ratio']:.2f}; single p50 {sp['single_p50_ms']:.3f} / {on['single_p50_ms']:.3f} ms "
              f"x{row['single_ratio']:.2f}; recall {sp['recall']:.4f} / {on['recall']:.4f}", flush=True)
    import llvmlite.binding as llvm
    out = {"dataset": args.dataset, "split": args.split, "sizes": sizes, "nq": len(q), "single": args.single,
           "threads": 1, "cpu": _cpu_model(), "llvm_cpu": llvm.get_host_cpu_name(), "python": platform.python_version(),
           "numba": numba.__version__, "numpy": np.__version__, "points": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
