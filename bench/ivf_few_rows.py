"""IVF codecs trained on few rows a list: recall@10 at rerank=0 on wordnet-minilm.

Trains each spec on the first N rows, adds the first --rows rows, and searches the first
--nq queries (cosine, exact truth computed here over the added rows), nprobe --nprobe.
With as many training rows as lists every row is a centroid and its residual 0: the held-out
residuals (engine/codecs.py `_held_out_residuals`) are what PQ and SQ then learn from.

    python bench/ivf_few_rows.py --points "IVF1024,PQ48x8:1100;IVF1024,PQ48x8:2048;IVF64,SQ8:100"
    python bench/ivf_few_rows.py --no-held-out ...   # the same without them (the old training)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vecz import Store
from vecz.engine import codecs
from vecz.engine.bench.data import dataset_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="IVF1024,PQ48x8:1100;IVF1024,PQ48x8:2048;IVF1024,PQ48x8:20000;"
                    "IVF64,SQ8:100;IVF64,SQ8:20000", help="SPEC:TRAIN_ROWS pairs, ';'-separated")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--nq", type=int, default=300)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--no-held-out", action="store_true", help="train without the held-out residuals")
    args = ap.parse_args()
    if args.no_held_out:
        codecs._held_out_residuals = lambda *a, **k: None
    d = dataset_dir("wordnet-minilm")
    base = np.load(d / "base.npy")[: args.rows].astype(np.float32)
    q = np.load(d / "queries.npy")[: args.nq].astype(np.float32)
    bn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(qn @ bn.T), axis=1, kind="stable")[:, :10]
    for point in args.points.split(";"):
        spec, n_train = point.rsplit(":", 1)
        work = Path(tempfile.mkdtemp())
        try:
            with Store.create(work / "s", dim=base.shape[1], codec=spec, dense="f32") as s:
                s.train(base[: int(n_train)])
                s.add(base)
                res = s.search(q, 10, nprobe=args.nprobe, rerank=0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        recall = np.mean([len(set(res.ids[i]) & set(truth[i])) / 10 for i in range(len(q))])
        trained = min(int(n_train), len(base))  # base[:n_train] holds no more than the base
        print(f"{spec:18s} trained on {trained:6d} rows: recall@10 R0 {recall:.3f}")


if __name__ == "__main__":
    main()
