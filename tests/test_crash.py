"""Crash safety: a writer process SIGKILLed at random moments of add, delete, compact and of
the commit itself leaves the store at exactly its last committed version.

One store lives through every kill; each writer continues from whatever survived the last
one, so later kills hit bigger stores and longer compactions. What is checked after every
kill (README "The store", formats/FORMAT.md "Commit protocol"):

1. a read-only `Store.open` succeeds and shows the newest manifest's version, which is the
   last version the writer journaled, or one more when the writer died after publishing a
   commit and before journaling it (then the state is the in-flight operation's result);
2. nothing committed is lost and nothing uncommitted shows: the sorted live ids and their
   exact vectors (`Store.get`) hash to the digest the writer journaled for that version;
3. `check_store` reports no problem while the dead writer's leftovers are still there;
   exact searches (every live row re-ranked) return the query's own id first and the
   brute-force distances;
4. a writer `Store.open(mode="a")` succeeds at once (the kernel released the dead writer's
   flock on the store directory) and applies the retention rule: the directory then holds
   only the retained manifests and the files they name (no temporary manifest, no stray).

Operations are followed by the merges the size-tiered policy asks for (each a commit of its
own) and every commit by garbage collection (pruning manifests beyond ``retain`` and the
files only they named), so kills also land inside merges and pruning; they are counted
apart and must occur.

How the writer dies. The test file runs itself as a script (``python tests/test_crash.py``):
a server process imports the engine and warms its kernels once, then forks one writer per
kill on request, so a kill costs milliseconds instead of an interpreter start. A writer
journals (flush + fsync) an "intent" line with the expected result before each operation
and a "done" line with the committed version and its digest after it. Two kinds of kill:

- hook kills, deterministic: the writer wraps ``os.fsync``, ``os.link`` and ``os.unlink``
  (its own process only; engine code is untouched) and, at the n-th call of one of them
  from a chosen operation on, reports the call on stdout and waits; the test then sends
  SIGKILL. The targets walk every file-system step of a training add, an add, a delete, a
  compaction and a calibration (the commit of auto's error model): before each data file's fsync, the directory fsync, the temporary
  manifest's fsync, the ``link`` that publishes, the temporary name's unlink, the final
  directory fsync, the removal of the files a compaction replaced, and after the call
  returned but before the journal line. Whether the ``link`` had happened decides the
  version that must be visible, exactly;
- timer kills, random: the test sends SIGKILL after a seeded random delay spread over a few
  measured operation lengths, so kills also land inside encoding, file writes and
  bookkeeping. Where they landed is read back from the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vecz.engine import Store, StoreLocked, check_store
from vecz.engine.errors import VeczError
from vecz.formats import manifest as mf
from vecz.formats.body import body_files, parse_body

DIM = 16
SPEC = "SQ8"              # cheap kernels, already compiled by tests/test_store.py
METRIC = "l2"             # a stored vector is its own nearest neighbour at distance exactly 0
SEED = 20_250_611
TIMER_KILLS = 30
MIN_KILLS = 50
MAX_OPS = 60              # a timer-killed writer stops (and waits) after this many operations
TIMEOUT = 120.0           # seconds the server or a writer may take to answer on a busy machine
TMP_NAME = re.compile(r"\.MANIFEST-[0-9]{12}\.[0-9]+\.[0-9a-f]+\.tmp")      # FORMAT.md
DATA_NAME = re.compile(r"(seg|dense|del|codec)-[0-9]{12}\.(vzs|arrow)")    # FORMAT.md

# Hook targets: (operation forced at the hook's op, os call, n-th call from that op on).
# The calls of each operation, in order (FORMAT.md "Commit protocol" as store.py does it):
#   training add: fsync codec, seg, dense, dir, tmp manifest; link; unlink tmp; fsync dir
#   add:          fsync seg, dense, dir, tmp manifest; link; unlink tmp; fsync dir
#   delete:       fsync del (one per segment touched), dir, tmp manifest; link; unlink tmp; fsync dir
#   compact:      fsync seg (and dense when copied), dir, tmp manifest; link; unlink tmp; fsync dir
#   calibrate:    fsync model, dir, tmp manifest; link; unlink tmp; fsync dir (auto's error model)
# then garbage collection: unlink pruned manifests, fsync dir, unlink unnamed files; then
# the merges due (each: fsync seg [, dense], dir, tmp manifest; link; unlink tmp; fsync dir;
# garbage collection). "return" is the moment the call has returned, before the writer
# journals it.
TRAINING_TARGETS = [("add", "fsync", 2), ("add", "fsync", 5), ("add", "link", 1), ("add", "unlink", 1)]
TARGETS = (
    [("add", "fsync", n) for n in (1, 2, 3, 4, 5)] + [("add", "link", 1), ("add", "unlink", 1), ("add", "return", 1)]
    + [("delete", "fsync", n) for n in (1, 2, 3, 4)] + [("delete", "link", 1), ("delete", "unlink", 1),
                                                         ("delete", "return", 1)]
    + [("compact", "fsync", n) for n in (1, 2, 3, 4, 5)] + [("compact", "link", 1), ("compact", "return", 1)]
    + [("compact", "unlink", n) for n in (1, 2, 3)]
    # deeper into an operation: pruning (the unlinks after the first) and the merges after
    # an add (its fsyncs past the add's own five)
    + [("add", "unlink", n) for n in (2, 3, 5)] + [("delete", "unlink", n) for n in (2, 4)]
    + [("add", "fsync", n) for n in (6, 7, 8, 9, 11)] + [("add", "link", 2), ("delete", "link", 2)] * 2
    + [("delete", "fsync", n) for n in (5, 6, 7)]
    + [("calibrate", "fsync", n) for n in (1, 2, 3, 4)] + [("calibrate", "link", 1), ("calibrate", "unlink", 1),
                                                            ("calibrate", "return", 1)]
)
# Targets past an add's own commit: their writer runs a compaction and two adds just before
# the forced add (`_plan`), so the store holds three tier-0 segments and the add's fourth
# starts a merge (engine/merge.py): the hook then lands inside that merge whatever the random
# operations before left (else a merge followed about one add in three).
MERGE_TARGETS = frozenset([("add", "fsync", n) for n in (6, 7, 8, 9, 11)] + [("add", "link", 2)])


# ---------------------------------------------------------------------------- shared helpers


def _digest(ids: np.ndarray, vectors: np.ndarray) -> dict[str, Any]:
    """The live state as the journal records it: count and a hash of the sorted ids and
    their float32 vectors."""
    h = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return {"n": int(ids.size), "digest": h.hexdigest()[:32]}


def _say(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, unbuffered (a buffered line would be written twice after fork)."""
    os.write(1, (json.dumps(obj) + "\n").encode())


def _wait_for_kill() -> None:
    while True:
        signal.pause()


# ---------------------------------------------------------------------------- the writer side


class _Hook:
    """Wraps os.fsync / os.link / os.unlink in this process. Once armed, the n-th call of
    `name` (or the n-th return of an operation, name "return") reports itself and waits for
    SIGKILL before the call runs. Tracks whether the current operation already linked its
    manifest (published its commit)."""

    def __init__(self, name: str | None, n: int) -> None:
        self.name, self.left = name, n
        self.armed = False
        self.op = ""
        self.committed = False
        self.links = 0
        for fn in ("fsync", "link", "unlink"):
            setattr(os, fn, self._wrap(fn, getattr(os, fn)))

    def _wrap(self, fn: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.event(fn, _describe(fn, args))
            out = real(*args, **kwargs)
            if fn == "link" and mf.MANIFEST_RE.fullmatch(os.path.basename(args[1])):
                self.committed = True
                self.links += 1
            return out
        return call

    def begin(self, op: str, armed: bool) -> None:
        self.op, self.committed, self.armed, self.links = op, False, armed, 0

    def event(self, fn: str, what: str) -> None:
        if self.armed and fn == self.name:
            self.left -= 1
            if self.left == 0:
                _say({"hook": fn, "file": what, "op": self.op, "committed": self.committed, "links": self.links})
                _wait_for_kill()


def _describe(fn: str, args: tuple) -> str:
    if fn == "fsync":
        target = os.readlink(f"/proc/self/fd/{args[0]}")
        return "<dir>" if os.path.isdir(target) else os.path.basename(target)
    return os.path.basename(os.fspath(args[-1] if fn == "link" else args[0]))


def _plan(rng: np.random.Generator, forced: str | None, at: int, merge: bool = False) -> list[str]:
    """Operation kinds of one writer: random, with `forced` at index `at`, preceded by an add
    (before a delete) or an add and a delete (before a compact) so that it has work; with
    `merge` (an add, at >= 3) by a compaction and two adds, so that the add starts a merge
    (`MERGE_TARGETS`); a calibrate by an add (rows to measure the model on)."""
    kinds = [str(k) for k in rng.choice(["add", "delete", "compact"], size=MAX_OPS, p=[0.45, 0.35, 0.2])]
    if forced is not None:
        kinds[at] = forced
        if merge:
            kinds[at - 3:at] = ["compact", "add", "add"]
        elif forced == "calibrate":
            kinds[at - 1] = "add"
        elif forced in ("delete", "compact"):
            kinds[at - 1] = "add" if forced == "delete" else "delete"
            kinds[at - 2] = "add"
    return kinds


def _next(rng: np.random.Generator, kind: str, ids: np.ndarray, vecs: np.ndarray, min_add: int = 1):
    """The arguments of one operation and the live state after it (the writer's model); an
    add adds `min_add` to 30 rows."""
    if kind == "add":
        n = int(rng.integers(min_add, 31))
        hi = (int(ids.max()) + 1 if ids.size else 0) + 2 * n
        free = np.setdiff1d(np.arange(hi), ids)  # deleted ids come back with new vectors
        new = np.sort(rng.choice(free, n, replace=False))
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        all_ids = np.concatenate([ids, new])
        order = np.argsort(all_ids)
        return (x, new), all_ids[order], np.concatenate([vecs, x])[order]
    if kind == "delete":
        n = int(rng.integers(1, max(2, ids.size // 4)))
        gone = rng.choice(ids, min(n, ids.size), replace=False) if ids.size else ids
        arg = np.concatenate([gone, [int(ids.max()) + 5 if ids.size else 3]])  # an unknown id is ignored
        keep = ~np.isin(ids, gone)
        return arg, ids[keep], vecs[keep]
    return None, ids, vecs


def _writer(cmd: dict[str, Any]) -> None:
    """One writer: open the store, journal its state, run operations until killed."""
    _say({"pid": os.getpid()})
    real_fsync = os.fsync
    rng = np.random.default_rng([cmd["seed"], cmd["launch"]])
    forced, name, n, at = cmd["target"] or (None, None, 0, 0)
    hook = _Hook(name, n)
    store = Store.open(cmd["path"], mode="a")
    ids = store.ids()
    vecs = store.get(ids) if ids.size else np.empty((0, DIM), np.float32)
    jfd = os.open(cmd["journal"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def journal(entry: dict[str, Any]) -> None:
        os.write(jfd, (json.dumps({**entry, "t": time.monotonic()}) + "\n").encode())
        real_fsync(jfd)

    journal({"kind": "start", "version": store.version, **_digest(ids, vecs)})
    _say({"started": True})
    kinds = _plan(rng, forced, at, (forced, name, n) in MERGE_TARGETS)
    for m, kind in enumerate(kinds):
        # before a calibration 30 rows: enough pairs (bounds.MIN_PAIRS) for a model to commit
        calibrating = m + 1 < len(kinds) and kinds[m + 1] == "calibrate"
        arg, after_ids, after_vecs = _next(rng, kind, ids, vecs, 30 if calibrating else 1)
        journal({"kind": "intent", "op": kind, "from": store.version, **_digest(after_ids, after_vecs)})
        hook.begin(kind, armed=forced is not None and m >= at)
        if kind == "add":
            store.add(arg[0], ids=arg[1])
        elif kind == "delete":
            store.delete(arg)
        elif kind == "calibrate":
            store.calibrate()  # commits auto's error model: the rows stay as they were
        else:
            store.compact()
        hook.event("return", kind)
        ids, vecs = after_ids, after_vecs
        journal({"kind": "done", "op": kind, "version": store.version, **_digest(ids, vecs)})
    _say({"idle": True})


def _serve(warm: str) -> None:
    """Warm every kernel a writer uses on a throwaway store, then fork one writer per JSON
    command read from stdin; report each writer's death. A writer never exits by itself (it
    waits to be killed, also after an error), so its pid cannot be reused before the test
    kills it."""
    rng = np.random.default_rng(0)
    with Store.create(warm, dim=DIM, metric=METRIC, codec=SPEC, dense="f32") as s:
        s.add(rng.standard_normal((20, DIM)).astype(np.float32))
        s.add(rng.standard_normal((20, DIM)).astype(np.float32))
        s.delete([1, 2])
        s.compact()
        s.get(s.ids())
        s.calibrate()  # the search kernels it measures with
    _say({"ready": True})
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                _writer(json.loads(line))
            except BaseException:  # noqa: BLE001 (reported to the test, which fails with it)
                _say({"error": traceback.format_exc()})
            _wait_for_kill()
        _, status = os.waitpid(pid, 0)
        _say({"exit": pid, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})


# ---------------------------------------------------------------------------- the test side


class _Server:
    """The forking server (see `_serve`), read line by line with a timeout."""

    def __init__(self, warm: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed by stop())
        # Forked writers may run parallel kernels the server warmed: GNU OpenMP aborts a forked
        # child that uses it again, numba's workqueue layer is fork-safe.
        env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, str(warm)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._buf = b""
        self.writer: int | None = None
        assert self.recv() == {"ready": True}

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """The next line, or None if none arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self._log.flush()
                raise AssertionError(f"crash server exited; stderr:\n{self.log_path.read_text()[-3000:]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def expect(self, key: str, where: str) -> dict[str, Any]:
        msg = self.recv()
        assert msg is not None and key in msg, f"{where}: expected {key!r} from the writer, got {msg}"
        return msg

    def launch(self, cmd: dict[str, Any], where: str) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        self.writer = self.expect("pid", where)["pid"]
        self.expect("started", where)

    def kill(self, where: str) -> None:
        os.kill(self.writer, signal.SIGKILL)
        msg = self.expect("exit", where)
        assert msg == {"exit": self.writer, "signal": signal.SIGKILL}, f"{where}: {msg}"
        self.writer = None

    def stop(self) -> None:
        if self.writer is not None:
            try:
                os.kill(self.writer, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stdin.close()  # end of input: the server exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


@dataclass
class _State:
    """What the test knows is committed: the version and its digest."""

    version: int
    digest: dict[str, Any]
    cycles: list[float] = field(default_factory=list)  # measured intent-to-intent seconds


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: a writer killed while writing one leaves a partial last line."""
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def _named(path: Path) -> set[str]:
    """The data files the retained manifests name (FORMAT.md "Manifest body", "Retention")."""
    names: set[str] = set()
    for v in mf.list_versions(path):
        names |= body_files(parse_body(mf.read_manifest(path, v), f"version {v}"))
    return names


def _strays(path: Path) -> list[str]:
    """Files a clean store does not hold: temporary manifests and unnamed data files."""
    named = _named(path)
    return sorted(p.name for p in path.iterdir()
                  if TMP_NAME.fullmatch(p.name) or (DATA_NAME.fullmatch(p.name) and p.name not in named))


def _check_search(store: Store, ids: np.ndarray, vecs: np.ndarray, rng: np.random.Generator, where: str) -> None:
    """Exact searches (every live row re-ranked) find each query's own id at distance 0 and
    the brute-force distances; an auto search answers with live ids."""
    if ids.size == 0:
        scores, found = store.search(rng.standard_normal((2, DIM)).astype(np.float32), 3)
        assert (found == -1).all(), f"{where}: empty store returned ids {found}"
        return
    pick = rng.choice(ids.size, min(4, ids.size), replace=False)
    k = min(5, ids.size)
    scores, found = store.search(vecs[pick], k, rerank=max(k, ids.size))
    assert (found[:, 0] == ids[pick]).all(), f"{where}: top-1 {found[:, 0]} != query ids {ids[pick]}"
    assert np.isin(found, ids).all(), f"{where}: search returned ids that are not live: {found}"
    exact = ((vecs[pick].astype(np.float64)[:, None, :] - vecs[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, :k], rtol=1e-5, atol=1e-5, err_msg=where)
    # auto reads the committed error model, if the version has one (check_store read it too)
    res = store.search(vecs[pick], k, rerank="auto")
    assert np.isin(res.ids, ids).all(), f"{where}: auto search returned ids that are not live: {res.ids}"


def _expected(state: _State, entries: list[dict[str, Any]], hook: dict[str, Any] | None, version: int,
              where: str) -> tuple[dict[str, Any], str]:
    """The digest the store must show after a kill, and where the kill landed."""
    assert entries and entries[0]["kind"] == "start", f"{where}: journal has no start line: {entries[:1]}"
    start = entries[0]
    assert (start["version"], start["n"], start["digest"]) == (state.version, state.digest["n"],
                                                               state.digest["digest"]), (
        f"{where}: the writer opened {start}, the test had verified version {state.version} {state.digest}")
    last = [e for e in entries if e["kind"] != "intent"][-1]
    intent = entries[-1] if entries[-1]["kind"] == "intent" else None
    if intent is None:
        assert hook is None, f"{where}: hook {hook} fired outside an operation"
        assert version == last["version"], f"{where}: killed between operations at version " \
                                           f"{last['version']}, store shows {version}"
        return last, "between operations"
    assert intent["from"] == last["version"], f"{where}: intent {intent} does not follow {last}"
    if hook is not None:
        assert hook["op"] == intent["op"], f"{where}: hook {hook} fired in {intent['op']}"
        committed = hook["committed"]
        # the operation's own commit, then one per merge the policy ran after it
        assert version == intent["from"] + hook["links"], (
            f"{where}: killed at {hook} (manifests linked: {hook['links']}) of {intent['op']} from version "
            f"{intent['from']}; store shows version {version}")
    else:
        assert version >= intent["from"], (
            f"{where}: killed in {intent['op']} from version {intent['from']}; store shows {version}")
        committed = version > intent["from"]
    return (intent if committed else last), f"in {intent['op']}, {'committed' if committed else 'not committed'}"


def _verify(path: Path, state: _State, entries: list[dict[str, Any]], hook: dict[str, Any] | None,
            rng: np.random.Generator, where: str) -> tuple[str, list[str]]:
    """Every after-kill check (module docstring); moves `state` to what survived."""
    strays = _strays(path)
    with Store.open(path) as r:
        assert r.version == mf.list_versions(path)[-1], f"{where}: opened {r.version}, newest manifest differs"
        expect, landed = _expected(state, entries, hook, r.version, where)
        ids = r.ids()
        vecs = r.get(ids) if ids.size else np.empty((0, DIM), np.float32)
        got = _digest(ids, vecs)
        assert got == {"n": expect["n"], "digest": expect["digest"]}, (
            f"{where} ({landed}): version {r.version} holds {got}, journal expects {expect}")
        _check_search(r, ids, vecs, rng, where)
    problems = check_store(path)
    assert problems == [], f"{where} ({landed}): check_store with leftovers {strays}: {problems}"
    with Store.open(path, mode="a") as w:  # raises StoreLocked if the dead writer's lock held
        assert w.version == r.version, f"{where}: writer opened version {w.version}, reader {r.version}"
        assert len(w) == got["n"]
    named = _named(path)
    files = {p.name for p in path.iterdir()}
    manifests = {n for n in files if mf.MANIFEST_RE.fullmatch(n)}
    assert len(manifests) <= parse_body(mf.read_manifest(path), "newest").retain, f"{where}: {sorted(manifests)}"
    assert files == manifests | named, (
        f"{where} ({landed}): after the writer opened, expected only the retained manifests and {sorted(named)}; "
        f"found also {sorted(files - manifests - named)} (leftovers before: {strays})")
    state.version, state.digest = r.version, got
    intents = [e["t"] for e in entries if e["kind"] == "intent"]
    state.cycles += list(np.diff(intents))
    return landed, strays


def _schedule(rng: np.random.Generator) -> list[tuple | None]:
    """Hook targets (the training ones first: they need an untrained store) and timer kills
    (None), the rest shuffled so both kinds hit small and big stores."""
    rest: list[tuple | None] = list(TARGETS) + [None] * TIMER_KILLS
    rng.shuffle(rest)
    return list(TRAINING_TARGETS) + rest


def test_sigkill_at_random_moments_leaves_last_committed_version(tmp_path):
    path = tmp_path / "store"
    Store.create(path, dim=DIM, metric=METRIC, codec=SPEC, dense="f32").close()
    state = _State(version=1, digest=_digest(np.empty(0, np.int64), np.empty((0, DIM), np.float32)))
    rng = np.random.default_rng(SEED)
    landed: dict[str, int] = {}
    deeper = {"in a merge after the operation committed": 0, "while pruning": 0}  # hook kills, also in landed
    with_strays = with_tmp = 0
    server = _Server(tmp_path / "warm", tmp_path / "server.log")
    t0 = time.perf_counter()
    try:
        schedule = _schedule(rng)
        for k, target in enumerate(schedule):
            where = f"seed {SEED} kill {k} target {target}"
            journal = tmp_path / f"journal-{k:03d}.jsonl"
            at = 0 if k < len(TRAINING_TARGETS) else int(rng.integers(2, 5))  # ops before the hook's op
            if target in MERGE_TARGETS:
                at = max(at, 3)  # room for the compaction and two adds before it
            cmd = {"seed": SEED, "launch": k, "path": str(path), "journal": str(journal),
                   "target": None if target is None else [*target, at]}
            server.launch(cmd, where)
            hook = None
            if target is not None:
                hook = server.expect("hook", where)
                with pytest.raises(StoreLocked, match="another writer holds the store"):
                    Store.open(path, mode="a")  # the paused writer holds the lock until it dies
            else:
                # spread over about three operations of the size measured so far
                span = 3 * float(np.median(state.cycles)) if state.cycles else 0.1
                msg = server.recv(timeout=float(rng.uniform(0, span)))
                assert msg is None, f"{where}: writer said {msg} before the kill"
            server.kill(where)
            try:
                how, strays = _verify(path, state, _read_journal(journal), hook, rng, where)
            except (VeczError, KeyError) as exc:  # the store did not open, check or read back
                raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
            kind = "hook" if hook else "timer"
            landed[f"{kind} {how}"] = landed.get(f"{kind} {how}", 0) + 1
            if hook and hook["links"] and (hook["hook"] == "link" or (
                    hook["hook"] == "fsync" and re.match(r"seg-|dense-", hook["file"]))):
                deeper["in a merge after the operation committed"] += 1
            if hook and hook["links"] and hook["hook"] == "unlink" and not TMP_NAME.fullmatch(hook["file"]):
                deeper["while pruning"] += 1
            with_strays += bool(strays)
            with_tmp += any(TMP_NAME.fullmatch(name) for name in strays)
    finally:
        server.stop()
    n_kills = sum(landed.values())
    summary = (f"{n_kills} kills in {time.perf_counter() - t0:.1f} s, final version {state.version} with "
               f"{state.digest['n']} live rows; {with_strays} kills left files to collect, {with_tmp} a temporary "
               f"manifest; where they landed: {landed}; hook kills {deeper}")
    print(summary)  # shown by pytest only on failure (or with -rP)
    assert n_kills == len(schedule) >= MIN_KILLS, summary
    # the hooks walked every commit window: uncommitted and committed kills in each operation
    for op in ("add", "delete", "compact", "calibrate"):
        assert landed.get(f"hook in {op}, not committed", 0) >= 3, summary
        assert landed.get(f"hook in {op}, committed", 0) >= 3, summary
    assert with_strays >= 10 and with_tmp >= 8, summary
    assert deeper["in a merge after the operation committed"] >= 3, summary  # 4 targets land in one
    assert deeper["while pruning"] >= 2, summary
    # timer kills are not all between operations
    assert sum(v for key, v in landed.items() if key.startswith("timer in")) >= TIMER_KILLS // 4, summary
    assert state.version > 40, summary


if __name__ == "__main__":
    _serve(sys.argv[1])
