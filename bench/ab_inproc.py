"""Two versions of vecz timed in one process, one query at a time, interleaved.

On the shared 2-core VMs single-query p50s move by 20-50% between runs (a noisy neighbour,
DAMON reclaim evicting the dense files), far more than most changes to a search's fixed
cost. Timing an old and a new version in separate processes, even alternated, then says
little. This script imports both into one process (the old one from a checkout under
another package name), opens the same store with each, checks that they return the same
results, and times query i with one version and then the other (the order alternating), so
both see the same machine at the same moment. It reports each version's p50 and their ratio
per round.

    git worktree add /tmp/old <rev>
    python bench/ab_inproc.py --old /tmp/old --store STORE --search "rerank=20,nprobe=48" [--cold]

``--batch`` times the queries as one batch per version instead (QPS, best of 3 a round,
alternating), after each version's recall@k against the exact top-k under its store's metric
when the queries are a dataset's queries.npy beside its base.npy (a change that moves
results, such as a new score rule, is judged on both): `vecz.engine.bench.data.dataset_truth`,
the dataset's gt_ids.npy for ip, else computed once for all its queries and cached.

``--old-store OTHER`` instead of ``--old`` times two stores with this version: OTHER as
"old" against --store as "new" (the same rows under two codec configurations, such as PQ
under ip with and without row norms, ``Codec(..., row_norms=False)``).

``--cold`` evicts the store's dense files (both versions' mappings, then posix_fadvise) before
every query, as `store_bench.py --parts cold` does. The absolute times are those of a
process holding two copies of the engine, so only the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import atexit
import ast
import glob
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import vecz.engine.store as new_store
from vecz.engine.bench.data import dataset_truth
from store_bench import RESIDENCY_RECHECK_S, _evict, _read_whole  # bench/, this script's folder

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wordnet-minilm"


def _search_kw(text: str) -> dict:
    """'rerank=20,nprobe=48' or 'rerank=auto:128' -> keywords for Store.search."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a string such as auto:128
    return out


def old_module(checkout: Path, module: str):
    """`module` (e.g. "engine.store") of the checkout at `checkout`, imported as part of
    package ``vecz_old``."""
    if "vecz_old" not in sys.modules:
        root = Path(tempfile.mkdtemp(prefix="vecz-ab-"))
        atexit.register(shutil.rmtree, root, True)  # a symlink inside: rmtree removes the link, not the checkout
        (root / "vecz_old").symlink_to(Path(checkout).resolve())
        sys.path.insert(0, str(root))
    return importlib.import_module(f"vecz_old.{module}")


def _old_store(checkout: Path):
    """`Store` of the checkout at `checkout`, imported as package ``vecz_old``."""
    return old_module(checkout, "engine.store").Store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--old", type=Path, help="a checkout of the old version (git worktree)")
    which.add_argument("--old-store", help="another store, timed with this version as 'old'")
    ap.add_argument("--store", required=True, help="a store both versions can open")
    ap.add_argument("--search", default="", help="Store.search keywords, e.g. rerank=20,nprobe=48")
    ap.add_argument("--queries", type=Path, default=DATA / "queries.npy")
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="evict the dense files before every query")
    ap.add_argument("--batch", action="store_true",
                    help="time the --nq queries as one batch per version (best of 3 a round, alternating), "
                         "and print each version's recall@k against the exact top-k under its store's metric "
                         "when --queries is a dataset's queries.npy beside its base.npy")
    args = ap.parse_args(argv)

    import numba

    numba.set_num_threads(1)
    kw = _search_kw(args.search)
    q = np.load(args.queries)[: args.nq].astype(np.float32)
    old = (new_store.Store.open(args.old_store) if args.old_store is not None
           else _old_store(args.old).open(args.store))
    stores = {"old": old, "new": new_store.Store.open(args.store)}
    files = sorted(glob.glob(os.path.join(args.store, "dense-*.arrow")))
    if args.old_store is not None:
        files += sorted(glob.glob(os.path.join(args.old_store, "dense-*.arrow")))
    for s in stores.values():
        if isinstance(kw.get("rerank"), str):
            s.error_model()  # calibrated once, not timed
        s.search(q[:50], args.k, **kw)
    batch = {name: s.search(q[:100], args.k, **kw) for name, s in stores.items()}
    same = all(np.array_equal(batch["old"][i], batch["new"][i]) for i in (0, 1))
    alone = [{name: s.search(q[i], args.k, **kw) for name, s in stores.items()} for i in range(min(100, len(q)))]
    same_alone = all(np.array_equal(a["old"].ids, a["new"].ids) and np.array_equal(a["old"].scores, a["new"].scores)
                     for a in alone)
    print(f"store {args.store} search {kw} cold {args.cold}: the same results in a batch of 100 {same}, "
          f"one at a time {same_alone}", flush=True)
    if args.batch:
        return _batch_rounds(args, stores, q, kw, files)
    for r in range(args.rounds):
        if not args.cold:
            _read_whole(files)
            time.sleep(RESIDENCY_RECHECK_S + 0.1)  # the readers' next look sees the files cached
            for i in range(30):
                for s in stores.values():
                    s.search(q[i], args.k, **kw)
        times = {"old": [], "new": []}
        for i in range(len(q)):
            for name in (("old", "new") if (i + r) % 2 else ("new", "old")):
                if args.cold:  # both versions' mappings dropped, then the files' pages
                    _evict([], stores["old"])
                    _evict(files, stores["new"])
                t = time.perf_counter()
                stores[name].search(q[i], args.k, **kw)
                times[name].append(time.perf_counter() - t)
        p50 = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
        print(f"round {r}: old p50 {p50['old']:.3f} ms, new p50 {p50['new']:.3f} ms, new / old "
              f"{p50['new'] / p50['old']:.3f}", flush=True)
    for s in stores.values():
        s.close()
    return 0


def _truth(queries: Path, store, nq: int) -> tuple[np.ndarray | None, str]:
    """The exact top-100 of the first `nq` queries under `store`'s metric and its source, when
    `queries` is a dataset's queries.npy beside its base.npy and the store holds that base
    (same rows and width); else None and the reason."""
    folder = queries.resolve().parent
    if queries.name != "queries.npy" or not (folder / "base.npy").is_file():
        return None, f"{queries} is not a queries.npy beside a base.npy"
    rows = np.load(folder / "base.npy", mmap_mode="r").shape
    if rows != (len(store), store.dim):
        return None, f"the store holds {len(store)} x {store.dim}, {folder / 'base.npy'} {rows[0]} x {rows[1]}"
    ds = dataset_truth(folder, store.metric, nq=nq)
    return ds.gt, ds.gt_source


def _batch_rounds(args, stores: dict, q: np.ndarray, kw: dict, files: list[str]) -> int:
    """--batch: each version's QPS over the --nq queries as one batch, best of 3 a round,
    the versions alternating; first, when the queries are a dataset's (`_truth`), each
    version's recall@k against the exact top-k under its store's metric."""
    for name, s in stores.items():
        gt, why = _truth(args.queries, s, len(q))
        if gt is None:
            print(f"{name}: no recall@{args.k}: {why}", flush=True)
            continue
        ids = s.search(q, args.k, **kw).ids
        rec = np.mean([len(set(a) & set(b[: args.k])) / args.k for a, b in zip(ids, gt)])
        print(f"{name}: recall@{args.k} {rec:.4f} ({s.metric}: {why})", flush=True)
    for r in range(args.rounds):
        _read_whole(files)
        best = {}
        for name in (("old", "new") if r % 2 else ("new", "old")):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                stores[name].search(q, args.k, **kw)
                times.append(time.perf_counter() - t)
            best[name] = len(q) / min(times)
        print(f"round {r}: old {best['old']:,.0f} QPS, new {best['new']:,.0f} QPS, new / old "
              f"{best['new'] / best['old']:.3f}", flush=True)
    for s in stores.values():
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
