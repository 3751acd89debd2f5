"""Ray build rate and sharded search QPS with 1 and 2 workers on this machine, and the
projection to 1B x 768 they support (issue 14; engine/ray.py).

On a local Ray cluster (``ray.init(num_cpus=2)``) and the vectors of a real dataset
(wordnet-gemma, 768-d, by default; cosine), it measures, best of `--repeat`:

1. build: `vecz.engine.ray.build` from the dataset's .npy with W = 1 and 2 workers (one
   Numba thread each), the codec trained once beforehand and given to every build (so the
   figure is the distributed part: read, encode, write, commit), and beside it a one-process
   `Store.add` of the same rows with the same trained codec and 1 then 2 threads (Numba and
   BLAS: a Ray worker runs BLAS on one thread, as OMP_NUM_THREADS=1 there);
   rows/s and rows/s per worker;
2. search: `ShardedStore` with S = 1 and 2 shards (one thread each) on that store, batches of
   `--batch` queries (the dataset's queries), rerank R; QPS, and the one-process
   `Store.search` with 1 and 2 threads; the answers are checked equal to the one-process
   ones;
3. the projection: from the per-worker build rate, the per-shard scan rate (codes scored per
   second per thread) and the per-query fixed cost measured here, the RAM per machine, build
   hours and fan-out latency of 1B x 768 over N machines, with every assumption printed.

    python bench/ray_scale.py                                    # wordnet-gemma, RB1 and IVF1024,RB1
    python bench/ray_scale.py --data wordnet-minilm --specs RB1 --repeat 3

Writes bench/out/ray_scale.json and prints a Markdown report (docs/results/ray-scale.md).
Run it alone: two benchmarks on a 2-core machine disturb each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _cpu() -> str:
    from vecz.engine.bench.report import _cpu_model

    return _cpu_model() or platform.processor() or "unknown"


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="wordnet-gemma")
    ap.add_argument("--specs", default="RB1;IVF1024,RB1")
    ap.add_argument("--dense", default="f16")
    ap.add_argument("--rows", type=int, default=None, help="use the first N rows (default all)")
    ap.add_argument("--tile", type=int, default=5,
                    help="repeat the base T times, each copy with N(0, 0.01^2) noise, renormalised (default 5: "
                         "wordnet-gemma's 24,000 rows become 120,000, so that fixed costs do not hide the rates)")
    ap.add_argument("--segment-rows", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="queries per search call")
    ap.add_argument("--nq", type=int, default=2048)
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "ray_scale.json"))
    args = ap.parse_args(argv)

    import numba
    import ray
    from threadpoolctl import threadpool_limits

    from vecz import Codec, Store
    from vecz.engine import ray as vray

    d = DATA / args.data
    if not d.exists():
        print(f"{d}: dataset missing", file=sys.stderr)
        return 2
    base = np.load(d / "base.npy", mmap_mode="r")
    if args.rows:
        base = base[: args.rows]
    queries = np.ascontiguousarray(np.load(d / "queries.npy")[: args.nq], dtype=np.float32)
    if args.tile > 1:
        rng = np.random.default_rng(0)
        copies = [np.asarray(base, dtype=np.float32)]
        for _ in range(args.tile - 1):
            c = copies[0] + rng.normal(0, 0.01, copies[0].shape).astype(np.float32)
            copies.append(c / np.linalg.norm(c, axis=1, keepdims=True))
        base = np.concatenate(copies)
    n, dim = base.shape
    work = Path(tempfile.mkdtemp(prefix="vecz-ray-scale-"))
    src = work / "base.npy"
    np.save(src, np.asarray(base, dtype=np.float32))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False, object_store_memory=2 << 30)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    results: dict = {"cpu": _cpu(), "cores": os.cpu_count(), "data": args.data, "rows": int(n), "dim": int(dim),
                     "dense": args.dense, "segment_rows": args.segment_rows, "numba": numba.__version__,
                     "ray": ray.__version__, "rerank": args.rerank, "batch": args.batch, "nq": int(len(queries)),
                     "specs": {}}
    try:
        for spec in args.specs.split(";"):
            codec = Codec(spec, dim, "cosine")
            t = time.perf_counter()
            codec.train(np.asarray(base[:: max(1, n // 65536)], dtype=np.float32))
            train_s = time.perf_counter() - t
            row: dict = {"train_s": train_s, "build": {}, "search": {}}
            x = np.asarray(base, dtype=np.float32)
            for threads in (1, 2):
                def one_process() -> None:
                    p = work / f"one-{threads}"
                    shutil.rmtree(p, ignore_errors=True)
                    numba.set_num_threads(threads)
                    with threadpool_limits(threads), Store.create(p, codec=codec, dense=args.dense) as s:
                        for lo in range(0, n, args.segment_rows):
                            s.add(x[lo:lo + args.segment_rows])
                secs, _ = best(one_process, args.repeat)
                row["build"][f"one-process {threads} thread(s)"] = {"s": secs, "rows_per_s": n / secs}
            numba.set_num_threads(2)
            for workers in (1, 2):
                def distributed():
                    p = work / f"ray-{workers}"
                    shutil.rmtree(p, ignore_errors=True)
                    Store.create(p, codec=codec, dense=args.dense).close()
                    return vray.build(p, src, segment_rows=args.segment_rows, workers=workers)
                secs, rep = best(distributed, args.repeat)
                row["build"][f"ray {workers} worker(s)"] = {
                    "s": secs, "rows_per_s": n / secs, "rows_per_s_per_worker": n / secs / workers,
                    "encode_s": rep.encode_seconds, "commit_s": rep.commit_seconds, "segments": rep.segments}
            # the fixed cost of a distributed build (worker start, imports, planning, commit):
            # a build of one small batch; the marginal rate is what the rows cost beyond it
            small = work / "small.npy"
            np.save(small, x[:2048])

            def tiny():
                p = work / "ray-small"
                shutil.rmtree(p, ignore_errors=True)
                Store.create(p, codec=codec, dense=args.dense).close()
                return vray.build(p, small, segment_rows=args.segment_rows, workers=1)
            fixed, _ = best(tiny, args.repeat)
            row["build"]["ray fixed cost (2,048 rows)"] = {"s": fixed, "rows_per_s": 2048 / fixed}
            for workers in (1, 2):
                b = row["build"][f"ray {workers} worker(s)"]
                b["marginal_rows_per_s_per_worker"] = (n - 2048) / max(b["s"] - fixed, 1e-9) / workers
            store_path = work / "ray-2"
            # RAM per row (scan layouts and ids; the codec's arrays are per store): of the Ray
            # build (segments of --segment-rows: an IVF list of a small segment pads to a block
            # of 32 rows) and of the one-process build after its merges (larger segments)
            for name, where in (("ram_bytes_per_row_ray", store_path), ("ram_bytes_per_row", work / "one-2")):
                with Store.open(where) as s:
                    info = s.info()
                    row[name] = (info["ram_bytes"]["index"] + info["ram_bytes"]["ids"]) / max(info["live"], 1)
                    row[name.replace("ram_bytes_per_row", "segments")] = info["segments"]
            with Store.open(store_path) as s:
                info = s.info()
                row["codec_bytes"] = info["ram_bytes"]["codec"]
                row["dense_bytes_per_row"] = info["dense_bytes"] / max(info["live"], 1)
                want = {}
                for threads in (1, 2):
                    numba.set_num_threads(threads)
                    s.search(queries[: args.batch], 10, rerank=args.rerank)
                    s.search(queries[:1], 10, rerank=args.rerank)

                    def run_one():
                        with threadpool_limits(threads):
                            return [s.search(queries[i:i + args.batch], 10, rerank=args.rerank)
                                    for i in range(0, len(queries), args.batch)]
                    secs, res = best(run_one, args.repeat)
                    want = np.concatenate([r.ids for r in res])
                    cands = sum(r.stats.candidates for r in res)
                    t = time.perf_counter()
                    for i in range(50):
                        s.search(queries[i:i + 1], 10, rerank=args.rerank)
                    row["search"][f"one-process {threads} thread(s)"] = {
                        "qps": len(queries) / secs, "codes_per_s": cands / secs,
                        "single_query_ms": (time.perf_counter() - t) / 50 * 1e3}
                numba.set_num_threads(2)
            for shards in (1, 2):
                with vray.ShardedStore(store_path, shards=shards, cpus_per_shard=1) as sh:
                    sh.search(queries[: args.batch], 10, rerank=args.rerank)
                    sh.search(queries[:1], 10, rerank=args.rerank)  # the one-query kernels too

                    def run_sharded():
                        return [sh.search(queries[i:i + args.batch], 10, rerank=args.rerank)
                                for i in range(0, len(queries), args.batch)]
                    secs, res = best(run_sharded, args.repeat)
                    got = np.concatenate([r.ids for r in res])
                    t = time.perf_counter()
                    for i in range(50):
                        sh.search(queries[i:i + 1], 10, rerank=args.rerank)
                    one_query_ms = (time.perf_counter() - t) / 50 * 1e3
                    row["search"][f"ray {shards} shard(s)"] = {"qps": len(queries) / secs,
                                                               "equal_to_one_process": bool(np.array_equal(got, want)),
                                                               "single_query_ms": one_query_ms}
            results["specs"][spec] = row
            print(json.dumps({spec: row}, indent=1), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


# The projection's assumptions (printed with it).
TARGET_ROWS = 1_000_000_000
CORES_PER_MACHINE = 32
PROBE_FRACTION = 1 / 256   # IVF: codes scored per query / rows (e.g. IVF65536, nprobe 256)
DISK_READ_MS = 0.1         # one random 4 KiB read from a local NVMe SSD


def projection(r: dict) -> list[str]:
    """1B x dim over N machines from the per-worker figures measured here (module docstring)."""
    from vecz.kernels.topk import topk_positions

    spec = next((s for s in r["specs"] if s.startswith("IVF")), next(iter(r["specs"])))
    row = r["specs"][spec]
    per_worker = row["build"]["ray 2 worker(s)"]["marginal_rows_per_s_per_worker"]
    fixed = row["build"]["ray fixed cost (2,048 rows)"]["s"]
    scan = row["search"]["one-process 1 thread(s)"]["codes_per_s"]  # effective: prep, scan, merge, re-rank
    ram = row["ram_bytes_per_row"]
    dense = row["dense_bytes_per_row"]
    # the actor round trips measured here: a lone query through 2 shards minus the same
    # query in one process (two rounds, Ray's transport and the driver's merge included)
    hop_ms = max(0.0, row["search"]["ray 2 shard(s)"]["single_query_ms"]
                 - row["search"]["one-process 1 thread(s)"]["single_query_ms"]) / 2
    lines = ["", f"Projection to {TARGET_ROWS:,} x {r['dim']} with {spec} codes, from the figures above. Assumptions: "
             f"{CORES_PER_MACHINE} cores per machine; one build worker per core at the marginal per-worker rate "
             f"measured here ({per_worker:,.0f} rows/s; the fixed cost of a build, {fixed:.1f} s here, is paid "
             f"once); one shard (actor, one thread) per core, so a lone query is scanned by every core at once; "
             f"IVF probing {PROBE_FRACTION:.4f} of the rows per query (e.g. IVF65536 at nprobe 256) at the effective "
             f"rate measured here ({scan / 1e6:,.1f} M codes per second per thread: query preparation, scan, merge "
             f"and re-rank included); RAM {ram:.0f} B per row as measured on the one-process store "
             f"({row['segments']} segments; scan layout and ids; {row['ram_bytes_per_row_ray']:.0f} B on the Ray "
             f"build's {row['segments_ray']} segments of at most {r['segment_rows']:,} rows, whose IVF lists pad "
             f"to blocks of 32 rows; the trained codec is per machine, {row['codec_bytes'] / 1e6:.0f} MB here); the dense tier, {dense:,.0f} B per row, on "
             f"each machine's NVMe; two driver-actor round trips per query of {hop_ms:.1f} ms each (measured here "
             f"on one machine; a data-centre network adds its own); the driver merging one shortlist of R = "
             f"{r['rerank']} per shard (timed below with vecz's merge kernel); R re-ranking reads, "
             f"{DISK_READ_MS} ms each, issued together (one read's latency).", "",
             "| machines | shards | RAM per machine (GB) | dense per machine (TB) | build hours | scan ms | merge ms "
             "| lone-query latency (ms) | QPS, all cores busy |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rng = np.random.default_rng(0)
    for machines in (8, 16, 32, 64, 128):
        shards = machines * CORES_PER_MACHINE
        rows = TARGET_ROWS / machines
        build_h = TARGET_ROWS / (per_worker * shards) / 3600
        scan_ms = TARGET_ROWS * PROBE_FRACTION / shards / scan * 1e3
        width = shards * r["rerank"]
        scores = rng.random((1, width), dtype=np.float32)
        keys = np.arange(width, dtype=np.int64)[None, :]
        topk_positions(scores, keys, r["rerank"])
        t = time.perf_counter()
        for _ in range(5):
            topk_positions(scores, keys, r["rerank"])
        merge_ms = (time.perf_counter() - t) / 5 * 1e3
        lone_ms = 2 * hop_ms + scan_ms + merge_ms + DISK_READ_MS
        qps = shards * scan / (TARGET_ROWS * PROBE_FRACTION)
        lines.append(f"| {machines} | {shards:,} | {rows * ram / 1e9:,.0f} | {rows * dense / 1e12:,.2f} | "
                     f"{build_h:,.2f} | {scan_ms:,.1f} | {merge_ms:,.2f} | {lone_ms:,.1f} | {qps:,.0f} |")
    return lines


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu']} ({r['cores']} cores); {r['data']} {r['rows']:,} x {r['dim']}, dense {r['dense']}, "
             f"Ray {r['ray']}, segments of {r['segment_rows']:,} rows", ""]
    lines += ["| spec | build | s | rows/s | rows/s per worker | marginal rows/s per worker |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for spec, row in r["specs"].items():
        for name, b in row["build"].items():
            lines.append(f"| {spec} | {name} | {b['s']:.2f} | {b['rows_per_s']:,.0f} | "
                         f"{b.get('rows_per_s_per_worker', float('nan')):,.0f} | "
                         f"{b.get('marginal_rows_per_s_per_worker', float('nan')):,.0f} |")
    lines += ["", f"| spec | search (batches of {r['batch']}, R = {r['rerank']}) | QPS | equal | 1-query ms |",
              "| --- | --- | ---: | --- | ---: |"]
    for spec, row in r["specs"].items():
        for name, s in row["search"].items():
            lines.append(f"| {spec} | {name} | {s['qps']:,.0f} | {s.get('equal_to_one_process', '')} | "
                         f"{s['single_query_ms']:.2f} |")
    return "\n".join(lines + projection(r))


if __name__ == "__main__":
    sys.exit(main())
