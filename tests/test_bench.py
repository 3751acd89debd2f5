"""Tests of `vecz bench` (the engine/bench/ wing, engine/cli.py) on small synthetic data in tmp_path.

Checked: the .npy and .fvecs readers (and their errors), exact ground truth against a
brute-force numpy oracle, recall, exact re-ranking, the Pareto marking on hand-made rows,
the schema of results.json / results.csv, recall of Flat = 1, re-ranking never lowering
recall, exit code 2 on bad input, and one end-to-end run on the shipped sample.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz.engine.bench import data as bench_data
from vecz.engine.bench import exact, faiss_side, metrics, runner
from vecz.engine.cli import main
from vecz.engine.codecs import code_size
from vecz.engine.errors import CodecSpecError, DatasetNotFound, FormatError, InvalidInput
from vecz.formats.importers import read_vectors
from tests.reference.files import write_fvecs

DIM = 24
N = 600
NQ = 25


def _clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    centres = rng.standard_normal((12, dim))
    return (centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return _clustered(rng, N, DIM), _clustered(rng, NQ, DIM)


@pytest.fixture(scope="module")
def files(tmp_path_factory, arrays) -> dict[str, Path]:
    base, queries = arrays
    d = tmp_path_factory.mktemp("bench_data")
    np.save(d / "base.npy", base.astype(np.float16))
    np.save(d / "queries.npy", queries)
    write_fvecs(d / "base.fvecs", base)
    write_fvecs(d / "queries.fvecs", queries)
    return {"base": d / "base.npy", "queries": d / "queries.npy", "base_fvecs": d / "base.fvecs",
            "queries_fvecs": d / "queries.fvecs", "dir": d}


def _scores64(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """All (nq, n) scores in float64, higher is better (negated squared distance for l2)."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        return -((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return q @ b.T


def _brute_force(base: np.ndarray, queries: np.ndarray, metric: str, depth: int) -> np.ndarray:
    return np.argsort(-_scores64(base, queries, metric), axis=1, kind="stable")[:, :depth]


def assert_same_topk(ids: np.ndarray, base: np.ndarray, queries: np.ndarray, metric: str) -> None:
    """ids is a true top-k: the float64 score at every rank equals the brute-force one (ranks
    may swap only between scores closer than float32 rounding), and no id repeats."""
    full = _scores64(base, queries, metric)
    want = -np.sort(-full, axis=1)[:, : ids.shape[1]]
    np.testing.assert_allclose(np.take_along_axis(full, ids, axis=1), want, rtol=0, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in ids.tolist())
    assert np.mean(ids == _brute_force(base, queries, metric, ids.shape[1])) > 0.99


@pytest.fixture(autouse=True)
def gt_cache(tmp_path, monkeypatch):
    """Computed ground truth is cached here (XDG_CACHE_HOME in tmp_path): never in the real
    ~/.cache, beside the test data, or in the repository's bench/sample."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "vecz" / "gt"


@pytest.fixture(autouse=True)
def restore_threads():
    """`run_bench` sets process-wide thread counts; give the next test the defaults back."""
    import numba

    before = numba.get_num_threads()
    yield
    runner.set_threads(before, with_faiss=True)


# --------------------------------------------------------------------------- readers


def test_fvecs_round_trip(files, arrays):
    got = read_vectors(files["base_fvecs"])
    np.testing.assert_array_equal(got, arrays[0])
    assert got.dtype == np.float32


def test_npy_float16_converted(files, arrays):
    got = read_vectors(files["base"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, arrays[0].astype(np.float16).astype(np.float32))


def test_fvecs_truncated_rejected(tmp_path, arrays):
    path = write_fvecs(tmp_path / "t.fvecs", arrays[0][:5])
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(FormatError, match=r"not a multiple of the row size 100"):
        read_vectors(path)


def test_fvecs_inconsistent_header_rejected(tmp_path, arrays):
    rows = np.empty((4, DIM + 1), dtype="<i4")
    rows[:, 0] = DIM
    rows[:, 1:] = arrays[0][:4].view("<i4")
    rows[2, 0] = DIM + 1
    path = tmp_path / "h.fvecs"
    rows.tofile(path)
    with pytest.raises(FormatError, match=rf"row 2 has width header {DIM + 1}, expected {DIM}"):
        read_vectors(path)


def test_reader_errors(tmp_path):
    with pytest.raises(DatasetNotFound, match="no such file"):
        read_vectors(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(FormatError, match="expected a numeric .npy array"):
        read_vectors(tmp_path / "junk.npy")
    np.save(tmp_path / "ok.npy", np.ones((10, 4), dtype=np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-7])
    with pytest.raises(FormatError, match="cut.npy"):
        read_vectors(tmp_path / "cut.npy")
    (tmp_path / "x.bin").write_bytes(b"\0" * 16)
    with pytest.raises(InvalidInput, match="expected a .npy or .fvecs"):
        read_vectors(tmp_path / "x.bin")
    np.save(tmp_path / "int.npy", np.ones((3, 4), dtype=np.int32))
    with pytest.raises(InvalidInput, match="float16/32/64"):
        read_vectors(tmp_path / "int.npy")
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InvalidInput, match="row 1"):
        read_vectors(tmp_path / "nan.npy")


# --------------------------------------------------------------------------- exact search and recall


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_gt_equals_brute_force(arrays, metric):
    base, queries = arrays
    scores, ids = exact.exact_topk(base, queries, metric, depth=100)
    assert ids.shape == (NQ, 100) and ids.dtype == np.int64
    assert_same_topk(ids, base, queries, metric)
    if metric == "l2":
        want = ((queries[:, None, :] - base[ids]) ** 2).sum(-1)
        assert np.all(np.diff(scores, axis=1) >= 0)
    else:
        b = exact.prepare(base, metric)
        q = exact.prepare(queries, metric)
        want = np.einsum("qkd,qd->qk", b[ids], q)
        assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_gt_l2_far_from_origin_is_exact(offset):
    # 2<q, x> - |x|^2 in float32 loses the digits that rank neighbours when the data sits far
    # from the origin (recall@10 0.45 against float64 at offset 1000); centring keeps them
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((2000, 32)) + offset).astype(np.float32)
    queries = (rng.standard_normal((30, 32)) + offset).astype(np.float32)
    scores, ids = exact.exact_topk(base, queries, "l2", depth=20)
    np.testing.assert_array_equal(ids, _brute_force(base, queries, "l2", 20))
    want = -np.take_along_axis(_scores64(base, queries, "l2"), ids, axis=1)
    np.testing.assert_allclose(scores, want, rtol=1e-5)


def test_gt_depth_capped_by_base(arrays):
    _, ids = exact.exact_topk(arrays[0][:30], arrays[1], "ip", depth=100)
    assert ids.shape == (NQ, 30)


def test_recall_at():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, -1], [4, 5, 6]])
    assert metrics.recall_at(found, truth, 1) == 0.5
    assert metrics.recall_at(found, truth, 3) == pytest.approx((1 + 3) / 6)
    assert metrics.recall_at(np.full((2, 3), -1), np.full((2, 3), -1), 3) == 0.0
    # a set intersection, as DESIGN.md defines it: an id returned twice counts once
    assert metrics.recall_at(np.array([[1, 1, 1]]), np.array([[1, 2, 3]]), 3) == pytest.approx(1 / 3)
    with pytest.raises(InvalidInput, match="recall@10 needs at least 10"):
        metrics.recall_at(found, truth, 10)
    with pytest.raises(InvalidInput, match="one found row per query"):
        metrics.recall_at(found[:1], truth, 3)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_rerank(arrays, metric):
    base, queries = arrays
    b, q = exact.prepare(base, metric), exact.prepare(queries, metric)
    truth = exact.exact_topk(base, queries, metric, 10)[1]
    rng = np.random.default_rng(1)
    cand = np.stack([rng.permutation(np.concatenate([t, rng.choice(N, 20)]))[:30] for t in truth])
    cand = np.array([list(dict.fromkeys(row)) + [-1] * (30 - len(set(row))) for row in cand.tolist()])
    cand[:, -1] = -1
    scores, ids = exact.exact_rerank(b, q, cand, 10, metric)
    for qi in range(NQ):
        valid = cand[qi][cand[qi] >= 0]
        want = _brute_force(base[valid], queries[qi : qi + 1], metric, 10)[0]
        np.testing.assert_array_equal(ids[qi], valid[want])
    assert np.all(ids >= 0)


def test_exact_rerank_pads_short_candidates(arrays):
    b = exact.prepare(arrays[0], "ip")
    q = exact.prepare(arrays[1][:2], "ip")
    cand = np.array([[5, -1, -1], [-1, -1, -1]])
    scores, ids = exact.exact_rerank(b, q, cand, 4, "ip")
    assert ids.tolist() == [[5, -1, -1, -1], [-1, -1, -1, -1]]
    assert np.isneginf(scores[1]).all() and np.isneginf(scores[0, 1:]).all()


# --------------------------------------------------------------------------- Pareto front


def test_pareto_front_hand_made():
    rows = [
        {"spec": "A", "bytes_per_vector": 40, "rerank": 0, "recall@10": 0.50},  # cheapest: front
        {"spec": "B", "bytes_per_vector": 40, "rerank": 0, "recall@10": 0.45},  # same budget, worse
        {"spec": "C", "bytes_per_vector": 72, "rerank": 0, "recall@10": 0.48},  # costs more, worse than A
        {"spec": "D", "bytes_per_vector": 72, "rerank": 0, "recall@10": 0.70},  # best at 72
        {"spec": "E", "bytes_per_vector": 200, "rerank": 0, "recall@10": 0.70},  # tie with cheaper D
        {"spec": "F", "bytes_per_vector": 392, "rerank": 0, "recall@10": 0.99},  # front
        {"spec": "G", "bytes_per_vector": 300, "rerank": 0, "recall@10": None},  # no figure: never
        {"spec": "A", "bytes_per_vector": 40, "rerank": 50, "recall@10": 0.95},  # own group: front
        {"spec": "F", "bytes_per_vector": 392, "rerank": 50, "recall@10": 0.94},  # worse than cheaper A
    ]
    marks = metrics.pareto_front(rows)
    assert [r["spec"] for r, m in zip(rows, marks) if m] == ["A", "D", "F", "A"]
    assert marks == [True, False, False, True, False, True, False, True, False]


def test_pareto_equal_rows_marks_first():
    rows = [{"bytes_per_vector": 8, "rerank": 0, "recall@10": 0.3}] * 2
    assert metrics.pareto_front(rows) == [True, False]


# --------------------------------------------------------------------------- running


def test_parse_options():
    assert runner.parse_rerank("0,50,50", 10) == [0, 50]
    with pytest.raises(InvalidInput):
        runner.parse_rerank("0,5", 10)
    with pytest.raises(InvalidInput):
        runner.parse_rerank("x", 10)
    assert runner.parse_codecs(" SQ8 ; RB1;", DIM, "cosine") == ["SQ8", "RB1"]
    with pytest.raises(CodecSpecError):
        runner.parse_codecs("SQ8;PQ5x3", DIM, "cosine")
    with pytest.raises(CodecSpecError):
        runner.parse_codecs("MRL64,SQ8", DIM, "cosine")  # wider than the vectors


def test_faiss_factory():
    assert faiss_side.faiss_factory("PQ48x8", 384) == "PQ48np"
    assert faiss_side.faiss_factory("PQ96x4", 384) == "PQ96x4fs"
    assert faiss_side.faiss_factory("IVF64,PQ8x8", 384) == "IVF64,PQ8np"
    assert faiss_side.faiss_factory("F16", 384) == "SQfp16"
    assert faiss_side.faiss_factory("SQ4", 384) == "SQ4"
    assert faiss_side.faiss_factory("Flat", 384) == "Flat"
    assert faiss_side.faiss_factory("RB2", 384) == "RR384,RaBitQfs2"  # IndexRaBitQFastScan
    assert faiss_side.faiss_factory("IVF16,RB1", 384) == "RR384,IVF16,RaBitQfs1"
    assert faiss_side.faiss_factory("MRL256,RB2", 384) == "MRL256,RR256,RaBitQfs2"
    # behind an IVF the fast-scan PQ codes the residual to its list's centroid, as vecz does
    assert faiss_side.faiss_factory("MRL128,IVF64,PQ16x4", 384) == "MRL128,IVF64,PQ16x4fsr"
    assert faiss_side.faiss_factory("IVF64,PQ16x4", 384) == "IVF64,PQ16x4fsr"
    assert faiss_side.faiss_factory("IVF64,OPQ16x4", 384) == "OPQ16,IVF64,PQ16x4fsr"


@pytest.mark.parametrize("spec,cls", [("IVF16,PQ8x4", "IndexIVFPQFastScan"), ("IVF16,PQ8x8", "IndexIVFPQ"),
                                      ("IVF16,OPQ8x4", "IndexIVFPQFastScan"),
                                      ("MRL16,IVF16,PQ8x4", "IndexIVFPQFastScan")])
def test_faiss_ivf_twin_codes_residuals(arrays, spec, cls):
    faiss = pytest.importorskip("faiss")
    base, _ = arrays
    fx = faiss_side.FaissSide(spec, DIM, "l2", exact.prepare(base, "l2"), base, 10, 4)
    assert fx.index is not None, fx.note
    ivf = faiss.downcast_index(faiss.extract_index_ivf(fx.index))
    assert type(ivf).__name__ == cls and ivf.by_residual  # vecz's IVF codes x - c (DESIGN.md)


@pytest.mark.parametrize("spec,list_bytes", [("IVF16,PQ8x4", 1), ("IVF16,PQ8x8", 1), ("IVF300,PQ8x4", 2),
                                             ("IVF16,SQ8", 1), ("PQ8x4", 0), ("PQ8x8", 0), ("SQ8", 0)])
def test_faiss_code_size_leaves_out_list_number(arrays, spec, list_bytes):
    # faiss's inverted lists keep codes and ids per vector; the list number in front of
    # sa_encode's standalone codes is not stored per vector (vecz's code_size leaves it out too)
    pytest.importorskip("faiss")
    base, queries = arrays
    fx = faiss_side.FaissSide(spec, DIM, "l2", exact.prepare(base, "l2"), base, 10, 4 if list_bytes else None)
    assert fx.index.sa_code_size() == fx.code_size + list_bytes
    assert fx.code_size == code_size(spec, DIM, "l2")
    row = fx.measure(0, queries, exact.exact_topk(base, queries, "l2")[1], [1], 1.0)
    assert row["faiss_bytes_per_vector"] == code_size(spec, DIM, "l2") + metrics.ID_BYTES


def test_refine_k_factor_rescores_r_rows(arrays):
    # faiss stores k_factor as float32 and re-scores int(k * k_factor) rows, in float32
    k = np.arange(1, 101)[:, None]
    r = k * np.arange(1, 51)[None, :] + np.arange(0, 7)[:, None, None]  # (7, 100, 50): R = k .. 50k + 6
    kf = np.float32(np.vectorize(faiss_side.refine_k_factor)(r, k))
    assert np.array_equal((np.float32(k) * kf).astype(np.int64), r)
    # and through faiss's own IndexRefineFlat, at a pair where R / k rounds below R
    pytest.importorskip("faiss")
    base, queries = arrays
    fx = faiss_side.FaissSide("PQ8x8", DIM, "l2", exact.prepare(base, "l2"), base, 7, None)
    gt = exact.exact_topk(base, queries, "l2")[1]
    row = fx.measure(31, queries, gt, [1], 1.0)
    assert int(np.float32(7) * np.float32(fx.refine.k_factor)) == 31
    assert row["faiss_index"].endswith(f"RFlat(k_factor={31 / 7:g})")


def test_run_bench_quality(arrays):
    base, queries = arrays
    data = bench_data.Dataset("synthetic", base, queries)
    res = runner.run_bench(data, ["Flat", "PQ4x8", "RB1", "SQ4"], metric="cosine", k=10, rerank=[0, 40], threads=1)
    by = {(r["spec"], r["rerank"]): r for r in res.rows}
    assert len(res.rows) == 8
    assert by[("Flat", 0)]["recall@10"] == 1.0 and by[("Flat", 0)]["recall@1"] == 1.0
    assert by[("Flat", 40)]["recall@10"] == 1.0
    for spec in ("PQ4x8", "RB1", "SQ4"):
        assert by[(spec, 40)]["recall@10"] >= by[(spec, 0)]["recall@10"]
        assert by[(spec, 0)]["recall@100"] is None  # k = 10 < 100
        # the store reads each shortlisted row once per batch, so a query costs at most R rows
        assert 0 < by[(spec, 40)]["rows_read_per_query"] <= 40
        assert by[(spec, 40)]["bytes_read_per_query"] == pytest.approx(by[(spec, 40)]["rows_read_per_query"] * DIM * 4,
                                                                       abs=0.1)
        assert by[(spec, 0)]["rows_read_per_query"] == 0 and by[(spec, 0)]["bytes_read_per_query"] == 0
    assert by[("PQ4x8", 0)]["recall@10"] < 1.0  # lossy, so the check above means something
    assert by[("PQ4x8", 0)]["bytes_per_vector"] == 4 + 8
    assert_same_topk(data.gt, base, queries, "cosine")
    spec, r = metrics.best_compressed(res)
    chosen = by[(spec, r)]
    assert spec != "Flat"
    if any(row["recall@10"] >= metrics.EXAMPLE_RECALL for row in res.rows if row["spec"] != "Flat"):
        # the cheapest compressed row that reaches the example recall
        assert chosen["recall@10"] >= metrics.EXAMPLE_RECALL
        assert not any(row["recall@10"] >= metrics.EXAMPLE_RECALL and row["bytes_per_vector"] < chosen["bytes_per_vector"]
                       for row in res.rows if row["spec"] != "Flat")
    else:
        assert chosen["recall@10"] == max(row["recall@10"] for row in res.rows if row["spec"] != "Flat")


def test_run_bench_given_gt_and_l2(arrays):
    base, queries = arrays
    gt = _brute_force(base, queries, "l2", 20)
    data = bench_data.Dataset("synthetic", base, queries, gt=gt, gt_source="given")
    res = runner.run_bench(data, ["Flat"], metric="l2", k=20, rerank=[0], threads=1)
    assert res.rows[0]["recall@10"] == 1.0 and res.rows[0]["recall@100"] is None
    assert res.recall_ats == [1, 10]



def test_a_truth_narrower_than_the_ranked_recall_is_refused(arrays):
    # a 5-wide truth at k = 10 ranked every table and the recommendation by recall@1 ("rerank=10:
    # recall@1 0.990" where recall@10 was 0.734), silently
    base, queries = arrays
    gt = _brute_force(base, queries, "l2", 5)
    data = bench_data.Dataset("synthetic", base, queries, gt=gt, gt_source="given")
    with pytest.raises(InvalidInput, match="holds 5 neighbours per query: expected at least 10 for recall@10"):
        runner.run_bench(data, ["SQ8"], metric="l2", k=10, rerank=[0], threads=1)
    assert metrics.recall_ats(gt, 5) == [1, 5]  # k = 5: recall@5 is what it ranks by, and 5 columns hold it


@pytest.mark.parametrize("spec", ["PQ8x8", "PQ8x4"])
def test_ram_per_vector_counts_what_a_search_makes_the_store_hold(arrays, tmp_path, spec):
    # read at open, before any search: PQ48x8 said 151 B/vector where the store held 251 after one
    from vecz import Store

    base, queries = arrays
    data = bench_data.Dataset("synthetic", base, queries, gt=_brute_force(base, queries, "cosine", 10),
                              gt_source="given")
    row = runner.run_bench(data, [spec], metric="cosine", k=10, rerank=[0], threads=1).rows[0]
    built = runner.build_store(tmp_path / "s", spec, base, "cosine", seed=0)
    with Store.open(built.path) as store:
        opened = sum(store.memory_bytes().values()) / len(base)
        store.search(queries[:3], 10, rerank=0)
        held = sum(store.memory_bytes().values()) / len(base)
    assert held > opened and row["ram_bytes_per_vector"] == pytest.approx(held, abs=0.01)


# --------------------------------------------------------------------------- CLI and outputs


def test_cli_outputs_schema(files, tmp_path, capsys):
    out = tmp_path / "out"
    specs = "Flat;SQ8;PQ4x4;RB2;MRL16,SQ8"
    rc = main(["bench", str(files["base_fvecs"]), str(files["queries"]), "--codecs", specs, "--rerank", "0,30",
               "--faiss", "--threads", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recall@10" in printed and "vs faiss" in printed
    rows = json.loads((out / "results.json").read_text())
    assert set(rows) == {"settings", "machine", "rows"}
    assert {"platform", "cpu_count", "python", "numpy", "numba", "faiss", "command"} <= set(rows["machine"])
    assert rows["machine"]["command"].startswith("vecz bench ")
    assert [(r["spec"], r["rerank"]) for r in rows["rows"]] == [
        (s, r) for s in ["Flat", "SQ8", "PQ4x4", "RB2", "MRL16,SQ8"] for r in (0, 30)
    ]
    needed = {"spec", "bytes_per_vector", "rerank", "rows_read_per_query", "recall@1", "recall@10", "recall@100",
              "qps", "p50_ms", "p99_ms", "build_s", "pareto", "faiss_recall@10", "faiss_qps", "speed_vs_faiss"}
    for r in rows["rows"]:
        assert needed <= set(r)
        assert r["qps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    flat = rows["rows"][0]
    assert flat["recall@10"] == 1.0 and flat["faiss_recall@10"] == 1.0 and flat["speed_vs_faiss"] > 0
    rb = rows["rows"][6]  # RB2 at R = 0 against faiss's fast scan of its RaBitQ codes
    assert rb["spec"] == "RB2" and rb["faiss_index"] == f"RR{DIM},RaBitQfs2" and 0 < rb["faiss_recall@10"] <= 1
    mrl = rows["rows"][-2:]  # faiss runs MRL as a LinearTransform keeping the first 16 dims
    assert mrl[0]["faiss_index"] == "MRL16,SQ8" and mrl[1]["faiss_index"].startswith("MRL16,SQ8,RFlat")
    assert all(0 < r["faiss_recall@10"] <= 1 and r["speed_vs_faiss"] > 0 for r in mrl)
    assert mrl[1]["faiss_recall@10"] >= mrl[0]["faiss_recall@10"]
    # measured (the serialized index over its rows: codes and trained arrays), the refine's
    # float32 rows on top
    assert mrl[0]["faiss_ram_bytes_per_vector"] > mrl[0]["faiss_bytes_per_vector"] - 8
    assert mrl[1]["faiss_ram_bytes_per_vector"] == pytest.approx(mrl[0]["faiss_ram_bytes_per_vector"] + 4 * DIM,
                                                                 abs=0.11)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10
    assert needed <= set(table[0])
    report = (out / "report.md").read_text()
    assert "| spec |" in report and "**" in report and "## Best spec per budget" in report
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:  # the plots are the [bench] extra
        assert (out / "recall_vs_bytes.png").stat().st_size > 10_000
        assert (out / "recall_vs_qps.png").stat().st_size > 10_000
    else:
        assert "plots skipped: matplotlib is not installed" in printed and not list(out.glob("*.png"))


def test_cli_texts_shown(files, arrays, tmp_path, capsys):
    import gzip

    texts = tmp_path / "b.txt.gz"
    qtexts = tmp_path / "q.txt"
    with gzip.open(texts, "wt") as f:
        f.write("".join(f"document {i}\n" for i in range(N)))
    qtexts.write_text("".join(f"question {i}\n" for i in range(NQ)))
    rc = main(["bench", str(files["base"]), str(files["queries_fvecs"]), "--codecs", "SQ8", "--rerank", "0",
               "--threads", "1", "--texts", str(texts), "--query-texts", str(qtexts), "--show", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "query 0: question 0" in printed and "query 1: question 1" in printed
    assert "query 2:" not in printed
    assert "document" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--codecs", "SQ8;PQ5x3"], "PQ bits must be 4 or 8"),
        (["--codecs", "Nope"], "unknown stage 'Nope'"),
        (["--codecs", "SQ8", "--rerank", "0,3"], "--rerank"),
    ],
)
def test_cli_bad_input_exit_2(files, capsys, argv, message):
    rc = main(["bench", str(files["base"]), str(files["queries"]), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err



def test_cli_k_above_the_default_depths_and_a_truth_of_other_queries(files, arrays, tmp_path, capsys):
    # --k 64 without --rerank failed on the default's 50, naming a --rerank not given; a --gt
    # with more rows than queries was cut to the first rows, unnoticed (rows = queries)
    base, queries = arrays
    argv = ["bench", str(files["base"]), str(files["queries"]), "--codecs", "SQ8", "--threads", "1",
            "--no-gt-cache"]
    assert main(argv + ["--k", "64"]) == 0
    assert "R=50" not in capsys.readouterr().out
    more = np.concatenate([_brute_force(base, queries, "cosine", 10)] * 2)
    np.save(tmp_path / "gt.npy", more)
    assert main(argv + ["--gt", str(tmp_path / "gt.npy")]) == 2
    assert f"expected ground truth for the {NQ} queries of the query file (a row per query), found {2 * NQ}" in \
        capsys.readouterr().err
    np.save(tmp_path / "gt.npy", more[:NQ])
    assert main(argv + ["--gt", str(tmp_path / "gt.npy"), "--nq", "10"]) == 0  # --nq cuts both


def test_budget_run_says_why_faiss_has_no_figure(tmp_path, capsys):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    np.save(tmp_path / "b.npy", _clustered(rng, 300, 33))
    np.save(tmp_path / "q.npy", _clustered(rng, 20, 33))
    assert main(["bench", str(tmp_path / "b.npy"), str(tmp_path / "q.npy"), "--budget", "8", "--codecs", "PQ8x4",
                 "--faiss", "--threads", "1", "--no-gt-cache", "--target-recall", "0.5"]) == 0
    assert "note: faiss refused" in capsys.readouterr().out  # (only report.md said it)


def test_replot_ranks_by_the_recall_the_run_ranked_by():
    # a k = 5 grid run ranks by recall@5; its results.json named no key, and a replot drew recall@1
    from vecz.engine.bench import plots

    rows = [{"spec": "SQ8", "recall@1": 0.9, "recall@5": 0.8, "recall@10": None}]
    assert plots._quality_key(rows, {"k": 5}) == "recall@5"
    assert plots._quality_key([dict(rows[0], **{"recall@10": 0.7})], {"k": 10}) == "recall@10"

def test_cli_unknown_dataset_and_file(tmp_path, capsys):
    assert main(["bench", "no-such-dataset"]) == 2
    assert "unknown dataset 'no-such-dataset'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--codecs", "SQ8"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--out", "--work"])
def test_cli_output_paths_under_a_file_are_refused_before_the_run(files, tmp_path, capsys, monkeypatch, option):
    (tmp_path / "afile").write_bytes(b"")

    def no_run(*a, **kw):
        raise AssertionError("the benchmark ran before its output path was checked")

    monkeypatch.setattr(runner, "run_bench", no_run)
    argv = ["bench", str(files["base"]), str(files["queries"]), "--codecs", "SQ8", "--rerank", "0"]
    assert main([*argv, option, str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"{option} '" in err and f"expected a directory (or a path one can be made at), found a file at " \
        f"'{tmp_path / 'afile'}'" in err, err
    assert main([*argv, "--budget", "8", option, str(tmp_path / "afile")]) == 2  # the --budget search alike
    assert "found a file at" in capsys.readouterr().err


def test_cli_texts_that_are_not_utf8_or_not_gzip_exit_2(files, tmp_path, capsys):
    argv = ["bench", str(files["base"]), str(files["queries"]), "--codecs", "SQ8", "--rerank", "0"]
    (tmp_path / "q.txt").write_text("q\n" * NQ)
    (tmp_path / "b.txt").write_bytes(b"ok\n" * 5 + "caf\u00e9\n".encode("latin-1") + b"ok\n" * (N - 6))
    assert main([*argv, "--texts", str(tmp_path / "b.txt"), "--query-texts", str(tmp_path / "q.txt")]) == 2
    assert "b.txt: base texts: expected UTF-8 text, found byte 0xe9 at offset 18" in capsys.readouterr().err
    (tmp_path / "b.txt.gz").write_text("ok\n" * N)
    assert main([*argv, "--texts", str(tmp_path / "b.txt.gz"), "--query-texts", str(tmp_path / "q.txt")]) == 2
    assert "b.txt.gz: base texts: expected gzip data (the name ends in .gz), found" in capsys.readouterr().err


def test_cli_truncated_fvecs_exit_2(files, tmp_path, capsys):
    bad = tmp_path / "bad.fvecs"
    bad.write_bytes(files["base_fvecs"].read_bytes()[:-3])
    assert main(["bench", str(bad), str(files["queries"]), "--codecs", "SQ8"]) == 2
    assert "not a multiple of the row size" in capsys.readouterr().err


SAMPLE = Path(__file__).resolve().parents[1] / "bench" / "sample"


@pytest.mark.skipif(not (SAMPLE / "base.npy").is_file(), reason=f"shipped sample not found at {SAMPLE}")
def test_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "sample", "--codecs", "SQ8;RB1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5000 x 384 base, 200 queries" in printed
    assert "query 0:" in printed  # texts picked up from the sample
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["spec"], r["rerank"]) for r in rows] == [(s, r) for s in ("SQ8", "RB1") for r in (0, 50, 100)]
    assert all(0 < r["recall@10"] <= 1 for r in rows)
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()


# --------------------------------------------------------------------------- ground-truth cache


def _data_folder(files, arrays, name: str) -> Path:
    d = files["dir"] / name
    d.mkdir()
    np.save(d / "b.npy", arrays[0])
    np.save(d / "q.npy", arrays[1])
    return d


def test_gt_cached_in_user_cache_and_reused(files, arrays, gt_cache, monkeypatch):
    d = _data_folder(files, arrays, "gtcache")
    data = bench_data.load_files(d / "b.npy", d / "q.npy")
    gt = bench_data.ground_truth(data, "cosine")
    assert "computed" in data.gt_source
    assert sorted(p.name for p in d.iterdir()) == ["b.npy", "q.npy"]  # nothing written beside the input
    cached = list(gt_cache.glob("b.gt-cosine-top100-*.npy"))
    assert len(cached) == 1 and str(cached[0]) in data.gt_source
    assert cached[0] == bench_data.gt_cache_path(data, "cosine")
    np.testing.assert_array_equal(np.load(cached[0]), gt)
    assert_same_topk(gt, arrays[0], arrays[1], "cosine")

    def fail(*a, **k):
        raise AssertionError("the cached ground truth should have been used")

    monkeypatch.setattr(bench_data, "exact_topk", fail)
    again = bench_data.load_files(d / "b.npy", d / "q.npy")
    np.testing.assert_array_equal(bench_data.ground_truth(again, "cosine"), gt)
    assert "cached in" in again.gt_source and "computed" not in again.gt_source
    # another metric, another query set: another key, so never the stale file
    assert bench_data.gt_cache_path(again, "l2") != cached[0]
    fewer = bench_data.load_files(d / "b.npy", d / "q.npy", nq=5)
    assert bench_data.gt_cache_path(fewer, "cosine") != cached[0]


def test_gt_cache_damaged_is_recomputed(files, arrays, gt_cache):
    d = _data_folder(files, arrays, "gtdamaged")
    data = bench_data.load_files(d / "b.npy", d / "q.npy")
    path = bench_data.gt_cache_path(data, "ip")
    assert path.parent == gt_cache
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY garbage")
    gt = bench_data.ground_truth(data, "ip")
    assert "computed" in data.gt_source
    assert_same_topk(gt, arrays[0], arrays[1], "ip")
    np.testing.assert_array_equal(np.load(path), gt)  # replaced by the good one


def test_gt_cache_unwritable_is_said_not_raised(arrays, tmp_path):
    # the cache folder cannot be made (here: it would sit under a regular file, which fails
    # for root too, unlike a read-only mode): the truth is computed and the source says so
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    data = bench_data.Dataset("synthetic", arrays[0], arrays[1])
    gt = bench_data.ground_truth(data, "cosine", cache=blocker / "gt")
    assert gt.shape == (NQ, 100)
    assert "computed" in data.gt_source and f"not cached ({blocker / 'gt'}" in data.gt_source


def test_gt_cache_in_xdg_without_base_file(arrays, gt_cache):
    data = bench_data.Dataset("synthetic", arrays[0], arrays[1])
    bench_data.ground_truth(data, "cosine")
    assert len(list(gt_cache.glob("data.gt-cosine-top100-*.npy"))) == 1


def test_gt_cache_named_folder_or_none(files, arrays, gt_cache, tmp_path):
    d = _data_folder(files, arrays, "gtnamed")
    data = bench_data.load_files(d / "b.npy", d / "q.npy")
    bench_data.ground_truth(data, "l2", cache=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("b.gt-l2-top100-*.npy"))) == 1
    # asked for: beside the input
    beside = bench_data.load_files(d / "b.npy", d / "q.npy")
    bench_data.ground_truth(beside, "l2", cache=d)
    assert len(list(d.glob("b.gt-l2-top100-*.npy"))) == 1
    off = bench_data.load_files(d / "b.npy", d / "q.npy")
    bench_data.ground_truth(off, "ip", cache=False)
    assert bench_data.gt_cache_path(off, "ip", cache=False) is None
    assert "computed" in off.gt_source and "cached" not in off.gt_source
    assert not gt_cache.exists() and not list(d.glob("b.gt-ip-*"))


def _fake_named(arrays, tmp_path, monkeypatch, name: str, seed: int):
    """A named dataset under $VECZ_DATA: float16 rows of norms 0.97..1.03 and the gt_ids.npy
    a named dataset ships (their inner-product top-100). Returns (folder, xb, xq, shipped)."""
    base, queries = arrays
    rng = np.random.default_rng(seed)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    base16 = (unit * rng.uniform(0.97, 1.03, (N, 1))).astype(np.float16)
    d = tmp_path / "data" / name
    d.mkdir(parents=True)
    np.save(d / "base.npy", base16)
    np.save(d / "queries.npy", queries.astype(np.float16))
    xb, xq = base16.astype(np.float32), queries.astype(np.float16).astype(np.float32)
    shipped = _brute_force(xb, xq, "ip", 100).astype(np.int32)
    np.save(d / "gt_ids.npy", shipped)
    monkeypatch.setenv("VECZ_DATA", str(tmp_path / "data"))
    return d, xb, xq, shipped


def test_named_dataset_shipped_truth_only_for_ip(arrays, tmp_path, monkeypatch, gt_cache):
    # a named dataset ships gt_ids.npy, the inner-product top-100 of its float16 rows, whose
    # norms are 1 only roughly: the cosine truth is computed (and cached), not that file
    d, xb, xq, shipped = _fake_named(arrays, tmp_path, monkeypatch, "wordnet-minilm", 5)
    ip = bench_data.load_named("wordnet-minilm", metric="ip")
    assert ip.gt_source == str(d / "gt_ids.npy")
    np.testing.assert_array_equal(ip.gt, shipped)
    cos = bench_data.load_named("wordnet-minilm", metric="cosine")
    assert cos.gt is None
    gt = bench_data.ground_truth(cos, "cosine")
    assert_same_topk(gt, xb, xq, "cosine")
    assert metrics.recall_at(gt, shipped, 10) < 1  # the shipped file is not the cosine truth here

    def fail(*a, **k):
        raise AssertionError("the cached cosine truth should have been used")

    monkeypatch.setattr(bench_data, "exact_topk", fail)
    again = bench_data.load_named("wordnet-minilm", metric="cosine")
    np.testing.assert_array_equal(bench_data.ground_truth(again, "cosine"), gt)
    assert f"cached in {gt_cache}" in again.gt_source
    assert bench_data.load_named("wordnet-minilm", metric="l2").gt is None


def test_dataset_truth_follows_the_metric_queries_and_rows(arrays, tmp_path, monkeypatch, gt_cache):
    # the bench/ scripts' truth: gt_ids.npy for ip over all rows, else computed over all the
    # queries once (the key `vecz bench` caches under) and cut to the first nq; a row prefix
    # is another base with its own truth
    d, xb, xq, shipped = _fake_named(arrays, tmp_path, monkeypatch, "wordnet-gemma", 6)
    assert bench_data.dataset_folder("wordnet-gemma") == d and bench_data.dataset_folder(tmp_path) == tmp_path

    ip = bench_data.dataset_truth("wordnet-gemma", "ip", nq=7, depth=10)
    assert ip.gt_source == str(d / "gt_ids.npy") and ip.queries.shape == (7, DIM)
    np.testing.assert_array_equal(ip.gt, shipped[:7, :10])
    assert not gt_cache.exists()  # nothing computed

    cos = bench_data.dataset_truth(d, "cosine", nq=7)  # a folder works as the name does
    assert cos.queries.shape == (7, DIM) and cos.gt.shape == (7, 100)
    np.testing.assert_array_equal(cos.queries, xq[:7])
    assert_same_topk(cos.gt, xb, xq[:7], "cosine")
    assert metrics.recall_at(cos.gt, shipped[:7], 10) < 1  # not the shipped file
    # computed for all the queries, under the key vecz bench uses for the whole dataset
    whole = bench_data.load_named("wordnet-gemma", metric="cosine")
    assert [p.name for p in gt_cache.iterdir()] == [bench_data.gt_cache_path(whole, "cosine").name]

    def fail(*a, **k):
        raise AssertionError("the cached truth should have been used")

    with monkeypatch.context() as m:
        m.setattr(bench_data, "exact_topk", fail)
        np.testing.assert_array_equal(bench_data.dataset_truth("wordnet-gemma", "cosine", nq=3).gt, cos.gt[:3])
        np.testing.assert_array_equal(bench_data.ground_truth(whole, "cosine")[:7], cos.gt)

    for metric in ("ip", "l2"):  # a row prefix: truth among those rows, ip computed too
        part = bench_data.dataset_truth("wordnet-gemma", metric, nq=5, rows=400)
        assert part.base.shape == (400, DIM) and part.gt.shape == (5, 100) and part.gt.max() < 400
        assert "computed" in part.gt_source
        assert_same_topk(part.gt, xb[:400], xq[:5], metric)
    with pytest.raises(InvalidInput):
        bench_data.dataset_truth("wordnet-gemma", "l2", rows=N + 1)
    with pytest.raises(DatasetNotFound):
        bench_data.dataset_truth(tmp_path / "nowhere", "cosine")


def test_default_gt_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bench_data.default_gt_cache_dir() == tmp_path / "xdg" / "vecz" / "gt"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore it
    assert bench_data.default_gt_cache_dir() == tmp_path / "home" / ".cache" / "vecz" / "gt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert bench_data.default_gt_cache_dir() == tmp_path / "home" / ".cache" / "vecz" / "gt"


def test_cli_gt_cache_options(files, tmp_path, gt_cache, capsys):
    argv = ["bench", str(files["base"]), str(files["queries"]), "--codecs", "Flat", "--rerank", "0", "--threads", "1"]
    assert main(argv + ["--gt-cache", str(tmp_path / "gc")]) == 0
    assert f"cached in {tmp_path / 'gc'}" in capsys.readouterr().out
    assert len(list((tmp_path / "gc").glob("base.gt-cosine-top100-*.npy"))) == 1
    assert main(argv + ["--no-gt-cache"]) == 0
    assert "cached" not in capsys.readouterr().out
    assert not gt_cache.exists()
    assert sorted(p.name for p in files["dir"].glob("base.gt-*")) == []
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--gt-cache", str(tmp_path / "gc"), "--no-gt-cache"])
    assert exc.value.code == 2


def test_parquet_input(files, arrays, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = pa.FixedSizeListArray.from_arrays(pa.array(arrays[0].ravel()), DIM)
    pq.write_table(pa.table({"id": np.arange(N), "embedding": vecs}), tmp_path / "base.parquet")
    rc = main(["bench", str(tmp_path / "base.parquet"), str(files["queries"]), "--codecs", "SQ8", "--rerank", "0",
               "--threads", "1"])
    assert rc == 0
    assert f"{N} x {DIM} base" in capsys.readouterr().out


def test_best_per_budget_hand_made():
    rows = [
        {"spec": "a", "bytes_per_vector": 16, "rerank": 0, "recall@10": 0.5, "qps": 10.0},
        {"spec": "b", "bytes_per_vector": 32, "rerank": 0, "recall@10": 0.4, "qps": 20.0},
        {"spec": "c", "bytes_per_vector": 64, "rerank": 0, "recall@10": 0.9, "qps": 5.0},
        {"spec": "a", "bytes_per_vector": 16, "rerank": 50, "recall@10": 0.95, "qps": 8.0},
    ]
    res = metrics.BenchResult(rows, {}, {}, np.zeros((1, 10), dtype=np.int64), [1, 10])
    table = {e["bytes_per_vector"]: e["best"] for e in metrics.best_per_budget(res)}
    assert table[16][0][0] == "a" and table[32][0][0] == "a" and table[64][0][0] == "c"
    assert table[16][50][0] == "a" and table[64][50][0] == "a"
    fast = {e["bytes_per_vector"]: e["fastest"] for e in metrics.best_per_budget(res)}
    assert fast[32][0][0] == "a"  # b is faster but 0.1 below a
    rows.append({"spec": "d", "bytes_per_vector": 64, "rerank": 0, "recall@10": 0.895, "qps": 50.0})
    fast = {e["bytes_per_vector"]: e["fastest"] for e in metrics.best_per_budget(res)}
    assert fast[64][0][0] == "d"  # within NEAR_BEST of c's 0.9 and faster


def test_default_codecs_cover_budgets():
    specs = runner.default_codecs(117_647, 384).split(";")
    sizes = [code_size(s, 384, "cosine") for s in specs]
    assert len(specs) >= 10 and min(sizes) == 16 and max(sizes) == 384
    assert "IVF1024,RB1" in specs
    small = runner.default_codecs(500, 384).split(";")
    assert not any(s.startswith("IVF") for s in small)  # too few rows to partition
    for s in runner.default_codecs(24_000, 768).split(";"):
        code_size(s, 768, "cosine")  # every scaled spec is valid at its width


@pytest.mark.parametrize("grid", [runner.DEFAULT_CODECS, runner.SAMPLE_CODECS])
def test_default_codecs_are_valid_at_every_width(grid):
    """Scaled from 384 dims, PQ96x4 asked 768 4-bit sub-quantizers at 3072 dims (PQ takes 512)
    and MRL kept 8 dims of 4: `vecz bench` and `vecz codecs --dim` failed on their own list."""
    for dim in range(1, 4097):
        for n in (500, 117_647):
            specs = runner.parse_codecs(runner.default_codecs(n, dim, grid), dim, "cosine")
            assert len(specs) >= 5, (dim, n, specs)
    assert "IVF1024,PQ512x4" in runner.default_codecs(117_647, 3072)


# --------------------------------------------------------------------------- plots


def test_family_groups_sizes_not_kinds():
    from vecz.engine.bench.plots import family

    want = {
        "PQ x8": ["PQ48x8", "PQ32x8", "PQ1x8"],
        "PQ x4": ["PQ96x4", "PQ32x4"],
        "RB": ["RB1", "RB2", "RB4"],
        "IVF+RB": ["IVF1024,RB1", "IVF64,RB2"],
        "IVF+PQ x4": ["IVF1024,PQ96x4"],
        "IVF+PQ x8": ["IVF16,PQ8x8"],
        "MRL+RB": ["MRL256,RB1", "MRL160,RB2"],
        "MRL+IVF+RB": ["MRL320,IVF1024,RB1"],
        "SQ": ["SQ8", "SQ4"],
        "F16": ["F16"],
        "Flat": ["Flat"],
    }
    for fam, specs in want.items():
        assert [family(s) for s in specs] == [fam] * len(specs)


def test_pareto_line_hand_made():
    from vecz.engine.bench.plots import pareto_line

    # (recall, qps): higher is better on both
    pts = [(0.50, 900.0), (0.70, 800.0), (0.60, 700.0), (0.90, 300.0), (0.90, 100.0), (0.95, 50.0),
           (0.40, 950.0), (0.70, 800.0), (0.95, 40.0)]
    front = pareto_line(pts)
    assert front == [6, 0, 1, 3, 5]  # x ascending; (0.6, 700) is beaten by (0.7, 800), repeats kept once
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)
    for i, p in enumerate(pts):  # nothing on the line is beaten by any point
        if i in front:
            assert not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts)
    assert pareto_line([]) == [] and pareto_line([(0.3, 1.0)]) == [0]


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_place_labels_crowded_never_overlap():
    from vecz.engine.bench.plots import place_labels

    rng = np.random.default_rng(5)
    bounds = (0.0, 0.0, 600.0, 400.0)
    # 60 labels whose points sit within 30 px of each other, like recall 0.99+ on a plot
    anchors = [tuple(v) for v in rng.uniform([280, 180], [310, 210], size=(60, 2))]
    sizes = [(float(w), 9.0) for w in rng.uniform(30, 110, 60)]
    markers = [(x - 4.5, y - 4.5, x + 4.5, y + 4.5) for x, y in anchors]
    boxes = place_labels(anchors, sizes, bounds=bounds, obstacles=markers)
    placed = [b for b in boxes if b is not None]
    assert 10 <= len(placed) < 60  # room for some, not for all: the rest are left out
    for i, a in enumerate(placed):
        assert bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3]
        assert not any(_overlap(a, m) for m in markers)
        assert not any(_overlap(a, b) for b in placed[i + 1 :])
    for box, (w, h) in zip(boxes, sizes):
        assert box is None or (box[2] - box[0], box[3] - box[1]) == pytest.approx((w, h))
    # sparse points: every label placed, right beside its point
    far = [(50.0, 50.0), (300.0, 200.0), (500.0, 300.0)]
    boxes = place_labels(far, [(60.0, 9.0)] * 3, bounds=bounds)
    assert all(b is not None and abs(b[0] - x) <= 10 and abs(b[1] - y) <= 10 for b, (x, y) in zip(boxes, far))
    # a label that cannot fit inside the bounds is left out, not pushed outside
    assert place_labels([(10.0, 10.0)], [(700.0, 9.0)], bounds=bounds) == [None]


def test_recall_axis_stretches_toward_one():
    from vecz.engine.bench.plots import RecallAxis

    axis = RecallAxis(200, 10)  # recall steps of 1/2000: exact recall drawn at 1 - 1/4000
    np.testing.assert_allclose(axis.forward([0.0, 0.9, 0.99, 0.999]), [0, 1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(axis.inverse(axis.forward([0.3, 0.95, 0.9995])), [0.3, 0.95, 0.9995])
    assert axis.clip(1.0) == 1 - axis.eps == 1 - 1 / 4000 and axis.clip(0.9995) == 0.9995
    lo, hi = axis.limits([0.37, 1.0])
    assert lo < 0.37 and 1 - axis.eps < hi < 1
    ticks, labels = axis.ticks(lo, hi)
    assert {"0.5", "0.9", "0.99", "0.999", "1"} <= set(labels) and ticks == sorted(ticks)
    t = axis.forward(ticks)
    assert np.diff(t).min() >= 0.07 * (axis.forward(hi) - axis.forward(lo)) - 1e-9  # ticks never crowd
    big = RecallAxis(10_000, 10)  # finer steps than 1e-4: the top tick says what it holds
    assert big.eps == 1e-4 and big.ticks(*big.limits([0.5, 1.0]))[1][-1] == ">=0.9999"


def _plot_rows() -> tuple[list[dict], dict]:
    rows = []
    for spec, size, base_recall, qps in [("PQ16x8", 16, 0.55, 9000.0), ("PQ32x8", 32, 0.7, 6000.0),
                                          ("PQ32x4", 16, 0.5, 20000.0), ("RB1", 56, 0.68, 8000.0),
                                          ("RB2", 104, 0.84, 5000.0), ("IVF64,RB1", 56, 0.66, 15000.0),
                                          ("SQ8", 384, 0.995, 700.0), ("Flat", 1536, 1.0, 600.0)]:
        for r, gain, slow in ((0, 0.0, 1.0), (50, 0.6, 2.0), (100, 0.8, 3.0)):
            rec = min(1.0, base_recall + gain * (1 - base_recall))
            rows.append({"spec": spec, "bytes_per_vector": size + 8, "rerank": r, "nprobe": 8 if "IVF" in spec
                         else None, "recall@1": rec, "recall@10": rec, "recall@100": None, "qps": qps / slow,
                         "faiss_recall@10": max(0.0, rec - 0.01), "faiss_qps": qps / slow * 0.9,
                         "faiss_bytes_per_vector": size + 8 + (12 if "RB" in spec else 0)})
    settings = {"dataset": "synthetic", "nq": 200, "n": 5000, "dim": 384, "k": 10, "threads": 2}
    return rows, settings


def test_write_plots_and_replot(tmp_path):
    pytest.importorskip("matplotlib")
    from vecz.engine.bench import plots

    rows, settings = _plot_rows()
    for row, mark in zip(rows, metrics.pareto_front(rows)):
        row["pareto"] = mark
    result = metrics.BenchResult(rows, settings, {}, np.zeros((1, 10), dtype=np.int64), [1, 10])
    written = plots.write_plots(result, tmp_path / "grid")
    assert [p.name for p in written] == ["recall_vs_bytes.png", "recall_vs_qps.png"]
    assert all(p.stat().st_size > 20_000 for p in written)
    # a --budget run: recall vs speed only, with the target and the recommended point
    budget_rows = [dict(row, recommended=(i == 4)) for i, row in enumerate(rows) if row["rerank"]]
    settings_b = dict(settings, budget=64, target_recall=0.95, recall_key="recall@10", heldout_queries=[100, 200])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps(
        {"settings": settings_b, "rows": budget_rows, "recommendation": {"run": budget_rows[4]}}))
    again = plots.replot(tmp_path / "b" / "results.json")
    assert [p.name for p in again] == ["recall_vs_qps.png"] and again[0].parent == tmp_path / "b"
    # nothing confirmed (a --budget search whose target no candidate reached): no plot, no error
    empty = metrics.BenchResult([], settings_b, {}, np.zeros((1, 10), dtype=np.int64), [1, 10], {"run": None})
    assert plots.write_plots(empty, tmp_path / "empty") == []


def test_no_matplotlib_says_so(tmp_path, monkeypatch):
    import sys

    from vecz.engine.bench import plots, report
    from vecz.engine.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    rows, settings = _plot_rows()
    settings.update(metric="cosine", ground_truth="given", nprobe=8, latency_queries=200, faiss=False)
    result = metrics.BenchResult(rows, settings, {}, np.zeros((1, 10), dtype=np.int64), [1, 10])
    notes = report.write_outputs(result, tmp_path, {"python": "x"})
    assert "plots skipped: matplotlib is not installed (pip install 'vecz[bench]')" in notes
    assert (tmp_path / "report.md").is_file() and not list(tmp_path.glob("*.png"))
    with pytest.raises(MissingDependency, match=r"matplotlib is not installed \(pip install 'vecz\[bench\]'\)"):
        plots.replot(tmp_path / "results.json")


def test_truth_ranks():
    sl = np.array([[5, 3, 9, -1], [1, 2, 3, 4]])
    gt = np.array([[9, 5, 7], [4, -1, 1]])
    assert metrics.truth_ranks(sl, gt, 3).tolist() == [[2, 0, -1], [3, -1, 0]]
    assert metrics.truth_ranks(sl, gt, 2).tolist() == [[2, 0], [3, -1]]


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(1, 3), st.integers(1, 3), st.floats(0.0, 1.0), st.integers(0, 4))
def test_least_rows_against_brute_force(data, nq, k, target, floor):
    """least_rows: its bound never exceeds the best per-query depths found by enumeration,
    and its allocation reaches the target, costing less than the bound plus one segment."""
    ranks = np.full((nq, k), -1, dtype=np.int64)
    for q in range(nq):
        present = data.draw(st.lists(st.integers(0, 11), max_size=k, unique=True))
        ranks[q, : len(present)] = present
    ranks = np.array([data.draw(st.permutations(row.tolist())) for row in ranks], dtype=np.int64)
    need = int(np.ceil(target * nq * k - 1e-9))
    options = []  # per query: (found, rows) for every depth that matters
    for row in ranks:
        present = np.sort(row[row >= 0])
        options.append([(0, floor)] + [(j + 1, max(floor, int(p) + 1)) for j, p in enumerate(present)])
    best = None
    for choice in itertools.product(*options):
        if sum(f for f, _ in choice) >= need:
            cost = sum(c for _, c in choice)
            best = cost if best is None else min(best, cost)
    got = metrics.least_rows(ranks, target, min_rows=floor)
    if best is None:
        assert got is None
        return
    assert got is not None
    assert got["bound"] * nq <= best + 1e-9
    assert got["mean"] * nq >= best - 1e-9
    depths = got["depths"]
    assert depths.min() >= floor
    found = sum(int(((row >= 0) & (row < d)).sum()) for row, d in zip(ranks, depths))
    assert found >= need and abs(got["recall"] - found / (nq * k)) < 1e-12
    assert got["mean"] * nq - got["bound"] * nq < 12 + 1e-9  # below one segment's rows (ranks < 12)


def test_least_rows_hand_made():
    # query 0 finds its two ids in the first rows; query 1's second id sits at rank 40
    ranks = np.array([[0, 1], [0, 39]])
    got = metrics.least_rows(ranks, 0.75, min_rows=2)
    assert got["mean"] == 2.0 and got["recall"] == 0.75 and got["bound"] == 2.0
    got = metrics.least_rows(ranks, 1.0, min_rows=2)
    assert got["depths"].tolist() == [2, 40] and got["bound"] == 21.0
    assert metrics.least_rows(np.array([[0, -1]]), 1.0) is None


def test_set_threads_wants_an_integer():
    """run_bench(threads=1.5) ran on 1 thread and recorded 1 ('2' and True were taken too)."""
    for bad in (1.5, "2", True):
        with pytest.raises(InvalidInput, match="threads: expected None or an integer"):
            runner.set_threads(bad, with_faiss=False)


def test_run_bench_and_recommend_give_the_callers_thread_counts_back():
    """run_bench(threads=1) left Numba, BLAS and faiss on 1 thread, after an error too; a
    Dataset whose queries had another width raised numpy's raw matmul ValueError."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from vecz.engine.bench import budget
    from vecz.engine.errors import DimensionMismatch

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: no count to change")

    def counts():
        faiss = __import__("sys").modules.get("faiss")
        return (numba.get_num_threads(), faiss.omp_get_max_threads() if faiss else None,
                sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))

    rng = np.random.default_rng(0)
    good = bench_data.Dataset("tiny", rng.normal(size=(600, 16)).astype(np.float32),
                              rng.normal(size=(20, 16)).astype(np.float32))
    bad = bench_data.Dataset("tiny", good.base, rng.normal(size=(20, 17)).astype(np.float32))
    with threadpool_limits(2, user_api="blas"):
        numba.set_num_threads(2)
        before = counts()
        runner.run_bench(good, ["SQ8"], rerank=(0,), threads=1, gt_cache=False)
        assert counts() == before
        with pytest.raises(DimensionMismatch, match=r"dataset queries: expected width 16 \(the base's\), found 17"):
            runner.run_bench(bad, ["SQ8"], rerank=(0,), threads=1, gt_cache=False)
        with pytest.raises(DimensionMismatch, match="found 17"):
            budget.recommend(bad, 64, threads=1, gt_cache=False)
        with pytest.raises(InvalidInput, match="--threads must be in"):  # an error after set_threads' checks
            runner.run_bench(good, ["SQ8"], rerank=(0,), threads=10**6, gt_cache=False)
        assert counts() == before
