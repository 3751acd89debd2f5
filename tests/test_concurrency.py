"""Concurrency with real processes: one writer at a time, any number of readers.

The tests drive child processes that run this file as a script (``python
tests/test_concurrency.py STORE DATA``). A child reads one JSON command per line on stdin
and answers one JSON line on stdout, so the test decides exactly when each process acts.
Children inherit the environment, so they share the Numba cache that conftest.py isolates.
What is tested (README "The store", formats/FORMAT.md "Commit protocol"):

1. a writer process holds the store directory's flock: another process (and the test itself) opening with
   ``mode="a"`` gets `StoreLocked` naming the store and the holder's pid, even after the
   holder's own second attempt failed; read-only opens search meanwhile; ``close()``
   releases the lock without the process exiting;
2. a writer SIGKILLed while committing leaves no stale lock: a new writer opens at once,
   sees every commit the dead one published, and the store checks clean;
3. a reader process pins its version (len, ids, search hits and scores, exact vectors)
   across another process's adds, deletes and compactions that remove the files it reads,
   until ``refresh()``, which then gives the newest version's answers;
4. reader processes opening the store afresh in a loop while a writer process commits
   only ever see a whole committed version (the writer journals each version's live ids);
5. two writer processes racing to open: exactly one wins, the other gets `StoreLocked`
   until the winner closes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vecz.engine import Store, StoreLocked, check_store
from vecz.engine.errors import VeczError
from vecz.formats import manifest as mf

REPO = Path(__file__).resolve().parents[1]
DIM = 16
SPEC = "SQ8"
K = 5
RERANK = 20
N_BASE = 1000       # rows of base.npy; the id of a row added from base[i] is i
N_INITIAL = 160     # ids 0..99 (segment 1) and 100..159 (segment 2) are in every fresh store
TIMEOUT = 120.0     # seconds a child may take to answer on a busy machine before the test fails


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _answers(store: Store, queries: np.ndarray, get_ids: list[int]) -> dict[str, Any]:
    """What a reader reports about its version, as JSON-ready values (children and the test
    both use it, so equal versions give equal dicts, float32 scores compared exactly)."""
    res = store.search(queries, K, rerank=RERANK)
    return {
        "version": int(store.version),
        "len": len(store),
        "ids": store.ids().tolist(),
        "hits": res.ids.tolist(),
        "scores": res.scores.tolist(),
        "rows_read": int(res.stats.rows_read),
        "get": store.get(np.asarray(get_ids, dtype=np.int64)).tolist() if get_ids else [],
    }


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _snapshot(store: Store, base: np.ndarray) -> dict[str, Any]:
    """One reader snapshot: version, count, live ids, and the nearest hits and exact vectors
    of three live ids' own vectors (each must find itself first: cosine, exact re-rank)."""
    ids = store.ids()
    probe = ids[:: max(1, ids.size // 3)][:3]
    res = store.search(base[probe], K, rerank=RERANK)
    diff = float(np.abs(store.get(probe) - base[probe]).max()) if probe.size else 0.0
    return {"version": int(store.version), "len": len(store), "ids": ids.tolist(),
            "probe": probe.tolist(), "hits": res.ids.tolist(), "get_diff": diff}


# ---------------------------------------------------------------------------- the child


def _apply(store: Store, base: np.ndarray, step: list) -> None:
    """One commit: ["add", lo, hi] adds base[lo:hi] with ids lo..hi-1, ["delete", ids],
    ["compact"]."""
    if step[0] == "add":
        store.add(base[step[1]:step[2]], ids=np.arange(step[1], step[2]))
    elif step[0] == "delete":
        store.delete(step[1])
    elif step[0] == "compact":
        store.compact()
    else:
        raise ValueError(f"unknown step {step!r}")


def _serve(store_path: str, data_dir: str) -> None:
    """The child's loop: one JSON command per stdin line, one JSON answer per stdout line;
    a vecz error (or KeyError from get) is answered as {"error": type name, "msg": text,
    "key_error": bool}."""
    base = np.load(Path(data_dir) / "base.npy", allow_pickle=False)
    queries = np.load(Path(data_dir) / "queries.npy", allow_pickle=False)
    stores: dict[str, Store] = {}

    def reply(**answer: Any) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    reply(ready=True, pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        op, slot = cmd["op"], cmd.get("slot", "s")
        try:
            if op == "open":
                stores[slot] = Store.open(store_path, mode=cmd["mode"])
                reply(version=stores[slot].version)
            elif op == "close":
                stores.pop(slot).close()
                reply(closed=True)
            elif op == "refresh":
                reply(version=stores[slot].refresh())
            elif op == "answers":
                reply(**_answers(stores[slot], queries, cmd["get"]))
            elif op == "step":
                _apply(stores[slot], base, cmd["step"])
                reply(version=stores[slot].version)
            elif op == "churn":  # every step a commit; journal each version's live ids
                with open(cmd["journal"], "w") as journal:
                    for step in cmd["plan"]:
                        _apply(stores[slot], base, step)
                        s = stores[slot]
                        journal.write(json.dumps({"version": s.version, "ids": s.ids().tolist()}) + "\n")
                        journal.flush()
                reply(version=stores[slot].version)
            elif op == "commit_forever":  # until killed: add batches, announcing each version
                lo = cmd["lo"]
                while True:
                    rows = np.arange(lo, lo + cmd["batch"])
                    stores[slot].add(base[rows % len(base)], ids=rows)
                    reply(version=stores[slot].version)
                    lo += cmd["batch"]
            elif op == "watch":  # open afresh and snapshot until the stop file exists
                n = 0
                with open(cmd["out"], "w") as out:
                    while n == 0 or not os.path.exists(cmd["stop"]):
                        try:
                            with Store.open(store_path) as s:
                                snap = _snapshot(s, base)
                        except (VeczError, KeyError) as exc:
                            snap = {"error": f"{type(exc).__name__}: {exc}"}
                        out.write(json.dumps(snap) + "\n")
                        n += 1
                        if n == 1:
                            out.flush()
                            reply(started=True)
                reply(snapshots=n)
            elif op == "exit":
                break
            else:
                raise ValueError(f"unknown op {op!r}")
        except (VeczError, KeyError) as exc:
            reply(error=type(exc).__name__, msg=str(exc), key_error=isinstance(exc, KeyError))
    for s in stores.values():
        s.close()


# ---------------------------------------------------------------------------- the test side


class Worker:
    """A child process serving one store (see `_serve`)."""

    def __init__(self, store: Path, data: Path, log: Path) -> None:
        self.log_path = log
        with open(log, "w") as err:  # the child keeps its own descriptor of the log
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(store), str(data)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, env=dict(os.environ), cwd=REPO,
            )
        self.pid = self.proc.pid
        # A thread turns stdout into a queue so that recv() can time out instead of hanging.
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        hello = self.recv()
        assert hello == {"ready": True, "pid": self.pid}, hello

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _stderr(self) -> str:
        return self.log_path.read_text()[-3000:]

    def send(self, op: str, **args: Any) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child {self.pid}: no answer within {timeout} s; stderr:\n{self._stderr()}") from None
        if line is None:
            self.proc.wait(timeout=10)
            raise AssertionError(f"child {self.pid} exited ({self.proc.returncode}); stderr:\n{self._stderr()}")
        return json.loads(line)

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command and return its answer, errors included."""
        self.send(op, **args)
        return self.recv()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command that must succeed."""
        answer = self.ask(op, **args)
        assert "error" not in answer, f"child {self.pid}: {op} {args}: {answer}"
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # end of input: the child closes its stores and exits
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=20)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A cosine SQ8 store holding ids 0..159 in two segments, and base.npy / queries.npy
    beside it. Searching here first fills the Numba cache before any child starts."""
    base, queries = _data(N_BASE, seed=1), _data(4, seed=2)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "queries.npy", queries)
    path = tmp_path / "store"
    # retain=2: superseded files are deleted two versions on, while readers still use them
    with Store.create(path, dim=DIM, metric="cosine", codec=SPEC, dense="f32", retain=2) as s:
        s.add(base[:100], ids=np.arange(100))
        s.add(base[100:N_INITIAL], ids=np.arange(100, N_INITIAL))
        s.search(queries, K, rerank=RERANK)
    return path


@pytest.fixture
def spawn(store: Path):
    """Start child processes on `store`; every one still running is stopped at teardown."""
    workers: list[Worker] = []

    def start() -> Worker:
        workers.append(Worker(store, store.parent, store.parent / f"child-{len(workers)}.log"))
        return workers[-1]

    yield start
    for w in workers:
        w.stop()


def _queries(store: Path) -> np.ndarray:
    return np.load(store.parent / "queries.npy", allow_pickle=False)


def _holder(store: Path) -> str:
    """Who holds the writer lock on the store directory ('pid N'), from /proc/locks."""
    from vecz.engine.commit import lock_holder

    st = os.stat(store)
    return lock_holder(st.st_dev, st.st_ino)


def test_writer_process_holds_the_lock_and_readers_still_work(store, spawn):
    a, b = spawn(), spawn()
    v0 = a.call("open", mode="a")["version"]
    assert _holder(store) == f"pid {a.pid}"

    locked = b.ask("open", mode="a")
    assert locked["error"] == "StoreLocked"
    assert locked["msg"].startswith(f"{store}: another writer holds the store (pid {a.pid})")
    with pytest.raises(StoreLocked, match=rf"another writer holds the store \(pid {a.pid}\)"):
        Store.open(store, mode="a")
    # flock locks an open file, not a process: a second open in the holder's own process is
    # refused too, and closing that attempt's descriptor does not drop the holder's lock
    assert a.ask("open", mode="a", slot="again")["error"] == "StoreLocked"
    assert b.ask("open", mode="a")["error"] == "StoreLocked"

    # read-only opens succeed meanwhile, in the child and here, and answer alike
    assert b.call("open", mode="r")["version"] == v0
    with Store.open(store) as r:
        at_v0 = _json(_answers(r, _queries(store), [0, 150]))
    assert b.call("answers", get=[0, 150]) == at_v0
    assert at_v0["len"] == N_INITIAL and at_v0["rows_read"] > 0

    # the writer commits while readers are open; the reader sees it after refresh only
    v1 = a.call("step", step=["add", N_INITIAL, N_INITIAL + 40])["version"]
    assert v1 >= v0 + 1  # the add, and any merge the policy ran after it
    assert b.call("answers", get=[0])["len"] == N_INITIAL
    assert b.call("refresh")["version"] == v1
    assert b.call("answers", get=[0, 199])["len"] == N_INITIAL + 40

    # close() releases the lock while the process lives on: B becomes the writer
    a.call("close")
    assert b.call("open", mode="a", slot="w")["version"] == v1
    assert _holder(store) == f"pid {b.pid}"
    assert a.ask("open", mode="a")["error"] == "StoreLocked"
    assert b.call("step", slot="w", step=["delete", [0]])["version"] >= v1 + 1


def test_killed_writer_leaves_no_stale_lock(store, spawn):
    a = spawn()
    v0 = a.call("open", mode="a")["version"]
    a.send("commit_forever", lo=N_INITIAL, batch=10)
    announced = [a.recv()["version"] for _ in range(3)]  # killed while it is committing
    assert announced[0] > v0 and announced == sorted(set(announced))
    os.kill(a.pid, signal.SIGKILL)
    assert a.proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert _holder(store) == "unknown"  # no lock outlives its process, and no lock file is left

    with Store.open(store, mode="a") as w:  # at once: the kernel released the dead one's flock
        assert _holder(store) == f"pid {os.getpid()}"
        assert w.version >= announced[-1]
        # every commit the dead writer published is whole: 10 rows each, ids in order
        ids = w.ids()
        grown = ids.size - N_INITIAL
        assert grown >= 30 and grown % 10 == 0
        np.testing.assert_array_equal(ids, np.arange(N_INITIAL + grown))
        w.delete([0])
        w.compact()
    assert check_store(store) == []


def test_reader_process_keeps_its_version_until_refresh(store, spawn):
    queries = _queries(store)
    pinned_get = [0, 5, 42, 120]  # all deleted, and their files compacted away, below
    with Store.open(store) as r0:
        at_v = _json(_answers(r0, queries, pinned_get))
    r, w = spawn(), spawn()
    assert r.call("open", mode="r")["version"] == at_v["version"]
    assert r.call("answers", get=pinned_get) == at_v
    assert at_v["rows_read"] > 0  # its searches read rows from the dense files

    w.call("open", mode="a")
    top_hits = sorted({i for row in at_v["hits"] for i in row})
    steps = [
        ["add", N_INITIAL, N_INITIAL + 60],
        ["delete", sorted(set(range(50)) | set(top_hits) | {120})],
        ["compact"],  # rewrites (and removes) every segment file R's version reads
        ["add", N_INITIAL + 60, N_INITIAL + 100],
        ["delete", list(range(100, 110))],
        ["compact"],
    ]
    version = at_v["version"]
    for step in steps:
        now = w.call("step", step=step)["version"]
        assert now > version  # the step, and any merge the policy ran after it
        version = now
        assert r.call("answers", get=pinned_get) == at_v, f"after {step[0]}"
    names = set(os.listdir(store))
    assert not names & {"seg-000000000001.vzs", "seg-000000000002.vzs",
                        "dense-000000000001.arrow", "dense-000000000002.arrow"}

    newest = version
    assert r.call("refresh")["version"] == newest
    live = set(range(N_INITIAL + 100)) - set(steps[1][1]) - set(steps[4][1])
    with Store.open(store) as r1:
        at_new = _json(_answers(r1, queries, [min(live), max(live)]))
    assert r.call("answers", get=[min(live), max(live)]) == at_new
    assert at_new["ids"] == sorted(live) and at_new["hits"] != at_v["hits"]
    gone = r.ask("answers", get=[0])  # deleted in the new version
    assert gone["key_error"] and "id 0 " in gone["msg"], gone


def _churn_plan(n_commits: int, live: set[int], seed: int) -> list[list]:
    """Adds of 20 new rows, deletes of 8 live ids, and a compact every fifth commit (after
    at least one delete, so every step is one commit)."""
    rng = np.random.default_rng(seed)
    live, nxt, plan = set(live), N_INITIAL, []
    for i in range(n_commits):
        if i % 5 == 4:
            plan.append(["compact"])
        elif i % 2 == 0:
            plan.append(["add", nxt, nxt + 20])
            live |= set(range(nxt, nxt + 20))
            nxt += 20
        else:
            victims = sorted(int(v) for v in rng.choice(sorted(live), 8, replace=False))
            plan.append(["delete", victims])
            live -= set(victims)
    assert nxt <= N_BASE
    return plan


def test_readers_only_ever_see_whole_committed_versions(store, spawn, tmp_path):
    n_commits, n_readers = 30, 3
    with Store.open(store) as s:
        v0 = s.version
        states = {v0: s.ids().tolist()}
    plan = _churn_plan(n_commits, set(states[v0]), seed=3)
    readers = [spawn() for _ in range(n_readers)]
    writer = spawn()
    writer.call("open", mode="a")
    stop = tmp_path / "stop"
    outs = [tmp_path / f"snapshots-{i}.jsonl" for i in range(n_readers)]
    for r, out in zip(readers, outs):
        r.send("watch", stop=str(stop), out=str(out))
    for r in readers:  # every reader is looping before the first commit
        assert r.recv() == {"started": True}

    journal = tmp_path / "journal.jsonl"
    try:
        assert writer.call("churn", plan=plan, journal=str(journal))["version"] >= v0 + n_commits
    finally:
        stop.touch()  # also on failure, so the readers end their loops
    counts = [r.recv()["snapshots"] for r in readers]

    last = v0
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        # a step is a commit, possibly followed by merges of the policy: same live ids
        for v in range(last + 1, entry["version"] + 1):
            states[v] = entry["ids"]
        last = entry["version"]
    assert len(states) >= n_commits + 1
    for v in mf.list_versions(store):  # the journal agrees with each retained version's manifest
        assert mf.read_manifest(store, v)["counts"]["live"] == len(states[v])

    snapshots = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    assert len(snapshots) == sum(counts) and min(counts) >= 1
    for snap in snapshots:
        assert "error" not in snap, snap
        ids = states.get(snap["version"])
        assert ids is not None, f"version {snap['version']} was never committed"
        assert snap["ids"] == ids and snap["len"] == len(ids), f"version {snap['version']} seen partly"
        hits = np.array(snap["hits"])
        assert set(hits.ravel().tolist()) <= set(ids)  # >= K live rows: no -1 slot
        assert hits[:, 0].tolist() == snap["probe"]  # each probe finds its own vector
        assert snap["get_diff"] == 0.0
    seen = {snap["version"] for snap in snapshots}
    assert len(seen) >= 2, f"readers saw only versions {sorted(seen)}: they did not overlap the commits"
    print(f"{len(snapshots)} reader snapshots of {len(seen)} distinct versions checked "
          f"(per reader {counts})")


def test_two_writer_processes_race_and_exactly_one_wins(store, spawn):
    pair = [spawn(), spawn()]
    lo = N_INITIAL
    for _ in range(3):
        for p in pair:  # both commands are written back to back: the opens race
            p.send("open", mode="a")
        answers = [p.recv() for p in pair]
        winners = [i for i, ans in enumerate(answers) if "error" not in ans]
        assert len(winners) == 1, answers
        win, lose = pair[winners[0]], pair[1 - winners[0]]
        assert answers[1 - winners[0]]["error"] == "StoreLocked"
        assert "another writer holds the store" in answers[1 - winners[0]]["msg"]
        win.call("step", step=["add", lo, lo + 10])
        assert lose.ask("open", mode="a")["error"] == "StoreLocked"
        win.call("close")
        lose.call("open", mode="a")
        lose.call("step", step=["add", lo + 10, lo + 20])
        lose.call("close")
        lo += 20
    with Store.open(store) as s:
        np.testing.assert_array_equal(s.ids(), np.arange(lo))
    assert check_store(store) == []


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
