"""What small commits cost (not a pytest suite): a 4,000-row wordnet-minilm RB1 store takes
200 one-row adds (latency, segments, files, manifests left; a 200-query search against the
same store after compact()), and a reader's refresh() of a 1M x 64 PQ8x8 store after a
one-row add and after a 10-row delete.

    python bench/commit_cost.py

Run it alone: two benchmarks on 2 cores disturb each other."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from vecz import Store

argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
d = os.environ.get("VECZ_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")) + "/wordnet-minilm"
x = np.load(f"{d}/base.npy")[:4200]; q = np.load(f"{d}/queries.npy")[:200]
root = tempfile.mkdtemp(prefix="vecz-commit-cost-")
out = {}
with Store.create(f"{root}/s", dim=384, metric="cosine", codec="RB1") as s:
    s.add(x[:4000])
    t = []
    for i in range(4000, 4200):
        t0 = time.perf_counter(); s.add(x[i:i+1]); t.append(time.perf_counter() - t0)
    info = s.info()
    files = os.listdir(f"{root}/s")
    man = sum(os.path.getsize(f"{root}/s/{f}") for f in files if f.startswith("MANIFEST"))
    s.search(q, 10, rerank=50)
    t0 = time.perf_counter(); s.search(q, 10, rerank=50); before = time.perf_counter() - t0
    s.compact()
    s.search(q, 10, rerank=50)
    t0 = time.perf_counter(); s.search(q, 10, rerank=50); after = time.perf_counter() - t0
out["single_adds"] = dict(add_ms_median=1e3*float(np.median(t)), add_ms_p99=1e3*float(np.percentile(t, 99)),
    segments=info["segments"], files=len(files), manifests=sum(f.startswith("MANIFEST") for f in files),
    manifest_bytes=man, search_s=before, search_compacted_s=after, ratio=before/after)
# reader refresh on 1M x 64
rng = np.random.default_rng(0)
y = rng.standard_normal((1_000_000, 64)).astype(np.float32)
with Store.create(f"{root}/big", dim=64, metric="l2", codec="PQ8x8", dense="f16") as w:
    for i in range(0, len(y), 250_000):
        w.add(y[i:i+250_000])
    r = Store.open(f"{root}/big"); r.search(y[:10], 10, rerank=20)
    w.add(y[:1]); t0 = time.perf_counter(); r.refresh(); ref = time.perf_counter() - t0
    t0 = time.perf_counter(); r.search(y[:10], 10, rerank=20); first = time.perf_counter() - t0
    t0 = time.perf_counter(); w.delete(np.arange(10)); dl = time.perf_counter() - t0
    t0 = time.perf_counter(); r.refresh(); ref2 = time.perf_counter() - t0
    out["refresh_1m"] = dict(refresh_after_1row_add_s=ref, first_search_s=first, delete_10_s=dl, refresh_after_delete_s=ref2,
                             segments=w.info()["segments"])
    r.close()
shutil.rmtree(root)
print(json.dumps(out, indent=1))
