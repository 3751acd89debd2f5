"""What an unlucky or hostile user could still break, each with real processes where
processes matter: the writer's identity (lock and directory), resumable builds, file
descriptors, FIFOs in a store, a full disk, long-lived writers, hostile sizes and
magnitudes, manifests that lie with valid checksums, a damaged newest manifest."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from vecz import Store, check_store
from vecz.engine.cli import EXIT_STORAGE, main
from vecz.errors import (
    InvalidInput,
    StorageError,
    StoreClosed,
    StoreCorrupted,
    StoreLocked,
    StoreMoved,
    TooLarge,
)
from vecz.formats import manifest as mf
from tests.reference.stores import replace_segment

DIM = 16


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _run(code: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process (the same interpreter and Numba cache)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- writer identity


def test_the_lock_lives_on_the_directory_and_cannot_be_deleted(tmp_path):
    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(20))
        assert not (path / "LOCK").exists()  # nothing at rest for a cleanup script to delete
        out = _run("""
            import sys
            from vecz import Store
            from vecz.errors import StoreLocked
            try:
                Store.open(sys.argv[1], mode="a")
            except StoreLocked as exc:
                print("locked:", exc)
            """, str(path))
        assert f"locked: {path}: another writer holds the store (pid {os.getpid()})" in out.stdout, out
        with pytest.raises(StoreLocked):
            Store.open(path, mode="a")
        w.add(_data(5, seed=1))  # the holder still writes
    with Store.open(path, mode="a") as w2:  # released by close
        assert len(w2) == 25


def test_a_writer_whose_directory_moved_stops_and_harms_neither_store(tmp_path):
    path, moved = tmp_path / "s", tmp_path / "moved"
    w = Store.create(path, dim=DIM, codec="SQ8")
    w.add(_data(30))
    committed = w.version
    path.rename(moved)
    with Store.create(path, dim=DIM, codec="SQ8") as other:  # a new store where the old one was
        other.add(_data(7, seed=2))
    for call in (lambda: w.add(_data(3, seed=3)), lambda: w.delete([0]), w.compact):
        with pytest.raises(StoreMoved, match="moved, replaced or removed"):
            call()
    w.close()
    with Store.open(path) as s:
        assert len(s) == 7 and check_store(path) == []
    with Store.open(moved) as s:
        assert len(s) == 30 and s.version == committed and check_store(moved) == []


def test_a_writer_whose_directory_was_removed_stops(tmp_path):
    path = tmp_path / "s"
    w = Store.create(path, dim=DIM, codec="SQ8")
    w.add(_data(10))
    shutil.rmtree(path)
    with pytest.raises(StoreMoved):
        w.add(_data(2))
    w.close()
    assert not path.exists()


# --------------------------------------------------------------------------- resumable builds


def _manifests(path: Path) -> int:
    return len(mf.list_versions(path)) if path.exists() else 0


def test_a_killed_build_resumes_where_it_stopped(tmp_path):
    x = _data(6000, seed=4)
    src = tmp_path / "base.npy"
    np.save(src, x)
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "vecz", "build", str(src), str(store), "--codec", "SQ8", "--batch-rows", "500",
           "--train-size", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once a few batches are in
        rows_done = 0
        try:
            build = mf.read_manifest(store).get("build") if _manifests(store) else None
            rows_done = build["rows_done"] if build else 0
        except Exception:  # noqa: BLE001 (the store may be mid-creation)
            pass
        if rows_done >= 1500 or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Store.open(store) as s:
        done = s.build_record["rows_done"]
        assert 0 < done < 6000 and len(s) == done, (done, len(s))
    # the same command continues after the committed rows, once each
    assert main(cmd[3:]) == 0
    with Store.open(store) as s:
        np.testing.assert_array_equal(s.ids(), np.arange(6000))
        np.testing.assert_array_equal(s.get([0, done - 1, done, 5999]), x[[0, done - 1, done, 5999]])
        assert s.build_record["rows_done"] == 6000
    assert main(cmd[3:]) == 0  # and again: nothing left to add
    with Store.open(store) as s:
        assert len(s) == 6000
    # --append refuses options that contradict the store
    assert main(["build", str(src), str(store), "--append", "--metric", "l2"]) == 2


def test_a_build_killed_before_its_first_commit_does_not_block_a_rerun(tmp_path):
    src = tmp_path / "base.npy"
    np.save(src, _data(300))
    store = tmp_path / "s"
    Store.create(store, dim=DIM, codec="SQ8").close()  # what a build killed after create leaves
    assert main(["build", str(src), str(store), "--codec", "SQ8"]) == 0
    with Store.open(store) as s:
        assert len(s) == 300


# --------------------------------------------------------------------------- descriptors, FIFOs


def test_file_descriptors_do_not_grow_with_segments(tmp_path):
    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.auto_merge_rows = 0  # keep every segment: 300 segments, 600 data files
        for i in range(300):
            w.add(_data(2, seed=i))
        assert w.info()["segments"] == 300
    out = _run("""
        import resource, sys
        import numpy as np
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        from vecz import Store, check_store
        with Store.open(sys.argv[1]) as s:
            res = s.search(np.ones((3, 16), np.float32), 5, rerank=50)
            print("search", (res.ids >= 0).all(), len(s))
        print("check", check_store(sys.argv[1]))
        with Store.open(sys.argv[1], mode="a") as w:
            w.compact()
            print("compact", w.info()["segments"])
        """, str(path))
    assert out.returncode == 0, out.stderr
    assert "search True 600" in out.stdout and "check []" in out.stdout and "compact 1" in out.stdout, out.stdout


@pytest.mark.parametrize("victim", ["dense", "manifest"])
def test_a_fifo_in_the_store_is_refused_not_waited_on(tmp_path, victim):
    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(10))
    name = "dense-000000000001.arrow" if victim == "dense" else mf.manifest_name(mf.list_versions(path)[-1])
    (path / name).unlink()
    os.mkfifo(path / name)
    out = _run("""
        import sys
        from vecz import Store, check_store
        from vecz.errors import StoreCorrupted
        try:
            Store.open(sys.argv[1])
        except StoreCorrupted as exc:
            print("refused:", exc)
        print("check:", check_store(sys.argv[1]))
        """, str(path), timeout=60)
    assert "not a regular file" in out.stdout and "found a FIFO" in out.stdout, out
    for cmd in (["info", str(path)], ["check", str(path)]):
        got = subprocess.run([sys.executable, "-m", "vecz", *cmd], capture_output=True, text=True, timeout=60)
        assert got.returncode != 0 and "FIFO" in got.stdout + got.stderr, got



def test_a_fifo_at_an_old_manifest_name_does_not_stall_a_commit_or_a_pin(tmp_path):
    # a writer's garbage collection opened every listed manifest to probe its pin, and a
    # VersionPin opened its manifest, both with a blocking open: a FIFO there hung the
    # commit (and check_store's pins) until a process wrote to it
    out = _run("""
        import os, sys
        import numpy as np
        from vecz import Store, check_store
        from vecz.engine.commit import VersionPin
        from vecz.errors import StoreCorrupted
        from vecz.formats import manifest as mf
        p = sys.argv[1]
        x = np.random.default_rng(0).standard_normal((30, 16)).astype(np.float32)
        with Store.create(p, dim=16, codec="SQ8", retain=1) as w:
            w.add(x[:10])
            w.add(x[10:20])
            os.mkfifo(os.path.join(p, mf.manifest_name(1)))
            try:
                VersionPin(p, 1)
            except StoreCorrupted as exc:
                print("pin refused:", exc)
            print("check:", check_store(p))
            w.add(x[20:30])
            print("committed", mf.list_versions(p))
        """, str(tmp_path / "s"), timeout=60)
    assert "pin refused:" in out.stdout and "found a FIFO" in out.stdout, out
    assert "committed [4]" in out.stdout, out

# --------------------------------------------------------------------------- a full disk


_DISK_FULL = """
    import os, resource, signal, sys
    import numpy as np
    from vecz import Store
    from vecz.errors import StorageError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # writes past the limit fail with EFBIG
    path = sys.argv[1]
    x = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
    with Store.create(path, dim=16, codec="SQ8") as w:
        w.add(x[:100])
        before = sorted(os.listdir(path))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, hard))   # room for small files only
        for attempt in range(2):
            try:
                w.add(x[100:4000])
                print("add succeeded")
            except StorageError as exc:
                print("add StorageError", exc.errno, "|", exc)
            print("files unchanged", sorted(os.listdir(path)) == before, "version", w.version, "live", len(w))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))    # space is back: the same writer retries
        w.add(x[100:4000])
        print("retry live", len(w))
"""


def test_a_full_disk_fails_the_commit_cleanly_and_the_same_writer_retries(tmp_path):
    out = _run(_DISK_FULL, str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout
    # EFBIG (what a file-size limit gives; ENOSPC takes the same path), the operation and path named
    # (the dense file is written first: the segment names each row's place in it)
    assert lines.count("add StorageError 27 | add: write the dense file:") == 2, lines
    assert "dense-000000000002.arrow: File too large; nothing of this operation is committed" in lines
    assert lines.count("files unchanged True version 2 live 100") == 2, lines  # no partial file, twice
    assert "retry live 4000" in lines, lines
    assert check_store(tmp_path / "s") == []


def test_vecz_build_on_a_full_disk_exits_3_and_says_what_is_committed(tmp_path):
    src = tmp_path / "base.npy"
    np.save(src, _data(3000, seed=5))
    store = tmp_path / "s"
    # the disk fills up at the third dense file the build writes (ENOSPC from the OS layer)
    code = f"""
        import errno, sys
        import vecz.engine.segments as segments
        real, calls = segments.write_dense, []
        def full(*args, **kw):
            calls.append(1)
            if len(calls) >= 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
            return real(*args, **kw)
        segments.write_dense = full
        from vecz.engine.cli import main
        sys.exit(main(["build", "{src}", "{store}", "--codec", "SQ8", "--batch-rows", "500", "--train-size", "500"]))
    """
    out = _run(code)
    assert out.returncode == EXIT_STORAGE, (out.returncode, out.stderr)
    assert "storage error: add: write the dense file:" in out.stderr and "(disk full)" in out.stderr, out.stderr
    assert "1,000 of 3,000 rows of" in out.stderr and "are committed" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    with Store.open(store) as s:
        assert len(s) == 1000
    assert main(["build", str(src), str(store), "--codec", "SQ8", "--batch-rows", "500", "--train-size", "500"]) == 0
    with Store.open(store) as s:
        np.testing.assert_array_equal(s.ids(), np.arange(3000))


def test_os_errors_are_typed_with_the_path(tmp_path, monkeypatch):
    with Store.create(tmp_path / "s", dim=DIM, codec="SQ8") as w:
        w.add(_data(10))
        import errno

        real = os.fsync

        def refuse(fd):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(os, "fsync", refuse)
        with pytest.raises(StorageError, match=r"add: .*: Read-only file system \(read-only file system\)"):
            w.add(_data(3, seed=1))
        monkeypatch.setattr(os, "fsync", real)
        assert len(w) == 10
        w.add(_data(3, seed=1))
        assert len(w) == 13


@pytest.mark.parametrize("failure", ["oserror", "interrupt"])
def test_a_failure_after_the_manifest_link_keeps_the_published_version(tmp_path, monkeypatch, failure):
    # The directory fsync after the manifest's link fails (or an interrupt arrives there):
    # the version is visible, so its files stay, the error says it is committed
    # (CommitIncomplete; an interrupt is re-raised), and the writer goes on from it
    from vecz.errors import CommitIncomplete

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(10))
        real_link, real_fsync = mf.os.link, os.fsync
        linked = []

        def link(*args, **kwargs):
            real_link(*args, **kwargs)
            linked.append(True)

        def fsync(fd):
            if linked:
                linked.clear()
                raise KeyboardInterrupt() if failure == "interrupt" else OSError(5, "Input/output error")
            return real_fsync(fd)

        monkeypatch.setattr(mf.os, "link", link)
        monkeypatch.setattr(os, "fsync", fsync)
        expect = KeyboardInterrupt if failure == "interrupt" else CommitIncomplete
        with pytest.raises(expect) as info:
            w.add(_data(5, seed=1))
        monkeypatch.undo()
        if failure == "oserror":
            assert info.value.version == 3 and "published and its files kept" in str(info.value)
        assert len(w) == 15 and w.version == 3  # the writer follows the published version
        w.add(_data(2, seed=2))  # and commits the next one (no CommitConflict)
        assert len(w) == 17
    assert check_store(path) == []
    with Store.open(path) as r:
        assert len(r) == 17 and r.version == 4


def test_a_failure_after_a_commit_does_not_say_nothing_was_committed(tmp_path, monkeypatch):
    # garbage collection failing after a commit warns (the commit stands; a caller who
    # retried would add the rows twice); a writer that cannot load its own new segment is
    # closed with CommitIncomplete naming the committed version
    from vecz.engine import writes
    from vecz.errors import CommitIncomplete, StoreClosed

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(10))

        def broken(*args, **kwargs):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(writes, "collect_garbage", broken)
        with pytest.warns(RuntimeWarning, match="garbage collection after version 3 failed .* the commit stands"):
            w.add(_data(5, seed=1))
        monkeypatch.undo()
        assert len(w) == 15
        monkeypatch.setattr(writes.Segment, "from_arrays", broken)
        monkeypatch.setattr(Store, "_open_version", broken)
        with pytest.raises(CommitIncomplete, match="version 4 is committed with its 3 rows") as info:
            w.add(_data(3, seed=2))
        monkeypatch.undo()
        assert info.value.version == 4
        with pytest.raises(StoreClosed):
            len(w.search(_data(1), 1))
    with Store.open(path) as r:
        assert len(r) == 18 and check_store(path) == []



def _self_found(path: Path, x: np.ndarray) -> np.ndarray:
    """Whether each row of x (ids 0..n-1, l2) finds itself in the store at `path`."""
    with Store.open(path) as r:
        return r.search(x, k=1, rerank=0)[1][:, 0] == np.arange(len(x))


def _hundreds(path: Path, x: np.ndarray, segments: int) -> Store:
    """A writer (l2, SQ8, f32 rows) holding x's first `segments` hundreds, one add each."""
    w = Store.create(path, dim=DIM, metric="l2", codec="SQ8", dense="f32")
    for b in range(segments):
        w.add(x[b * 100:(b + 1) * 100])
    return w

def _fails_once(monkeypatch, owner, name, exc):
    """Make owner.name raise exc on its next call only."""
    real = getattr(owner, name)
    calls = []

    def once(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)


def test_an_interrupt_after_an_add_committed_closes_the_writer_and_says_what_is_committed(tmp_path, monkeypatch):
    # Ctrl-C while add() loaded the segment it had committed left the writer open with one
    # segment fewer than its body: a later delete matched segments by position and deleted
    # ids 200-209 instead of 300-309, and the next automatic merge dropped 100 committed
    # rows (vecz check said ok). The writer is closed now, and the interrupt notes the version
    from vecz.engine import writes
    from vecz.errors import StoreClosed

    x = _data(500)
    path = tmp_path / "s"
    w = _hundreds(path, x, 2)
    _fails_once(monkeypatch, writes.Segment, "from_arrays", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as info:
        w.add(x[200:300])
    assert "version 4 is committed with its 100 rows" in info.value.__notes__[0]
    assert "do not add them again (this writer is closed" in info.value.__notes__[0]
    with pytest.raises(StoreClosed):
        w.add(x[300:400])
    with Store.open(path, mode="a") as w:
        w.add(x[300:400])
        w.add(x[400:500])  # four segments: a merge
        assert w.delete(np.arange(300, 310)) == 10
    found = _self_found(path, x)
    assert found[:300].all() and not found[300:310].any() and found[310:].all()
    assert check_store(path) == []


def test_a_memory_error_after_an_add_committed_reloads_the_writer(tmp_path, monkeypatch):
    # MemoryError is not an interrupt: the writer loads the committed version from disk and
    # goes on in step with it (it went on one segment short, and the merge dropped rows)
    from vecz.engine import writes

    x = _data(500)
    path = tmp_path / "s"
    with _hundreds(path, x, 2) as w:
        _fails_once(monkeypatch, writes.Segment, "from_arrays", MemoryError())
        w.add(x[200:300])
        monkeypatch.undo()
        assert len(w) == 300
        w.add(x[300:400])
        w.add(x[400:500])  # four segments: a merge
        assert len(w) == 500 and w.delete(np.arange(300, 310)) == 10
    found = _self_found(path, x)
    assert found[:300].all() and not found[300:310].any() and found[310:].all()



@pytest.mark.parametrize("exc", [KeyboardInterrupt(), MemoryError()])
def test_a_failure_after_a_delete_committed_never_brings_rows_back(tmp_path, monkeypatch, exc):
    # a failure while the writer marked its committed deletes left it with the old dead rows
    # (its note said it went on): its next delete in the segment wrote them back, and id 5 came
    # back. An interrupt closes the writer; an error reloads it or closes with CommitIncomplete
    from vecz.engine import segments

    x = _data(300)
    path = tmp_path / "s"
    w = _hundreds(path, x, 2)
    w.auto_merge_rows = 0
    _fails_once(monkeypatch, segments.Segment, "kill", exc)
    try:
        w.delete([5, 150])
    except KeyboardInterrupt as raised:
        assert "this writer is closed" in raised.__notes__[0] and w._closed
    monkeypatch.undo()
    if not w._closed:  # MemoryError: reloaded from disk, in step with the commit
        w.delete([6])
        w.close()
    else:
        with Store.open(path, mode="a") as again:
            again.delete([6])
    found = _self_found(path, x[:200])
    assert not found[[5, 6, 150]].any() and found.sum() == 197
    assert check_store(path) == []


def test_a_memory_error_in_garbage_collection_after_an_add_warns(tmp_path, monkeypatch):
    # (it came out of add() raw, though the rows were committed: a retry stored them twice)
    from vecz.engine import writes

    x = _data(100)
    with _hundreds(tmp_path / "s", x, 0) as w:
        w.add(x[:50])
        _fails_once(monkeypatch, writes, "collect_garbage", MemoryError())
        with pytest.warns(RuntimeWarning, match="garbage collection after version 3 failed .*MemoryError"):
            w.add(x[50:])
        assert len(w) == 100

def test_a_merge_that_fails_after_writing_leaves_no_files_behind(tmp_path, monkeypatch):
    # an interrupt while the merged segment loaded left its files, named by a serial the
    # writer had not used up: its next commit failed on "File exists" (a StorageError)
    from vecz.engine import merge

    x = _data(400)
    path = tmp_path / "s"
    with _hundreds(path, x, 3) as w:
        w.delete(np.arange(0, 300, 10))
        before = sorted(os.listdir(path))
        _fails_once(monkeypatch, merge.Segment, "from_arrays", KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            w.compact()
        assert sorted(os.listdir(path)) == before
        w.add(x[300:400])
        w.compact()
    found = _self_found(path, x)
    assert not found[0:300:10].any() and found.sum() == 370


def test_a_failed_merge_after_an_add_does_not_make_the_add_look_failed(tmp_path, monkeypatch):
    # the rows are committed before the automatic merge: a MemoryError there warns (as a full
    # disk does; the add raised, and a caller who retried stored its rows twice), and an
    # interrupt passes on with a note saying the rows are committed
    from vecz.engine import merge

    x = _data(500)
    path = tmp_path / "s"
    with _hundreds(path, x, 3) as w:
        _fails_once(monkeypatch, merge, "merge_segments", MemoryError())
        with pytest.warns(RuntimeWarning, match="the merge after this commit failed .*MemoryError"):
            w.add(x[300:400])
        assert len(w) == 400
        _fails_once(monkeypatch, merge, "merge_segments", KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt) as info:
            w.add(x[400:500])
        assert "is committed with its 100 rows" in info.value.__notes__[0]
        assert "this writer goes on from it" in info.value.__notes__[0]
        assert len(w) == 500
    assert _self_found(path, x).all()


def test_check_beside_a_committing_writer_reports_no_damage(tmp_path, monkeypatch):
    # check_store read the newest version's files unpinned: a writer's commit (a compaction,
    # retain=1) collected them mid-check and a healthy store was reported damaged ("dense ids
    # do not read: No such file", 21 of 570 checks beside a writer). It pins what it checks
    from vecz.engine import writes

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, metric="l2", codec="PQ4x4", retain=1) as w:
        w.add(_data(600))
    real = writes.check_dense_ids

    def commit_then_check(store):
        with Store.open(path, mode="a") as other:
            other.delete([0])
            other.compact()
        return real(store)

    monkeypatch.setattr(writes, "check_dense_ids", commit_then_check)
    assert check_store(path) == []
    monkeypatch.undo()
    with Store.open(path) as r:
        assert len(r) == 599 and r.version == 4
    assert check_store(path, all_versions=True) == []


def test_a_version_pruned_while_it_opens_is_not_called_damaged(tmp_path, monkeypatch):
    # Store.open(version=v) whose files a writer collected between its manifest and its
    # segments said StoreCorrupted ("segment file missing"); the retain rule allows it
    from vecz.errors import StoreNotFound

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, metric="l2", codec="PQ4x4", retain=2) as w:
        w.add(_data(300))
        w.add(_data(300, seed=1))
    real = Store._read_body

    def read_then_commit(self, version):
        body = real(self, version)
        if self.mode != "a":
            with Store.open(path, mode="a") as other:
                other.delete([5])
                other.compact()
                other.delete([6])
        return body

    monkeypatch.setattr(Store, "_read_body", read_then_commit)
    with pytest.raises(StoreNotFound, match="version 2 was removed by a writer's garbage collection while it loaded"):
        Store.open(path, version=2)

def test_refresh_after_the_store_was_built_again_at_its_path_reads_the_new_codec(tmp_path):
    # a codec file of the same name in a store deleted and built again is another file: a
    # reader's refresh loads it (it kept the old codec and scored new codes with it)
    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="PQ4x8") as w:
        w.add(_data(300, seed=0))
    r = Store.open(path)
    shutil.rmtree(path)
    x = _data(300, seed=1)
    with Store.create(path, dim=DIM, codec="PQ4x8") as w:
        w.add(x)
    assert r.refresh() == 2
    with Store.open(path) as fresh:
        for key, a in fresh.codec.state().items():
            np.testing.assert_array_equal(r.codec.state()[key], a)
        np.testing.assert_array_equal(r.search(x[:20], 5, rerank=0).ids, fresh.search(x[:20], 5, rerank=0).ids)
    r.close()


@pytest.mark.parametrize("dense", ["f32", "f16"])
def test_a_search_holding_an_older_version_reads_on_through_a_refresh(tmp_path, dense):
    # A search that took a reader's segments before another thread's refresh (after the
    # writer compacted: the old dense files leave the version) reads through them to the
    # end: the pool drops the readers it no longer needs, it does not close them (a search
    # failed with a numba TypingError or AttributeError before stop 49)
    from vecz.engine.search import search_segments

    path = tmp_path / "s"
    x = _data(1500, seed=3)
    with Store.create(path, dim=DIM, codec="RB1", dense=dense) as w:
        w.auto_merge_rows = 0
        for lo in range(0, 1500, 300):
            w.add(x[lo:lo + 300])
        with Store.open(path) as r:
            held, version = list(r._segments), r.version
            w.compact()
            r.refresh()
            got = search_segments(r.codec, r.metric, held, x[:20], 10, nprobe=1, rerank=50)
            with Store.open(path, version=version) as old:
                want = old.search(x[:20], 10, rerank=50)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.scores, want.scores)


def test_a_search_holding_an_older_version_sees_deletes_only_as_rows_left_out(tmp_path):
    # what docs/bad-input.md says of a search racing a refresh that applies deletes: the
    # deletes are marked in place on the segments it holds, so its rows come from its
    # version less rows the newer version deleted, never a row that was not live
    from vecz.engine.search import search_segments

    path = tmp_path / "s"
    x = _data(1500, seed=3)
    with Store.create(path, dim=DIM, codec="RB1", dense="f32") as w:
        w.auto_merge_rows = 0
        for lo in range(0, 1500, 300):
            w.add(x[lo:lo + 300])
        with Store.open(path) as r:
            held = list(r._segments)
            w.delete(np.arange(0, 1500, 3))
            r.refresh()
            got = search_segments(r.codec, r.metric, held, x[:20], 10, nprobe=1, rerank=50)
            want = r.search(x[:20], 10, rerank=50)  # the newer version: the same rows less the deleted
            np.testing.assert_array_equal(got.ids, want.ids)
            assert not np.isin(got.ids, np.arange(0, 1500, 3)).any()


def test_a_search_whose_store_is_closed_midway_answers_or_raises_store_closed(tmp_path, monkeypatch):
    # another thread's close() while an auto search measured its error model: the search
    # read the store's segments again afterwards, found none and answered id -1 everywhere
    path = tmp_path / "s"
    x = _data(600, seed=4)
    with Store.create(path, dim=DIM, codec="RB1", dense="f32") as w:
        w.add(x)
    with Store.open(path) as r:
        want = r.search(x[:5], 10, rerank=100)
    r = Store.open(path)
    measure = Store.error_model

    def closed_meanwhile(self):
        model = measure(self)
        self.close()  # as another thread would, while this search runs
        return model

    monkeypatch.setattr(Store, "error_model", closed_meanwhile)
    got = r.search(x[:5], 10, rerank="auto:100", confidence=1.0)
    np.testing.assert_array_equal(got.ids, want.ids)
    with pytest.raises(StoreClosed):
        r.search(x[:5], 10)


def test_a_refresh_that_fails_leaves_the_readers_version_as_it_was(tmp_path):
    # the newest version's new segment file is damaged: refresh raises, and the deletes of
    # that version are not applied to the segments the reader keeps (it lost live rows of
    # its own version before stop 49)
    from vecz.errors import VeczError

    path = tmp_path / "s"
    x = _data(1200, seed=4)
    with Store.create(path, dim=DIM, codec="RB1", dense="f32") as w:
        w.auto_merge_rows = 0
        w.add(x[:500])
        w.add(x[500:1000])
        r = Store.open(path)
        before = r.search(x[:30], 5, rerank=20)
        w.delete(np.arange(100))
        w.add(x[1000:])
        new = w._segments[-1].rec.file
    with open(path / new, "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    with r:
        with pytest.raises(VeczError):
            r.refresh()
        assert r.version == 3 and len(r) == 1000 and 7 in r
        after = r.search(x[:30], 5, rerank=20)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.scores, before.scores)


# --------------------------------------------------------------------------- long-lived writers


def test_a_long_lived_writer_does_not_grow_files_with_commits(tmp_path):
    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(4000))
        sizes = []
        for i in range(200):
            w.delete(np.arange(i * 10, i * 10 + 10))
            if i in (20, 199):
                sizes.append((len(os.listdir(path)), sum(p.stat().st_size for p in path.iterdir())))
        assert len(mf.list_versions(path)) <= w.retain
    (files_20, bytes_20), (files_199, bytes_199) = sizes
    assert files_199 <= files_20 + 4 and bytes_199 <= 2 * bytes_20, sizes


# --------------------------------------------------------------------------- hostile values


def test_k_and_rerank_are_clamped_to_the_live_rows(tmp_path):
    with Store.create(tmp_path / "s", dim=DIM, codec="SQ8") as s:
        s.add(_data(1000))
        res = s.search(_data(2, seed=1), 10**9, rerank=10**9)
        assert res.ids.shape == (2, 1000) and (res.ids >= 0).all()
        res = s.search(_data(2, seed=1), 1200, rerank=10**9)  # small enough to pad like faiss
        assert res.ids.shape == (2, 1200) and (res.ids[:, 1000:] == -1).all()


@pytest.mark.parametrize("spec, dim, size", [("IVF999999999,RB1", 384, "GiB"), ("RB1", 65536, "16.0 GiB")])
def test_specs_whose_state_cannot_be_allocated_are_refused_at_create(tmp_path, spec, dim, size):
    with pytest.raises(TooLarge, match=size):
        Store.create(tmp_path / "s", dim=dim, codec=spec)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_magnitudes_whose_scores_overflow_are_refused(tmp_path, metric):
    with Store.create(tmp_path / "s", dim=DIM, codec="Flat", metric=metric) as s:
        x = _data(5)
        x[3] *= 1e30
        with pytest.raises(InvalidInput, match="norms below 1e\\+15 .* in row 3"):
            s.add(x)
        s.add(_data(5))
        with pytest.raises(InvalidInput, match="queries: expected vector norms"):
            s.search(_data(1) * 1e20, 1)


# --------------------------------------------------------------------------- lying manifests


def _reseal(path: Path, change) -> None:
    version = mf.list_versions(path)[-1]
    body = mf.read_manifest(path, version)
    change(body)
    (path / mf.manifest_name(version)).unlink()
    mf.write_manifest(path, version, body)


def _two_segments(path: Path) -> None:
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.auto_merge_rows = 0
        w.add(_data(20), ids=np.arange(20))
        w.add(_data(20, seed=1), ids=np.arange(100, 120))
        w.delete([3, 105])


def test_a_codec_file_array_of_another_dtype_is_refused(tmp_path):
    # FORMAT.md gives a codec file one <f4 array per trained array; the same bytes labelled
    # <u4 loaded as integers (scores of 1e18, every id another) and check said ok
    from vecz.formats import segment as sg

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(50))
        name = w._body.codec_file
    arrays, meta = sg.read_segment(path / name, kind="codec")
    relabelled = {k: (v.view("<u4") if k == "sq_vdiff" else v) for k, v in arrays.items()}
    replace_segment(path, name, "codec", relabelled, meta)  # checksums and the manifest's digest agree
    with pytest.raises(StoreCorrupted, match=r"codec-\d+\.vzs: array 'sq_vdiff': expected dtype <f4, found <u4"):
        Store.open(path)
    problems = check_store(path)
    assert any("expected dtype <f4" in p for p in problems), problems


@pytest.mark.parametrize("kind", ["codec", "seg", "del", "model"])
def test_a_file_copied_from_another_store_is_refused(tmp_path, kind):
    """A healthy file of another store with the same spec, copied over one of this store's,
    opened and searched with other ids, and check said ok: the manifest now records each
    segment file's digest (its header CRC32) and readers and check compare it."""
    stores = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}"
        with Store.create(path, dim=DIM, codec="PQ4x8", metric="l2") as w:
            w.auto_merge_rows = 0
            w.add(_data(400, seed=seed), ids=np.arange(400))
            w.delete([3, 7 + seed])
            assert w.calibrate() is not None
        stores.append(path)
    a, b = stores
    name = next(p.name for p in a.iterdir() if p.name.startswith(f"{kind}-"))
    assert (b / name).exists()
    (a / name).unlink()
    shutil.copyfile(b / name, a / name)
    with pytest.raises(StoreCorrupted, match=f"{name}: not the file the manifest names: its digest"):
        with Store.open(a) as r:
            r.error_model()  # (a model file is read on open; its error is raised where it is used)
    problems = check_store(a)
    assert any(f"{name}: not the file the manifest names" in p for p in problems), problems


def test_swapped_dense_records_are_found_by_check(tmp_path):
    path = tmp_path / "s"
    _two_segments(path)

    def swap(b):
        a, c = b["segments"]
        a["dense"], c["dense"] = c["dense"], a["dense"]
    _reseal(path, swap)
    problems = check_store(path)
    assert any("dense vector is stored under id" in p for p in problems), problems


def test_swapped_deletion_files_are_refused(tmp_path):
    path = tmp_path / "s"
    _two_segments(path)

    def swap(b):
        a, c = b["segments"]
        a["deletes"], c["deletes"] = c["deletes"], a["deletes"]
    _reseal(path, swap)
    with pytest.raises(StoreCorrupted, match="holds the deleted rows of segment"):
        Store.open(path)
    assert check_store(path)


@pytest.mark.parametrize("change, match", [
    (lambda b: b.update(next_id=50), "next_id"),
    (lambda b: b.update(next_serial=2), "next_serial"),
    (lambda b: b["segments"][0].update(file="seg-000000000007.vzs"), "names the codes file"),
    (lambda b: b["segments"][1].update(min_id=0), "ids span"),
])
def test_inconsistent_manifests_are_refused(tmp_path, change, match):
    path = tmp_path / "s"
    _two_segments(path)
    _reseal(path, change)
    with pytest.raises(StoreCorrupted, match=match):
        Store.open(path)
    assert check_store(path)


def test_a_damaged_newest_manifest_names_the_newest_version_that_opens(tmp_path):
    path = tmp_path / "s"
    _two_segments(path)
    newest = mf.list_versions(path)[-1]
    data = bytearray((path / mf.manifest_name(newest)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / mf.manifest_name(newest)).write_bytes(bytes(data))
    with pytest.raises(StoreCorrupted, match=rf"newest version that opens is {newest - 1}: Store.open\("):
        Store.open(path)
    with Store.open(path, version=newest - 1) as s:
        assert len(s) == 40


# --------------------------------------------------------------------------- pinned versions


def _pin_store(path: Path) -> tuple[Store, np.ndarray]:
    x = _data(300, seed=7)
    w = Store.create(path, dim=DIM, codec="RB1", dense="f32", retain=2)
    w.auto_merge_rows = 0
    w.add(x[:200])
    return w, x


def test_a_pinned_version_outlives_retention_and_opens_again(tmp_path):
    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w, Store.open(path) as r:
        pin = r.pin()
        served, want = r.version, r.search(x[:7], 5, rerank=20)
        for i in range(5):  # retain 2: the served version would be pruned after the second
            w.add(x[200 + i:201 + i])
        assert mf.list_versions(path) == [served, w.version - 1, w.version]
        assert w.info()["pinned"] == [served]
        assert check_store(path, all_versions=True) == []
        with Store.open(path, version=served) as again:
            got = again.search(x[:7], 5, rerank=20)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
        pin.release()
        assert not pin.held and w.info()["pinned"] == []
        w.add(x[250:251])
        assert served not in mf.list_versions(path) and len(mf.list_versions(path)) == 2


def test_a_pin_held_by_another_process_is_honoured_and_a_dead_ones_is_not(tmp_path):
    path = tmp_path / "s"
    w, x = _pin_store(path)
    served = w.version
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from vecz.engine.commit import VersionPin
        pin = VersionPin(sys.argv[1], int(sys.argv[2]))
        print("pinned", flush=True)
        sys.stdin.read()
        """), str(path), str(served)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "pinned"
        with w:
            for i in range(4):
                w.add(x[200 + i:201 + i])
            assert served in mf.list_versions(path), "a live pin in another process must keep its version"
            assert w.info()["pinned"] == [served]
            holder.kill()  # no release: the kernel drops its lock with the process
            holder.wait(timeout=30)
            w.add(x[210:211])
            assert served not in mf.list_versions(path) and len(mf.list_versions(path)) == 2
            assert sorted(p.name for p in path.iterdir() if not mf.MANIFEST_RE.fullmatch(p.name)) == sorted(
                _named_files(path)), "nothing but the kept versions' files is left"
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_pinning_a_version_the_store_no_longer_has_is_refused(tmp_path):
    from vecz.engine.commit import VersionPin
    from vecz.errors import StoreNotFound

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w:
        old = w.version
        for i in range(3):
            w.add(x[200 + i:201 + i])
        # pruned is not damaged: StoreNotFound, as Store.open(version=) says (it said StoreCorrupted)
        with pytest.raises(StoreNotFound, match=f"version {old} is not in the store"):
            VersionPin(path, old)
        with pytest.raises(StoreNotFound, match="version 99 is not in the store"):
            VersionPin(path, 99)
    one = tmp_path / "one"
    with Store.create(one, dim=DIM, codec="SQ8", retain=1) as w:
        w.add(_data(5))
        reader = Store.open(one)
        w.add(_data(5, seed=1))  # retain=1: the reader's version is pruned, as it may be
        with pytest.raises(StoreNotFound, match=f"version {reader.version} is not in the store"):
            reader.pin()
        with pytest.raises(StoreNotFound):
            Store.open(one, version=reader.version)
        reader.close()
    assert check_store(one) == []


def test_a_pin_made_during_a_collection_waits_for_it_and_sees_what_it_pruned(tmp_path, monkeypatch):
    # the race the manifest's lock closes: a reader pins a version after the collector chose
    # to prune it but before it deleted the manifest. The pin must wait and then be refused,
    # not succeed and have the version vanish under it.
    import threading

    from vecz.engine import commit
    from vecz.engine.commit import VersionPin
    from vecz.errors import StoreNotFound

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w:
        doomed = w.version
        w.add(x[200:201])  # retain 2: the next commit prunes `doomed`
        outcome: dict = {}

        def pin_now():
            try:
                outcome["pin"] = VersionPin(path, doomed)
            except StoreNotFound as exc:  # pruned: not found (it said StoreCorrupted)
                outcome["error"] = exc

        real = commit._lock_unpinned
        pinner = threading.Thread(target=pin_now)

        def locking(name, dir_fd):
            fd = real(name, dir_fd)
            if name == mf.manifest_name(doomed):
                assert fd is not None
                pinner.start()
                pinner.join(0.5)
                outcome["blocked"] = pinner.is_alive()
            return fd

        monkeypatch.setattr(commit, "_lock_unpinned", locking)
        w.add(x[201:202])
        monkeypatch.setattr(commit, "_lock_unpinned", real)
        pinner.join(30)
        assert outcome["blocked"], "a pin must wait while the collector holds the manifest"
        assert doomed not in mf.list_versions(path)
        assert "pin" not in outcome and "is not in the store" in str(outcome["error"])


def _named_files(path: Path) -> set[str]:
    from vecz.formats.body import body_files, parse_body

    return set().union(*(body_files(parse_body(mf.read_manifest(path, v), "v")) for v in mf.list_versions(path)))


def test_a_pin_whose_object_is_dropped_is_still_held(tmp_path):
    # the documented lifetime is until release() or the process's end: `r.pin()` without
    # keeping the result released the pin at once (a review found it)
    import gc

    from vecz.engine import commit

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w, Store.open(path) as r:
        served = r.version
        r.pin()
        gc.collect()
        for i in range(3):
            w.add(x[200 + i:201 + i])
        assert served in mf.list_versions(path) and w.info()["pinned"] == [served]
        for pin in [p for p in commit._HELD.values() if p.path == path]:
            pin.release()
        w.add(x[210:211])
        assert served not in mf.list_versions(path)


def test_a_forked_child_does_not_keep_its_parents_pin(tmp_path):
    # an inherited descriptor shares the parent's lock: the version stayed pinned while the
    # child lived, after the parent released it (a review found it)
    import multiprocessing

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w, Store.open(path) as r:
        pin = r.pin()
        served = r.version
        ctx = multiprocessing.get_context("fork")
        go, seen = ctx.Event(), ctx.Queue()

        def child():
            seen.put(pin.held)
            go.wait(60)

        proc = ctx.Process(target=child)
        proc.start()
        try:
            assert seen.get(timeout=60) is False  # the child holds no pin of its own
            pin.release()
            for i in range(3):
                w.add(x[200 + i:201 + i])
            assert served not in mf.list_versions(path), "the child kept the released pin"
        finally:
            go.set()
            proc.join(60)


def test_a_forked_child_neither_writes_through_nor_releases_its_parents_writer(tmp_path):
    """A forked child shared the writer's lock: its close() unlocked it (a second writer then
    opened beside the parent) and its add() committed, after which the parent's adds failed
    with 'File exists' (a review found it). The child's writes are refused, its close leaves
    the parent's lock, and it keeps no copy holding the lock after the parent closes."""
    import multiprocessing

    path = tmp_path / "s"
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    ctx = multiprocessing.get_context("fork")
    w = Store.create(path, dim=8, codec="SQ8")
    w.add(x[:10])
    go, seen = ctx.Event(), ctx.Queue()

    def child():
        try:
            w.add(x[10:12])
            seen.put("added")
        except StoreLocked as exc:
            seen.put(f"refused: {exc}")
        seen.put(len(w.search(x[:2], 3).ids))  # reading through it still works
        w.close()
        seen.put("closed")
        go.wait(60)

    proc = ctx.Process(target=child)
    proc.start()
    try:
        refused = seen.get(timeout=60)
        assert refused.startswith("refused:") and f"belongs to process {os.getpid()}" in refused, refused
        assert seen.get(timeout=60) == 2 and seen.get(timeout=60) == "closed"
        with pytest.raises(StoreLocked):
            Store.open(path, mode="a")  # the parent still holds it
        w.add(x[12:14])
        w.close()
        with Store.open(path, mode="a") as again:  # the living child holds no copy of the lock
            assert len(again) == 12
    finally:
        go.set()
        proc.join(60)


def test_pinned_versions_lists_pins_and_nothing_a_concurrent_probe_holds(tmp_path):
    # the listing took an exclusive lock per manifest: two listings at once (or one during a
    # collection) each saw the other's lock as a pin (8% false reports in a review's loop)
    import fcntl

    from vecz.engine.commit import VersionPin, pinned_versions

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w:
        w.add(x[200:201])
        old, new = mf.list_versions(path)
        fd = os.open(path / mf.manifest_name(old), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # what a concurrent probe or the collector holds
            assert pinned_versions(path) == []
        finally:
            os.close(fd)
        with VersionPin(path, new):
            assert pinned_versions(path) == [new]
        assert pinned_versions(path) == []


def test_a_damaged_pinned_manifest_keeps_its_files_but_not_every_other_version(tmp_path):
    # the collector read every kept manifest, the pinned ones too, and deleted nothing when
    # one was damaged: a pinned damaged version stopped all pruning while the pin lived
    from vecz.engine.commit import VersionPin

    path = tmp_path / "s"
    w, x = _pin_store(path)
    with w:
        w.add(x[200:201])
        first, pinned = mf.list_versions(path)
        files = _named_files(path)
        with VersionPin(path, pinned):
            raw = bytearray((path / mf.manifest_name(pinned)).read_bytes())
            raw[40] ^= 0xFF
            (path / mf.manifest_name(pinned)).write_bytes(bytes(raw))
            for i in range(6):
                w.add(x[201 + i:202 + i])
            versions = mf.list_versions(path)
            assert first not in versions and pinned in versions and len(versions) == 3, versions
            on_disk = {p.name for p in path.iterdir()}
            assert files <= on_disk, "a damaged manifest's files are unknown: none may be deleted"


@pytest.mark.parametrize("racer", ["close", "refresh"])
def test_get_and_in_racing_close_or_refresh_answer_or_say_closed(tmp_path, monkeypatch, racer):
    """get(), `in` and memory_bytes() read the store's segments once: a close() or refresh()
    on another thread between two reads raised a raw IndexError or called a live id missing
    (a review's loop: 275 IndexErrors in 300). Here the other thread's call lands inside the
    first segment lookup."""
    from vecz.engine.segments import Segment

    path = tmp_path / "s"
    x = _data(120)
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(x[:60])
        w.add(x[60:])  # two segments
    r = Store.open(path)
    if racer == "refresh":
        with Store.open(path, mode="a") as w:
            w.compact()  # the reader's refresh swaps its segments for one
    find = Segment.find
    fired = []

    def find_then_race(seg, ids):
        if not fired:
            fired.append(1)
            getattr(r, racer)()
        return find(seg, ids)

    monkeypatch.setattr(Segment, "find", find_then_race)
    np.testing.assert_array_equal(r.get([70, 3]), x[[70, 3]])
    fired.clear()
    if racer == "close":
        with pytest.raises(StoreClosed):
            100 in r  # noqa: B015
    else:
        assert 100 in r
    r.close()


def test_a_writer_dropped_without_close_releases_the_store(tmp_path):
    """A writer object dropped without close() kept its locked descriptor: the store stayed
    locked, to this very process too (StoreLocked naming its own pid), until it exited."""
    import gc

    path = tmp_path / "s"
    Store.create(path, dim=DIM, codec="SQ8").close()

    def write_and_drop() -> None:
        w = Store.open(path, mode="a")
        w.add(_data(10))

    write_and_drop()
    gc.collect()
    with Store.open(path, mode="a") as w:  # StoreLocked before
        assert len(w) == 10


def _four_segments_keeping_one_version(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A store of four 100-row segments (no automatic merge) that keeps one version: a commit
    prunes the files of the version before it."""
    path = tmp_path / "s"
    x = _data(400)
    with Store.create(path, dim=DIM, codec="IVF4,SQ8", retain=1) as w:
        w.auto_merge_rows = 0
        for lo in range(0, 400, 100):
            w.add(x[lo:lo + 100])
    return path, x


def test_a_writers_first_search_racing_its_own_commit_answers(tmp_path, monkeypatch):
    """A writer leaves its segments' layouts to their first search; a commit on another
    thread that pruned their version (retain=1) deleted the files first, and the search
    failed with StoreCorrupted 'segment file missing' on a healthy store (a review: 1 in 10
    of such races). It now searches the newer segments."""
    from vecz.engine import store as store_mod

    path, x = _four_segments_keeping_one_version(tmp_path)
    with Store.open(path) as r:
        want = r.search(x[:5], 5, rerank=50)
    w = Store.open(path, mode="a")
    assert all(seg.built is None for seg in w._segments)
    search_segments, raced = store_mod.search_segments, []

    def racing(codec, metric, segments, *args, **kwargs):
        if not raced:
            raced.append(1)
            w.compact()  # "another thread" commits between the search taking segments and scanning them
            assert not (path / segments[0].rec.file).exists()
        return search_segments(codec, metric, segments, *args, **kwargs)

    monkeypatch.setattr(store_mod, "search_segments", racing)
    got = w.search(x[:5], 5, rerank=50)
    np.testing.assert_array_equal(got.ids, want.ids)
    w.close()
    assert check_store(path) == []


def test_a_copy_of_a_writer_never_releases_its_lock(tmp_path):
    """A copy of a writer's lock (copy.deepcopy of a Store copies it before failing on a
    thread lock; pickling too) released the live writer's flock and closed its descriptor when
    dropped: a second writer opened beside it and the first then failed with EBADF."""
    import copy
    import gc

    path = tmp_path / "s"
    with Store.create(path, dim=DIM, codec="SQ8") as w:
        w.add(_data(10))
        for clone in (copy.deepcopy, lambda store: store._lock.__reduce_ex__(4)):  # what pickling calls
            with pytest.raises(TypeError):
                clone(w)
        gc.collect()
        with pytest.raises(StoreLocked):
            Store.open(path, mode="a")
        w.add(_data(5, seed=1))
        assert len(w) == 15


@pytest.mark.parametrize("call", ["calibrate", "error_model"])
def test_a_writers_first_calibration_racing_its_own_commit_answers(tmp_path, monkeypatch, call):
    """As a search (above): Store.calibrate and error_model() measuring on segments whose
    files a commit on another thread had pruned failed with 'segment file missing'."""
    from vecz.engine import store as store_mod

    path, _ = _four_segments_keeping_one_version(tmp_path)
    w = Store.open(path, mode="a")
    calibrate, raced = store_mod.calibrate, []

    def racing(codec, metric, segments, **kwargs):
        if not raced:
            raced.append(1)
            w.compact()
        return calibrate(codec, metric, segments, **kwargs)

    monkeypatch.setattr(store_mod, "calibrate", racing)
    model = w.calibrate(commit=False) if call == "calibrate" else w.error_model()
    assert raced and model is not None
    w.close()
