"""`vecz build / search / info / check` end to end on small files of every input format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from vecz.engine import Store
from vecz.engine.cli import main

DIM = 16


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _write(path, x: np.ndarray, ids: np.ndarray | None = None) -> None:
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".fvecs":
        rows = np.empty((len(x), DIM + 1), dtype="<i4")
        rows[:, 0] = DIM
        rows[:, 1:] = x.view("<i4")
        rows.tofile(path)
    else:
        cols = {"emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)}
        if ids is not None:
            cols["key"] = pa.array(ids)
        table = pa.table(cols)
        if suffix == ".parquet":
            pq.write_table(table, path, row_group_size=37)
        else:
            with ipc.new_file(str(path), table.schema) as w:
                w.write_table(table, max_chunksize=29)


@pytest.mark.parametrize("suffix", [".npy", ".fvecs", ".parquet", ".arrow"])
def test_build_then_search_every_format(tmp_path, suffix, capsys):
    x = _data(300)
    src = tmp_path / f"base{suffix}"
    _write(src, x)
    store = tmp_path / "store"
    # small batches and training size: the build streams several commits
    assert main(["build", str(src), str(store), "--codec", "RB1", "--batch-rows", "64", "--train-size", "100"]) == 0
    out = capsys.readouterr().out
    assert "300 vectors of dim 16" in out
    with Store.open(store) as s:
        assert len(s) == 300 and s.info()["segments"] >= 2
        np.testing.assert_array_equal(s.get(np.arange(300)), x)
    q = tmp_path / f"q{suffix}"
    _write(q, x[:5])
    assert main(["search", str(store), str(q), "-k", "3", "--rerank", "50"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0] == "query\trank\tid\tscore"
    top = [line.split("\t") for line in lines[1:] if line.split("\t")[1] == "0"]
    assert [int(t[2]) for t in top] == [0, 1, 2, 3, 4]  # each query finds itself first
    assert all(abs(float(t[3]) - 1.0) < 1e-5 for t in top)


def test_build_with_id_column_and_outputs(tmp_path, capsys):
    x = _data(120)
    src = tmp_path / "base.parquet"
    _write(src, x, ids=np.arange(1000, 1120))
    store = tmp_path / "s"
    assert main(["build", str(src), str(store), "--codec", "PQ4x8", "--metric", "l2", "--dense", "f16",
                 "--id-column", "key"]) == 0
    q = tmp_path / "q.npy"
    np.save(q, x[:4])
    assert main(["search", str(store), str(q), "-k", "2", "--out", str(tmp_path / "r.npy")]) == 0
    ids = np.load(tmp_path / "r.npy")
    scores = np.load(tmp_path / "r.scores.npy")
    np.testing.assert_array_equal(ids[:, 0], [1000, 1001, 1002, 1003])
    assert (scores[:, 0] < 1e-3).all()
    assert main(["search", str(store), str(q), "-k", "2", "--out", str(tmp_path / "r.parquet")]) == 0
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column_names == ["query", "rank", "id", "score"] and table.num_rows == 8
    capsys.readouterr()
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["live"] == 120 and info["spec"] == "PQ4x8" and info["dense"] == "f16"
    assert main(["info", str(store)]) == 0
    assert "B/vector" in capsys.readouterr().out


def test_append_and_dimension_mismatch(tmp_path, capsys):
    store = tmp_path / "s"
    a = tmp_path / "a.npy"
    np.save(a, _data(50))
    assert main(["build", str(a), str(store), "--codec", "RB1"]) == 0
    # the same source again: the build record says it is all in (nothing is added twice)
    assert main(["build", str(a), str(store), "--append"]) == 0
    with Store.open(store) as s:
        assert len(s) == 50
    b = tmp_path / "b.npy"
    np.save(b, _data(50, seed=1))
    assert main(["build", str(b), str(store), "--append"]) == 0
    with Store.open(store) as s:
        assert len(s) == 100
    assert main(["build", str(b), str(store), "--append", "--codec", "PQ4x8"]) == 2
    assert "contradict the store: --codec PQ4x8 (the store has RB1)" in capsys.readouterr().err
    wide = tmp_path / "w.npy"
    np.save(wide, np.zeros((3, DIM + 1), np.float32))
    assert main(["build", str(wide), str(store), "--append"]) == 2
    assert "expected width 16" in capsys.readouterr().err
    assert main(["build", str(a), str(store)]) == 2  # exists: needs --append
    assert main(["search", str(store), str(wide)]) == 2
    assert main(["search", str(tmp_path / "nope"), str(a)]) == 2


def test_check_finds_a_flipped_byte(tmp_path, capsys):
    store = tmp_path / "s"
    src = tmp_path / "a.npy"
    np.save(src, _data(80))
    assert main(["build", str(src), str(store), "--codec", "SQ8"]) == 0
    assert main(["check", str(store)]) == 0
    assert "ok" in capsys.readouterr().out
    newest = sorted(p.name for p in store.iterdir() if p.name.startswith("MANIFEST-"))[-1]
    for name in ("seg-000000000001.vzs", "dense-000000000001.arrow", "codec-000000000002.vzs", newest):
        path = store / name
        data = bytearray(path.read_bytes())
        pos = len(data) // 2
        data[pos] ^= 0x10
        path.write_bytes(bytes(data))
        assert main(["check", str(store)]) == 1, name
        assert "damaged" in capsys.readouterr().out
        data[pos] ^= 0x10
        path.write_bytes(bytes(data))
        assert main(["check", str(store)]) == 0, name
        capsys.readouterr()


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_build_takes_ids_from_a_column_named_id_and_says_so(tmp_path, suffix, capsys):
    x = _data(120)
    ids = np.arange(120, dtype=np.int64) * 10 + 7
    table = pa.table({"id": pa.array(ids), "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)})
    src = tmp_path / f"base{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, src)
    else:
        with ipc.new_file(str(src), table.schema) as w:
            w.write_table(table)
    assert main(["build", str(src), str(tmp_path / "a"), "--codec", "Flat"]) == 0
    assert "ids from column 'id' (--id-column none" in capsys.readouterr().err
    with Store.open(tmp_path / "a") as s:
        np.testing.assert_array_equal(s.ids(), ids)
        np.testing.assert_array_equal(s.get(ids[[3, 50]]), x[[3, 50]])
    # 'none' numbers the rows even though an id column exists
    assert main(["build", str(src), str(tmp_path / "b"), "--codec", "Flat", "--id-column", "none"]) == 0
    assert "ids from column" not in capsys.readouterr().err
    with Store.open(tmp_path / "b") as s:
        np.testing.assert_array_equal(s.ids(), np.arange(120))


def test_a_non_integer_id_column_is_not_taken_by_default(tmp_path, capsys):
    x = _data(20)
    table = pa.table({"id": pa.array([f"doc{i}" for i in range(20)]),
                      "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)})
    pq.write_table(table, tmp_path / "b.parquet")
    assert main(["build", str(tmp_path / "b.parquet"), str(tmp_path / "s"), "--codec", "Flat"]) == 0
    assert "ids from column" not in capsys.readouterr().err
    with Store.open(tmp_path / "s") as s:
        np.testing.assert_array_equal(s.ids(), np.arange(20))


def test_version_everywhere(capsys):
    import importlib.metadata

    import vecz

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"vecz {vecz.__version__}"
    assert importlib.metadata.version("vecz") == vecz.__version__
