"""rerank="auto" on a real store with its error model measured to several code-rank depths
(not a pytest suite): recall@10 against the dataset's exact top-10 under the store's metric
(`vecz.engine.bench.data.dataset_truth`: gt_ids.npy for ip, else computed once and cached),
rows read per query (mean, p99) and the miss rate (true top-10 ids a fixed R = 100 found and
auto did not, over all true top-10 ids), one thread, at confidences 0.99 and 0.999.

    vecz build ../shared/data/wordnet-minilm/base.npy S --codec PQ48x8 --dense f16
    python bench/calibration_depth.py S wordnet-minilm --nq 2000 [--nprobe 64] [--depths 64,100]

Run from a worktree of another version (its `vecz` first on sys.path) to compare versions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numba
import numpy as np

from vecz import Store
from vecz.engine import search as search_mod
from vecz.engine.bench.data import dataset_truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("dataset", help="the store's dataset: wordnet-minilm or wordnet-gemma ($VECZ_DATA, else "
                                    "../shared/data), or a folder with base.npy and queries.npy")
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--depths", default="64,100")
    args = ap.parse_args()
    numba.set_num_threads(1)
    st = Store.open(args.store)
    ds = dataset_truth(args.dataset, st.metric, nq=args.nq)  # the truth of the metric the store searches with
    if ds.base.shape != (len(st), st.dim):
        raise SystemExit(f"{args.store}: {len(st)} x {st.dim} rows, not the {ds.base.shape[0]} x "
                         f"{ds.base.shape[1]} of {args.dataset}: its truth does not apply")
    q, gt = ds.queries, ds.gt[:, :10]  # type: ignore[index]
    kw = {} if args.nprobe is None else {"nprobe": args.nprobe}
    fixed = st.search(q, 10, rerank=100, **kw)

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(g)) / 10 for a, g in zip(ids, gt)]))

    for depth in (int(d) for d in args.depths.split(",")):
        model = search_mod.calibrate(st.codec, st.metric, st._segments, nprobe=max(1, st.codec.nlist // 8),
                                     depth=depth)
        st._error_model = (st.codec, st._model_key(), model, True)  # this model for every search below
        for conf in (0.99, 0.999):
            r = st.search(q, 10, rerank="auto", confidence=conf, **kw)
            miss = sum(len(set(f) & set(g)) - len(set(a) & set(f) & set(g)) for a, f, g in zip(r.ids, fixed.ids, gt))
            print(f"{Path(args.store).name} depth {depth} confidence {conf}: recall@10 {recall(r.ids):.4f} "
                  f"(R = 100: {recall(fixed.ids):.4f}), rows {r.stats.rows_read_mean:.1f} p99 "
                  f"{r.stats.rows_read_p99:.0f}, miss {miss / (10 * len(q)):.3%}", flush=True)


if __name__ == "__main__":
    main()
