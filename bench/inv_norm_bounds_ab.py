"""`pq_inv_norm_bounds` of two versions in one process (not a pytest suite): wordnet-minilm's
rows coded by PQ48x8 flat and behind IVF256 / IVF4096 (random rows as centroids), each
version timed twice alternately, best of two, one thread unless told; also the share of rows
left in the wide bucket and of bytes the versions agree on.

    git worktree add /tmp/wt_old <rev>
    python bench/inv_norm_bounds_ab.py --old /tmp/wt_old [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numba
import numpy as np

from ab_inproc import DATA, old_module  # bench/, this script's folder
from vecz.kernels import pq


def _lists(x: np.ndarray, nlist: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids, list of each row, list offsets) of `nlist` random rows as centroids (one zero
    centroid for nlist 1)."""
    if nlist == 1:
        return np.zeros((1, x.shape[1]), np.float32), np.zeros(len(x), np.int64), np.array([0, len(x)])
    cents = x[rng.choice(len(x), nlist, replace=False)].copy()
    lists = np.argmax(x @ cents.T, axis=1)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))]).astype(np.int64)
    return cents, lists, offsets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the old version (git worktree)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    old = old_module(args.old, "kernels.pq")
    numba.set_num_threads(args.threads)
    x = np.load(DATA / "base.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    for nlist in (1, 256, 4096):
        cents, lists, offsets = _lists(x, nlist, rng)
        r = (x - cents[lists])[np.argsort(lists, kind="stable")]
        books = pq.pq_train(r[:20000], 48, 8, seed=1)
        codes = pq.pq_encode(r, books)
        took, got = {"old": [], "new": []}, {}
        for name, mod in (("old", old), ("new", pq), ("old", old), ("new", pq)):
            mod.pq_inv_norm_bounds(books, cents, codes[:10], offsets.clip(max=10))  # compiled first
            t = time.perf_counter()
            got[name] = mod.pq_inv_norm_bounds(books, cents, codes, offsets)[0]
            took[name].append(time.perf_counter() - t)
        wide = {name: float(np.mean(b == pq.INV_BUCKETS - 1)) for name, b in got.items()}
        print(f"nlist {nlist}: old {min(took['old']) * 1e3:.1f} ms, new {min(took['new']) * 1e3:.1f} ms; rows in "
              f"the wide bucket old {wide['old']:.4%} new {wide['new']:.4%}; the same byte "
              f"{np.mean(got['old'] == got['new']):.4f}", flush=True)


if __name__ == "__main__":
    main()
