"""`vecz build / search / info / check` end to end on small files of every input format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from vecz.engine import Store, check_store
from vecz.engine.cli import EXIT_INPUT, EXIT_STORAGE, main
from vecz.engine.errors import InvalidInput, StoreNotFound

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


@pytest.mark.parametrize("module,prefix", [("segment", "seg-"), ("dense", "dense-"), ("manifest", "MANIFEST-")])
def test_a_file_the_system_refuses_to_open_is_a_storage_error_not_damage(tmp_path, capsys, monkeypatch, module,
                                                                         prefix):
    """A store file this user may not read was 'damaged' (vecz check exit 1: a healthy
    store a user might delete) or bad input (search exit 2); the system refused: exit 3."""
    import errno
    import importlib

    from vecz.errors import StorageError

    store, src = tmp_path / "s", tmp_path / "a.npy"
    np.save(src, _data(80))
    assert main(["build", str(src), str(store), "--codec", "SQ8"]) == 0
    capsys.readouterr()
    reader = importlib.import_module(f"vecz.formats.{module}")
    real = reader.open_regular

    def refuse(path, what):
        if Path(path).name.startswith(prefix):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, what)

    monkeypatch.setattr(reader, "open_regular", refuse)
    with pytest.raises(StorageError, match="Permission denied") as exc:
        check_store(store)
    assert exc.value.errno == errno.EACCES and Path(exc.value.filename).name.startswith(prefix)
    assert main(["check", str(store)]) == EXIT_STORAGE
    captured = capsys.readouterr()
    assert "damaged" not in captured.out and "vecz check: storage error:" in captured.err
    np.save(tmp_path / "q.npy", _data(3))
    assert main(["search", str(store), str(tmp_path / "q.npy"), "-k", "3", "--rerank", "10"]) == EXIT_STORAGE
    assert "Permission denied" in capsys.readouterr().err


def test_check_of_a_missing_path_is_bad_input_not_damage(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert "damaged" not in captured.out
    assert f"vecz check: error: {tmp_path / 'nope'}: no such store directory" in captured.err
    with pytest.raises(StoreNotFound):
        check_store(tmp_path / "nope")
    # an empty folder is no store either; a folder of vecz files without a manifest is damage
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == EXIT_INPUT
    assert "no vecz store here" in capsys.readouterr().err
    (tmp_path / "orphans").mkdir()
    (tmp_path / "orphans" / "seg-000000000001.vzs").write_bytes(b"x")
    assert main(["check", str(tmp_path / "orphans")]) == 1
    assert "no manifest, but vecz data files" in capsys.readouterr().out


def test_an_append_that_commits_nothing_says_to_fix_the_file_and_run_it_again(tmp_path, capsys):
    # ids already in the store: nothing of the file is committed, so the same command works
    # once the file is fixed (it advised building the fixed file into a new store)
    store, src = tmp_path / "s", tmp_path / "more.parquet"
    x = _data(40)
    np.save(tmp_path / "x.npy", x[:30])
    assert main(["build", str(tmp_path / "x.npy"), str(store), "--codec", "SQ8", "--no-calibrate"]) == 0
    table = pa.table({"emb": pa.FixedSizeListArray.from_arrays(pa.array(x[20:40].ravel()), DIM),
                      "id": np.arange(20, 40)})
    pq.write_table(table, src)
    capsys.readouterr()
    argv = ["build", str(src), str(store), "--append", "--no-calibrate"]
    assert main(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert f"0 of 20 rows of {src} are committed" in err and "then run it again" in err and "new store" not in err
    pq.write_table(table.set_column(1, "id", pa.array(np.arange(30, 50))), src)
    assert main(argv) == 0
    assert len(Store.open(store)) == 50

@pytest.mark.parametrize("batch_rows", [None, "100", "7"])
@pytest.mark.parametrize("train_size", ["20", "200", "1000"])
def test_build_names_the_file_row_of_a_bad_value(tmp_path, capsys, batch_rows, train_size):
    """Whether the value is met in the training sample or in a later batch, the error names the
    file and its row there; after committed rows it does not invite a re-run that fails again."""
    x = _data(300).astype(np.float64)
    x[250, 3] = np.nan
    src = tmp_path / "nan250.npy"
    np.save(src, x)
    store = tmp_path / "s"
    argv = ["build", str(src), str(store), "--codec", "PQ2x8", "--train-size", train_size, "--no-calibrate"]
    assert main(argv + (["--batch-rows", batch_rows] if batch_rows else [])) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.strip().endswith(f"vecz build: error: {src}: expected finite values, found nan in row 250, column 3")
    assert "run the same command again" not in err
    committed = 0 if not store.exists() else len(Store.open(store))
    if committed:  # rows before the batch holding row 250 stay, and the message says what to do
        assert committed == 250 // int(batch_rows) * int(batch_rows)
        assert f"{committed} of 300 rows of {src} are committed" in err
        assert "fails again until" in err and "build the fixed file into a new store" in err
    x[250, 3], x[280, 4] = 0.0, 1e300  # a float64 value beyond float32's range: said as Store.add says it
    np.save(src, x)
    shutil.rmtree(store, ignore_errors=True)
    assert main(argv + (["--batch-rows", batch_rows] if batch_rows else [])) == EXIT_INPUT
    assert capsys.readouterr().err.strip().endswith(
        f"{src}: expected finite values, found 1e+300 (beyond float32's range) in row 280, column 4")
    x[280, 4], x[250] = 0.0, 0.0  # a row of zeros has no cosine: named by its file row too (was the batch's row)
    np.save(src, x)
    shutil.rmtree(store, ignore_errors=True)
    assert main(argv + (["--batch-rows", batch_rows] if batch_rows else [])) == EXIT_INPUT
    assert capsys.readouterr().err.strip().endswith(
        f"{src}: cosine similarity needs vectors of non-zero norm, found row 250 all zeros")


def test_search_names_the_file_row_of_a_bad_query_and_checks_widths_up_front(tmp_path, capsys):
    store = tmp_path / "s"
    np.save(tmp_path / "base.npy", _data(60))
    assert main(["build", str(tmp_path / "base.npy"), str(store), "--codec", "PQ4x8", "--metric", "l2"]) == 0
    q = _data(6, seed=3)
    q[3, 7] = np.nan
    np.save(tmp_path / "q.npy", q)
    for rows in ("1", "2", "4", "4096"):
        assert main(["search", str(store), str(tmp_path / "q.npy"), "-k", "2", "--batch-rows", rows]) == EXIT_INPUT
        assert f"{tmp_path / 'q.npy'}: expected finite values, found nan in row 3, column 7" in capsys.readouterr().err
    # a query file of another width is refused even when it holds no rows (nothing to search)
    np.save(tmp_path / "q17.npy", np.zeros((0, DIM + 1), np.float32))
    assert main(["search", str(store), str(tmp_path / "q17.npy"), "-k", "3"]) == EXIT_INPUT
    assert "q17.npy: queries: expected width 16, found 17" in capsys.readouterr().err
    np.save(tmp_path / "q16.npy", np.zeros((0, DIM), np.float32))
    assert main(["search", str(store), str(tmp_path / "q16.npy"), "-k", "3"]) == 0
    # a query of zeros under cosine (it has no direction): named by its file row, not its batch's
    assert main(["build", str(tmp_path / "base.npy"), str(tmp_path / "c"), "--codec", "PQ4x8"]) == 0
    q[3, 7], q[4] = 0.0, 0.0
    np.save(tmp_path / "q.npy", q)
    for rows in ("1", "3", "4096"):
        assert main(["search", str(tmp_path / "c"), str(tmp_path / "q.npy"), "-k", "2", "--batch-rows", rows]) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"{tmp_path / 'q.npy'}: cosine similarity needs vectors of non-zero norm, found row 4 all zeros")
    # in a --calibrate or --sample file it is named in that file (it said "queries: ... row 4")
    np.save(tmp_path / "good.npy", _data(6, seed=4))
    for argv in (["search", str(tmp_path / "c"), str(tmp_path / "good.npy"), "-k", "2", "--rerank", "auto",
                  "--calibrate", str(tmp_path / "q.npy")], ["calibrate", str(tmp_path / "c"), "--sample",
                                                           str(tmp_path / "q.npy")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"{tmp_path / 'q.npy'}: cosine similarity needs vectors of non-zero norm, found row 4 all zeros")


def test_build_refuses_a_negative_train_size_or_seed_before_any_work(tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, _data(40))
    store = tmp_path / "s"
    with Store.create(store, dim=DIM, codec="PQ4x8", metric="l2"):
        pass  # created, never trained: an --append trains it on a sample of --train-size rows
    for option, value, least in (("--train-size", "-1", 1), ("--train-size", "0", 1), ("--seed", "-1", 0)):
        assert main(["build", str(src), str(store), "--append", option, value]) == EXIT_INPUT
        assert f"vecz build: error: {option}: expected an integer >= {least}, found {value}" in capsys.readouterr().err
        with Store.open(store) as s:
            assert len(s) == 0 and not s.codec.is_trained


def test_search_out_under_a_file_is_refused_before_the_search(tmp_path, capsys, monkeypatch):
    store = tmp_path / "s"
    np.save(tmp_path / "q.npy", _data(30))
    assert main(["build", str(tmp_path / "q.npy"), str(store), "--codec", "SQ8"]) == 0
    (tmp_path / "afile").write_bytes(b"")
    monkeypatch.setattr(Store, "search", lambda *a, **kw: pytest.fail("searched before checking --out"))
    for out in ("afile/x.npy", "afile/deeper/x.parquet"):
        assert main(["search", str(store), str(tmp_path / "q.npy"), "--out", str(tmp_path / out)]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert f"expected a directory (or a path one can be made at), found a file at '{tmp_path / 'afile'}'" in err


def test_an_out_the_system_would_refuse_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    """An --out in a folder this user may not write was refused only when the results were
    written, after the whole search or benchmark (the report lost)."""
    import os

    from vecz.formats import importers

    store = tmp_path / "s"
    np.save(tmp_path / "q.npy", _data(30))
    assert main(["build", str(tmp_path / "q.npy"), str(store), "--codec", "SQ8"]) == 0
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(importers.os, "access",
                        lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode, **kw))
    monkeypatch.setattr(Store, "search", lambda *a, **kw: pytest.fail("searched before checking --out"))
    capsys.readouterr()
    for out in ("ro/x.npy", "ro/deeper/x.parquet"):
        assert main(["search", str(store), str(tmp_path / "q.npy"), "--out", str(tmp_path / out)]) == EXIT_STORAGE
        err = capsys.readouterr().err
        assert ("cannot write there" if out == "ro/x.npy" else f"cannot write in '{tmp_path / 'ro'}'") in err, err
        assert "Permission denied; nothing was done" in err
    argv = ["bench", str(tmp_path / "q.npy"), str(tmp_path / "q.npy"), "--codecs", "SQ8", "--out", str(tmp_path / "ro")]
    assert main(argv) == EXIT_STORAGE
    assert "vecz bench: storage error: --out" in capsys.readouterr().err


def test_a_stray_os_error_exits_with_the_storage_code_and_a_bug_stays_visible(tmp_path, capsys, monkeypatch):
    """An OSError the code did not type is still the system refusing a read or write: exit 3
    with one line; any other exception is a bug and is raised, not turned into an exit code."""
    from vecz.formats import importers

    store = tmp_path / "s"
    np.save(tmp_path / "q.npy", _data(30))
    assert main(["build", str(tmp_path / "q.npy"), str(store), "--codec", "SQ8"]) == 0
    argv = ["search", str(store), str(tmp_path / "q.npy"), "--out", str(tmp_path / "r.npy")]
    capsys.readouterr()

    def refuse(path, *a):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(importers, "write_results", refuse)
    assert main(argv) == EXIT_STORAGE
    err = capsys.readouterr().err
    assert err.strip() == f"vecz search: storage error: Permission denied: {tmp_path / 'r.npy'}"

    def bug(*a):
        raise KeyError("a bug")

    monkeypatch.setattr(importers, "write_results", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(argv)

    # a commit published whose directory sync failed (CommitIncomplete) is the system's too
    from vecz.errors import CommitIncomplete

    def incomplete(path, *a):
        raise CommitIncomplete("add: version 5 is published and its files kept, but syncing the directory after "
                               "it failed", 5, 5)

    monkeypatch.setattr(importers, "write_results", incomplete)
    assert main(argv) == EXIT_STORAGE
    assert "storage error: add: version 5 is published" in capsys.readouterr().err


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


def test_codecs_sizes_each_spec_for_a_width(capsys):
    from vecz.engine.bench.runner import default_codecs
    from vecz.engine.codecs import Codec

    assert main(["codecs"]) == 0
    assert capsys.readouterr().out.startswith("stages: MRL<d>, IVF<n>")
    specs = ["IVF16,PQ96x4", "RB1", "MRL256,RB2", "PQ48x8", "SQ4"]
    assert main(["codecs", *specs, "--dim", "768", "--metric", "ip", "--rows", "10000000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "RAM for 10,000,000 vectors" in lines[1] and "(768 dims, ip)" in lines[1]
    for spec, line in zip(specs, lines[2:], strict=True):
        size = Codec(spec, dim=768, metric="ip").code_size  # the size a store of it holds (ip: PQ keeps row norms)
        ram = (size + 8) * 10_000_000 / 2 ** 20
        assert line.split()[:3] == [spec, f"{size:,}", f"{size + 8:,}"], line
        assert line.endswith(f"{ram / 1024:.1f} GiB" if ram >= 1024 else f"{ram:.1f} MiB"), line
    assert lines[2].split()[1] == "50"  # 48 B of PQ96x4 codes and a float16 norm under ip
    assert main(["codecs", "--dim", "384", "--rows", "5000"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert listed == default_codecs(5000, 384).split(";")
    for argv, message in ((["codecs", "PQ48x8"], "--dim is required"), (["codecs", "PQ5x3", "--dim", "64"],
                          "PQ bits must be 4 or 8"), (["codecs", "MRL999,RB1", "--dim", "384"], "keeps 999 dims"),
                          (["codecs", "--dim", "0"], "expected integers >= 1")):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == "", (argv, captured)


def test_ctrl_c_in_a_build_says_what_is_committed_and_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C printed a traceback and no word of the committed rows; now one line each and
    exit 130, and the same command resumes."""
    from vecz.engine.cli import EXIT_INTERRUPT

    src, store = tmp_path / "a.npy", tmp_path / "s"
    np.save(src, _data(300))
    real, calls = Store.add, []

    def add(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Store, "add", add)
    argv = ["build", str(src), str(store), "--codec", "SQ8", "--batch-rows", "100", "--no-calibrate"]
    assert main(argv) == EXIT_INTERRUPT
    err = capsys.readouterr().err
    assert f"200 of 300 rows of {src} are committed (version 4); run the same command again to resume" in err
    assert err.strip().endswith("vecz build: interrupted") and "Traceback" not in err
    # an interrupt after the publish (in the collection or a merge after the commit): the
    # count comes from the store's record, not from the last add that returned (one batch short)
    calls.clear()

    def add_then_interrupted(self, *a, **kw):
        calls.append(1)
        real(self, *a, **kw)
        raise KeyboardInterrupt

    shutil.rmtree(store)
    monkeypatch.setattr(Store, "add", add_then_interrupted)
    assert main(argv) == EXIT_INTERRUPT
    assert f"100 of 300 rows of {src} are committed (version 3)" in capsys.readouterr().err
    shutil.rmtree(store)
    monkeypatch.setattr(Store, "add", add)
    calls.clear()
    assert main(argv) == EXIT_INTERRUPT
    capsys.readouterr()
    monkeypatch.setattr(Store, "add", real)
    # the file touched (same path, size, rows): --append would add its rows again; the message
    # says so and gives the command that brings the recorded time back
    import os
    import re
    import subprocess

    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 5 * 10 ** 9))
    assert main(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "--append adds every row of it again, beside the 200 committed" in err
    touch = re.search(r"`(touch -d @\S+ \S+)`", err).group(1)
    subprocess.run(touch.split(), check=True)
    assert main(argv) == 0
    with Store.open(store) as s:
        assert len(s) == 300


def test_a_closed_output_pipe_is_not_a_storage_error(tmp_path):
    """`vecz search ... | head` ended with 'storage error: Broken pipe', exit 3."""
    import subprocess
    import sys

    np.save(tmp_path / "a.npy", _data(50))
    np.save(tmp_path / "q.npy", _data(3000, seed=1))
    assert main(["build", str(tmp_path / "a.npy"), str(tmp_path / "s"), "--codec", "SQ8"]) == 0
    run = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m vecz search {tmp_path / 's'} "
                          f"{tmp_path / 'q.npy'} -k 10 | head -c 100 > /dev/null"], capture_output=True, text=True)
    assert run.returncode == 141 and run.stderr == "", (run.returncode, run.stderr)


def test_ray_only_build_options_are_refused_without_ray(tmp_path, capsys):
    # `vecz build ... --workers 64` ran in one process and said nothing
    np.save(tmp_path / "x.npy", _data(30))
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "s"), "--codec", "SQ8", "--workers", "64"]) == 2
    assert "--workers applies to --ray, found --workers 64 without --ray" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_recall_at_refuses_a_depth_below_one_and_arrays_not_2d():
    # r=0 divided by zero, r=-1 gave recall -3.0, 1-D ids a raw IndexError
    from vecz.engine.bench import recall_at

    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    for r in (0, -1, 1.5, True):
        with pytest.raises(InvalidInput, match="expected an integer r >= 1"):
            recall_at(truth, truth, r)
    with pytest.raises(InvalidInput, match=r"expected found ids of shape \(nq, depth\), found shape \(2,\)"):
        recall_at(np.array([1, 2]), truth, 2)
    assert recall_at(truth, truth, 2) == 1.0
