"""Tests of `vecz bench --budget` (engine/bench/budget.py): the search space, the choice, and
one end-to-end search on a small clustered dataset with its report, JSON and CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vecz.engine.bench import budget, metrics, runner
from vecz.engine.bench import data as bench_data
from vecz.engine.cli import main
from vecz.engine.codecs import code_size
from vecz.engine.errors import InvalidInput

DIM = 32
N = 3000
NQ = 60


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    import numba

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = numba.get_num_threads()
    yield
    runner.set_threads(before, with_faiss=True)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM))
    base = (centres[rng.integers(0, 40, N)] + 0.35 * rng.standard_normal((N, DIM))).astype(np.float32)
    queries = (centres[rng.integers(0, 40, NQ)] + 0.35 * rng.standard_normal((NQ, DIM))).astype(np.float32)
    d = tmp_path_factory.mktemp("rec")
    np.save(d / "base.npy", base)
    np.save(d / "queries.npy", queries)
    return d


def test_depth_and_nprobe_grids():
    assert budget.depth_grid(10) == [0, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500]
    assert budget.depth_grid(1) == [0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 50]
    assert budget.nprobe_grid(1024) == [32, 64, 128, 256, 512]
    assert budget.nprobe_grid(16) == [1, 2, 4, 8]


def test_ivf_nlist():
    assert runner.ivf_nlist(117_647) == 1024
    assert runner.ivf_nlist(1_000_000) == 4096
    assert runner.ivf_nlist(5000) == 64  # 256 would leave ~20 rows per list
    assert runner.ivf_nlist(1000) is None
    for n in (1024, 3000, 50_000, 10**7):
        nl = runner.ivf_nlist(n)
        assert nl is None or (n / nl >= 64 and nl & (nl - 1) == 0)


@pytest.mark.parametrize("nbytes, dim", [(48, 384), (16, 384), (384, 384), (48, 768), (8, 32), (200, 1024)])
def test_candidates_fit_the_budget(nbytes, dim):
    specs = budget.candidate_specs(nbytes, dim, "cosine", 117_647)
    assert specs and len(specs) == len(set(specs))
    for spec in specs:
        assert code_size(spec, dim, "cosine") <= nbytes, spec
    families = {s.split(",")[-1].rstrip("0123456789x") for s in specs}
    assert {"PQ"} <= families  # PQ fits any budget of one byte or more


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_candidates_under_other_metrics_fill_the_budget(metric):
    # under ip a PQ code also holds its row's norm (2 bytes): the sub-codes get the rest
    specs = budget.candidate_specs(48, 384, metric, 117_647)
    extra = 2 if metric == "ip" else 0
    assert specs[:4] == [f"PQ{48 - extra}x8", f"PQ{96 - 2 * extra}x4", f"OPQ{48 - extra}x8", f"OPQ{96 - 2 * extra}x4"]
    assert all(code_size(s, 384, metric) <= 48 for s in specs)
    assert all(code_size(s, 384, metric) == 48 for s in specs[:4])


def test_candidates_48_bytes_at_384_dims():
    specs = budget.candidate_specs(48, 384, "cosine", 117_647)
    assert specs[:4] == ["PQ48x8", "PQ96x4", "OPQ48x8", "OPQ96x4"]
    assert "MRL320,RB1" in specs  # RB1 at 384 dims takes 56 bytes: truncated to fit
    assert "IVF1024,PQ96x4" in specs and "IVF1024,OPQ96x4" in specs and "MRL320,IVF1024,RB1" in specs
    assert not any(s == "RB1" or s == "SQ8" for s in specs)
    # without room for IVF, none is proposed
    assert not any("IVF" in s for s in budget.candidate_specs(48, 384, "cosine", 800))


def test_candidates_large_budget_keeps_full_width():
    specs = budget.candidate_specs(384, 384, "cosine", 117_647)
    assert "SQ8" in specs and "RB1" in specs and "RB2" in specs and "RB7" in specs
    assert not any(s.startswith("MRL") for s in specs)


@pytest.mark.parametrize("nbytes,dim", [(257, 768), (600, 1536), (2000, 4096)])
def test_candidates_keep_4_bit_pq_past_its_512_sub_quantizers(nbytes, dim):
    """A budget over 256 bytes asked for more 4-bit sub-quantizers than PQ has (512): every
    x4 family (the fast scans) left the candidates, so a bigger budget lost them."""
    specs = budget.candidate_specs(nbytes, dim, "cosine", 117_647)
    assert {"PQ512x4", "OPQ512x4", "IVF1024,PQ512x4", "IVF1024,OPQ512x4"} <= set(specs), specs


def test_candidates_bad_budget():
    with pytest.raises(InvalidInput, match="--budget"):
        budget.candidate_specs(0, 384, "cosine", 1000)


def test_no_candidate_names_the_smallest_code_under_the_metric():
    # under ip PQ1x8 also stores its row's norm: 3 bytes, so 2 bytes fit nothing (other
    # metrics fit PQ1x8 in any budget of 1 byte or more)
    assert code_size("PQ1x8", 33, "ip") == 3
    with pytest.raises(InvalidInput, match=r"no codec fits 2 bytes per vector at 33 dims under ip: the smallest is "
                                           r"PQ1x8 \(3 bytes\), RB1 needs 13; raise --budget"):
        budget.candidate_specs(2, 33, "ip", 1000)
    assert budget.candidate_specs(3, 33, "ip", 1000)[0] == "PQ1x8"


def test_split_queries_disjoint_and_capped():
    tune, held = budget.split_queries(10_000)
    assert (tune.start, tune.stop) == (0, budget.MAX_TUNE)
    assert held.start == tune.stop and held.stop - held.start == budget.MAX_HELDOUT
    tune, held = budget.split_queries(3)
    assert (tune.stop - tune.start, held.stop - held.start) == (1, 2)
    with pytest.raises(InvalidInput):
        budget.split_queries(1)


def _run(spec, qps, recall, r=50):
    return {"spec": spec, "qps": qps, "recall@10": recall, "rerank": r}


def test_pick_fastest_reaching_target():
    runs = [_run("a", 100, 0.99), _run("b", 300, 0.951), _run("c", 900, 0.94), _run("d", 200, 0.97)]
    assert budget.pick(runs, "recall@10", 0.95)["spec"] == "b"
    assert budget.pick(runs, "recall@10", 0.98)["spec"] == "a"
    # nothing reaches: the best recall, whatever its speed
    assert budget.pick(runs, "recall@10", 0.999)["spec"] == "a"
    assert budget.pick([], "recall@10", 0.9) is None
    # equal speed: the better recall
    assert budget.pick([_run("x", 5, 0.96), _run("y", 5, 0.97)], "recall@10", 0.95)["spec"] == "y"


class _FixedResult(tuple):
    """(scores, ids) with the `stats` a store's search result carries."""

    def __new__(cls, ids):
        out = super().__new__(cls, (None, ids))
        out.stats = type("Stats", (), {"rows_read": 0, "bytes_read": 0, "candidates": 0})()
        return out


class _FixedStore:
    """Stands in for an open store: every search returns the rows of `ids` asked for."""

    def __init__(self, ids):
        self.ids = ids

    def search(self, q, k, nprobe=None, rerank=0, confidence=None):
        return _FixedResult(self.ids[: len(q), :k])


def test_recall_just_under_target_does_not_reach_it():
    # 2,502 of 50,000 true ids missed: recall@10 0.94996, which rounded to 4 decimals read 0.95
    nq, k = 5000, 10
    gt = (np.arange(nq)[:, None] + np.arange(k)[None, :]) % 40
    found = gt.copy()
    found[:2502, 0] = -1
    queries = np.zeros((nq, 4), dtype=np.float32)
    row, _ = runner.measure_store(_FixedStore(found), queries, gt, k=k, rerank=0, nprobe=None, ats=[1, 10],
                                  latency=False)
    assert row["recall@10"] == 0.94996
    fast = dict(row, spec="fast", qps=1000.0, rerank=0)
    assert budget.pick([fast, _run("slow", 100, 0.96)], "recall@10", 0.95)["spec"] == "slow"
    # the tuning sweep's figures, which choose the depth to confirm, are not rounded either
    curve = budget._sweep(_FixedStore(found), queries, queries, np.zeros((40, 4), dtype=np.float32), gt, k=k,
                          metric="l2", nprobe=None, depths=[0, 10], key_at=10)
    assert curve == {0: 0.94996, 10: 0.94996}


def test_recommend_end_to_end(data_files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", str(data_files / "base.npy"), str(data_files / "queries.npy"), "--budget", "8",
               "--target-recall", "0.9", "--threads", "1", "--faiss", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "<- recommended" in printed and "Recommended:" in printed

    payload = json.loads((out / "results.json").read_text())
    assert set(payload) == {"settings", "machine", "rows", "recommendation"}
    s, rec, rows = payload["settings"], payload["recommendation"], payload["rows"]
    assert s["budget"] == 8 and s["target_recall"] == 0.9 and s["recall_key"] == "recall@10"
    assert s["tune_queries"] == [0, NQ // 2] and s["heldout_queries"] == [NQ // 2, NQ]
    assert s["candidates"] == budget.candidate_specs(8, DIM, "cosine", N)
    assert payload["machine"]["command"].startswith("vecz bench ")
    # every candidate was swept; every sweep is monotone enough to mean something
    assert {sw["spec"] for sw in rec["sweeps"]} == set(s["candidates"])
    for sw in rec["sweeps"]:
        curve = [sw["tune_recall"][str(r)] for r in s["depths"]]
        assert curve[-1] >= curve[0]
        if sw["min_rerank"] is not None:
            assert sw["tune_recall"][str(sw["min_rerank"])] >= 0.9
    # the rows are the confirming runs, each within the budget, the recommended one flagged
    assert rows and sum(r["recommended"] for r in rows) == 1
    for r in rows:
        assert r["code_size"] <= 8
        assert r["qps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        if isinstance(r["rerank"], str):  # error-bound re-ranking, capped; faiss has no twin
            cap = int(r["rerank"].split(":")[1])
            assert r["rerank"].startswith("auto:") and r["rows_read_per_query"] <= cap and r["rows_read_p99"] <= cap
            assert 0 <= r["miss_rate"] <= 1 and r.get("faiss_qps") is None
        else:
            assert r["rows_read_per_query"] <= r["rerank"]
            assert r["faiss_qps"] is not None
    # every (spec, nprobe) the sweep kept was also confirmed with rerank="auto"
    kept = {(sw["spec"], sw["nprobe"]) for sw in rec["sweeps"] if sw["min_rerank"] is not None}
    assert kept == {(r["spec"], r["nprobe"]) for r in rows if isinstance(r["rerank"], str)}
    chosen = next(r for r in rows if r["recommended"])
    assert rec["run"] == chosen
    assert rec["reached"] == (chosen["recall@10"] >= 0.9)
    if rec["reached"]:
        assert chosen["qps"] == max(r["qps"] for r in rows if r["recall@10"] >= 0.9)
    # the choice's held-out recall is what a fresh store search gives on those queries
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"spec", "nprobe", "rerank", "tune_recall@10", "recommended"} <= set(table[0])
    report = (out / "report.md").read_text()
    assert "Confirming runs" in report and "Tuning sweeps" in report and rec["summary"] in report
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:  # the plots are the [bench] extra
        assert (out / "recall_vs_qps.png").is_file()
    else:
        assert "plots skipped: matplotlib is not installed" in printed and not list(out.glob("*.png"))


def test_recommend_reaches_target_and_confirms(data_files, tmp_path):
    data = bench_data.load_files(data_files / "base.npy", data_files / "queries.npy")
    res = budget.recommend(data, 16, target=0.95, specs=["PQ16x8", "RB2"], threads=1, work=tmp_path / "w")
    rec = res.recommendation
    assert rec["reached"], rec["summary"]
    run = rec["run"]
    assert run["recall@10"] >= 0.95 and run["spec"] in ("PQ16x8", "RB2")
    # re-measure the recommended point on the held-out queries through a fresh store
    from vecz.engine.store import Store

    built = runner.build_store(tmp_path / "again", run["spec"], data.base, "cosine")
    held = slice(*res.settings["heldout_queries"])
    with Store.open(built.path) as store:
        ids = store.search(data.queries[held], 10, nprobe=run["nprobe"], rerank=run["rerank"])[1]
    assert metrics.recall_at(ids, data.gt[held], 10) == pytest.approx(run["recall@10"], abs=1e-4)
    assert not list((tmp_path / "w").iterdir())  # stores removed once measured


def test_recommend_with_k_under_10_reaches_recall_at_k(data_files, tmp_path):
    """k < 10 ranked by recall@1 (the only depth reported under 10): a pick 'reaching' 0.95
    could hold recall@5 0.84. recall@k is now reported and ranked by, in the CSV too."""
    import csv

    data = bench_data.load_files(data_files / "base.npy", data_files / "queries.npy")
    res = budget.recommend(data, 16, target=0.95, k=5, specs=["PQ16x8"], threads=1)
    assert res.recall_ats == [1, 5] and res.quality_key == "recall@5"
    rec = res.recommendation
    assert rec["reached"], rec["summary"]
    run = rec["run"]
    held = slice(*res.settings["heldout_queries"])
    from vecz.engine.store import Store

    built = runner.build_store(tmp_path / "again", run["spec"], data.base, "cosine")
    with Store.open(built.path) as store:
        ids = store.search(data.queries[held], 5, nprobe=run["nprobe"], rerank=run["rerank"])[1]
    assert run["recall@5"] >= 0.95
    assert metrics.recall_at(ids, data.gt[held], 5) == pytest.approx(run["recall@5"], abs=1e-4)
    budget.write_outputs(res, tmp_path / "out", {"cpu": "test"})
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8")))
    assert {"recall@5", "tune_recall@5", "faiss_recall@5"} <= set(rows[0])
    assert any(r["tune_recall@5"] for r in rows) and all(r["recall@5"] for r in rows)


def test_options_a_run_would_ignore_are_refused(data_files, tmp_path, capsys):
    """--nprobe and --rerank with --budget (which sweeps both) and --target-recall without it
    were silently ignored; each is refused before any work."""
    files = [str(data_files / "base.npy"), str(data_files / "queries.npy")]
    for extra, message in ((["--budget", "8", "--nprobe", "3"], "--nprobe: not taken with --budget"),
                           (["--budget", "8", "--rerank", "0", "--nprobe", "3"], "--rerank and --nprobe: not taken"),
                           (["--codecs", "SQ8", "--target-recall", "0.9"], "--target-recall 0.9: taken only with")):
        assert main(["bench", *files, *extra, "--out", str(tmp_path / "out")]) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "out").exists()


def test_recommend_rejects_spec_over_budget(data_files):
    data = bench_data.load_files(data_files / "base.npy", data_files / "queries.npy")
    with pytest.raises(InvalidInput, match="over the budget of 8"):
        budget.recommend(data, 8, specs=["PQ16x8"], threads=1)
    with pytest.raises(InvalidInput, match="target-recall"):
        budget.recommend(data, 8, target=1.5, threads=1)


def test_summary_when_target_missed():
    run = {"spec": "PQ8x8", "code_size": 8, "nprobe": None, "rerank": 500, "recall@10": 0.91, "qps": 1000.0,
           "p50_ms": 1.0, "p99_ms": 2.0, "rows_read_per_query": 500, "bytes_read_per_query": 768000,
           "ram_bytes_per_vector": 16.5}
    text = budget.summary(run, "recall@10", 0.95, 8, False, 384)
    assert text.startswith("Target recall@10 >= 0.95 not reached; closest: PQ8x8")
    assert "500 rows (750.0 KiB)" in text
    assert budget.summary(None, "recall@10", 0.95, 8, False, 384).startswith("No candidate reached")
    ok = budget.summary(dict(run, rerank=0, rows_read_per_query=0, bytes_read_per_query=0), "recall@10", 0.9, 8,
                           True, 384)
    assert ok.startswith("Recommended: PQ8x8") and "reads nothing from disk" in ok
