"""Build speed against faiss, on wordnet-minilm, in one process with the same thread count.

For each pair (vecz spec, faiss index_factory string) this times, best of `--repeat` runs:

(a) faiss: ``index.train(sample)`` + ``index.add(all rows)`` on L2-normalised rows with
    METRIC_INNER_PRODUCT (the normalisation itself is not timed on this side);
(b) vecz codec: ``Codec(spec, dim, "cosine").train(sample)`` + ``codec.encode(all rows)``
    (row normalisation included: the codec does it);
(c) vecz store: ``Store.create(tmp, dim=..., codec=spec, dense="f32")`` + ``store.add(all)``
    (trains on the first add, then codes, the dense file, zstd sections and fsyncs),

where `sample` is the training sample vecz uses: at most `train_size` (65,536) rows drawn
with the codec's seed exactly as `Codec._fit` draws them, given to faiss too. It reports
faiss_time / vecz_time for (b) and (c) (> 1: vecz is faster) and recall@10 on all queries
against the exact cosine top-10 (both sides rank by cosine: faiss's inner product on unit
rows; computed once and cached by `vecz.engine.bench.data.dataset_truth`, not the dataset's
gt_ids.npy, which ranks the float16 rows by inner product): vecz from the codes only
(``codec.index(codes, lists).search(q, 10, nprobe=nlist // 8)``) and re-ranked through the
store (R = 50); faiss a plain search with the same nprobe.

Numba kernels are compiled (or loaded from the cache) on a small slice first, so compile
time is never timed. Threads: `--threads` (2) for Numba, faiss's OpenMP and every BLAS in
the process (threadpoolctl).

    python bench/build_speed.py                       # the four pairs, 3 runs each
    python bench/build_speed.py --pairs "RB1;IVF1024,RB1" --repeat 5
    python bench/build_speed.py --head HEAD           # and the committed kernels, interleaved
    python bench/build_speed.py --sweep               # codec training parameters (below)

`--head REV` also times the kernels of a git revision (kernels/kmeans.py, ivf.py,
transform.py, pq.py as of REV, loaded beside the working tree's), interleaved in the same
process: the before/after of a kernel change as two ratios measured side by side.

`--sweep` measures training-parameter choices that live in engine/codecs.py and
engine/quantizers.py (ITQ sample and iterations, k-means iterations and early-stop tolerance
for IVF and PQ) by training through the kernels directly (`Trainer`, a copy of the codec's
training with those knobs exposed), reporting the training time and recall@10 from the
codes and at R = 50 (exact re-score of the shortlist in RAM, which is what the store's
re-ranking computes).

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
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numba  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import vecz  # noqa: E402
from vecz.engine import Codec, Store  # noqa: E402
from vecz.engine.bench.data import dataset_truth  # noqa: E402
from vecz.engine.bench.metrics import recall_at  # noqa: E402
from vecz.engine import quantizers  # noqa: E402
from vecz.kernels import ivf, kmeans, pq, transform  # noqa: E402

DATA = "wordnet-minilm"  # vecz.engine.bench.data.dataset_dir: $VECZ_DATA, else ../shared/data
K = 10
RERANK = 50
# vecz spec -> the faiss index_factory string of the closest index (the pairs).
PAIRS = {
    "RB1": "RaBitQ",
    "IVF1024,RB1": "IVF1024,RaBitQ",
    "PQ48x8": "PQ48np",
    "IVF1024,PQ96x4": "IVF1024,PQ96x4fs",
}
# faiss's IndexRaBitQ applies no rotation; vecz's RB rotates every row first (its ITQ rotation).
# The same faiss index behind a random rotation of the rows is timed beside it for reference.
ROTATED = {"RB1": "RR384,RaBitQ"}


# --------------------------------------------------------------------------- set-up


def set_threads(n: int) -> dict[str, Any]:
    numba.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(n)  # not a context: every BLAS and OpenMP pool stays at n for the run
    return {"numba": numba.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads(),
            "pools": [(Path(i["filepath"]).name, i["num_threads"]) for i in threadpool_info()]}


def environment() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _threading_layer(),
        "faiss": faiss.__version__,
        "vecz": vecz.__version__,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                                 "NUMBA_NUM_THREADS", "NUMBA_CPU_NAME")},
        "blas": [{"lib": Path(i["filepath"]).name, "api": i["internal_api"], "version": i.get("version"),
                  "kernel": i.get("architecture"), "threads": i["num_threads"],
                  "threading": i.get("threading_layer")} for i in threadpool_info()],
    }


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        numba.njit(parallel=True)(lambda a: a.sum())(np.ones(4))
        return numba.threading_layer()


def load(nq: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, the first `nq` queries (all for 0 or None) and their exact cosine top-100 (every
    side here ranks by cosine)."""
    ds = dataset_truth(DATA, "cosine", nq=nq or None)
    return ds.base, ds.queries, ds.gt  # type: ignore[return-value]


def normalised(x: np.ndarray) -> np.ndarray:
    y = np.array(x, dtype=np.float32, copy=True)
    faiss.normalize_L2(y)
    return y


def training_rows(n: int, seed: int = 0, train_size: int = 65536) -> np.ndarray:
    """The rows `Codec._fit` trains on (same generator, same draw)."""
    if n <= train_size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))


def nlist_of(spec: str) -> int:
    head = spec.split(",")[0]
    return int(head[3:]) if head.startswith("IVF") else 1


def probe_kw(spec: str) -> dict[str, int]:
    """nprobe = nlist // 8 for IVF specs (a flat store refuses any nprobe but 1)."""
    return {"nprobe": max(1, nlist_of(spec) // 8)} if nlist_of(spec) > 1 else {}


# --------------------------------------------------------------------------- the three builds


def faiss_build(factory: str, dim: int, train: np.ndarray, xb: np.ndarray):
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.add(xb)
    return index


def codec_build(spec: str, dim: int, sample: np.ndarray, xb: np.ndarray):
    codec = Codec(spec, dim, "cosine").train(sample)
    return codec, codec.encode(xb)


def store_build(spec: str, dim: int, xb: np.ndarray, root: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    shutil.rmtree(path)
    with Store.create(path, dim=dim, codec=spec, dense="f32") as store:
        store.add(xb)
    return path


# --------------------------------------------------------------------------- kernel versions

# The kernel functions the codec and the store call through their modules' attributes
# (vecz.kernels.<module>.<name>); `--kernels` swaps them for a git revision's versions.
PATCHED = {
    "kmeans": ("kmeans_fit", "kmeans_assign"),
    "ivf": ("ivf_assign",),
    "transform": ("itq_rotation", "normalize_rows", "normalize_rows_checked", "mrl_truncate_checked"),
    "pq": ("pq_train", "pq_encode"),
    "binary": ("rb_encode_batch",),
}


def _tolerant(fn):
    """`fn` called with only the keyword arguments its signature has (a revision's kernel may
    predate one that the working tree's codec passes, e.g. itq_rotation's svd_scope)."""
    import functools
    import inspect

    names = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **{k: v for k, v in kwargs.items() if k in names})

    return call


class Kernels:
    """The working tree's kernels ("new") and, optionally, a git revision's versions of the
    modules in `PATCHED`, loaded side by side as their own package so that both run in one
    process; `use(name)` points vecz's modules at one set."""

    def __init__(self, rev: str | None, root: Path) -> None:
        import vecz.kernels as pkg

        self.sets = {"new": {m: {f: getattr(sys.modules[f"vecz.kernels.{m}"], f) for f in fs}
                             for m, fs in PATCHED.items()}}
        if rev is None:
            return
        import importlib
        import subprocess

        folder = root / "old_kernels"
        shutil.copytree(Path(pkg.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
        for m in PATCHED:
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:kernels/{m}.py"], check=True,
                                  capture_output=True, text=True).stdout
            (folder / f"{m}.py").write_text(text)
        sys.path.insert(0, str(root))
        old = {m: importlib.import_module(f"old_kernels.{m}") for m in PATCHED}
        self.sets[rev] = {m: {f: _tolerant(getattr(old[m], f)) for f in fs} for m, fs in PATCHED.items()}

    def use(self, name: str) -> None:
        for m, fs in self.sets[name].items():
            for f, fn in fs.items():
                setattr(sys.modules[f"vecz.kernels.{m}"], f, fn)


def warm_up(specs: list[str], base: np.ndarray, queries: np.ndarray, root: Path) -> None:
    """Compile (or load from Numba's cache) every kernel a build and a search use."""
    small = base[:3000]
    for spec in specs:
        spec_small = spec.replace("IVF1024", "IVF16")
        codec, codes = codec_build(spec_small, base.shape[1], small, small)
        codec.index(codes.codes, codes.lists).search(queries[:300], K, **probe_kw(spec_small))
        path = store_build(spec_small, base.shape[1], small, root)
        with Store.open(path) as store:
            store.search(queries[:300], K, rerank=RERANK, **probe_kw(spec_small))
        shutil.rmtree(path)


def run_pair(spec: str, factory: str, base: np.ndarray, xn: np.ndarray, queries: np.ndarray, qn: np.ndarray,
             gt: np.ndarray, rows: np.ndarray, repeat: int, root: Path, kernels: Kernels) -> dict[str, Any]:
    dim = base.shape[1]
    sample, sample_n = base[rows], xn[rows]
    kw = probe_kw(spec)
    names = list(kernels.sets)
    t_faiss: list[float] = []
    t_rotated: list[float] = []
    t_codec: dict[str, list[float]] = {k: [] for k in names}
    t_store: dict[str, list[float]] = {k: [] for k in names}
    built: dict[str, tuple] = {}
    index = None
    for _ in range(repeat):  # interleaved, so a slow spell of the machine hits every side
        t0 = time.perf_counter()
        index = faiss_build(factory, dim, sample_n, xn)
        t_faiss.append(time.perf_counter() - t0)
        if spec in ROTATED:
            t0 = time.perf_counter()
            faiss_build(ROTATED[spec], dim, sample_n, xn)
            t_rotated.append(time.perf_counter() - t0)
        for name in names:
            kernels.use(name)
            t0 = time.perf_counter()
            codec, codes = codec_build(spec, dim, sample, base)
            t_codec[name].append(time.perf_counter() - t0)
            if name in built:
                shutil.rmtree(built[name][2])
            t0 = time.perf_counter()
            path = store_build(spec, dim, base, root)
            t_store[name].append(time.perf_counter() - t0)
            built[name] = (codec, codes, path)
    kernels.use("new")
    # quality of the last builds
    if kw:
        faiss.extract_index_ivf(index).nprobe = kw["nprobe"]
    r_faiss = recall_at(index.search(qn, K)[1], gt, K)
    out: dict[str, Any] = {"spec": spec, "faiss": factory, "nprobe": kw.get("nprobe"), "faiss_s": min(t_faiss),
                           "faiss_runs": t_faiss, "recall_faiss": r_faiss, "kernels": {}}
    line = f"{spec:16s} faiss {min(t_faiss):6.2f} s (recall@10 {r_faiss:.4f})"
    if t_rotated:
        out.update({"faiss_rotated": ROTATED[spec], "faiss_rotated_s": min(t_rotated), "faiss_rotated_runs": t_rotated})
        line += f" {ROTATED[spec]} {min(t_rotated):6.2f} s"
    for name in names:
        codec, codes, path = built[name]
        r_codes = recall_at(codec.index(codes.codes, codes.lists).search(queries, K, **kw).ids, gt, K)
        with Store.open(path) as store:
            r_store0 = recall_at(store.search(queries, K, rerank=0, **kw).ids, gt, K)
            r_rerank = recall_at(store.search(queries, K, rerank=RERANK, **kw).ids, gt, K)
        shutil.rmtree(path)
        tc, ts = min(t_codec[name]), min(t_store[name])
        out["kernels"][name] = {
            "codec_s": tc, "store_s": ts, "codec_runs": t_codec[name], "store_runs": t_store[name],
            "ratio_codec": min(t_faiss) / tc, "ratio_store": min(t_faiss) / ts,
            **({"ratio_codec_rotated": min(t_rotated) / tc, "ratio_store_rotated": min(t_rotated) / ts}
               if t_rotated else {}),
            "recall_codes": r_codes, "recall_store_r0": r_store0, f"recall_store_r{RERANK}": r_rerank,
        }
        line += (f" | {name}: codec {tc:6.2f} s ({min(t_faiss) / tc:.2f}x) store {ts:6.2f} s "
                 f"({min(t_faiss) / ts:.2f}x) recall@10 codes {r_codes:.4f} store R=0 {r_store0:.4f} "
                 f"R={RERANK} {r_rerank:.4f}")
        if t_rotated:
            line += f" (against {ROTATED[spec]}: codec {min(t_rotated) / tc:.2f}x, store {min(t_rotated) / ts:.2f}x)"
    print(line, flush=True)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| vecz spec | kernels | faiss | faiss train+add s | vecz codec s | ratio | vecz store s | ratio | "
             "recall@10 faiss | vecz codes | vecz R=50 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for name, v in r["kernels"].items():
            lines.append(f"| {r['spec']} | {name} | {r['faiss']} | {r['faiss_s']:.2f} | {v['codec_s']:.2f} | "
                         f"{v['ratio_codec']:.2f}x | {v['store_s']:.2f} | {v['ratio_store']:.2f}x | "
                         f"{r['recall_faiss']:.4f} | {v['recall_codes']:.4f} | {v[f'recall_store_r{RERANK}']:.4f} |")
            if "faiss_rotated" in r:
                lines.append(f"| {r['spec']} | {name} | {r['faiss_rotated']} | {r['faiss_rotated_s']:.2f} | "
                             f"{v['codec_s']:.2f} | {v['ratio_codec_rotated']:.2f}x | {v['store_s']:.2f} | "
                             f"{v['ratio_store_rotated']:.2f}x | | | |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parameter sweep


class Trainer:
    """`Codec._fit` (engine/codecs.py and engine/quantizers.py) through the kernels, with the
    training knobs that live there exposed; default knobs reproduce the codec. IVF
    centroids are cached per (iterations, tol), so a sweep trains each partition once."""

    def __init__(self, x_prep: np.ndarray, seed: int = 0, train_size: int = 65536) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        x = x_prep
        if x.shape[0] > train_size:
            x = x[np.sort(rng.choice(x.shape[0], train_size, replace=False))]
        self.rng_after_draw = rng.bit_generator.state  # the codec's generator, after its draw
        self.x = x
        self.coarse: dict[tuple, tuple[np.ndarray, np.ndarray, float]] = {}

    def _rng(self) -> np.random.Generator:
        rng = np.random.default_rng(self.seed)
        rng.bit_generator.state = self.rng_after_draw
        return rng

    def centroids(self, nlist: int, ivf_iter: int, ivf_tol: float, ivf_near: int) -> tuple[np.ndarray, np.ndarray, float]:
        key = (nlist, ivf_iter, ivf_tol, ivf_near)
        if key not in self.coarse:
            t0 = time.perf_counter()
            if nlist > 1:
                c = kmeans.kmeans_fit(self.x, nlist, seed=self.seed, n_iter=ivf_iter, tol=ivf_tol,
                                      near=ivf_near)
                lists = ivf.ivf_assign(self.x, c, "ip")
            else:
                c = self.x.mean(axis=0, keepdims=True).astype(np.float32)
                lists = np.zeros(self.x.shape[0], dtype=np.int64)
            self.coarse[key] = (c, lists, time.perf_counter() - t0)
        return self.coarse[key]

    def train(self, spec: str, *, itq_rows: int = quantizers.ITQ_ROWS, itq_iter: int = quantizers.ITQ_ITER_WIDE, ivf_iter: int = 20,
              ivf_tol: float = kmeans.KMEANS_TOL, ivf_near: int = kmeans.NEAR_CANDIDATES, pq_iter: int = 20, pq_tol: float = kmeans.KMEANS_TOL,
              pq_warm: int = kmeans.WARM_POINTS_PER_CENTROID,
              pq_refine: int = kmeans.REFINE_ITER) -> tuple[dict[str, np.ndarray], float]:
        """(state arrays, seconds: coarse + quantizer training)."""
        c, lists, t_coarse = self.centroids(nlist_of(spec), ivf_iter, ivf_tol, ivf_near)
        t0 = time.perf_counter()
        r = self.x - c[lists]
        quant = spec.split(",")[-1]
        state = {"centroids": np.ascontiguousarray(c, dtype=np.float32)}
        if quant.startswith("PQ"):
            m, nbits = (int(v) for v in quant[2:].split("x"))
            xp = pq.pq_pad(r, m)
            dsub = xp.shape[1] // m
            books = np.empty((m, 1 << nbits, dsub), dtype=np.float32)
            for j in range(m):
                books[j] = kmeans.kmeans_fit(xp[:, j * dsub: (j + 1) * dsub], 1 << nbits, n_iter=pq_iter,
                                             seed=self.seed + j, tol=pq_tol, warm_points_per_centroid=pq_warm,
                                             refine_iter=pq_refine)
            state["pq_books"] = books
        else:  # RB: ITQ on a subsample, one BLAS thread (as the codec runs it)
            rng = self._rng()
            # the codec draws these rows before the residuals, in sorted order (Codec._fit)
            rows = r if r.shape[0] <= itq_rows else r[np.sort(rng.choice(r.shape[0], itq_rows, replace=False))]
            with threadpool_limits(1, user_api="blas"):
                state["rb_rotation"] = transform.itq_rotation(rows, self.seed, n_iter=itq_iter)
        return state, t_coarse + time.perf_counter() - t0


def sweep_point(trainer: Trainer, spec: str, knobs: dict[str, Any], base: np.ndarray, queries: np.ndarray,
                qn: np.ndarray, xn: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    state, t_train = trainer.train(spec, **knobs)
    codec = Codec.from_config(Codec(spec, base.shape[1], "cosine").to_config(), state)
    t0 = time.perf_counter()
    codes = codec.encode(base)
    t_encode = time.perf_counter() - t0
    kw = probe_kw(spec)
    index = codec.index(codes.codes, codes.lists)
    r0 = recall_at(index.search(queries, K, **kw).ids, gt, K)
    short = index.search(queries, RERANK, **kw).ids
    exact = np.einsum("qd,qrd->qr", qn, xn[np.maximum(short, 0)])  # what the store's re-ranking computes
    exact[short < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :K]
    rr = recall_at(np.take_along_axis(short, order, axis=1), gt, K)
    out = {"spec": spec, **knobs, "train_s": t_train, "encode_s": t_encode, "recall_codes": r0,
           f"recall_r{RERANK}": rr}
    print(f"{spec:16s} {json.dumps(knobs):60s} train {t_train:6.2f} s encode {t_encode:5.2f} s "
          f"recall@10 codes {r0:.4f} R={RERANK} {rr:.4f}", flush=True)
    return out


# Knob sets per spec; the first is the codec's own training (engine/codecs.py, quantizers.py).
SWEEPS: dict[str, list[dict[str, Any]]] = {
    "RB1": [{"itq_rows": r, "itq_iter": i} for r, i in
            [(8192, 10), (8192, 25), (4096, 10), (4096, 5), (2048, 10), (1024, 10), (8192, 0)]],
    "IVF1024,RB1": [{"ivf_near": m, "itq_iter": i} for m, i in
                    [(64, 10), (0, 25), (0, 10), (32, 10), (128, 10), (64, 0)]],
    "PQ48x8": [{"pq_warm": w, "pq_refine": f} for w, f in [(16, 4), (0, 20), (16, 20), (16, 2), (8, 4)]],
    "IVF1024,PQ96x4": [{"ivf_near": a, "pq_warm": b, "pq_refine": g} for a, b, g in
                       [(64, 16, 4), (0, 0, 20), (32, 16, 4), (128, 16, 4)]],
}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=";".join(PAIRS), help="vecz specs, ';'-separated (of the four)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nq", type=int, default=0, help="queries for recall (0: all 10,000)")
    p.add_argument("--tmp", default=None, help="directory for the stores built (default: the system's)")
    p.add_argument("--head", default=None, metavar="REV",
                   help="also time the kernels of git revision REV (kmeans, ivf, transform, pq), interleaved "
                        "with the working tree's, in this process (e.g. --head HEAD)")
    p.add_argument("--sweep", action="store_true", help="training-parameter sweep instead of the pairs")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "build_speed.json"))
    args = p.parse_args()
    specs = [s.strip() for s in args.pairs.split(";") if s.strip()]
    unknown = [s for s in specs if s not in PAIRS]
    if unknown:
        p.error(f"--pairs: expected specs among {list(PAIRS)}, found {unknown}")
    threads = set_threads(args.threads)
    base, queries, gt = load(args.nq)
    xn, qn = normalised(base), normalised(queries)
    env = environment()
    print(f"CPU: {env['cpu']} ({env['cores']} cores); python {env['python']}, numpy {env['numpy']}, "
          f"numba {env['numba']} ({env['numba_threading_layer']}), faiss {env['faiss']}, vecz {env['vecz']}")
    print(f"env: {env['env']}")
    for b in env["blas"]:
        print(f"  {b['lib']}: {b['api']} {b['version']} kernel={b['kernel']} threads={b['threads']}")
    print(f"threads: {threads}")
    root = Path(tempfile.mkdtemp(prefix="vecz-build-speed-", dir=args.tmp))
    result: dict[str, Any] = {"env": env, "threads": args.threads, "rows": int(base.shape[0]),
                              "queries": int(queries.shape[0]), "argv": sys.argv[1:]}
    try:
        if args.sweep:
            trainer = Trainer(xn)
            for spec in specs:  # compile on a slice first
                Trainer(xn[:3000]).train(spec.replace("IVF1024", "IVF16"), itq_iter=2, ivf_iter=2, pq_iter=2)
            result["sweep"] = [sweep_point(trainer, spec, knobs, base, queries, qn, xn, gt)
                               for spec in specs for knobs in SWEEPS[spec]]
        else:
            kernels = Kernels(args.head, root)
            t0 = time.perf_counter()
            for name in kernels.sets:
                kernels.use(name)
                warm_up(specs, base, queries, root)
            kernels.use("new")
            print(f"warm-up (compile / load kernels): {time.perf_counter() - t0:.1f} s", flush=True)
            result["pairs"] = [run_pair(spec, PAIRS[spec], base, xn, queries, qn, gt, training_rows(base.shape[0]),
                                        args.repeat, root, kernels) for spec in specs]
            print()
            print(table(result["pairs"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
