"""Speed of Numba's threading layers under vecz (not a pytest suite): encode time, batch QPS
and one-query latency on wordnet-minilm for RB1, IVF1024,RB1 (nprobe 32) and PQ48x8, in
the layer the environment selects. Run it once per layer, alone, and compare:

    for L in tbb omp tbb omp; do NUMBA_THREADING_LAYER=$L python bench/threading_layer.py; done

vecz selects tbb by default (engine/parallel.py); this is how its cost was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

import vecz  # noqa: F401  (selects the layer unless NUMBA_THREADING_LAYER says otherwise)
from vecz import Codec

DATA = Path(os.environ.get("VECZ_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "wordnet-minilm"


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not (DATA / "base.npy").exists():
        sys.exit(f"needs {DATA}/base.npy (set VECZ_DATA to the shared data directory)")
    x = np.load(DATA / "base.npy")
    q = np.load(DATA / "queries.npy")[:2000]
    out: dict = {"cpu": platform.processor() or platform.machine()}
    for spec in ("RB1", "IVF1024,RB1", "PQ48x8"):
        codec = Codec(spec, x.shape[1], "cosine")
        codec.train(x[:20000])
        codec.encode(x[:100])  # compile / load kernels outside the timing
        t = time.perf_counter()
        codes = codec.encode(x)
        encode_s = time.perf_counter() - t
        index = codec.index(codes.codes, codes.lists)
        kw = {"nprobe": 32} if spec.startswith("IVF") else {}
        index.search(q[:64], 10, **kw)
        t = time.perf_counter()
        for _ in range(3):
            index.search(q, 10, **kw)
        batch_s = (time.perf_counter() - t) / 3
        t = time.perf_counter()
        for i in range(300):
            index.search(q[i:i + 1], 10, **kw)
        single_s = (time.perf_counter() - t) / 300
        out[spec] = {"encode_s": round(encode_s, 3), "batch_qps": round(len(q) / batch_s),
                     "single_ms": round(single_s * 1e3, 3)}
    out["layer"] = numba.threading_layer()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
