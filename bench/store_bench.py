"""The store's targets (issue 3), measured on a real dataset in one process run:

- quality: recall@10 against the re-rank depth R for each spec (the exact vectors read from
  the store's dense files), on all queries;
- speed: single-thread QPS of `Store.search` at an operating point (spec, R) beside faiss's
  in-RAM `PQ96x4fs,RFlat`, `IVF<n>,PQ96x4fs,RFlat` (whole vectors) and `IVF<n>,PQ96x4fsr,RFlat`
  (residuals, since stop 49) swept over k_factor and nprobe; the
  ratio is against the fastest faiss configuration whose recall@10 is at least vecz's;
- RAM: resident set of a fresh process before and after `Store.open` (subprocess), against
  1.3 x (codes + ids + trained arrays) + 64 MB;
- single: one query at a time, the dense files read whole first (warm), p50 / p99 latency of
  `Store.search` beside faiss's `index.search` of one query (the same sweep, vectors in RAM),
  against the faiss configuration with the lowest p50 whose recall@10 is at least vecz's;
- cold cache: the dense files' pages evicted (posix_fadvise DONTNEED, which needs no root,
  before every query), p50/p99 latency of one-query searches and the bytes the process read
  from storage (/proc/self/io read_bytes) per query, beside the rows and bytes vecz reports;
- build: vectors per second of Store.create + add on 2 threads (train, encode, write, fsync)
  and of Codec train + encode alone, against faiss train + add of the closest spec;
- first (`--parts first`): the first ``rerank="auto"`` query after `Store.open`, the dense
  files evicted before each open, on a copy of each point's store without a committed error
  model (the search measures one) and after `Store.calibrate()` committed one (it reads it).

    python bench/store_bench.py                       # wordnet-minilm, writes bench/out/store/
    python bench/store_bench.py --parts quality --specs "RB1;PQ56x8"

Every recall@10 is against the exact cosine top-10 (vecz's stores are cosine, faiss searches
unit rows by inner product), computed once for all the queries and cached by
`vecz.engine.bench.data.dataset_truth`; not the dataset's gt_ids.npy, the float16 rows' inner
product, which reorders near ties.

Run it alone: two benchmarks on a 2-core machine disturb each other.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numba  # noqa: E402

from vecz.engine import Codec, Store  # noqa: E402
from vecz.engine.bench.data import dataset_truth  # noqa: E402
from vecz.engine.bench.faiss_side import faiss_factory  # noqa: E402
from vecz.engine.bench.metrics import recall_at  # noqa: E402
from vecz.engine.bench.runner import build_store, set_blas_threads  # noqa: E402
from vecz.errors import VeczError  # noqa: E402
from vecz.formats.dense import RESIDENCY_RECHECK_S  # noqa: E402

K = 10


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    return recall_at(found, gt, K)


def threads(n: int) -> None:
    n = min(n, numba.config.NUMBA_NUM_THREADS)  # NUMBA_NUM_THREADS=1 caps both sides
    numba.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    set_blas_threads(n)


def best_time(fn, rounds: int = 3) -> float:
    fn()  # warm: compiled kernels, lazy tables
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def has_store(path: Path, n: int, segments: int | None = None, calibrated: bool = False) -> bool:
    """A complete store of n rows is at `path` (built by an earlier run): with `segments`,
    in that many segments, and `calibrated`, with a committed error model. A build cut short
    (each part or batch commits on its own) is a valid, smaller store; also used by
    segments.py, sharded_auto.py and rerank_auto.py."""
    try:
        with Store.open(path) as s:
            return (len(s) == n and (segments is None or s.info()["segments"] == segments)
                    and (not calibrated or s.calibration is not None))
    except (VeczError, OSError):
        return False


def part_build(args, base, specs, out):
    threads(2)
    # compile everything once on a small store so no figure includes JIT time
    warm = Path(args.work) / "warm"
    for spec in specs:
        build_store(warm, spec, base[:3000])
    rows = []
    xb = base / np.linalg.norm(base, axis=1, keepdims=True)
    for spec in specs:
        t_store = build_store(Path(args.work) / f"build-{spec}", spec, base).build_s
        t0 = time.perf_counter()
        c = Codec(spec, base.shape[1], "cosine").train(base)
        c.encode(base)
        t_codec = time.perf_counter() - t0
        fstr = faiss_factory(spec, base.shape[1])
        t_faiss = None
        try:
            index = faiss.index_factory(base.shape[1], fstr, faiss.METRIC_INNER_PRODUCT) if fstr else None
        except RuntimeError as exc:  # e.g. faiss PQ needs dim % M == 0 (vecz pads)
            print(f"build {spec}: faiss {fstr} not available: {str(exc).splitlines()[-1][:120]}")
            index = fstr = None
        if index is not None:
            t0 = time.perf_counter()
            index.train(xb[: 65536])
            index.add(xb)
            t_faiss = time.perf_counter() - t0
        n = len(base)
        rows.append({"spec": spec, "store_s": t_store, "store_vps": n / t_store, "codec_s": t_codec,
                     "codec_vps": n / t_codec, "faiss": fstr, "faiss_s": t_faiss,
                     "faiss_vps": n / t_faiss if t_faiss else None,
                     "ratio_store": (t_faiss / t_store) if t_faiss else None,
                     "ratio_codec": (t_faiss / t_codec) if t_faiss else None})
        r = rows[-1]
        ratio_s = f"{r['ratio_store']:.2f}x" if r["ratio_store"] else "n/a"
        ratio_c = f"{r['ratio_codec']:.2f}x" if r["ratio_codec"] else "n/a"
        faiss_t = f"{t_faiss:.1f} s" if t_faiss else "n/a"
        print(f"build {spec}: store {t_store:.1f} s ({n / t_store:,.0f} vec/s), codec train+encode {t_codec:.1f} s; "
              f"faiss {fstr} train+add {faiss_t} -> speed ratio store {ratio_s}, codec {ratio_c}", flush=True)
    out["build"] = rows


def ensure_store(args, base, spec) -> Path:
    path = Path(args.work) / (f"store-{spec}" if args.dense == "f32" else f"store-{spec}-{args.dense}")
    if args.rebuild or not has_store(path, len(base)):
        threads(2)
        build_store(path, spec, base, dense=args.dense)
    return path


def part_quality(args, base, queries, gt, specs, out):
    threads(2)
    rows = []
    for spec in specs:
        path = ensure_store(args, base, spec)
        with Store.open(path) as s:
            line = {"spec": spec, "code_size": s.codec.code_size}
            for r in args.rerank:
                res = s.search(queries, K, rerank=r)
                line[f"R{r}"] = recall(res.ids, gt)
        rows.append(line)
        print("quality", json.dumps(line), flush=True)
    out["quality"] = rows


def _single_p50(search, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 ms of `search` over each query alone (the first 20 again as warm-up)."""
    for i in range(min(20, len(queries))):
        search(queries[i : i + 1])
    lat = []
    for i in range(len(queries)):
        t = time.perf_counter()
        search(queries[i : i + 1])
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1e3
    return float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99))


def faiss_sweep(base, queries, gt, nlist: int, single: np.ndarray | None = None):
    """faiss's in-RAM refine configurations swept: recall@10 on `queries` and their QPS on
    one thread, or with `single` (queries) the p50 / p99 ms of one query at a time instead."""
    xb = base / np.linalg.norm(base, axis=1, keepdims=True)
    xq = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if single is not None:
        single = single / np.linalg.norm(single, axis=1, keepdims=True)
    rows = []
    threads(2)
    flat = faiss.index_factory(base.shape[1], "PQ96x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    flat.train(xb[:65536])
    flat.add(xb)
    # the issue's `IVF<n>,PQ96x4fs,RFlat` codes whole vectors (index_factory's x4fs behind an
    # IVF: by_residual=False); `...x4fsr` codes residuals as vecz's IVF does: both are swept
    ivfs = {}
    for key in (f"IVF{nlist},PQ96x4fs,RFlat", f"IVF{nlist},PQ96x4fsr,RFlat"):
        ivfs[key] = faiss.index_factory(base.shape[1], key, faiss.METRIC_INNER_PRODUCT)
        ivfs[key].train(xb[:65536])
        ivfs[key].add(xb)
    threads(1)
    for kf in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50):
        params = faiss.IndexRefineSearchParameters(k_factor=kf)
        _, ids = flat.search(xq, K, params=params)
        row = {"faiss": "PQ96x4fs,RFlat", "k_factor": kf, "nprobe": None, "recall@10": recall(ids, gt)}
        rows.append({**row, **_faiss_time(flat, xq, params, single)})
    for key, ivf in ivfs.items():
        for nprobe in (32, 64, 96, 128, 160, 192, 256, 384, 512):
            for kf in (2, 4, 5, 6, 8, 10, 12, 15, 20):
                base_params = faiss.SearchParametersIVF(nprobe=nprobe)
                params = faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=base_params)
                _, ids = ivf.search(xq, K, params=params)
                row = {"faiss": key, "k_factor": kf, "nprobe": nprobe, "recall@10": recall(ids, gt)}
                rows.append({**row, **_faiss_time(ivf, xq, params, single)})
    for r in rows:
        print("faiss", json.dumps(r), flush=True)
    return rows


def _faiss_time(index, xq: np.ndarray, params, single: np.ndarray | None) -> dict:
    if single is None:
        return {"qps": len(xq) / best_time(lambda: index.search(xq, K, params=params))}
    p50, p99 = _single_p50(lambda one: index.search(one, K, params=params), single)
    return {"p50_ms": p50, "p99_ms": p99}


def _search_kw(r: int | str, nprobe: str | None) -> dict:
    """`Store.search`'s keywords for a point's R and nprobe (`_point`)."""
    return {"rerank": r, **({"nprobe": int(nprobe)} if nprobe else {})}


def _faiss_best(faiss_rows: list[dict], rec: float, better) -> tuple[dict, bool]:
    """The faiss configuration that `better` picks (min or max by a key) among those of
    recall@10 >= rec, else the one of the highest recall; and whether one reached rec."""
    match = [f for f in faiss_rows if f["recall@10"] >= rec]
    return (better(match) if match else max(faiss_rows, key=lambda f: f["recall@10"])), bool(match)


def _point(text: str) -> tuple[str, int | str, str | None]:
    """SPEC:R[:NPROBE] with R an integer or auto (auto@CAP for a cap other than the default)."""
    spec, r, nprobe = (text.split(":") + [None, None])[:3]
    if r is None:
        raise ValueError(f"no R in {text!r}")
    return spec, (r.replace("@", ":") if r.startswith("auto") else int(r)), nprobe


def part_speed(args, base, queries, gt, out):
    q = queries[: args.nq_speed]
    g = gt[: args.nq_speed]
    faiss_rows = faiss_sweep(base, q, g, args.nlist)
    rows = []
    for point in args.points:
        spec, r, nprobe = _point(point)
        path = ensure_store(args, base, spec)
        threads(1)
        with Store.open(path) as s:
            kw = _search_kw(r, nprobe)
            if isinstance(r, str):
                s.error_model()  # calibrated once per open store, not timed
            res = s.search(q, K, **kw)
            rec = recall(res.ids, g)
            t = best_time(lambda: s.search(q, K, **kw))
        qps = len(q) / t
        best, reached = _faiss_best(faiss_rows, rec, lambda rows: max(rows, key=lambda f: f["qps"]))
        row = {"spec": spec, "rerank": r, "nprobe": nprobe and int(nprobe), "recall@10": rec, "qps": qps,
               "rows_read_per_query": res.stats.rows_read / len(q),
               "rows_read_p99": None if res.stats.rows_per_query is None else res.stats.rows_read_p99,
               "bytes_read_per_query": res.stats.bytes_read / len(q),
               "faiss_best": best, "faiss_reaches_recall": reached, "ratio": qps / best["qps"]}
        rows.append(row)
        print("speed", json.dumps(row), flush=True)
    out["speed"] = {"vecz": rows, "faiss": faiss_rows, "nq": len(q), "threads": 1}


def part_single(args, base, queries, gt, out):
    q = queries[: args.nq_speed]
    g = gt[: args.nq_speed]
    one = queries[: args.nq_single]
    faiss_rows = faiss_sweep(base, q, g, args.nlist, single=one)
    rows = []
    for point in args.points:
        spec, r, nprobe = _point(point)
        path = ensure_store(args, base, spec)
        threads(1)
        kw = _search_kw(r, nprobe)
        with Store.open(path) as s:
            if isinstance(r, str):
                s.error_model()  # calibrated once per open store, not timed
            rec = recall(s.search(q, K, **kw).ids, g)
            _read_whole(sorted(path.glob("dense-*.arrow")))  # warm, and seen as cached at the next look
            time.sleep(RESIDENCY_RECHECK_S + 0.1)
            p50, p99 = _single_p50(lambda x: s.search(x, K, **kw), one)
        best, reached = _faiss_best(faiss_rows, rec, lambda rows: min(rows, key=lambda f: f["p50_ms"]))
        row = {"spec": spec, "rerank": r, "nprobe": nprobe and int(nprobe), "recall@10": rec, "p50_ms": p50,
               "p99_ms": p99, "faiss_best": best, "faiss_reaches_recall": reached,
               "speed_ratio": best["p50_ms"] / p50}
        rows.append(row)
        print("single", json.dumps(row), flush=True)
    out["single"] = {"vecz": rows, "faiss": faiss_rows, "nq": len(one), "threads": 1}


_RAM_CHILD = """
import json, sys, numpy as np
def rss(field='VmRSS'):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
from vecz.engine import Store
imports = rss()
# the runtime's fixed cost: Numba loads the kernels' machine code on first use
with Store.open(sys.argv[2]) as tiny:
    tiny.search(np.ones((16, tiny.dim), np.float32), 10, rerank=10)
runtime = rss()
anon_runtime = rss('RssAnon')
s = Store.open(sys.argv[1])
opened = rss()
anon_open = rss('RssAnon')
queries = np.load(sys.argv[3])[:1000].astype(np.float32)
s.search(queries, 10, rerank=50)
searched, anon, file_backed = rss(), rss('RssAnon'), rss('RssFile')
mem = s.memory_bytes()
print(json.dumps({"rss_imports": imports, "rss_runtime": runtime, "rss_after_open": opened,
                  "rss_after_search": searched, "anon_runtime": anon_runtime, "anon_after_open": anon_open,
                  "anon_after_search": anon, "file_after_search": file_backed,
                  "codes": len(s) * s.codec.code_size, "ids": 8 * len(s),
                  "codec_state": mem["codec"], "held": mem}))
"""


def part_ram(args, base, specs, out):
    rows = []
    for spec in specs:
        path = ensure_store(args, base, spec)
        tiny = Path(args.work) / f"tiny-{spec}"
        if not has_store(tiny, 500):
            build_store(tiny, spec, base[:500])
        res = subprocess.run([sys.executable, "-c", _RAM_CHILD, str(path), str(tiny),
                              str(Path(args.data) / "queries.npy")], capture_output=True,
                             text=True, check=True, cwd=str(REPO))
        row = json.loads(res.stdout.strip().splitlines()[-1])
        payload = row["codes"] + row["ids"] + row["codec_state"]
        row.update({"spec": spec, "payload": payload, "budget": 1.3 * payload + (64 << 20),
                    "store_open_delta": row["rss_after_open"] - row["rss_runtime"],
                    "store_anon_delta": row["anon_after_search"] - row["anon_runtime"]})
        rows.append(row)
        mib = 2**20
        print(f"ram {spec}: payload (codes+ids+codebooks) {payload / mib:.1f} MiB; RSS after imports "
              f"{row['rss_imports'] / mib:.1f} MiB, with the kernels loaded {row['rss_runtime'] / mib:.1f} MiB, "
              f"after opening the store {row['rss_after_open'] / mib:.1f} MiB (+{row['store_open_delta'] / mib:.1f} MiB "
              f"= {row['store_open_delta'] / payload:.2f}x the payload); after 1000 searches with rerank 50: "
              f"anonymous +{row['store_anon_delta'] / mib:.1f} MiB over the runtime "
              f"({row['store_anon_delta'] / payload:.2f}x), file pages mapped {row['file_after_search'] / mib:.1f} MiB "
              f"(RssFile: the runtime's shared libraries as well as the dense rows read); target 1.3 x payload + 64 MiB = {row['budget'] / mib:.1f} MiB",
              flush=True)
    out["ram"] = rows


def _io_read_bytes() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def _evict(paths: list[Path], store: Store | None = None) -> None:
    # pages the store has mapped stay in the page cache whatever fadvise says: drop the
    # store's mappings of them first (the maps stay valid; the next touch reads the disk)
    if store is not None:
        for reader in store._pool.readers.values():
            reader._mmap.madvise(mmap.MADV_DONTNEED)
            reader.mark_uncached()  # its last look found the file cached, perhaps
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_whole(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def part_cold(args, base, queries, gt, out):
    rows = []
    for point in args.points:
        spec, r, nprobe = _point(point)
        path = ensure_store(args, base, spec)
        threads(1)
        dense_files = sorted(path.glob("dense-*.arrow"))
        kw = _search_kw(r, nprobe)
        with Store.open(path) as s:
            s.search(queries[:2], K, **kw)
            for mode in ("cold", "warm", "cached"):
                if mode == "warm":  # the cold pass evicted everything: bring the rows back first
                    s.search(queries[: args.nq_cold], K, **kw)
                if mode == "cached":  # the dense files read whole, and the store's next look sees it
                    _read_whole(dense_files)
                    time.sleep(RESIDENCY_RECHECK_S + 0.1)
                    s.search(queries[: args.nq_cold], K, **kw)
                lat, io, reported, found = [], [], [], []
                for i in range(args.nq_cold):
                    if mode == "cold":
                        _evict(dense_files, s)
                    before = _io_read_bytes()
                    t = time.perf_counter()
                    res = s.search(queries[i : i + 1], K, **kw)
                    lat.append(time.perf_counter() - t)
                    io.append(_io_read_bytes() - before)
                    reported.append(res.stats.bytes_read)
                    found.append(res.ids[0])
                lat_ms = np.array(lat) * 1e3
                row = {"spec": spec, "rerank": r, "mode": mode, "nq": args.nq_cold,
                       "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
                       "io_read_bytes_per_query": float(np.mean(io)),
                       "reported_bytes_per_query": float(np.mean(reported)),
                       "recall@10": recall(np.array(found), gt[: args.nq_cold])}
                rows.append(row)
                print("cold", json.dumps(row), flush=True)
    out["cold"] = rows


def part_first(args, base, queries, gt, out, opens: int = 3):
    rows = []
    for point in args.points:
        spec, r, nprobe = _point(point)
        path = ensure_store(args, base, spec)
        threads(1)
        copy = Path(args.work) / f"first-{path.name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy)
        try:
            with Store.open(copy, mode="a") as w:  # a store as built before models were committed
                if w.calibration is not None:
                    raise SystemExit(f"{path}: has a committed model; --parts first needs one without")
            kw = {"rerank": "auto", **({"nprobe": int(nprobe)} if nprobe else {})}
            with Store.open(copy) as s:  # this process's kernels loaded first (seconds), not timed
                s.search(queries[:1], K, **{**kw, "rerank": 50})
            row = {"spec": spec, "nprobe": nprobe}
            for mode in ("measured", "committed"):
                if mode == "committed":
                    with Store.open(copy, mode="a") as w:
                        t = time.perf_counter()
                        w.calibrate(nprobe=int(nprobe) if nprobe else None)
                        row["calibrate_commit_s"] = time.perf_counter() - t
                times = []
                for i in range(opens):
                    with Store.open(copy) as s:
                        _evict(sorted(copy.glob("dense-*.arrow")), s)
                        t = time.perf_counter()
                        s.search(queries[i: i + 1], K, **kw)
                        times.append(time.perf_counter() - t)
                row[f"{mode}_ms"] = [round(v * 1e3, 2) for v in times]
            rows.append(row)
            print("first", json.dumps(row), flush=True)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    out["first"] = rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wordnet-minilm"))
    p.add_argument("--specs", default="RB1;PQ56x8;PQ112x4")
    p.add_argument("--rerank", default="0,10,20,30,40,50,75,100,200")
    p.add_argument("--points", default="RB1:50;RB1:100;IVF1024,RB1:50:128;IVF1024,RB1:60:128;IVF1024,RB1:50:160;IVF1024,RB1:60:192;IVF1024,RB1:100:256", help="operating points SPEC:R[:NPROBE];... (R: an integer, auto or auto@CAP)")
    p.add_argument("--parts", default="build,quality,speed,ram,cold")
    p.add_argument("--nq-speed", type=int, default=1000)
    p.add_argument("--nq-cold", type=int, default=200)
    p.add_argument("--nq-single", type=int, default=500)
    p.add_argument("--nlist", type=int, default=1372)
    p.add_argument("--work", default="/tmp/vecz-store-bench")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--dense", default="f32", choices=("f32", "f16"),
                   help="the stores' dense tier (quality, speed, cold)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "store"))
    args = p.parse_args()
    args.rerank = [int(v) for v in args.rerank.split(",")]
    args.points = [v for v in args.points.split(";") if v]
    for point in args.points:
        try:
            _point(point)
        except (ValueError, AttributeError):
            p.error(f"--points: expected SPEC:R[:NPROBE] with R an integer, auto or auto@CAP, found {point!r}")
    specs = [v for v in args.specs.split(";") if v]
    data = Path(args.data)
    ds = dataset_truth(data, "cosine")  # every store and faiss index here ranks by cosine
    base, queries, gt = ds.base, ds.queries, ds.gt[:, :K]  # type: ignore[index]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out: dict = {"command": " ".join(sys.argv), "data": str(data), "n": len(base), "nq": len(queries),
                 "dense": args.dense, "faiss": faiss.__version__, "numba": numba.__version__}
    parts = args.parts.split(",")
    known = ("build", "quality", "speed", "single", "ram", "cold", "first")
    unknown = [part for part in parts if part not in known]
    if unknown:  # an unknown name wrote a report without figures
        p.error(f"--parts: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
    if "build" in parts:
        part_build(args, base, specs, out)
    if "quality" in parts:
        part_quality(args, base, queries, gt, specs, out)
    if "speed" in parts:
        part_speed(args, base, queries, gt, out)
    if "single" in parts:
        part_single(args, base, queries, gt, out)
    if "ram" in parts:
        part_ram(args, base, specs, out)
    if "cold" in parts:
        part_cold(args, base, queries, gt, out)
    if "first" in parts:
        part_first(args, base, queries, gt, out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = Path(args.out) / f"store-{'-'.join(parts)}.json"
    name.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
