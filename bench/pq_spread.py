"""PQ's padding spread over its sub-quantizers against padding on the right (`PQ.spread`).

When M does not divide the coded width, rows are padded to M * ceil(width / M) dims. Padded
on the right (codecs made before the spread, `pq_spread=False`), sub-quantizers wholly past
the last dim code nothing; spread, each sub-quantizer codes ceil or floor(width / M) dims.
This prints, for each spec and metric, recall@10 of the codes alone (no re-ranking) against
the exact top 10 over the same rows, and the mean norm of the decoding error, both ways.

    python bench/pq_spread.py [--rows 20000] [--nq 300] [--specs "PQ62x8;PQ124x8;OPQ62x8"]

Quality only: no timing (run it beside anything).
"""

from __future__ import annotations

import argparse

import numpy as np

from vecz import Codec
from vecz.engine.bench.data import dataset_folder

SPECS = "PQ62x8;PQ124x8;PQ124x4;OPQ62x8;OPQ56x8;IVF16,PQ62x8;IVF16,OPQ124x4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="wordnet-minilm", help="a dataset folder or name (default wordnet-minilm)")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--nq", type=int, default=300)
    p.add_argument("--specs", default=SPECS)
    p.add_argument("--metrics", default="cosine,ip,l2")
    args = p.parse_args()
    folder = dataset_folder(args.data)
    base = np.load(folder / "base.npy", mmap_mode="r")
    queries = np.load(folder / "queries.npy", mmap_mode="r")
    if not 1 <= args.rows <= len(base) or not 1 <= args.nq <= len(queries):
        p.error(f"--rows in 1..{len(base)} and --nq in 1..{len(queries)}")
    xb = np.asarray(base[: args.rows], dtype=np.float32)
    xq = np.asarray(queries[: args.nq], dtype=np.float32)
    print(f"{folder.name}: {len(xb)} rows x {xb.shape[1]}, {len(xq)} queries; recall@10 of the codes (rerank 0)")
    for metric in args.metrics.split(","):
        b, q = xb, xq
        if metric == "cosine":
            b = xb / np.linalg.norm(xb, axis=1, keepdims=True)
            q = xq / np.linalg.norm(xq, axis=1, keepdims=True)
        scores = -((q[:, None, :] - b[None]) ** 2).sum(-1) if metric == "l2" else q @ b.T
        truth = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        for spec in args.specs.split(";"):
            probe = Codec(spec, dim=xb.shape[1], metric=metric)
            m = getattr(probe.quantizer, "m", None)
            if m is None or probe.width % m == 0:  # (the width PQ codes: MRL's when it truncates)
                print(f"{spec:16s} {metric:6s} skipped: {'no PQ stage' if m is None else 'M divides its width'}")
                continue
            cells = []
            for spread in (False, True):
                codec = Codec(spec, dim=xb.shape[1], metric=metric, pq_spread=spread).train(xb)
                codes = codec.encode(xb)
                kw = {"nprobe": codec.nlist} if codec.ivf is not None else {}
                ids = codec.search(xq, codes, k=10, **kw).ids
                recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids, truth)])
                # the rows as coded (cosine-normalised, MRL-truncated) against their decoding
                error = float(np.linalg.norm(codec.decode(*codes) - codec._prepare(xb, "vectors"), axis=1).mean())
                cells.append(f"{recall:.4f} (error {error:.4f})")
            print(f"{spec:16s} {metric:6s} right: {cells[0]}  spread: {cells[1]}", flush=True)


if __name__ == "__main__":
    main()
