"""Scan benchmarks: vecz against faiss on wordnet-minilm, side by side in one run.

Every pair scans the whole base (117,647 x 384) for the same queries, k = 10, top-k
selection included, one thread, no re-ranking, no IVF (the IVF pairs: 32 of 256 lists); a
timed round is one batch call over all queries. vecz uses the cosine metric (the data are
unit vectors), faiss inner product; the l2 pairs use l2 on both sides. Each benchmark
records recall@10 against the exact top-10 of the metric its side searches with (harness
`Data.gt`; the Hamming pairs, sign bits standing in for the angle, against cosine's),
bytes per vector (codes plus per-vector factors) and QPS in `extra_info`;
`benchmark.group` names the pair so the JSON (and bench/report.py) shows the two sides
together.

| group | vecz | faiss |
| --- | --- | --- |
| PQ48x8 | codec PQ48x8 (8-bit tables, float sums) | IndexPQ(384, 48, 8) |
| IVF256,PQ48x8 | codec IVF256,PQ48x8, nprobe 32 | IVF256,PQ48x8 (IndexIVFPQ), nprobe 32 |
| IVF256,PQ48x8 l2, IVF256,PQ96x4 l2 | the codecs under l2, nprobe 32 | IndexIVFPQ, IndexIVFPQFastScan, l2, nprobe 32 |
| PQ96x4 fast scan | codec PQ96x4 (4-bit fast scan, uint8 tables) | IndexPQFastScan(384, 96, 4) |
| IVF256,PQ96x4 fast scan | codec IVF256,PQ96x4, nprobe 32 | IVF256,PQ96x4fs (IndexIVFPQFastScan), nprobe 32 |
| Hamming 384-bit | hamming_scan_batch over sign bits; codec RB1 with sdc=True | IndexBinaryFlat(384), same sign bits |
| SQ8 | codec SQ8 | IndexScalarQuantizer(384, QT_8bit) |
| RB<b> / RaBitQ<b> | codec RB<b>, asymmetric (float query tables) | RR384 + IndexRaBitQ(384, ip, b), qb = 4, 8 |
|  |  | RR384 + IndexRaBitQFastScan(384, ip, b) (`RaBitQfs<b>`) |
| IVF256,RB1 / IVF256,RaBitQfs (and l2) | codec IVF256,RB1, nprobe 32 | IndexIVFRaBitQFastScan(256), nprobe 32 |
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from harness import IVF_NPROBE, K, faiss_code_size, rabitq_inner, resident_bytes, run_search
from vecz.kernels import binary

pytestmark = pytest.mark.data


def _vecz(benchmark, data, vecz_index, spec, *, group, variant, metric="cosine", **search_kw):
    v = vecz_index(spec, metric)
    run_search(
        benchmark,
        lambda q: v.index.search(q, K, **search_kw).ids,
        data.queries,
        data.gt(metric),
        group=group,
        side="vecz",
        variant=variant,
        bytes_per_vector=v.codec.code_size,
        resident_bytes_per_vector=round(resident_bytes(v.index) / len(v.index), 2),
    )


def _faiss(benchmark, data, index, *, group, variant, **info):
    metric = "l2" if index.metric_type == faiss.METRIC_L2 else "ip"
    run_search(
        benchmark,
        lambda q: index.search(q, K)[1],
        data.queries,
        data.gt(metric),
        group=group,
        side="faiss",
        variant=variant,
        bytes_per_vector=faiss_code_size(index),
        **info,
    )


# --------------------------------------------------------------------------- PQ, 8 bits

PQ8 = "PQ48x8"


def test_pq48x8_vecz(benchmark, data, vecz_index):
    _vecz(benchmark, data, vecz_index, "PQ48x8", group=PQ8, variant="codec PQ48x8")


def test_pq48x8_faiss(benchmark, data, faiss_index):
    _faiss(benchmark, data, faiss_index("PQ48x8"), group=PQ8, variant="IndexPQ(384,48,8)")


IVFPQ8 = "IVF256,PQ48x8"


def test_ivf256_pq48x8_vecz(benchmark, data, vecz_index):
    # cosine to the reconstruction: each row's score divided by its decoded norm where it may
    # enter the top-k (kernels/pq.py `pq_inv_norm_bounds`)
    _vecz(benchmark, data, vecz_index, "IVF256,PQ48x8", group=IVFPQ8, variant=f"codec IVF256,PQ48x8 np{IVF_NPROBE}",
          nprobe=IVF_NPROBE)


def test_ivf256_pq48x8_faiss(benchmark, data, faiss_index):
    _faiss(benchmark, data, faiss_index("IVF256,PQ48x8"), group=IVFPQ8,
           variant=f"IndexIVFPQ(256,48,8) np{IVF_NPROBE}")


# l2 on residuals: per-probe tables from one inner-product table a query and per-list terms
# (engine/quantizers.py PQ.probe_tables), as faiss's precomputed table
L2_PAIRS = [("IVF256,PQ48x8", "IVF256,PQ48x8 l2", "IndexIVFPQ(256,48,8)"),
            ("IVF256,PQ96x4", "IVF256,PQ96x4fs l2", "IndexIVFPQFastScan(256,96,4)")]


@pytest.mark.parametrize("spec,faiss_name,faiss_variant", L2_PAIRS, ids=[p[0] for p in L2_PAIRS])
def test_ivf256_l2_vecz(benchmark, data, vecz_index, spec, faiss_name, faiss_variant):
    _vecz(benchmark, data, vecz_index, spec, group=f"{spec} l2", variant=f"codec {spec} l2 np{IVF_NPROBE}",
          metric="l2", nprobe=IVF_NPROBE)


@pytest.mark.parametrize("spec,faiss_name,faiss_variant", L2_PAIRS, ids=[p[0] for p in L2_PAIRS])
def test_ivf256_l2_faiss(benchmark, data, faiss_index, spec, faiss_name, faiss_variant):
    _faiss(benchmark, data, faiss_index(faiss_name), group=f"{spec} l2", variant=f"{faiss_variant} l2 np{IVF_NPROBE}")


# --------------------------------------------------------------------------- PQ, 4 bits, fast scan

PQ4 = "PQ96x4 fast scan"


def test_pq96x4_fastscan_vecz(benchmark, data, vecz_index):
    _vecz(benchmark, data, vecz_index, "PQ96x4", group=PQ4, variant="codec PQ96x4 (fast scan)")


def test_pq96x4_fastscan_faiss(benchmark, data, faiss_index):
    _faiss(benchmark, data, faiss_index("PQ96x4fs"), group=PQ4, variant="IndexPQFastScan(384,96,4)")


IVFPQ4 = "IVF256,PQ96x4 fast scan"


def test_ivf256_pq96x4_fastscan_vecz(benchmark, data, vecz_index):
    # cosine to the reconstruction: each row's score times its 1 / |x_hat| (float16 a row,
    # engine/quantizers.py `PQ._row_scales`); faiss's factory codes the vectors themselves
    # (by_residual false), vecz the residuals
    _vecz(benchmark, data, vecz_index, "IVF256,PQ96x4", group=IVFPQ4,
          variant=f"codec IVF256,PQ96x4 np{IVF_NPROBE}", nprobe=IVF_NPROBE)


def test_ivf256_pq96x4_fastscan_faiss(benchmark, data, faiss_index):
    _faiss(benchmark, data, faiss_index("IVF256,PQ96x4fs"), group=IVFPQ4,
           variant=f"IndexIVFPQFastScan(256,96,4) np{IVF_NPROBE}")


# --------------------------------------------------------------------------- Hamming over sign bits

HAMMING = "Hamming 384-bit"


def test_hamming_vecz_kernel(benchmark, data, sign_codes):
    s = sign_codes
    run_search(
        benchmark,
        lambda qw: binary.hamming_scan_batch(qw, s.base_words, s.ids, K)[1],
        s.query_words,
        data.gt("cosine"),
        group=HAMMING,
        side="vecz",
        variant="binary.hamming_scan_batch (sign bits)",
        bytes_per_vector=s.base_bytes.shape[1],
    )


def test_hamming_vecz_rb1_sdc(benchmark, data, vecz_index):
    _vecz(benchmark, data, vecz_index, "RB1", group=HAMMING, variant="codec RB1, sdc=True", sdc=True)


def test_hamming_faiss(benchmark, data, sign_codes, faiss_binary):
    run_search(
        benchmark,
        lambda qb: faiss_binary.search(qb, K)[1],
        sign_codes.query_bytes,
        data.gt("cosine"),
        group=HAMMING,
        side="faiss",
        variant="IndexBinaryFlat(384) (sign bits)",
        bytes_per_vector=faiss_code_size(faiss_binary),
    )


def test_hamming_distances_agree(data, sign_codes, faiss_binary):
    """Same bits, same distances: vecz's kernel, faiss and numpy popcount agree exactly.

    faiss compares bytes with popcount(a XOR b), so any packing both sides share gives the
    same distances; vecz reads the same bytes as little-endian uint64 words. Ids may differ
    only among equal distances (vecz keeps the smaller id on ties), so distances are compared.
    """
    s = sign_codes
    v_scores, v_ids = binary.hamming_scan_batch(s.query_words, s.base_words, s.ids, K)
    f_dist, f_ids = faiss_binary.search(s.query_bytes, K)
    v_dist = -v_scores.astype(np.int64)
    np.testing.assert_array_equal(v_dist, f_dist.astype(np.int64))
    # numpy oracle on a few queries: full distance vectors, then the K smallest.
    for qi in range(min(5, len(s.query_bytes))):
        dist = np.bitwise_count(s.base_bytes ^ s.query_bytes[qi]).sum(axis=1, dtype=np.int64)
        np.testing.assert_array_equal(np.sort(dist)[:K], v_dist[qi])
        np.testing.assert_array_equal(dist[v_ids[qi]], v_dist[qi])
        np.testing.assert_array_equal(dist[f_ids[qi]], v_dist[qi])


# --------------------------------------------------------------------------- SQ8

SQ8 = "SQ8"


def test_sq8_vecz(benchmark, data, vecz_index):
    _vecz(benchmark, data, vecz_index, "SQ8", group=SQ8, variant="codec SQ8")


def test_sq8_faiss(benchmark, data, faiss_index):
    _faiss(benchmark, data, faiss_index("SQ8"), group=SQ8, variant="IndexScalarQuantizer(384,QT_8bit)")


# --------------------------------------------------------------------------- RB asymmetric vs RaBitQ

RB_BITS = [1, 2, 4]


def _rb_group(bits: int) -> str:
    return f"RB{bits} / RaBitQ {bits}-bit"


@pytest.mark.parametrize("bits", RB_BITS)
def test_rb_asym_vecz(benchmark, data, vecz_index, bits):
    _vecz(benchmark, data, vecz_index, f"RB{bits}", group=_rb_group(bits), variant=f"codec RB{bits} (asymmetric)")


# qb = bits of the query's scalar quantization in faiss's estimator: 4 is faiss's default,
# 8 is as close as faiss gets to vecz's float-query tables at speed (qb = 0, float queries,
# takes a slow path: ~250 ms per query on this data, so it is not benchmarked).
@pytest.mark.parametrize("qb", [4, 8])
@pytest.mark.parametrize("bits", RB_BITS)
def test_rb_asym_faiss(benchmark, data, faiss_index, bits, qb):
    index = faiss_index(f"RaBitQ{bits}")
    inner = rabitq_inner(index)
    inner.qb = qb
    _faiss(benchmark, data, index, group=_rb_group(bits), variant=f"RR384,IndexRaBitQ(nb_bits={bits}) qb={qb}",
           qb=qb)


# faiss's fast scan of the same codes (`RaBitQfs<b>`: 4-bit lookups of the sign bits, the
# scan vecz's RB uses), at its default qb
@pytest.mark.parametrize("bits", RB_BITS)
def test_rb_fastscan_faiss(benchmark, data, faiss_index, bits):
    _faiss(benchmark, data, faiss_index(f"RaBitQfs{bits}"), group=_rb_group(bits),
           variant=f"RR384,IndexRaBitQFastScan(nb_bits={bits})")


IVF_RB = [("cosine", "IVF256,RaBitQfs", "ip"), ("l2", "IVF256,RaBitQfs l2", "l2")]


@pytest.mark.parametrize("metric,faiss_name,faiss_metric", IVF_RB, ids=[p[0] for p in IVF_RB])
def test_ivf256_rb1_vecz(benchmark, data, vecz_index, metric, faiss_name, faiss_metric):
    _vecz(benchmark, data, vecz_index, "IVF256,RB1", group=f"IVF256,RB1 {metric}",
          variant=f"codec IVF256,RB1 {metric} np{IVF_NPROBE}", metric=metric, nprobe=IVF_NPROBE)


@pytest.mark.parametrize("metric,faiss_name,faiss_metric", IVF_RB, ids=[p[0] for p in IVF_RB])
def test_ivf256_rb1_faiss(benchmark, data, faiss_index, metric, faiss_name, faiss_metric):
    _faiss(benchmark, data, faiss_index(faiss_name), group=f"IVF256,RB1 {metric}",
           variant=f"IndexIVFRaBitQFastScan(256) {faiss_metric} np{IVF_NPROBE}")
