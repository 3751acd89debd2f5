"""`pq_inv_norm_bounds` of two versions in one process, on wordnet-minilm PQ48x8 codes flat and
behind IVF256 / IVF4096 (random rows as centroids), one thread by default (not a pytest suite).

    git worktree add /tmp/wt_old <rev>
    python bench/inv_norm_bounds_ab.py [THREADS]   # the old version from /tmp/wt_old
"""
import importlib, sys, tempfile, time
from pathlib import Path
import numpy as np, numba
root = Path(tempfile.mkdtemp()); (root / "vecz_old").symlink_to("/tmp/wt_old"); sys.path.insert(0, str(root))
old = importlib.import_module("vecz_old.kernels.pq")
from vecz.kernels import pq
numba.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
x = np.load("/work/shared/data/wordnet-minilm/base.npy").astype(np.float32)
rng = np.random.default_rng(0)
for nlist in (1, 256, 4096):
    if nlist == 1:
        cents = np.zeros((1, x.shape[1]), np.float32); lists = np.zeros(len(x), np.int64)
    else:
        cents = x[rng.choice(len(x), nlist, replace=False)].copy()
        lists = np.argmax(x @ cents.T, axis=1)
    order = np.argsort(lists, kind="stable")
    offs = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))]).astype(np.int64)
    r = (x - cents[lists])[order]
    books = pq.pq_train(r[:20000], 48, 8, seed=1)
    codes = pq.pq_encode(r, books)
    res = {}
    for name, mod in (("old", old), ("new", pq), ("old", old), ("new", pq)):
        mod.pq_inv_norm_bounds(books, cents, codes[:10], offs.clip(max=10))
        t = time.perf_counter(); b, lo, hi = mod.pq_inv_norm_bounds(books, cents, codes, offs); dt = time.perf_counter() - t
        res.setdefault(name, []).append(dt)
        wide = np.mean(b == 255); width = np.median(hi[b] / lo[b])
    print(f"nlist {nlist}: old {min(res['old'])*1e3:.1f} ms new {min(res['new'])*1e3:.1f} ms", flush=True)
    bo, lo_o, hi_o = old.pq_inv_norm_bounds(books, cents, codes, offs)
    bn, lo_n, hi_n = pq.pq_inv_norm_bounds(books, cents, codes, offs)
    print(f"  wide rows old {np.mean(bo==255):.4%} new {np.mean(bn==255):.4%}; same bytes {np.mean(bo==bn):.4f}")
