"""Search over a store split into segments by a stream of commits, beside the same rows in
one segment (after `compact()`), on a real dataset (not a pytest suite).

The default split is the most segments the merge policy leaves on wordnet-minilm's rows
before it merges (engine/merge.py: FANOUT 4, tier t >= 1 holds segments of 4,096 x 4^t to
4^(t+1) rows, tier 0 the smaller ones; at most three in a tier): one of 65,536 rows (tier
2), three of 16,384 (tier 1), three of 986 (tier 0), added in that order with automatic
merges off: 117,646 rows (the dataset's last row left out). ``--split equal:16`` adds
sixteen equal parts instead. Both stores hold the same rows (ids = row numbers) and codes
(the one-segment store is the split one, copied and compacted), f32 dense tier, cosine;
they are built once and kept in --work. For each point (spec:rerank:nprobe) and each
store: a batch of the first --nq queries (best of --rounds, one thread) and the first 200 one at a time
(`engine.bench.metrics.time_single`: p50, p99; dense files cached; stop 35's committed
figures took 300), recall@10 against the exact cosine top 10 among the rows stored
(`engine.bench.data.dataset_truth` of that row prefix, computed once for all the queries and
cached; not gt_ids.npy, the inner product over every row; the two stores hold the same
codes, so they agree up to ties: search scans segments above the floor of the ones before
and merges them by code score, ties by id), and the time of the shortlist alone (plan, the
scan of every segment, the merge).

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

import llvmlite.binding as llvm
import numba
import numpy as np
import threadpoolctl

from vecz import Store
from vecz.engine import search as S
from vecz.engine.bench.data import dataset_folder, dataset_truth
from vecz.engine.bench.metrics import LATENCY_QUERIES, recall_at, time_single
from vecz.engine.bench.report import _cpu_model
from vecz.engine.bounds import auto_cap
from store_bench import has_store

REPO = Path(__file__).resolve().parents[1]

K = 10
DEFAULT_POINTS = "IVF256,OPQ96x4:100:48;IVF256,OPQ96x4:auto:48;IVF256,RB2:30:64;IVF256,RB2:auto:64;PQ48x8:100:1"


def split_sizes(text: str, n: int) -> list[int]:
    if text == "tiers":
        small = (n - 65536 - 3 * 16384) // 3
        if small < 1:  # negative parts: a misleading "expected 10000 ids" and an empty store left
            raise SystemExit(f"--split tiers needs at least {65536 + 3 * 16384 + 3} rows, found {n}: "
                             f"use --split equal:<parts>")
        return [65536, 16384, 16384, 16384, small, small, small]
    kind, _, parts = text.partition(":")
    if kind != "equal" or not parts.isdigit() or int(parts) < 1:
        raise SystemExit(f"--split: expected 'tiers' or 'equal:<parts>', found {text!r}")
    return [len(p) for p in np.array_split(np.arange(n), int(parts))]


def build(path: Path, one: Path, x: np.ndarray, spec: str, sizes: list[int]) -> None:
    """`path`: the parts added in order, automatic merges off (the codec is trained on the
    first); `one`: a copy of it compacted into one segment (the same codec and codes)."""
    if any(path.glob("MANIFEST-*")) and not has_store(path, sum(sizes), len(sizes), calibrated=True):  # cut short: again
        shutil.rmtree(path)
        shutil.rmtree(one, ignore_errors=True)
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


def best_of(fn, rounds: int) -> tuple[float, object]:
    """The least seconds of `rounds` calls of `fn` and the last result."""
    best, out = np.inf, None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def measure(path: Path, q: np.ndarray, gt: np.ndarray, rerank, nprobe: int, rounds: int) -> dict:
    for f in path.glob("dense-*"):
        f.read_bytes()  # cached: this compares the scans, not the disk
    with Store.open(path) as s:
        s.search(q[:50], K, rerank=rerank, nprobe=nprobe)
        batch, res = best_of(lambda: s.search(q, K, rerank=rerank, nprobe=nprobe), rounds)
        x = q / np.linalg.norm(q, axis=1, keepdims=True)  # cosine stores
        depth = S.shortlist_depth(K, auto_cap(K) if rerank == "auto" else rerank, len(s))
        short, _ = best_of(lambda: S._shortlist(s.codec, s._segments, x, depth, nprobe, False), rounds)
        p50, p99 = time_single(lambda qq: s.search(qq, K, rerank=rerank, nprobe=nprobe), q)
        return {"segments": len(s._segments), "rows": sorted((g.live for g in s._segments), reverse=True),
                "batch_ms": batch * 1e3, "qps": len(q) / batch, "shortlist_ms": short * 1e3,
                "single_p50_ms": p50, "single_p99_ms": p99,
                "recall": recall_at(res.ids, gt, K), "rows_read": res.stats.rows_read / len(q)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wordnet-minilm",
                   help="wordnet-minilm or wordnet-gemma ($VECZ_DATA, else ../shared/data)")
    p.add_argument("--points", default=DEFAULT_POINTS, help="spec:rerank:nprobe;... (rerank an integer or auto)")
    p.add_argument("--specs", default=None, help="keep only the points of these specs (';'-separated)")
    p.add_argument("--split", default="tiers", help="'tiers' (the merge policy's most segments) or 'equal:<parts>'")
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default="/tmp/vecz-segments-bench")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "segments.json"))
    args = p.parse_args()
    threadpoolctl.threadpool_limits(1)
    numba.set_num_threads(1)
    n = np.load(dataset_folder(args.dataset) / "base.npy", mmap_mode="r").shape[0]
    sizes = split_sizes(args.split, n)
    # the stores are cosine and hold the first sum(sizes) rows: the truth among those rows
    ds = dataset_truth(args.dataset, "cosine", nq=args.nq, rows=sum(sizes))
    x, q, gt = ds.base, ds.queries, ds.gt[:, :K]  # type: ignore[index]
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
        got = {name: measure(path, q, gt, rerank, int(nprobe), args.rounds)
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
    out = {"dataset": args.dataset, "split": args.split, "sizes": sizes, "nq": len(q),
           "single": min(LATENCY_QUERIES, len(q)), "threads": 1, "cpu": _cpu_model(),
           "llvm_cpu": llvm.get_host_cpu_name(), "python": platform.python_version(),
           "numba": numba.__version__, "numpy": np.__version__, "points": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
