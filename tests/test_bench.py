"""Tests of `vecz bench` (engine/bench.py, engine/cli.py) on small synthetic data in tmp_path.

Checked: the .npy and .fvecs readers (and their errors), exact ground truth against a
brute-force numpy oracle, recall, exact re-ranking, the Pareto marking on hand-made rows,
the schema of results.json / results.csv, recall of Flat = 1, re-ranking never lowering
recall, exit code 2 on bad input, and one end-to-end run on the shipped sample.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vecz.engine import bench
from vecz.engine.cli import main
from vecz.engine.errors import CodecSpecError, DatasetNotFound, FormatError, InvalidInput
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
    """Computed ground truth without a base file beside it is cached here, not in ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "vecz" / "gt"


@pytest.fixture(autouse=True)
def restore_threads():
    """`run_bench` sets process-wide thread counts; give the next test the defaults back."""
    import numba

    before = numba.get_num_threads()
    yield
    bench.set_threads(before, with_faiss=True)


# --------------------------------------------------------------------------- readers


def test_fvecs_round_trip(files, arrays):
    got = bench.read_vectors(files["base_fvecs"])
    np.testing.assert_array_equal(got, arrays[0])
    assert got.dtype == np.float32


def test_npy_float16_converted(files, arrays):
    got = bench.read_vectors(files["base"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, arrays[0].astype(np.float16).astype(np.float32))


def test_fvecs_truncated_rejected(tmp_path, arrays):
    path = write_fvecs(tmp_path / "t.fvecs", arrays[0][:5])
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(FormatError, match=r"not a multiple of the row size 100"):
        bench.read_vectors(path)


def test_fvecs_inconsistent_header_rejected(tmp_path, arrays):
    rows = np.empty((4, DIM + 1), dtype="<i4")
    rows[:, 0] = DIM
    rows[:, 1:] = arrays[0][:4].view("<i4")
    rows[2, 0] = DIM + 1
    path = tmp_path / "h.fvecs"
    rows.tofile(path)
    with pytest.raises(FormatError, match=rf"row 2 has width header {DIM + 1}, expected {DIM}"):
        bench.read_vectors(path)


def test_reader_errors(tmp_path):
    with pytest.raises(DatasetNotFound, match="no such file"):
        bench.read_vectors(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(FormatError, match="expected a numeric .npy array"):
        bench.read_vectors(tmp_path / "junk.npy")
    np.save(tmp_path / "ok.npy", np.ones((10, 4), dtype=np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-7])
    with pytest.raises(FormatError, match="cut.npy"):
        bench.read_vectors(tmp_path / "cut.npy")
    (tmp_path / "x.bin").write_bytes(b"\0" * 16)
    with pytest.raises(InvalidInput, match="expected a .npy or .fvecs"):
        bench.read_vectors(tmp_path / "x.bin")
    np.save(tmp_path / "int.npy", np.ones((3, 4), dtype=np.int32))
    with pytest.raises(InvalidInput, match="float16/32/64"):
        bench.read_vectors(tmp_path / "int.npy")
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InvalidInput, match="row 1"):
        bench.read_vectors(tmp_path / "nan.npy")


# --------------------------------------------------------------------------- exact search and recall


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_gt_equals_brute_force(arrays, metric):
    base, queries = arrays
    scores, ids = bench.exact_topk(base, queries, metric, depth=100)
    assert ids.shape == (NQ, 100) and ids.dtype == np.int64
    assert_same_topk(ids, base, queries, metric)
    if metric == "l2":
        want = ((queries[:, None, :] - base[ids]) ** 2).sum(-1)
        assert np.all(np.diff(scores, axis=1) >= 0)
    else:
        b = bench.prepare(base, metric)
        q = bench.prepare(queries, metric)
        want = np.einsum("qkd,qd->qk", b[ids], q)
        assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-3)


def test_gt_depth_capped_by_base(arrays):
    _, ids = bench.exact_topk(arrays[0][:30], arrays[1], "ip", depth=100)
    assert ids.shape == (NQ, 30)


def test_recall_at():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, -1], [4, 5, 6]])
    assert bench.recall_at(found, truth, 1) == 0.5
    assert bench.recall_at(found, truth, 3) == pytest.approx((1 + 3) / 6)
    assert bench.recall_at(np.full((2, 3), -1), np.full((2, 3), -1), 3) == 0.0


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_rerank(arrays, metric):
    base, queries = arrays
    b, q = bench.prepare(base, metric), bench.prepare(queries, metric)
    truth = bench.exact_topk(base, queries, metric, 10)[1]
    rng = np.random.default_rng(1)
    cand = np.stack([rng.permutation(np.concatenate([t, rng.choice(N, 20)]))[:30] for t in truth])
    cand = np.array([list(dict.fromkeys(row)) + [-1] * (30 - len(set(row))) for row in cand.tolist()])
    cand[:, -1] = -1
    scores, ids = bench.exact_rerank(b, q, cand, 10, metric)
    for qi in range(NQ):
        valid = cand[qi][cand[qi] >= 0]
        want = _brute_force(base[valid], queries[qi : qi + 1], metric, 10)[0]
        np.testing.assert_array_equal(ids[qi], valid[want])
    assert np.all(ids >= 0)


def test_exact_rerank_pads_short_candidates(arrays):
    b = bench.prepare(arrays[0], "ip")
    q = bench.prepare(arrays[1][:2], "ip")
    cand = np.array([[5, -1, -1], [-1, -1, -1]])
    scores, ids = bench.exact_rerank(b, q, cand, 4, "ip")
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
    marks = bench.pareto_front(rows)
    assert [r["spec"] for r, m in zip(rows, marks) if m] == ["A", "D", "F", "A"]
    assert marks == [True, False, False, True, False, True, False, True, False]


def test_pareto_equal_rows_marks_first():
    rows = [{"bytes_per_vector": 8, "rerank": 0, "recall@10": 0.3}] * 2
    assert bench.pareto_front(rows) == [True, False]


# --------------------------------------------------------------------------- running


def test_parse_options():
    assert bench.parse_rerank("0,50,50", 10) == [0, 50]
    with pytest.raises(InvalidInput):
        bench.parse_rerank("0,5", 10)
    with pytest.raises(InvalidInput):
        bench.parse_rerank("x", 10)
    assert bench.parse_codecs(" SQ8 ; RB1;", DIM, "cosine") == ["SQ8", "RB1"]
    with pytest.raises(CodecSpecError):
        bench.parse_codecs("SQ8;PQ5x3", DIM, "cosine")
    with pytest.raises(CodecSpecError):
        bench.parse_codecs("MRL64,SQ8", DIM, "cosine")  # wider than the vectors


def test_faiss_factory():
    assert bench.faiss_factory("PQ48x8", 384) == "PQ48np"
    assert bench.faiss_factory("PQ96x4", 384) == "PQ96x4fs"
    assert bench.faiss_factory("IVF64,PQ8x8", 384) == "IVF64,PQ8np"
    assert bench.faiss_factory("F16", 384) == "SQfp16"
    assert bench.faiss_factory("SQ4", 384) == "SQ4"
    assert bench.faiss_factory("Flat", 384) == "Flat"
    assert bench.faiss_factory("RB2", 384) == "RR384,RaBitQ2"
    assert bench.faiss_factory("IVF16,RB1", 384) == "RR384,IVF16,RaBitQ1"
    assert bench.faiss_factory("MRL256,RB2", 384) == "MRL256,RR256,RaBitQ2"
    assert bench.faiss_factory("MRL128,IVF64,PQ16x4", 384) == "MRL128,IVF64,PQ16x4fs"


def test_run_bench_quality(arrays):
    base, queries = arrays
    data = bench.Dataset("synthetic", base, queries)
    res = bench.run_bench(data, ["Flat", "PQ4x8", "RB1", "SQ4"], metric="cosine", k=10, rerank=[0, 40], threads=1)
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
    spec, r = bench.best_compressed(res)
    chosen = by[(spec, r)]
    assert spec != "Flat"
    if any(row["recall@10"] >= bench.EXAMPLE_RECALL for row in res.rows if row["spec"] != "Flat"):
        # the cheapest compressed row that reaches the example recall
        assert chosen["recall@10"] >= bench.EXAMPLE_RECALL
        assert not any(row["recall@10"] >= bench.EXAMPLE_RECALL and row["bytes_per_vector"] < chosen["bytes_per_vector"]
                       for row in res.rows if row["spec"] != "Flat")
    else:
        assert chosen["recall@10"] == max(row["recall@10"] for row in res.rows if row["spec"] != "Flat")


def test_run_bench_given_gt_and_l2(arrays):
    base, queries = arrays
    gt = _brute_force(base, queries, "l2", 20)
    data = bench.Dataset("synthetic", base, queries, gt=gt, gt_source="given")
    res = bench.run_bench(data, ["Flat"], metric="l2", k=20, rerank=[0], threads=1)
    assert res.rows[0]["recall@10"] == 1.0 and res.rows[0]["recall@100"] is None
    assert res.recall_ats == [1, 10]


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
    mrl = rows["rows"][-2:]  # faiss runs MRL as a LinearTransform keeping the first 16 dims
    assert mrl[0]["faiss_index"] == "MRL16,SQ8" and mrl[1]["faiss_index"].startswith("MRL16,SQ8,RFlat")
    assert all(0 < r["faiss_recall@10"] <= 1 and r["speed_vs_faiss"] > 0 for r in mrl)
    assert mrl[1]["faiss_recall@10"] >= mrl[0]["faiss_recall@10"]
    assert mrl[1]["faiss_ram_bytes_per_vector"] == mrl[1]["faiss_bytes_per_vector"] + 4 * DIM
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


def test_cli_unknown_dataset_and_file(tmp_path, capsys):
    assert main(["bench", "no-such-dataset"]) == 2
    assert "unknown dataset 'no-such-dataset'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--codecs", "SQ8"]) == 2
    assert "no such file" in capsys.readouterr().err


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


def test_gt_cached_beside_base_and_reused(files, arrays, monkeypatch):
    d = files["dir"] / "gtcache"
    d.mkdir()
    np.save(d / "b.npy", arrays[0])
    np.save(d / "q.npy", arrays[1])
    data = bench.load_files(d / "b.npy", d / "q.npy")
    gt = bench.ground_truth(data, "cosine")
    assert "computed" in data.gt_source
    cached = list(d.glob("b.gt-cosine-top100-*.npy"))
    assert len(cached) == 1 and str(cached[0]) in data.gt_source
    np.testing.assert_array_equal(np.load(cached[0]), gt)
    assert_same_topk(gt, arrays[0], arrays[1], "cosine")

    def fail(*a, **k):
        raise AssertionError("the cached ground truth should have been used")

    monkeypatch.setattr(bench, "exact_topk", fail)
    again = bench.load_files(d / "b.npy", d / "q.npy")
    np.testing.assert_array_equal(bench.ground_truth(again, "cosine"), gt)
    assert "cached in" in again.gt_source and "computed" not in again.gt_source
    # another metric, another query set: another key, so never the stale file
    assert bench.gt_cache_paths(again, "l2")[0] != cached[0]
    fewer = bench.load_files(d / "b.npy", d / "q.npy", nq=5)
    assert bench.gt_cache_paths(fewer, "cosine")[0] != cached[0]


def test_gt_cache_damaged_is_recomputed(files, arrays):
    d = files["dir"] / "gtdamaged"
    d.mkdir()
    np.save(d / "b.npy", arrays[0])
    np.save(d / "q.npy", arrays[1])
    data = bench.load_files(d / "b.npy", d / "q.npy")
    path = bench.gt_cache_paths(data, "ip")[0]
    path.write_bytes(b"\x93NUMPY garbage")
    gt = bench.ground_truth(data, "ip")
    assert "computed" in data.gt_source
    assert_same_topk(gt, arrays[0], arrays[1], "ip")
    np.testing.assert_array_equal(np.load(path), gt)  # replaced by the good one


def test_gt_cache_falls_back_when_data_folder_unwritable(arrays, gt_cache, tmp_path):
    # the base file's folder cannot take a new file (here: its "folder" is a regular file,
    # which fails for root too, unlike a read-only mode): the cache goes to XDG_CACHE_HOME
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    data = bench.Dataset("synthetic", arrays[0], arrays[1], base_path=blocker / "b.npy")
    bench.ground_truth(data, "cosine")
    assert str(gt_cache) in data.gt_source
    assert len(list(gt_cache.glob("b.gt-cosine-top100-*.npy"))) == 1
    again = bench.Dataset("synthetic", arrays[0], arrays[1], base_path=blocker / "b.npy")
    bench.ground_truth(again, "cosine")
    assert "computed" not in again.gt_source  # found in the fallback folder


def test_gt_cache_in_xdg_without_base_file(arrays, gt_cache):
    data = bench.Dataset("synthetic", arrays[0], arrays[1])
    bench.ground_truth(data, "cosine")
    assert len(list(gt_cache.glob("data.gt-cosine-top100-*.npy"))) == 1


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
    res = bench.BenchResult(rows, {}, {}, np.zeros((1, 10), dtype=np.int64), [1, 10])
    table = {e["bytes_per_vector"]: e["best"] for e in bench.best_per_budget(res)}
    assert table[16][0][0] == "a" and table[32][0][0] == "a" and table[64][0][0] == "c"
    assert table[16][50][0] == "a" and table[64][50][0] == "a"
    fast = {e["bytes_per_vector"]: e["fastest"] for e in bench.best_per_budget(res)}
    assert fast[32][0][0] == "a"  # b is faster but 0.1 below a
    rows.append({"spec": "d", "bytes_per_vector": 64, "rerank": 0, "recall@10": 0.895, "qps": 50.0})
    fast = {e["bytes_per_vector"]: e["fastest"] for e in bench.best_per_budget(res)}
    assert fast[64][0][0] == "d"  # within NEAR_BEST of c's 0.9 and faster


def test_default_codecs_cover_budgets():
    specs = bench.default_codecs(117_647, 384).split(";")
    sizes = [bench.code_size(s, 384, "cosine") for s in specs]
    assert len(specs) >= 10 and min(sizes) == 16 and max(sizes) == 384
    assert "IVF1024,RB1" in specs
    small = bench.default_codecs(500, 384).split(";")
    assert not any(s.startswith("IVF") for s in small)  # too few rows to partition
    for s in bench.default_codecs(24_000, 768).split(";"):
        bench.code_size(s, 768, "cosine")  # every scaled spec is valid at its width
