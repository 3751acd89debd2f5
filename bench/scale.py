"""Scale benchmark of a vecz store at 1M, 3M and 10M vectors of 768 dims (not a pytest suite).

What it measures, per size n and spec (the 1M and 3M stores are prefixes of the 10M data):

- build: `vecz build` on the .npy file (default; ``--builder api`` runs `Store.create` + `add`
  in batches instead), in a fresh process: seconds, rows/s, the child's peak RSS, disk bytes;
  faiss beside it (the closest IVF index, train + add from the same rows, same threads);
- open: `Store.open` in a fresh process, cold (every store file evicted first) and warm, its
  time, the time of the first search after it, and VmRSS / RssAnon / RssFile after each;
- search: recall@10, QPS (batch of all queries), p50 / p99 (one query at a time) over a grid
  of nprobe x rerank (R <= 100), warm page cache; faiss at the same nprobe, re-ranking its R
  best candidates exactly from the same float16 vectors (numpy over the data file's map,
  since faiss cannot hold 10M x 768 float32 rows for IndexRefineFlat in 24 GiB);
- cold: one query at a time, every dense file's pages evicted before each query
  (``posix_fadvise(DONTNEED)``, as bench/store_bench.py does), p50 / p99 and bytes the
  process read from storage (/proc/self/io), beside the same queries warm;
- commits (largest store, first spec): add 10,000 rows, delete 10,000 rows, 2,000 one-row
  adds: each commit's latency and the next search's (a batch of 100 queries) against the
  steady state, a reader's `refresh()`, and search after the 2,000 adds against the same
  store after `compact()`.

Data. 768-d vectors that keep the structure of real embeddings, fitted to wordnet-gemma
(24,000 EmbeddingGemma vectors, unit norm) and generated deterministically in chunks of
65,536 rows, chunk c of stream s drawn from ``default_rng([seed, s, c])`` (s = 0 base,
1 queries, 2 rows added by the commits part), so a prefix of the 10M file is the 1M file and
any chunk can be regenerated alone. The model (fitted once, cached as model.npz):

1. k-means (numpy, seeded, 1,024 clusters) on the real vectors: centroids c_j and weights
   w_j = n_j / n (the cluster sizes);
2. per cluster, the PCA of its residuals x - c_j: components scaled by sqrt(eigenvalue),
   at most n_j - 1 of them (a cluster of 23 rows has a 22-dimensional residual);
3. globally, the PCA of all residuals: the top 128 eigenvalues/eigenvectors and the mean of
   the remaining 640 eigenvalues as an isotropic remainder sigma^2 (covariance
   U diag(lambda) U^T + sigma^2 (I - U U^T)), scaled per cluster by s_j^2 = the cluster's
   residual variance / the global one;
4. a sample: cluster j ~ w, x = c_j + sqrt(alpha) (PCA_j residual) + sqrt(1 - alpha) s_j
   (global residual), then L2-normalised (cosine embeddings) and stored as float16.

Why this model: centroids plus the global residual spectrum alone put every cluster's rows in
a blob far more isotropic than real neighbourhoods (wordnet-gemma's residuals have a
participation ratio near 290 of 768): a sampled row's nearest neighbour then has cosine
0.56-0.58 at the median where the real data have 0.70 (24,000 rows each), so every index
looks worse than on real data. The per-cluster PCA gives each cluster the few directions its
real members spread along; shrinking it towards the global spectrum (alpha = 0.85) keeps
the samples full-rank, so the ~10,000 rows drawn per cluster at 10M do not sit on a
22-dimensional plane. 1,024 clusters rather than 128 or 512: with fewer, larger clusters
IVF partitions got easier than on real data and neighbour cosines lower (measured with the
`check` part). The `check` part prints how close it gets: norms of the Matryoshka prefixes
(512 and 256 dims), cosine to the nearest centroid, the nearest-neighbour cosine at ranks 1,
10 and 100 (1,000 held-out rows against the other 23,000), exact recall of MRL truncation,
and recall@10 of the first spec's quantizer alone and behind IVF128 on the real and on the
generated 24,000 rows. Measured: every distribution within 0.02-0.03 of the real one (the
nearest-neighbour tail is thinner: p95 0.81 vs 0.84), RB1 recall equal at every R, but IVF
is easier on the generated rows (IVF128 at nprobe 16, R = 100: 0.958 vs 0.920 on real), so
the nprobe a target needs here is a lower bound for real data of this kind. Queries are
1,000 rows of the same model (stream 1): unlike the real dataset's queries (usage examples
against definitions) they come from the base distribution.

Ground truth: exact top-100 by inner product in float32 over the stored float16 rows, for
every size in one streaming pass (blocks of 65,536 rows, one BLAS product per block, a
running top-100 per query, ties to the smaller id), cached beside the data.

    python bench/scale.py                                   # 1M, 3M, 10M (hours; ~32 GB disk)
    python bench/scale.py --sizes 100000,200000 --out bench/out/scale-small
    python bench/scale.py --sizes 1000000 --spec "IVF4096,RB1;IVF4096,PQ192x4" --parts build,search

Work directory (`--work`, default /work/scale-work): model.npz, data/ (base.npy, queries.npy,
gt-<n>.npz), stores/, logs/. Data and ground truth stay for later runs; stores are removed
after each size unless `--keep`. Run it alone: two benchmarks on 2 cores disturb each other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "wordnet-gemma"
DEFAULT_WORK = Path("/work/scale-work")
K = 10
GT_DEPTH = 100
CHUNK = 65536  # rows per generated chunk and per ground-truth block; part of the data's identity
STREAM_BASE, STREAM_QUERIES, STREAM_EXTRA = 0, 1, 2
ALL_PARTS = ("check", "build", "open", "search", "cold", "commits")

TARGETS = {  # the store's targets at 10M (issue text), judged on the largest store measured
    "rss_after_open_bytes": 2 << 30,
    "open_s": 10.0,
    "recall@10": 0.95,
    "add_10k_s": 2.0,
    "delete_10k_s": 0.5,
    "first_search_ratio": 1.5,
    "after_adds_vs_compacted": 1.5,
}

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- the generator


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means in numpy (seeded): the data must not change when vecz's kernels do."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        d = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
        lab = d.argmin(1)
        cnt = np.bincount(lab, minlength=k)
        order = np.argsort(lab, kind="stable")
        starts = np.r_[0, np.cumsum(cnt)[:-1]]
        nonempty = cnt > 0
        sums = np.add.reduceat(x[order], starts[nonempty], axis=0)
        c[nonempty] = sums / cnt[nonempty, None]
        # re-seed empty clusters with the rows farthest from their centroid
        far = np.argsort(-(d[np.arange(len(x)), lab] + (x * x).sum(1)))
        c[~nonempty] = x[far[: int((~nonempty).sum())]]
    d = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
    return c, d.argmin(1)


def fit_model(real: np.ndarray, clusters: int, rank: int, alpha: float, seed: int) -> dict[str, np.ndarray]:
    """Fit the mixture described in the module docstring; plain arrays (saved as .npz)."""
    x = np.ascontiguousarray(real, dtype=np.float32)
    n, dim = x.shape
    centroids, lab = _kmeans(x, clusters, seed)
    cnt = np.bincount(lab, minlength=clusters)
    resid = x - centroids[lab]
    cov = (resid.T.astype(np.float64) @ resid) / max(1, n - clusters)
    ev, vecs = np.linalg.eigh(cov)
    ev, vecs = ev[::-1], vecs[:, ::-1]
    sigma2 = float(ev[rank:].mean())
    # variance along the top directions beyond the isotropic part every direction gets
    glob = (np.sqrt(np.maximum(ev[:rank] - sigma2, 0.0))[:, None] * vecs[:, :rank].T).astype(np.float32)
    var_j = np.bincount(lab, weights=(resid.astype(np.float64) ** 2).sum(1), minlength=clusters)
    var_j = var_j / np.maximum(cnt - 1, 1) / ev.sum()
    comps, starts = [], [0]
    local_ok = cnt >= 3  # fewer rows than that give no usable spread: such clusters use the global part alone
    for j in range(clusters):
        if local_ok[j]:
            r = resid[lab == j].astype(np.float64)
            _, s, vt = np.linalg.svd(r, full_matrices=False)
            keep = s > 1e-6 * max(1.0, float(s[0]))
            comps.append(((s[keep] / np.sqrt(cnt[j] - 1))[:, None] * vt[keep]).astype(np.float32))
        else:
            var_j[j] = 1.0
            comps.append(np.zeros((0, dim), np.float32))
        starts.append(starts[-1] + len(comps[-1]))
    return {
        "centroids": centroids.astype(np.float32),
        "weights": (cnt / cnt.sum()).astype(np.float64),
        "local": np.concatenate(comps),
        "local_starts": np.array(starts, dtype=np.int64),
        "local_coef": np.where(local_ok, np.sqrt(alpha), 0.0).astype(np.float32),
        "global_coef": np.where(local_ok, np.sqrt(1 - alpha), 1.0).astype(np.float32) * np.sqrt(var_j).astype(np.float32),
        "global": glob,
        "sigma": np.array(np.sqrt(sigma2), dtype=np.float32),
        "eigenvalues": ev.astype(np.float64),
        "params": np.array([clusters, rank, alpha, seed, n], dtype=np.float64),
    }


def model_fingerprint(model: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(model):
        h.update(key.encode())
        h.update(np.ascontiguousarray(model[key]).tobytes())
    return h.hexdigest()[:16]


def sample_chunk(model: dict[str, np.ndarray], seed: int, stream: int, chunk: int, rows: int) -> np.ndarray:
    """Rows [chunk * CHUNK, chunk * CHUNK + rows) of a stream: unit float16 (rows, dim)."""
    rng = np.random.default_rng([seed, stream, chunk])
    cen, glob = model["centroids"], model["global"]
    k, dim = cen.shape
    lab = rng.choice(k, rows, p=model["weights"])
    z = rng.standard_normal((rows, glob.shape[0]), dtype=np.float32)
    noise = rng.standard_normal((rows, dim), dtype=np.float32)
    noise *= model["sigma"]
    noise += z @ glob
    noise *= model["global_coef"][lab, None]
    x = cen[lab] + noise
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    starts, comps, coef = model["local_starts"], model["local"], model["local_coef"]
    for j in np.flatnonzero(np.diff(bounds)):
        rank = starts[j + 1] - starts[j]
        if rank == 0 or coef[j] == 0:
            continue
        rows_j = order[bounds[j]:bounds[j + 1]]
        a = rng.standard_normal((rows_j.size, rank), dtype=np.float32)
        x[rows_j] += coef[j] * (a @ comps[starts[j]:starts[j + 1]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def sample_rows(model, seed: int, stream: int, n: int) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # see ensure_data
        return np.concatenate([sample_chunk(model, seed, stream, c, min(CHUNK, n - c * CHUNK))
                               for c in range((n + CHUNK - 1) // CHUNK)])


def load_model(args) -> tuple[dict[str, np.ndarray], str]:
    path = Path(args.work) / "model.npz"
    want = [args.clusters, args.rank, args.alpha, args.seed]
    if path.exists():
        with np.load(path) as f:
            model = {k: f[k] for k in f.files}
        if list(model["params"][:4]) == want:
            return model, model_fingerprint(model)
    log(f"fitting the generator to {args.real}: k-means {args.clusters}, per-cluster PCA, global rank {args.rank}, "
        f"alpha {args.alpha}")
    real = np.load(Path(args.real) / "base.npy").astype(np.float32)
    model = fit_model(real, args.clusters, args.rank, args.alpha, args.seed)
    np.savez(path, **model)
    sizes = np.diff(model["local_starts"])
    log(f"model: {model['local'].shape[0]} per-cluster components (max {sizes.max()} per cluster), "
        f"cluster weights {model['weights'].min() * len(real):.0f}..{model['weights'].max() * len(real):.0f} rows, "
        f"isotropic sigma^2 {float(model['sigma']) ** 2:.3g}; saved {path}")
    return model, model_fingerprint(model)


def ensure_data(args, model, fp: str, n_max: int) -> tuple[Path, Path]:
    """base.npy (at least n_max rows) and queries.npy of this model, generated if missing."""
    data = Path(args.work) / "data"
    data.mkdir(parents=True, exist_ok=True)
    base, meta_path = data / "base.npy", data / "base.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not (meta.get("fingerprint") == fp and meta.get("complete") and meta.get("n", 0) >= n_max and base.exists()):
        dim = model["centroids"].shape[1]
        need = n_max * dim * 2
        free = shutil.disk_usage(data).free + (base.stat().st_size if base.exists() else 0)
        if need > free * 0.95:
            raise SystemExit(f"{data}: need {need / 1e9:.1f} GB for base.npy, {free / 1e9:.1f} GB free")
        log(f"generating {n_max:,} x {dim} float16 rows -> {base} ({need / 1e9:.1f} GB), {args.threads} threads")
        meta_path.unlink(missing_ok=True)
        base.unlink(missing_ok=True)
        mm = np.lib.format.open_memmap(base, mode="w+", dtype=np.float16, shape=(n_max, dim))
        n_chunks = (n_max + CHUNK - 1) // CHUNK
        t0, last = time.time(), time.time()

        def job(c: int) -> np.ndarray:
            return sample_chunk(model, args.seed, STREAM_BASE, c, min(CHUNK, n_max - c * CHUNK))

        # numpy releases the GIL in its RNG fills and BLAS, so chunks run in parallel threads;
        # BLAS itself on one thread: a sample makes one small product per cluster, and threaded
        # OpenBLAS took 5x longer on those (14 s vs 3 s a chunk, 2 busy cores). Windows bound
        # the chunks in flight.
        from threadpoolctl import threadpool_limits

        with ThreadPoolExecutor(args.threads) as pool, threadpool_limits(1):
            for w0 in range(0, n_chunks, 2 * args.threads):
                window = range(w0, min(n_chunks, w0 + 2 * args.threads))
                for c, rows in zip(window, pool.map(job, window)):
                    mm[c * CHUNK:c * CHUNK + len(rows)] = rows
                if time.time() - last > 30:
                    last = time.time()
                    done = min(n_max, window[-1] * CHUNK + CHUNK)
                    log(f"  {done:,} rows ({done / (last - t0):,.0f} rows/s)")
        mm.flush()
        del mm
        meta = {"fingerprint": fp, "n": n_max, "dim": dim, "chunk": CHUNK, "seed": args.seed, "complete": True,
                "generate_s": time.time() - t0}
        meta_path.write_text(json.dumps(meta))
        log(f"generated in {meta['generate_s']:.1f} s ({n_max / meta['generate_s']:,.0f} rows/s)")
    queries = data / f"queries-{args.nq}.npy"
    qmeta = data / f"queries-{args.nq}.json"
    if not (queries.exists() and qmeta.exists() and json.loads(qmeta.read_text()).get("fingerprint") == fp):
        np.save(queries, sample_rows(model, args.seed, STREAM_QUERIES, args.nq))
        qmeta.write_text(json.dumps({"fingerprint": fp, "n": args.nq}))
    return base, queries


# ----------------------------------------------------------------------------- ground truth


def _merge_top(run_s, run_i, blk_s, blk_i, depth):
    """Best `depth` of two lists per query; the running list's ids are all smaller than the
    block's, so a stable sort on score alone breaks ties towards the smaller id."""
    s = np.concatenate([run_s, blk_s], axis=1)
    i = np.concatenate([run_i, blk_i], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def ensure_gt(args, fp: str, base_path: Path, q_path: Path, sizes: list[int]) -> dict[int, np.ndarray]:
    """Exact top-100 ids per size, all sizes in one streaming pass over the base, cached."""
    data = base_path.parent
    out, missing = {}, []
    # a cache older than the data (base.json is written when base.npy is complete) belongs to
    # rows generated before: same model, but e.g. another BLAS thread count rounds a few f16
    # values differently, and a stale 1M file agreed with the exact top-10 on 97.8% only
    made = (data / "base.json").stat().st_mtime
    for n in sizes:
        p = data / f"gt-{n}-q{args.nq}.npz"
        if p.exists() and p.stat().st_mtime > made:
            with np.load(p) as f:
                if str(f["fingerprint"]) == fp:
                    out[n] = f["ids"]
                    continue
        missing.append(n)
    if not missing:
        return out
    xq = np.load(q_path).astype(np.float32)
    mm = np.load(base_path, mmap_mode="r")
    end = max(missing)
    cuts = sorted(set(range(0, end, CHUNK)) | set(missing) | {end})
    run_s = np.full((len(xq), 0), -np.inf, np.float32)
    run_i = np.full((len(xq), 0), -1, np.int64)
    log(f"ground truth: exact top-{GT_DEPTH} of {len(xq)} queries for n = {', '.join(f'{n:,}' for n in missing)} "
        f"(one pass over {end:,} rows)")
    t0, last = time.time(), time.time()
    for a, b in zip(cuts[:-1], cuts[1:]):
        s = xq @ np.asarray(mm[a:b], dtype=np.float32).T
        d = min(GT_DEPTH, b - a)
        part = np.argpartition(-s, d - 1, axis=1)[:, :d] if d < b - a else np.broadcast_to(np.arange(b - a), s.shape)
        ps = np.take_along_axis(s, part, 1)
        pi = part.astype(np.int64) + a
        o = np.lexsort((pi, -ps), axis=1)  # block top-d sorted by score, then id
        run_s, run_i = _merge_top(run_s, run_i, np.take_along_axis(ps, o, 1), np.take_along_axis(pi, o, 1), GT_DEPTH)
        if b in missing:
            np.savez(data / f"gt-{b}-q{args.nq}.npz", ids=run_i, scores=run_s, fingerprint=fp)
            out[b] = run_i.copy()
            log(f"  ground truth for {b:,} rows saved")
        if time.time() - last > 60:
            last = time.time()
            log(f"  {b:,} rows ({b / (last - t0):,.0f} rows/s)")
    log(f"ground truth in {time.time() - t0:.1f} s")
    return out


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int = K) -> float:
    f = found[:, :k]
    return float((f[:, :, None] == gt[:, None, :k]).any(-1).sum() / (k * len(gt)))


# ----------------------------------------------------------------------------- processes, files


def rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def io_read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def evict(paths: list[Path]) -> None:
    """Drop the page cache of these files (pages still mapped by a process stay)."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:  # replaced by a concurrent commit
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def store_files(path: Path, dense_only: bool) -> list[Path]:
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    if not dense_only:
        return files
    # today's dense files are dense-<serial>.arrow; match any layout that names them so
    dense = [p for p in files if "dense" in p.name.lower() or p.suffix == ".arrow"]
    return dense or files


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def set_threads(n: int) -> None:
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n)
    try:
        import faiss
        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _hwm_kib(pid: int) -> int:
    """VmHWM (peak resident set, KiB) of a live process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(argv: list[str], threads: int, log_file: Path) -> tuple[int, str, float, int]:
    """Run a process; returns (exit code, stdout, wall seconds, peak RSS bytes).

    The peak is the child's own VmHWM, polled every 50 ms while it runs. Not wait4's
    ru_maxrss: Python starts children with vfork, and at exec Linux folds the high-water mark
    of the mm the child had until then (the parent's, here holding gigabytes of the data
    file's mapped pages) into the child's ru_maxrss, which reported 16 GiB for a build whose
    own peak was a few."""
    t0 = time.perf_counter()
    peak = [0]
    with open(log_file, "ab") as err:
        err.write(f"\n$ {' '.join(argv)}\n".encode())
        err.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=child_env(threads), cwd=str(REPO))
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _hwm_kib(proc.pid))
                done.wait(0.05)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        out = proc.stdout.read().decode()
        proc.wait()
        done.set()
        watcher.join()
    return proc.returncode, out, time.perf_counter() - t0, peak[0] * 1024


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON in the child's output: {text[-500:]!r}")


def parse_spec(spec: str) -> tuple[int | None, int | None, str]:
    stages = spec.split(",")
    mrl = next((int(s[3:]) for s in stages if re.fullmatch(r"MRL\d+", s)), None)
    nlist = next((int(s[3:]) for s in stages if re.fullmatch(r"IVF\d+", s)), None)
    return mrl, nlist, stages[-1]


def with_nlist(spec: str, nlist: int) -> str:
    return re.sub(r"IVF\d+", f"IVF{nlist}", spec)


def spec_tag(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec)


# ----------------------------------------------------------------------------- child processes


def child_build_api(cfg: dict) -> None:
    """Store.create + add in batches from the memory-mapped .npy (first batch >= train rows)."""
    from vecz import Store

    mm = np.load(cfg["base"], mmap_mode="r")
    n, batch = cfg["n"], cfg["batch_rows"]
    t0 = time.perf_counter()
    kw = {"dim": mm.shape[1], "metric": "cosine", "codec": cfg["spec"], "dense": cfg["dense"]}
    note = None
    try:
        store = Store.create(cfg["store"], train_size=cfg["train_size"], **kw)
    except TypeError:  # a store without the train_size option: it picks its own sample
        store = Store.create(cfg["store"], **kw)
        note = "Store.create has no train_size: the store's own training sample"
    commits = []
    start = 0
    while start < n:
        stop = min(n, start + max(batch, cfg["train_size"] if start == 0 else 0))
        x = np.asarray(mm[start:stop])
        t = time.perf_counter()
        store.add(x)
        commits.append([stop - start, time.perf_counter() - t])
        start = stop
        if len(commits) % 10 == 0:
            print(f"{time.strftime('%H:%M:%S')} build: {start:,} rows, {time.perf_counter() - t0:.1f} s, "
                  f"RSS {rss() / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    info = store.info()
    store.close()
    print(json.dumps({"build_s": time.perf_counter() - t0, "commits": commits, "peak_rss": rss("VmHWM"),
                      "info": info, "note": note}, default=str))


def child_open(cfg: dict) -> None:
    """Open in a fresh process: RSS after imports, after loading the kernels on a tiny store,
    after Store.open, after the first search and after a batch."""
    import vecz
    from vecz import Store

    out: dict[str, Any] = {"rss_imports": rss()}
    q = np.load(cfg["queries"]).astype(np.float32)
    kw = {"nprobe": cfg["nprobe"], "rerank": cfg["rerank"]} if cfg["nprobe"] else {"rerank": cfg["rerank"]}
    with Store.open(cfg["tiny"]) as tiny:  # the runtime's fixed cost: Numba loads the kernels
        tiny_kw = dict(kw, nprobe=min(kw.get("nprobe", 1), 16)) if "nprobe" in kw else kw
        tiny.search(q[:4], K, **tiny_kw)
    out["rss_runtime"] = rss()
    out["anon_runtime"] = rss("RssAnon")
    if cfg["cold"]:
        evict(store_files(Path(cfg["store"]), dense_only=False))
    io0 = io_read_bytes()
    t = time.perf_counter()
    s = Store.open(cfg["store"])
    out["open_s"] = time.perf_counter() - t
    out.update(rss_after_open=rss(), anon_after_open=rss("RssAnon"), file_after_open=rss("RssFile"))
    t = time.perf_counter()
    s.search(q[:1], K, **kw)
    out["first_search_s"] = time.perf_counter() - t
    out["io_read_bytes_open_first"] = io_read_bytes() - io0
    out.update(rss_after_first=rss(), anon_after_first=rss("RssAnon"), file_after_first=rss("RssFile"))
    t = time.perf_counter()
    s.search(q, K, **kw)
    out["batch_s"] = time.perf_counter() - t
    out.update(rss_after_batch=rss(), anon_after_batch=rss("RssAnon"), file_after_batch=rss("RssFile"))
    info = s.info()
    out["ram_bytes_total"] = info.get("ram_bytes_total")
    out["rows"] = info.get("live", len(s))
    out["vecz"] = getattr(vecz, "__version__", None)
    s.close()
    print(json.dumps(out, default=str))


# ----------------------------------------------------------------------------- faiss beside the store


def faiss_factory(spec: str, dim: int) -> tuple[str | None, int | None]:
    """The closest faiss IVF index to a vecz spec (MRL is applied to the rows before faiss)."""
    mrl, nlist, quant = parse_spec(spec)
    d = mrl or dim
    body = None
    if m := re.fullmatch(r"PQ(\d+)x4", quant):
        body = f"PQ{m[1]}x4fs"
    elif m := re.fullmatch(r"PQ(\d+)x8", quant):
        body = f"PQ{m[1]}np"
    elif quant == "RB1":
        body = "RaBitQfs"  # 1 bit + 8 bytes of factors: the same 104 B at 768 dims as vecz RB1
    elif m := re.fullmatch(r"RB(\d+)", quant):
        body = f"RaBitQ{m[1]}"
    elif quant in ("SQ8", "SQ4"):
        body = quant
    elif quant == "F16":
        body = "SQfp16"
    elif quant == "Flat":
        body = "Flat"
    if body is None:
        return None, mrl
    ivf = f"IVF{nlist}," if nlist else ""
    rr = f"RR{d}," if quant.startswith("RB") else ""  # RaBitQ assumes randomly rotated data
    return f"{rr}{ivf}{body}", mrl


def _faiss_prep(x: np.ndarray, mrl: int | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if mrl:
        x = np.ascontiguousarray(x[:, :mrl])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss_layers(index):
    import faiss

    index = faiss.downcast_index(index)
    while True:
        yield index
        if not isinstance(index, faiss.IndexPreTransform):
            return
        index = faiss.downcast_index(index.index)


def faiss_build(args, spec: str, base: np.ndarray, n: int) -> dict:
    import faiss

    dim = base.shape[1]
    fstr, mrl = faiss_factory(spec, dim)
    if fstr is None:
        return {"note": f"no faiss counterpart for {spec}"}
    index = faiss.index_factory(mrl or dim, fstr, faiss.METRIC_INNER_PRODUCT)
    code = max((getattr(i, "code_size", 0) for i in _faiss_layers(index)), default=0)
    need = n * (code + 8) * 1.3 + args.train_size * dim * 4 * 3
    avail = _mem_available()
    if need > 0.6 * avail:
        return {"factory": fstr, "note": f"skipped: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"}
    set_threads(args.threads)
    t0 = time.perf_counter()
    index.train(_faiss_prep(base[: min(n, args.train_size)], mrl))
    t_train = time.perf_counter() - t0
    for a in range(0, n, CHUNK):
        index.add(_faiss_prep(base[a:min(n, a + CHUNK)], mrl))
    t = time.perf_counter() - t0
    return {"factory": fstr, "mrl": mrl, "index": index, "build_s": t, "train_s": t_train, "rows_per_s": n / t,
            "code_size": code, "train_rows": min(n, args.train_size)}


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def faiss_search(fx: dict, base: np.ndarray, xq: np.ndarray, nprobe: int, rerank: int) -> np.ndarray:
    """faiss's R best candidates re-scored exactly from the float16 rows (numpy), top-10."""
    for layer in _faiss_layers(fx["index"]):
        if hasattr(layer, "nprobe"):
            layer.nprobe = nprobe
    depth = max(K, rerank)
    _, cand = fx["index"].search(_faiss_prep(xq, fx["mrl"]), depth)
    if not rerank:
        return cand[:, :K]
    out = np.full((len(xq), K), -1, np.int64)
    for a in range(0, len(xq), 128):
        c = cand[a:a + 128]
        valid = c >= 0
        uniq, inv = np.unique(np.where(valid, c, 0), return_inverse=True)
        rows = np.asarray(base[uniq], dtype=np.float32)[inv.reshape(c.shape)]
        sc = np.einsum("qd,qrd->qr", xq[a:a + 128], rows)
        sc[~valid] = -np.inf
        top = np.argsort(-sc, axis=1, kind="stable")[:, :K]
        out[a:a + 128] = np.take_along_axis(c, top, 1)
    return out


# ----------------------------------------------------------------------------- timing helpers


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p)) if values else float("nan")


def time_batch(fn, rounds: int) -> tuple[Any, float]:
    res, best = None, float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return res, best


def time_single(fn, nq: int) -> list[float]:
    lat = []
    for i in range(nq):
        t = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t) * 1e3)
    return lat


# ----------------------------------------------------------------------------- parts


class Ctx:
    """What the parts share for one (size, spec): paths, arrays, results."""

    def __init__(self, args, n, spec, base, base_path, queries, q_path, gt, row):
        self.args, self.n, self.spec = args, n, spec
        self.base, self.base_path, self.queries, self.q_path, self.gt = base, base_path, queries, q_path, gt
        self.row = row
        self.tag = f"{spec_tag(spec)}-{args.dense}-{n}"
        self.store = Path(args.work) / "stores" / self.tag
        self.record = Path(args.work) / "stores" / f"{self.tag}.json"
        self.logs = Path(args.work) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nlist = parse_spec(spec)[1]
        self.faiss: dict | None = None

    def store_ok(self) -> bool:
        if not (self.store.is_dir() and self.record.exists()):
            return False
        rec = json.loads(self.record.read_text())
        return rec.get("complete") and not rec.get("modified")

    def default_nprobe(self) -> int | None:
        return max(1, self.nlist // 16) if self.nlist else None

    def point(self) -> tuple[int | None, int]:
        """The operating point of the cold and commits parts: the fastest swept point that
        reaches the recall target, else the one of best recall, else a default."""
        pts = [p for p in self.row.get("search", {}).get("vecz", []) if "recall@10" in p]
        good = [p for p in pts if p["recall@10"] >= TARGETS["recall@10"]]
        if good:
            p = max(good, key=lambda p: p["qps"])
        elif pts:
            p = max(pts, key=lambda p: p["recall@10"])
        else:
            return self.default_nprobe(), max(self.args.rerank)
        return p["nprobe"], p["rerank"]

    def kw(self, nprobe, rerank) -> dict:
        return {"nprobe": nprobe, "rerank": rerank} if nprobe else {"rerank": rerank}


def part_build(ctx: Ctx) -> dict:
    args = ctx.args
    if ctx.store.exists():
        shutil.rmtree(ctx.store)
    ctx.record.unlink(missing_ok=True)
    ctx.store.parent.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"builder": args.builder, "batch_rows": args.batch_rows, "train_size": args.train_size}
    log_file = ctx.logs / f"build-{ctx.tag}.log"
    if args.builder == "cli":
        src, tmp = ctx.base_path, None
        if ctx.base.shape[0] != ctx.n:  # vecz build reads a whole file: give it an n-row copy
            tmp = ctx.base_path.parent / f"base-prefix-{ctx.n}.npy"
            if not tmp.exists():
                log(f"writing the {ctx.n:,}-row prefix {tmp} for vecz build")
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(ctx.n, ctx.base.shape[1]))
                for a in range(0, ctx.n, CHUNK):
                    mm[a:a + CHUNK] = ctx.base[a:min(ctx.n, a + CHUNK)]
                mm.flush()
                del mm
            src = tmp
        argv = [sys.executable, "-m", "vecz", "build", str(src), str(ctx.store), "--codec", ctx.spec,
                "--metric", "cosine", "--dense", args.dense, "--batch-rows", str(args.batch_rows),
                "--train-size", str(args.train_size)]
        log(f"build {ctx.tag}: {' '.join(argv[1:])}")
        code, out, wall, peak = run_child(argv, args.threads, log_file)
        if code == 2 and "--train-size" in log_file.read_text()[-2000:]:
            shutil.rmtree(ctx.store, ignore_errors=True)
            argv = argv[:-2]
            res["note"] = "vecz build has no --train-size: the store's own training sample"
            code, out, wall, peak = run_child(argv, args.threads, log_file)
        if tmp is not None and not args.keep:
            tmp.unlink(missing_ok=True)
        if code != 0:
            raise RuntimeError(f"vecz build exited {code}; see {log_file}")
        res.update(build_s=wall, peak_rss=peak, cli_output=out.strip()[-400:])
    else:
        cfg = {"base": str(ctx.base_path), "n": ctx.n, "store": str(ctx.store), "spec": ctx.spec,
               "dense": args.dense, "batch_rows": args.batch_rows, "train_size": args.train_size}
        log(f"build {ctx.tag}: Store.create + add in batches of {args.batch_rows:,} rows (child process)")
        code, out, wall, peak = run_child([sys.executable, __file__, "--child", "build-api", json.dumps(cfg)],
                                          args.threads, log_file)
        if code != 0:
            raise RuntimeError(f"build child exited {code}; see {log_file}")
        child = last_json(out)
        commits = np.array(child["commits"], dtype=np.float64)
        res.update(build_s=child["build_s"], wall_s=wall, peak_rss=max(peak, child["peak_rss"]),
                   commits=len(commits), commit_p50_s=float(np.median(commits[:, 1])),
                   commit_max_s=float(commits[:, 1].max()), first_commit_s=float(commits[0, 1]),
                   note=child.get("note"))
    res["rows_per_s"] = ctx.n / res["build_s"]
    res["disk_bytes"] = dir_bytes(ctx.store)
    ctx.record.write_text(json.dumps({"complete": True, "n": ctx.n, "spec": ctx.spec, "dense": args.dense,
                                      "built": time.strftime("%Y-%m-%d %H:%M:%S")}))
    log(f"build {ctx.tag}: {res['build_s']:.1f} s ({res['rows_per_s']:,.0f} rows/s), peak RSS "
        f"{res['peak_rss'] / 2**30:.2f} GiB, {res['disk_bytes'] / 1e9:.2f} GB on disk")
    return res


def part_faiss_build(ctx: Ctx) -> dict:
    log(f"faiss build for {ctx.spec} at {ctx.n:,} rows")
    fx = faiss_build(ctx.args, ctx.spec, ctx.base, ctx.n)
    if "index" in fx:
        ctx.faiss = fx
        log(f"faiss {fx['factory']}: train {fx['train_s']:.1f} s + add = {fx['build_s']:.1f} s "
            f"({fx['rows_per_s']:,.0f} rows/s)")
    else:
        log(f"faiss: {fx.get('note')}")
    return {k: v for k, v in fx.items() if k != "index"}


def ensure_tiny(ctx: Ctx) -> Path:
    """A small store of the same codec family, on which a fresh process loads the kernels."""
    from vecz import Store

    spec = with_nlist(ctx.spec, 16) if ctx.nlist else ctx.spec
    path = Path(ctx.args.work) / "stores" / f"tiny-{spec_tag(spec)}-{ctx.args.dense}"
    try:
        with Store.open(path) as s:
            if len(s) == 4096:
                return path
    except Exception:  # noqa: BLE001 -- absent or from another store version: rebuild
        shutil.rmtree(path, ignore_errors=True)
    with Store.create(path, dim=ctx.base.shape[1], metric="cosine", codec=spec, dense=ctx.args.dense) as s:
        s.add(np.asarray(ctx.base[:4096]))
    return path


def part_open(ctx: Ctx) -> dict:
    args = ctx.args
    tiny = ensure_tiny(ctx)
    nprobe, rerank = ctx.default_nprobe(), max(args.rerank)
    res = {}
    for mode in ("cold", "warm"):
        cfg = {"store": str(ctx.store), "tiny": str(tiny), "queries": str(ctx.q_path), "nprobe": nprobe,
               "rerank": rerank, "cold": mode == "cold"}
        code, out, wall, peak = run_child([sys.executable, __file__, "--child", "open", json.dumps(cfg)],
                                          args.threads, ctx.logs / f"open-{ctx.tag}.log")
        if code != 0:
            raise RuntimeError(f"open child exited {code}; see {ctx.logs / f'open-{ctx.tag}.log'}")
        r = last_json(out)
        r["peak_rss"] = peak
        res[mode] = r
        g = 2**30
        log(f"open {ctx.tag} ({mode}): Store.open {r['open_s']:.2f} s, first search {r['first_search_s']:.2f} s; "
            f"RSS after open {r['rss_after_open'] / g:.2f} GiB (anon {r['anon_after_open'] / g:.2f}, file "
            f"{r['file_after_open'] / g:.2f}), after first search {r['rss_after_first'] / g:.2f} GiB, after "
            f"{args.nq} queries {r['rss_after_batch'] / g:.2f} GiB (anon {r['anon_after_batch'] / g:.2f}); "
            f"runtime alone {r['rss_runtime'] / g:.2f} GiB")
    return res


def part_search(ctx: Ctx) -> dict:
    from vecz import Store

    args = ctx.args
    set_threads(args.threads)
    q, gt = ctx.queries, ctx.gt
    nprobes = [p for p in args.nprobe if not ctx.nlist or p <= ctx.nlist] if ctx.nlist else [None]
    rows, frows = [], []
    nlat = min(args.nq_latency, len(q))
    with Store.open(ctx.store) as s:
        # warm: kernels, lazily built layouts, and the page cache of every row the grid reads
        s.search(q, K, **ctx.kw(max(nprobes) if ctx.nlist else None, max(args.rerank)))
        for nprobe in nprobes:
            for r in args.rerank:
                kw = ctx.kw(nprobe, r)
                res, t = time_batch(lambda: s.search(q, K, **kw), args.rounds)
                lat = time_single(lambda i: s.search(q[i:i + 1], K, **kw), nlat)
                st = res.stats
                row = {"nprobe": nprobe, "rerank": r, "recall@10": recall_at_k(res.ids, gt), "qps": len(q) / t,
                       "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                       "rows_read_per_query": getattr(st, "rows_read", 0) / len(q),
                       "candidates_per_query": getattr(st, "candidates", 0) / len(q)}
                rows.append(row)
                log(f"search {ctx.tag} nprobe {nprobe} R {r}: recall@10 {row['recall@10']:.4f}, "
                    f"{row['qps']:,.0f} QPS, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")
    if ctx.faiss is not None:
        import faiss

        base = ctx.base
        faiss_search(ctx.faiss, base, q, nprobes[-1] or 1, max(args.rerank))  # warm the same rows
        for nprobe in nprobes:
            for r in args.rerank:
                ids, t = time_batch(lambda: faiss_search(ctx.faiss, base, q, nprobe or 1, r), args.rounds)
                # one query on one OpenMP thread: with 2 threads faiss's single-query p50 was
                # 10-16 ms on 2 busy cores (thread wake-ups), vecz serialises small searches itself
                faiss.omp_set_num_threads(1)
                lat = time_single(lambda i: faiss_search(ctx.faiss, base, q[i:i + 1], nprobe or 1, r), nlat)
                faiss.omp_set_num_threads(args.threads)
                row = {"nprobe": nprobe, "rerank": r, "recall@10": recall_at_k(ids, gt), "qps": len(q) / t,
                       "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
                frows.append(row)
                log(f"faiss {ctx.faiss['factory']} nprobe {nprobe} R {r}: recall@10 {row['recall@10']:.4f}, "
                    f"{row['qps']:,.0f} QPS, p50 {row['p50_ms']:.2f} ms")
    return {"vecz": rows, "faiss": frows, "nq": len(q), "nq_latency": nlat, "threads": args.threads}


def parse_points(text: str | None) -> list[tuple[int | None, int]]:
    pts = []
    for item in (text or "").split(";"):
        if item.strip():
            a, b = item.split(":")
            pts.append((int(a) if a not in ("", "-", "0") else None, int(b)))
    return pts


def part_cold(ctx: Ctx) -> list[dict]:
    from vecz import Store

    args = ctx.args
    set_threads(args.threads)
    points = parse_points(args.cold_points) or [ctx.point()]
    q, gt = ctx.queries, ctx.gt
    nq = min(args.nq_cold, len(q))
    files = store_files(ctx.store, dense_only=True)
    out = []
    with Store.open(ctx.store) as s:
        for nprobe, r in points:
            kw = ctx.kw(nprobe, r)
            s.search(q[:2], K, **kw)
            for mode in ("cold", "warm"):
                lat, io, found, reported = [], [], [], []
                for i in range(nq):
                    if mode == "cold":
                        evict(files)
                        for reader in s._pool.readers.values():  # its last look may have found them cached
                            reader.mark_uncached()
                    before = io_read_bytes()
                    t = time.perf_counter()
                    res = s.search(q[i:i + 1], K, **kw)
                    lat.append((time.perf_counter() - t) * 1e3)
                    io.append(io_read_bytes() - before)
                    found.append(res.ids[0])
                    reported.append(getattr(res.stats, "bytes_read", 0))
                row = {"nprobe": nprobe, "rerank": r, "mode": mode, "nq": nq, "p50_ms": pct(lat, 50),
                       "p99_ms": pct(lat, 99), "mean_ms": float(np.mean(lat)),
                       "io_read_bytes_per_query": float(np.mean(io)),
                       "reported_bytes_per_query": float(np.mean(reported)),
                       "recall@10": recall_at_k(np.array(found), gt[:nq]), "dense_files": len(files)}
                out.append(row)
                log(f"cold {ctx.tag} nprobe {nprobe} R {r} {mode}: p50 {row['p50_ms']:.2f} ms, p99 "
                    f"{row['p99_ms']:.2f} ms, {row['io_read_bytes_per_query'] / 1024:.0f} KiB read/query "
                    f"({row['reported_bytes_per_query'] / 1024:.0f} KiB reported)")
    return out


def _steady(s, q, kw, reps: int) -> dict:
    """Median of `reps` timed batch searches after one untimed one."""
    s.search(q, K, **kw)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        res = s.search(q, K, **kw)
        times.append(time.perf_counter() - t)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "ids": res.ids}


def _timed(fn) -> tuple[Any, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def part_commits(ctx: Ctx, model, seed: int) -> dict:
    from vecz import Store

    args = ctx.args
    set_threads(args.threads)
    nprobe, r = ctx.point()
    kw = ctx.kw(nprobe, r)
    q = np.ascontiguousarray(ctx.queries[: args.commit_nq])
    extra = sample_rows(model, seed, STREAM_EXTRA, args.commit_add + args.single_adds)
    # from here on the store differs from the built one: a later run rebuilds it
    rec = json.loads(ctx.record.read_text())
    rec["modified"] = True
    ctx.record.write_text(json.dumps(rec))
    res: dict[str, Any] = {"nprobe": nprobe, "rerank": r, "nq": len(q)}
    w, t_open = _timed(lambda: Store.open(ctx.store, mode="a"))
    reader = Store.open(ctx.store)
    res["open_writer_s"] = t_open
    try:
        steady = _steady(w, q, kw, args.reps)
        res["steady_s"] = steady["median_s"]
        _steady(reader, q, kw, 1)
        log(f"commits {ctx.tag} (nprobe {nprobe}, R {r}, {len(q)} queries): steady search {steady['median_s'] * 1e3:.1f} ms")

        def big(name, fn):
            _, dt = _timed(fn)
            _, first = _timed(lambda: w.search(q, K, **kw))
            _, second = _timed(lambda: w.search(q, K, **kw))
            _, refresh = _timed(reader.refresh)
            _, r_first = _timed(lambda: reader.search(q, K, **kw))
            info = w.info()
            row = {"commit_s": dt, "first_search_s": first, "second_search_s": second,
                   "first_ratio": first / steady["median_s"], "reader_refresh_s": refresh,
                   "reader_first_search_s": r_first, "reader_first_ratio": r_first / steady["median_s"],
                   "segments": info.get("segments"), "live": info.get("live")}
            res[name] = row
            log(f"commits {name}: {dt:.3f} s; next search {first * 1e3:.1f} ms ({row['first_ratio']:.2f}x steady), "
                f"then {second * 1e3:.1f} ms; reader refresh {refresh:.3f} s + search {r_first * 1e3:.1f} ms; "
                f"{row['segments']} segments")

        n_add = args.commit_add
        big("add", lambda: w.add(extra[:n_add]))
        rng = np.random.default_rng([seed, 7])
        victims = np.sort(rng.choice(ctx.n, args.commit_delete, replace=False)).astype(np.int64)
        deleted = []
        big("delete", lambda: deleted.append(w.delete(victims)))
        res["delete"]["deleted"] = deleted[0] if deleted else None
        reader.close()

        lat_add, lat_search, searched = [], [], 0
        t_loop = time.perf_counter()
        for i in range(args.single_adds):
            row = extra[n_add + i:n_add + i + 1]
            _, dt = _timed(lambda: w.add(row))
            lat_add.append(dt)
            if time.perf_counter() - t_loop < args.single_search_budget:
                _, ds = _timed(lambda: w.search(q, K, **kw))
                lat_search.append(ds)
                searched += 1
            if (i + 1) % 250 == 0:
                log(f"  {i + 1} one-row adds: add p50 {pct(lat_add, 50) * 1e3:.1f} ms, next search p50 "
                    f"{pct(lat_search, 50) * 1e3:.1f} ms ({searched} searched)")
        after = _steady(w, q, kw, args.reps)
        info_before = w.info()
        _, t_compact = _timed(w.compact)
        _, first_c = _timed(lambda: w.search(q, K, **kw))
        compacted = _steady(w, q, kw, args.reps)
        info_after = w.info()
        same = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(after["ids"], compacted["ids"])]))
        res["single_adds"] = {
            "count": args.single_adds, "add_p50_s": pct(lat_add, 50), "add_p99_s": pct(lat_add, 99),
            "add_max_s": max(lat_add), "add_total_s": float(sum(lat_add)), "searched_after": searched,
            "search_p50_s": pct(lat_search, 50), "search_p99_s": pct(lat_search, 99),
            "search_max_s": max(lat_search) if lat_search else None,
            "search_p50_ratio": pct(lat_search, 50) / steady["median_s"] if lat_search else None,
            "after_adds_s": after["median_s"], "compact_s": t_compact, "first_after_compact_s": first_c,
            "compacted_s": compacted["median_s"], "after_vs_compacted": after["median_s"] / compacted["median_s"],
            "segments_before_compact": info_before.get("segments"), "segments_after_compact": info_after.get("segments"),
            "top10_agreement_after_vs_compacted": same,
        }
        sa = res["single_adds"]
        log(f"commits single adds: p50 {sa['add_p50_s'] * 1e3:.1f} ms, p99 {sa['add_p99_s'] * 1e3:.1f} ms, total "
            f"{sa['add_total_s']:.1f} s; search after {sa['after_adds_s'] * 1e3:.1f} ms vs compacted "
            f"{sa['compacted_s'] * 1e3:.1f} ms ({sa['after_vs_compacted']:.2f}x); compact {t_compact:.1f} s; "
            f"segments {sa['segments_before_compact']} -> {sa['segments_after_compact']}")
    finally:
        reader.close()
        w.close()
    return res


def part_check(args, model) -> dict:
    """Generated vs real at equal size: the statistics named in the module docstring."""
    from vecz import Store

    real = np.load(Path(args.real) / "base.npy").astype(np.float32)
    n = len(real)
    gen = sample_rows(model, args.seed, STREAM_BASE, n).astype(np.float32)
    cen = model["centroids"] / np.linalg.norm(model["centroids"], axis=1, keepdims=True)
    nq = 1000
    # the spec's quantizer alone, and behind IVF<check_nlist>: IVF and codes disagree differently
    flat = ",".join(st for st in args.specs[0].split(",") if not st.startswith("IVF"))
    checks = [(flat, [(None, r) for r in (0, 20, 50, 100)])]
    if parse_spec(args.specs[0])[1]:
        nl = args.check_nlist
        checks.append((with_nlist(args.specs[0], nl), [(nl // 8, r) for r in (0, 20, 50, 100)]
                       + [(nl // 16, 100), (nl // 4, 100)]))
    out: dict[str, Any] = {"n": n, "queries": f"first {nq} rows against the other {n - nq}",
                           "specs": [c[0] for c in checks]}
    set_threads(args.threads)
    for name, x in (("real", real), ("generated", gen)):
        st: dict[str, Any] = {}
        st["norm_p1_p99"] = np.percentile(np.linalg.norm(x, axis=1), [1, 99]).round(5).tolist()
        for d in (512, 256):
            st[f"norm{d}_p5_50_95"] = np.percentile(np.linalg.norm(x[:, :d], axis=1), [5, 50, 95]).round(3).tolist()
        cos_c = (x @ cen.T).max(1)
        st["cos_nearest_centroid_mean"] = float(cos_c.mean())
        st["cos_nearest_centroid_p5_50_95"] = np.percentile(cos_c, [5, 50, 95]).round(3).tolist()
        xq, xb = x[:nq], x[nq:]
        s = xq @ xb.T
        top = -np.sort(np.partition(-s, GT_DEPTH - 1, axis=1)[:, :GT_DEPTH], axis=1)  # best first
        for rank in (1, 10, 100):
            st[f"nn{rank}_cos_p5_50_95"] = np.percentile(top[:, rank - 1], [5, 50, 95]).round(3).tolist()
        rp = np.random.default_rng(0).integers(0, n, (2, 20000))
        st["random_pair_cos_median"] = float(np.median((x[rp[0]] * x[rp[1]]).sum(1)))
        gt = np.argsort(-s, axis=1, kind="stable")[:, :GT_DEPTH]
        for d in (512, 256):
            tq = xq[:, :d] / np.linalg.norm(xq[:, :d], axis=1, keepdims=True)
            tb = xb[:, :d] / np.linalg.norm(xb[:, :d], axis=1, keepdims=True)
            st[f"mrl{d}_exact_recall@10"] = recall_at_k(np.argsort(-(tq @ tb.T), axis=1)[:, :K], gt)
        for spec, points in checks:
            path = Path(args.work) / "check" / name
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            with Store.create(path, dim=x.shape[1], metric="cosine", codec=spec, dense=args.dense) as store:
                store.add(xb.astype(np.float16))
                for nprobe, r in points:
                    kw = {"nprobe": nprobe, "rerank": r} if nprobe else {"rerank": r}
                    key = f"recall@10 {spec}{f' nprobe {nprobe}' if nprobe else ''} R {r}"
                    st[key] = recall_at_k(store.search(xq, K, **kw).ids, gt)
            shutil.rmtree(path, ignore_errors=True)
        out[name] = st
    lines = [f"{'statistic':<42}{'real':>24}{'generated':>24}"]
    for key in out["real"]:
        a, b = out["real"][key], out["generated"][key]
        fmt = (lambda v: f"{v:.4f}") if isinstance(a, float) else str
        lines.append(f"{key:<42}{fmt(a):>24}{fmt(b):>24}")
    log(f"generator check ({n:,} rows each; {out['queries']}):\n" + "\n".join(lines))
    return out


# ----------------------------------------------------------------------------- report


def _gb(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def judge(results: dict) -> list[dict]:
    runs = [r for r in results["runs"] if r["spec"] == results["settings"]["specs"][0]]
    if not runs:
        return []
    run = max(runs, key=lambda r: r["n"])
    n = run["n"]
    out = []

    def add(name, value, target, ok, how):
        out.append({"target": name, "n": n, "value": value, "limit": target,
                    "met": None if ok is None else bool(ok), "how": how})

    cold = run.get("open", {}).get("cold")
    if cold:
        v = max(cold["rss_after_open"], cold["rss_after_first"])
        add("RSS after open <= 2 GiB", f"{v / 2**30:.2f} GiB", "2 GiB", v <= TARGETS["rss_after_open_bytes"],
            "VmRSS of a fresh process after Store.open and its first search (cache evicted), kernels loaded")
        v = cold["open_s"] + cold["first_search_s"]
        add("open <= 10 s", f"{v:.2f} s", "10 s", v <= TARGETS["open_s"],
            "Store.open + first search, fresh process, store files evicted from the page cache")
    pts = [p for p in run.get("search", {}).get("vecz", []) if p["rerank"] <= 100]
    if pts:
        best = max(pts, key=lambda p: p["recall@10"])
        add("recall@10 >= 0.95 at rerank <= 100", f"{best['recall@10']:.4f}", "0.95",
            best["recall@10"] >= TARGETS["recall@10"], f"best swept point: nprobe {best['nprobe']}, R {best['rerank']}")
    c = run.get("commits")
    if c and "add" in c:
        a, d = c["add"], c["delete"]
        add("add of 10,000 rows <= 2 s", f"{a['commit_s']:.3f} s", "2 s", a["commit_s"] <= TARGETS["add_10k_s"],
            "Store.add end to end (durable on return)")
        add("first search after the add <= 1.5x steady", f"{a['first_ratio']:.2f}x", "1.5x",
            a["first_ratio"] <= TARGETS["first_search_ratio"], f"batch of {c['nq']} queries, same handle")
        add("delete of 10,000 rows <= 0.5 s", f"{d['commit_s']:.3f} s", "0.5 s",
            d["commit_s"] <= TARGETS["delete_10k_s"], "Store.delete end to end")
        add("first search after the delete <= 1.5x steady", f"{d['first_ratio']:.2f}x", "1.5x",
            d["first_ratio"] <= TARGETS["first_search_ratio"], f"batch of {c['nq']} queries, same handle")
        if "single_adds" in c:
            s = c["single_adds"]
            add("search after 2,000 one-row adds <= 1.5x compacted", f"{s['after_vs_compacted']:.2f}x", "1.5x",
                s["after_vs_compacted"] <= TARGETS["after_adds_vs_compacted"], "median of batch searches")
    return out


def report_md(results: dict) -> str:
    s = results["settings"]
    L = [f"# vecz scale benchmark", "",
         f"{s['command']}", "",
         f"Machine: {results['machine']['cpu']} ({results['machine']['cores']} cores), "
         f"{results['machine']['mem_gib']:.0f} GiB RAM; {s['threads']} threads; vecz {results['machine']['vecz']}, "
         f"faiss {results['machine'].get('faiss')}. Data: generated from {s['real']} (model {s['fingerprint']}), "
         f"{s['nq']} queries, exact top-100 ground truth; dense tier {s['dense']}; builder {s['builder']} "
         f"(batches of {s['batch_rows']:,} rows, {s['train_size']:,} training rows). Wall time {results['wall_s'] / 60:.1f} min.", ""]
    if results.get("data"):
        d = results["data"]
        L += [f"Data generation: {d.get('generate_s') or 0:.1f} s for {d.get('n', 0):,} rows; ground truth "
              f"{d.get('gt_s') or 0:.1f} s.", ""]
    ch = results.get("check")
    if ch and "real" in ch:
        L += ["## Generated vs real data", "",
              f"{ch['n']:,} rows each ({ch['queries']}); exact neighbours in float32; recall rows: stores "
              f"built with {' and '.join(ch['specs'])} on the 23,000 rows.", "",
              "| statistic | real (wordnet-gemma) | generated |", "| --- | --- | --- |"]
        for key in ch["real"]:
            a, b = ch["real"][key], ch["generated"][key]
            fmt = (lambda v: f"{v:.4f}") if isinstance(a, float) else str
            L.append(f"| {key} | {fmt(a)} | {fmt(b)} |")
        L.append("")
    targets = results.get("targets", [])
    if targets:
        n = targets[0]["n"]
        L += [f"## Targets ({s['specs'][0]}, judged on the largest store measured: {n:,} rows"
              f"{'' if n >= 10_000_000 else '; the targets are stated for 10M'})", "",
              "| target | measured | met | how |", "| --- | ---: | :---: | --- |"]
        for t in targets:
            L.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} | {t['how']} |")
        L.append("")
    L += ["## Build, open, memory", "",
          "| n | spec | build s | rows/s | build peak RSS GiB | disk GB | faiss | faiss build s | faiss rows/s "
          "| open s (cold / warm) | first search s (cold) | RSS after open GiB | anon / file GiB | RSS after 1st search "
          "| RSS after batch (anon) |",
          "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["runs"]:
        b, fx, o = r.get("build", {}), r.get("faiss_build", {}), r.get("open", {})
        c, w = o.get("cold", {}), o.get("warm", {})
        L.append(
            f"| {r['n']:,} | {r['spec']} | {_f(b.get('build_s'), '{:.1f}')} | {_f(b.get('rows_per_s'), '{:,.0f}')} "
            f"| {_gb(b.get('peak_rss'))} | {_f(b.get('disk_bytes') and b['disk_bytes'] / 1e9)} "
            f"| {fx.get('factory', '-')}{' (' + fx['note'] + ')' if fx.get('note') else ''} "
            f"| {_f(fx.get('build_s'), '{:.1f}')} | {_f(fx.get('rows_per_s'), '{:,.0f}')} "
            f"| {_f(c.get('open_s'))} / {_f(w.get('open_s'))} | {_f(c.get('first_search_s'))} "
            f"| {_gb(c.get('rss_after_open'))} | {_gb(c.get('anon_after_open'))} / {_gb(c.get('file_after_open'))} "
            f"| {_gb(c.get('rss_after_first'))} | {_gb(c.get('rss_after_batch'))} ({_gb(c.get('anon_after_batch'))}) |")
    L.append("")
    L += ["## Search (warm page cache)", "",
          f"QPS over a batch of {s['nq']} queries (best of {s['rounds']}), p50/p99 over {s['nq_latency']} queries sent "
          "one at a time. faiss: its R best candidates re-scored exactly from the same float16 rows (numpy over the "
          "data file's map), R = 0: its own top-10; its one-query latencies on one OpenMP thread.", "",
          "| n | spec | nprobe | R | recall@10 | QPS | p50 ms | p99 ms | rows read/q | faiss recall@10 | faiss QPS "
          "| faiss p50 ms | QPS vs faiss |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["runs"]:
        sr = r.get("search", {})
        fmap = {(f["nprobe"], f["rerank"]): f for f in sr.get("faiss", [])}
        for p in sr.get("vecz", []):
            f = fmap.get((p["nprobe"], p["rerank"]), {})
            L.append(f"| {r['n']:,} | {r['spec']} | {p['nprobe'] or '-'} | {p['rerank']} | {p['recall@10']:.4f} "
                     f"| {p['qps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['rows_read_per_query']:.0f} "
                     f"| {_f(f.get('recall@10'), '{:.4f}')} | {_f(f.get('qps'), '{:,.0f}')} "
                     f"| {_f(f.get('p50_ms'))} | {_f(f.get('qps') and p['qps'] / f['qps'], '{:.2f}x')} |")
    L.append("")
    cold_rows = [(r, c) for r in results["runs"] for c in r.get("cold", [])]
    if cold_rows:
        L += ["## Cold page cache", "",
              "One query at a time; before each query of the cold rows every dense file's pages are evicted "
              "(posix_fadvise DONTNEED; pages the process still maps are not). KiB read = /proc/self/io read_bytes.", "",
              "| n | spec | nprobe | R | mode | queries | p50 ms | p99 ms | mean ms | KiB read/q | KiB reported/q | recall@10 |",
              "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r, c in cold_rows:
            L.append(f"| {r['n']:,} | {r['spec']} | {c['nprobe'] or '-'} | {c['rerank']} | {c['mode']} | {c['nq']} "
                     f"| {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['mean_ms']:.2f} | {c['io_read_bytes_per_query'] / 1024:.0f} "
                     f"| {c['reported_bytes_per_query'] / 1024:.0f} | {c['recall@10']:.3f} |")
        L.append("")
    for r in results["runs"]:
        c = r.get("commits")
        if not c or "add" not in c:
            continue
        L += [f"## Commits on the {r['n']:,}-row store ({r['spec']}, nprobe {c['nprobe']}, R {c['rerank']})", "",
              f"Steady state: a batch of {c['nq']} queries takes {c['steady_s'] * 1e3:.1f} ms (median of "
              f"{s['reps']}); opening the writer took {c['open_writer_s']:.2f} s.", "",
              "| commit | latency s | next search ms | x steady | 2nd search ms | reader refresh s | reader 1st search ms | segments |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, label in (("add", f"add {s['commit_add']:,} rows"), ("delete", f"delete {s['commit_delete']:,} rows")):
            x = c[name]
            L.append(f"| {label} | {x['commit_s']:.3f} | {x['first_search_s'] * 1e3:.1f} | {x['first_ratio']:.2f} "
                     f"| {x['second_search_s'] * 1e3:.1f} | {x['reader_refresh_s']:.3f} "
                     f"| {x['reader_first_search_s'] * 1e3:.1f} | {x['segments']} |")
        sa = c.get("single_adds")
        if sa:
            L += ["", f"{sa['count']:,} one-row adds: add p50 {sa['add_p50_s'] * 1e3:.1f} ms, p99 "
                  f"{sa['add_p99_s'] * 1e3:.1f} ms, max {sa['add_max_s'] * 1e3:.1f} ms, total {sa['add_total_s']:.1f} s; "
                  f"the search after each ({sa['searched_after']} of them searched) p50 {_f(sa['search_p50_s'] and sa['search_p50_s'] * 1e3, '{:.1f}')} ms, "
                  f"p99 {_f(sa['search_p99_s'] and sa['search_p99_s'] * 1e3, '{:.1f}')} ms "
                  f"({_f(sa['search_p50_ratio'])}x steady). Search after the adds {sa['after_adds_s'] * 1e3:.1f} ms vs "
                  f"{sa['compacted_s'] * 1e3:.1f} ms after compact() ({sa['after_vs_compacted']:.2f}x); compact() "
                  f"{sa['compact_s']:.1f} s, first search after it {sa['first_after_compact_s'] * 1e3:.1f} ms; segments "
                  f"{sa['segments_before_compact']} -> {sa['segments_after_compact']}; top-10 agreement "
                  f"{sa['top10_agreement_after_vs_compacted']:.4f}."]
        L.append("")
    errors = [(r["n"], r["spec"], part, e) for r in results["runs"] for part, e in r.get("errors", {}).items()]
    errors += [(None, None, part, e) for part, e in results.get("errors", {}).items()]
    if errors:
        L += ["## Failures", ""]
        for n, spec, part, e in errors:
            L.append(f"- {part}{f' ({n:,}, {spec})' if n else ''}: `{e.strip().splitlines()[-1][:300]}`")
        L.append("")
    return "\n".join(L)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "python": platform.python_version()}
    try:
        import vecz
        info["vecz"] = getattr(vecz, "__version__", "?")
        info["vecz_path"] = str(Path(vecz.__file__).parent)
    except ImportError:
        info["vecz"] = None
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def write_outputs(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = judge(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "report.md").write_text(report_md(results))


# ----------------------------------------------------------------------------- main


def run_part(errors: dict, name: str, fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 -- a store failing at scale is a finding: record it, go on
        errors[name] = traceback.format_exc()
        log(f"{name} FAILED:\n{errors[name]}")
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,3000000,10000000", help="store sizes (prefixes of one data file)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="data, ground truth and stores (not the repository)")
    p.add_argument("--spec", dest="specs", default="IVF4096,RB1",
                   help="codec spec, or several separated by ';' (commits run on the first)")
    p.add_argument("--dense", default="f16", choices=("f16", "f32"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--parts", default=",".join(ALL_PARTS), help=f"any of {','.join(ALL_PARTS)}")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"), help="report.md + results.json here")
    p.add_argument("--keep", action="store_true", help="keep the stores (and vecz build's prefix copies)")
    p.add_argument("--builder", default="cli", choices=("cli", "api"),
                   help="cli: `python -m vecz build` on the .npy; api: Store.create + add in batches")
    p.add_argument("--batch-rows", type=int, default=131072, help="rows per build commit")
    p.add_argument("--train-size", type=int, default=131072, help="training rows for the store and faiss")
    p.add_argument("--nprobe", default="64,128,256", help="nprobe values swept (IVF specs)")
    p.add_argument("--rerank", default="20,50,100", help="rerank depths swept")
    p.add_argument("--cold-points", default=None,
                   help="NPROBE:R;... for the cold part (default: the fastest swept point reaching recall 0.95)")
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--nq-latency", type=int, default=300, help="queries sent one at a time for p50/p99")
    p.add_argument("--nq-cold", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2, help="timed batch rounds per point (best is kept)")
    p.add_argument("--reps", type=int, default=5, help="batch searches for a steady-state median (commits)")
    p.add_argument("--commit-nq", type=int, default=100)
    p.add_argument("--commit-add", type=int, default=10000)
    p.add_argument("--commit-delete", type=int, default=10000)
    p.add_argument("--single-adds", type=int, default=2000)
    p.add_argument("--single-search-budget", type=float, default=900.0,
                   help="seconds of one-row adds with a search after each; later adds search no more")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--real", default=str(DEFAULT_REAL), help="real embeddings the generator is fitted to")
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--rank", type=int, default=128, help="global residual PCA rank (the rest isotropic)")
    p.add_argument("--alpha", type=float, default=0.85, help="weight of the per-cluster PCA in the residual")
    p.add_argument("--check-nlist", type=int, default=128, help="IVF lists of the codec in the check part")
    p.add_argument("--seed", type=int, default=20240102)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child:
        cfg = json.loads(rest[0])
        {"build-api": child_build_api, "open": child_open}[args.child](cfg)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.sizes = sorted(int(float(v)) for v in args.sizes.split(","))
    args.specs = [v.strip() for v in args.specs.split(";") if v.strip()]
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.rerank = [int(v) for v in args.rerank.split(",")]
    parts = [v for v in args.parts.split(",") if v]
    bad = set(parts) - set(ALL_PARTS)
    if bad:
        p.error(f"unknown parts {sorted(bad)}; expected any of {ALL_PARTS}")
    work = Path(args.work).resolve()
    if work == REPO or REPO in work.parents:
        p.error(f"--work {work} is inside the repository; give a directory outside it")
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    t_start = time.time()
    set_threads(args.threads)
    log(f"vecz scale benchmark: sizes {args.sizes}, specs {args.specs}, parts {parts}, work {work}, "
        f"{args.threads} threads; {shutil.disk_usage(work).free / 1e9:.0f} GB free")
    model, fp = load_model(args)
    results: dict[str, Any] = {
        "settings": {**{k: v for k, v in vars(args).items() if k != "child"}, "parts": parts, "fingerprint": fp,
                     "command": "python bench/scale.py " + " ".join(sys.argv[1:])},
        "machine": machine_info(), "runs": [], "errors": {}, "data": {}}
    out_dir = Path(args.out)
    if "check" in parts:
        results["check"] = run_part(results["errors"], "check", lambda: part_check(args, model))
        write_outputs(results | {"wall_s": time.time() - t_start}, out_dir)
    store_parts = [x for x in parts if x != "check"]
    if not store_parts:
        results["wall_s"] = time.time() - t_start
        write_outputs(results, out_dir)
        return
    t = time.time()
    base_path, q_path = ensure_data(args, model, fp, max(args.sizes))
    meta = json.loads((base_path.parent / "base.json").read_text())
    results["data"] = {"base": str(base_path), "n": meta["n"], "generate_s": meta.get("generate_s"),
                       "bytes": base_path.stat().st_size}
    t = time.time()
    gts = ensure_gt(args, fp, base_path, q_path, args.sizes)
    results["data"]["gt_s"] = time.time() - t
    base = np.load(base_path, mmap_mode="r")
    queries = np.load(q_path).astype(np.float32)
    for n in args.sizes:
        for si, spec in enumerate(args.specs):
            row: dict[str, Any] = {"n": n, "spec": spec, "errors": {}}
            results["runs"].append(row)
            ctx = Ctx(args, n, spec, base, base_path, queries, q_path, gts[n][:, :K], row)
            err = row["errors"]
            if "build" in parts or not ctx.store_ok():
                b = run_part(err, "build", lambda: part_build(ctx))
                if b is None:
                    continue
                row["build"] = b if "build" in parts else {**b, "implicit": True}
            if not args.no_faiss and ("build" in parts or "search" in parts):
                row["faiss_build"] = run_part(err, "faiss build", lambda: part_faiss_build(ctx)) or {}
            if "open" in parts:
                row["open"] = run_part(err, "open", lambda: part_open(ctx)) or {}
            if "search" in parts:
                row["search"] = run_part(err, "search", lambda: part_search(ctx)) or {}
            ctx.faiss = None
            if "cold" in parts:
                row["cold"] = run_part(err, "cold", lambda: part_cold(ctx)) or []
            if "commits" in parts and n == max(args.sizes) and si == 0:
                row["commits"] = run_part(err, "commits", lambda: part_commits(ctx, model, args.seed)) or {}
            if not args.keep:
                shutil.rmtree(ctx.store, ignore_errors=True)
                ctx.record.unlink(missing_ok=True)
            write_outputs(results | {"wall_s": time.time() - t_start}, out_dir)
    results["wall_s"] = time.time() - t_start
    write_outputs(results, out_dir)
    log(f"done in {results['wall_s'] / 60:.1f} min; wrote {out_dir / 'report.md'} and {out_dir / 'results.json'}")
    for t in results["targets"]:
        log(f"target {t['target']}: {t['value']} -> {'met' if t['met'] else 'NOT met'} (n = {t['n']:,})")


if __name__ == "__main__":
    main()
