"""Soak run of the store: one writer and several readers in separate processes, every
sampled search checked against brute force over the version it searched.

Not part of the test suite (bench/ is not collected; a run takes minutes). The run:

1. builds (or with ``--reuse`` reopens) a store of ``--rows`` synthetic vectors in batches of
   ``--build-batch`` rows, each batch one commit. Vector ``i`` is a pure function of
   (seed, i): a mixture of ``--centres`` Gaussian centres plus noise with a decaying spectrum
   in a random basis (so IVF lists and quantizers have structure to find), generated in
   blocks of `BLOCK` ids from a per-block seed. Any process can recompute any vector.
2. starts one writer and ``--readers`` readers (``python bench/soak.py --child ...``), each
   saying ``ready`` on its stdout; the parent then sends ``go <deadline>`` on their stdin.
3. The writer adds new ids, deletes random live ids (keeping the live count near its start)
   and compacts every ``--compact-every`` seconds, at most ``--writer-rate`` commits per
   second. After each commit it appends the version and what changed to ``journal.jsonl``
   and fsyncs it.
4. Each reader searches random query batches, refreshing to the newest version every
   ``--refresh-every`` seconds. One search in ``--verify-every`` is checked once the journal
   reaches the version it searched: the version's live ids (start ids + journal), the exact
   scores of those ids' regenerated vectors, and per query
   - every returned id is live in that version, with no repeats, and slots are -1 only when
     the version holds fewer than k live rows;
   - each returned score equals the exact score of its id (re-ranking is exact) and the
     scores are in order;
   - recall@k against the exact top-k (an id tied with the k-th exact score counts) is at
     least ``--recall-floor`` on the batch's mean, and 1.0 for every query when the search
     is exhaustive (no IVF or nprobe = nlist, and rerank >= the live count).
5. When the writer exits the parent tells the readers (``writer-done``) to finish their
   pending checks; every child prints one JSON report line. The parent then runs
   `check_store`, compares the store's final live ids with the journal's, prints a summary
   and writes ``--out``. Exit status 1 when anything failed.

    python bench/soak.py                                  # 10 min on 1M x 64, IVF1024,RB2
    python bench/soak.py --minutes 0.5 --rows 50000 --work /tmp/vecz-soak-small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vecz.engine import Store, check_store

BLOCK = 4096  # ids per generator block: vector i comes from block i // BLOCK's own seed
NEVER = np.iinfo(np.int64).max  # add/delete version of an id that was not added/deleted
CONFIG = "soak-config.json"
DATA = "soak-data.json"
START = "soak-start.json"
START_IDS = "soak-start-ids.npy"
JOURNAL = "journal.jsonl"
MAX_FAILURE_TEXTS = 20  # failure messages kept per process (all are counted)


# ---------------------------------------------------------------------------- synthetic data


@dataclass(frozen=True)
class DataSpec:
    """What determines every vector; stored beside the store so --reuse can check it."""

    seed: int
    dim: int
    centres: int
    spread: float
    decay: float


class Generator:
    """vector(i) for any id i, identical in every process.

    x = c[a] + spread * (z * decay**j) @ Q: c are N(0, 1) centres, a a uniform centre
    choice, z standard normal and Q a random orthonormal basis, all drawn from the seed
    (per block of `BLOCK` ids for a and z). The decaying spectrum keeps most of the spread
    in a few directions, as in real embeddings; isotropic noise at dim 64 made the
    neighbours within a cluster almost equidistant (recall@10 of IVF1024,RB1 at R=100 on
    1M rows: 0.65 with isotropic noise of scale 0.6, 0.81 with the defaults).
    """

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0])
        self.centres = rng.standard_normal((spec.centres, spec.dim), dtype=np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((spec.dim, spec.dim)))
        scale = spec.spread * spec.decay ** np.arange(spec.dim)
        self.mix = np.ascontiguousarray(basis * scale[:, None], dtype=np.float32)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n vectors of the mixture from `rng` (float32 (n, dim))."""
        which = rng.integers(len(self.centres), size=n)
        noise = rng.standard_normal((n, self.spec.dim), dtype=np.float32)
        return self.centres[which] + noise @ self.mix

    def vectors(self, lo: int, hi: int) -> np.ndarray:
        """Vectors of ids lo .. hi-1."""
        first, last = lo // BLOCK, -(-hi // BLOCK)
        blocks = [self.draw(np.random.default_rng([self.spec.seed, 1, b]), BLOCK) for b in range(first, last)]
        whole = np.concatenate(blocks) if blocks else np.empty((0, self.spec.dim), np.float32)
        return whole[lo - first * BLOCK: hi - first * BLOCK]


# ---------------------------------------------------------------------------- journal


class JournalWriter:
    """Appends one JSON line per commit and fsyncs it before the next operation."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class JournalReader:
    """Returns the complete lines appended since the last call (a line being written by
    the writer stays in the buffer until its newline arrives)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line]


class History:
    """For every id: the version that added it and the version that deleted it (NEVER if
    not), from the start ids and the journal. Live at version v: added <= v < deleted."""

    def __init__(self, start_version: int, start_ids: np.ndarray, next_id: int) -> None:
        size = max(next_id, 1)
        self.added = np.full(size, NEVER, dtype=np.int64)
        self.deleted = np.full(size, NEVER, dtype=np.int64)
        self.added[start_ids] = start_version
        self.next_id = next_id
        self.version = start_version  # newest version the journal has reached

    def _grow(self, n: int) -> None:
        if n > len(self.added):
            size = max(n, 2 * len(self.added))
            for name in ("added", "deleted"):
                old = getattr(self, name)
                new = np.full(size, NEVER, dtype=np.int64)
                new[: len(old)] = old
                setattr(self, name, new)

    def apply(self, rec: dict[str, Any]) -> list[str]:
        """Apply one journal record; returns what is inconsistent about it (empty if fine)."""
        v = rec["v"]
        problems = []
        if v <= self.version:  # above + 1 where automatic merges committed versions of their own between
            problems.append(f"journal: version {v} follows {self.version} (expected a later one)")
        if rec["op"] == "add":
            lo, hi = rec["lo"], rec["hi"]
            if lo != self.next_id:
                problems.append(f"journal v{v}: add of ids {lo}..{hi - 1}, expected to start at {self.next_id}")
            self._grow(hi)
            self.added[lo:hi] = v
            self.next_id = max(self.next_id, hi)
        elif rec["op"] == "delete":
            ids = np.asarray(rec["ids"], dtype=np.int64)
            was_live = self.live_at(self.version, ids)
            if not was_live.all():
                problems.append(f"journal v{v}: deletes id {int(ids[~was_live][0])}, not live before")
            self.deleted[ids] = v
        self.version = v
        return problems

    def live_at(self, v: int, ids: np.ndarray) -> np.ndarray:
        inside = (ids >= 0) & (ids < self.next_id)
        safe = np.where(inside, ids, 0)
        return inside & (self.added[safe] <= v) & (self.deleted[safe] > v)

    def live_mask(self, v: int) -> np.ndarray:
        """Boolean over ids 0 .. next_id-1."""
        n = self.next_id
        return (self.added[:n] <= v) & (self.deleted[:n] > v)


# ---------------------------------------------------------------------------- exact search


class Oracle:
    """The regenerated vectors of ids 0 .. n-1 and exact scores over them."""

    def __init__(self, gen: Generator, metric: str, n: int) -> None:
        self.gen = gen
        self.metric = metric
        self.x = np.empty((0, gen.spec.dim), dtype=np.float32)
        self.sq = np.empty(0, dtype=np.float32)  # squared norms (l2) or inverse norms (cosine)
        self.n = 0
        self.ensure(n)

    def ensure(self, n: int) -> None:
        if n <= self.n:
            return
        if n > len(self.x):  # grow by half again, so a run of small adds copies rarely
            cap = max(n, len(self.x) + len(self.x) // 2)
            x = np.empty((cap, self.gen.spec.dim), dtype=np.float32)
            x[: self.n] = self.x[: self.n]
            sq = np.empty(cap, dtype=np.float32)
            sq[: self.n] = self.sq[: self.n]
            self.x, self.sq = x, sq
        new = self.gen.vectors(self.n, n)
        self.x[self.n: n] = new
        sq = np.einsum("ij,ij->i", new, new)
        self.sq[self.n: n] = 1 / np.sqrt(sq) if self.metric == "cosine" else sq
        self.n = n

    def better(self) -> int:
        """+1 when higher scores are better (cosine, ip), -1 for l2."""
        return -1 if self.metric == "l2" else 1

    def exact(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """float64 scores of one query against ids, as the store defines them."""
        x = self.x[ids].astype(np.float64)
        q = q.astype(np.float64)
        if self.metric == "l2":
            return ((x - q) ** 2).sum(axis=1)
        dots = x @ q
        if self.metric == "cosine":
            dots = dots / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
        return dots

    def top(self, q: np.ndarray, live: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-k (ids, float64 scores best first) of each query over the live ids:
        a float32 pass over all rows keeps 2k candidates, re-scored in float64. The pass
        ranks by a score that differs from the metric by a per-query constant (|q| for
        cosine, |q|^2 for l2), higher is better."""
        n = len(live)
        self.ensure(n)
        prod = q @ self.x[:n].T  # (nq, n) float32
        if self.metric == "cosine":
            prod *= self.sq[:n]
        elif self.metric == "l2":
            prod = 2 * prod - self.sq[:n]
        prod[:, ~live] = -np.inf
        keep = min(2 * k, int(live.sum()))
        out = []
        for i in range(len(q)):
            if keep == 0:
                out.append((np.empty(0, np.int64), np.empty(0)))
                continue
            cand = np.argpartition(prod[i], n - keep)[n - keep:]
            scores = self.exact(q[i], cand)
            order = np.argsort(-self.better() * scores, kind="stable")[:k]
            out.append((cand[order], scores[order]))
        return out


def check_batch(oracle: Oracle, history: History, v: int, q: np.ndarray, scores: np.ndarray,
                ids: np.ndarray, k: int, floor: float, exhaustive_at: int | None) -> dict[str, Any]:
    """The checks of the module docstring for one searched batch at version v.

    Returns {"mismatches": [...], "recall": [...per query], "recall_low": str | None}."""
    live = history.live_mask(v)
    n_live = int(live.sum())
    truth = oracle.top(q, live, k)
    exhaustive = exhaustive_at is not None and exhaustive_at >= n_live
    sign = oracle.better()
    bad: list[str] = []
    recalls = []
    for i in range(len(q)):
        row, got = ids[i], scores[i].astype(np.float64)
        where = f"v{v} query {i}"
        filled = min(k, n_live)
        if (row[:filled] < 0).any() or (row[filled:] != -1).any():
            bad.append(f"{where}: expected {filled} results then -1, found ids {row.tolist()}")
        found = row[row >= 0]
        if len(np.unique(found)) != len(found):
            bad.append(f"{where}: repeated ids {found.tolist()}")
        is_live = history.live_at(v, found)
        if not is_live.all():
            bad.append(f"{where}: ids {found[~is_live].tolist()} are not live in v{v}")
            recalls.append(0.0)
            continue
        exact = oracle.exact(q[i], found)
        tol = 1e-5 * np.maximum(1.0, np.abs(exact))
        off = np.abs(got[: len(found)] - exact) > tol
        if off.any():
            j = int(np.argmax(off))
            bad.append(f"{where}: id {int(found[j])} scored {float(got[j]):.7g}, exact {float(exact[j]):.7g}")
        if (np.diff(sign * got[: len(found)]) > 1e-6).any():
            bad.append(f"{where}: scores out of order {got.tolist()}")
        true_ids, true_scores = truth[i]
        if len(true_ids) == 0:
            recalls.append(1.0)
            continue
        kth = true_scores[-1]
        slack = 1e-6 * max(1.0, abs(kth))
        hits = int((sign * (exact - kth) >= -slack).sum())
        recalls.append(min(hits, len(true_ids)) / len(true_ids))
    low = None
    if exhaustive and min(recalls, default=1.0) < 1.0:
        low = f"v{v}: exhaustive search (rerank >= {n_live} live rows) missed exact neighbours: recall {recalls}"
    elif not exhaustive and recalls and float(np.mean(recalls)) < floor:
        low = f"v{v}: batch recall@{k} {np.mean(recalls):.3f} < floor {floor}"
    return {"mismatches": bad, "recall": recalls, "recall_low": low}


# ---------------------------------------------------------------------------- children


def handshake_ready() -> float:
    """Say ready on stdout; block until the parent's 'go <deadline>' line (time.time() units)."""
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        raise SystemExit(f"expected 'go <deadline>' from the parent, found {line!r}")
    return float(line[1])


class Failures:
    def __init__(self) -> None:
        self.count = 0
        self.texts: list[str] = []

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.texts) < MAX_FAILURE_TEXTS:
            self.texts.append(text)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def run_writer(work: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    start = json.loads((work / START).read_text())
    start_ids = np.load(work / START_IDS, allow_pickle=False)
    gen = Generator(DataSpec(**cfg["data"]))
    rng = np.random.default_rng([cfg["data"]["seed"], 5])
    fails = Failures()
    store = Store.open(work / "store", mode="a")
    if store.version != start["version"] or len(store) != len(start_ids):
        fails.add(f"writer opened v{store.version} with {len(store)} live rows, "
                  f"expected v{start['version']} with {len(start_ids)}")
    alive = np.zeros(max(store.next_id, 1), dtype=bool)
    alive[start_ids] = True
    target = len(start_ids)
    journal = JournalWriter(work / JOURNAL)
    ops = {"adds": 0, "rows_added": 0, "deletes": 0, "rows_deleted": 0, "compacts": 0, "compacts_noop": 0,
           "commits": 0}
    ms: dict[str, list[float]] = {"add": [], "delete": [], "compact": []}
    deadline = handshake_ready()
    t_go = time.time()
    interval = 1.0 / cfg["writer_rate"] if cfg["writer_rate"] > 0 else 0.0
    next_slot = time.monotonic()
    last_compact = time.monotonic()
    while time.time() < deadline:
        # Pacing (not synchronisation): the writer would otherwise take a whole core.
        wait = next_slot - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max(0.0, deadline - time.time())))
            if time.time() >= deadline:
                break
        next_slot = max(next_slot + interval, time.monotonic())
        n_alive = int(alive.sum())
        if time.monotonic() - last_compact >= cfg["compact_every"]:
            op = "compact"
        elif n_alive > target * 1.01 or n_alive == 0:
            op = "delete" if n_alive else "add"
        elif n_alive < target * 0.99:
            op = "add"
        else:
            op = "add" if rng.random() < 0.5 else "delete"
        before = store.version
        t = time.perf_counter()
        try:
            if op == "add":
                lo = store.next_id
                hi = lo + cfg["add_batch"]
                got = store.add(gen.vectors(lo, hi))
                if not np.array_equal(got, np.arange(lo, hi)):
                    fails.add(f"add returned ids {got[:3]}..., expected {lo}..{hi - 1}")
                record = {"op": "add", "lo": lo, "hi": hi}
                if hi > len(alive):
                    alive = np.concatenate([alive, np.zeros(max(hi - len(alive), len(alive) // 2), bool)])
                alive[lo:hi] = True
                ops["adds"] += 1
                ops["rows_added"] += hi - lo
            elif op == "delete":
                live_ids = np.flatnonzero(alive)
                pick = live_ids[rng.choice(len(live_ids), size=min(cfg["delete_batch"], len(live_ids)),
                                           replace=False)]
                pick.sort()
                n = store.delete(pick)
                if n != len(pick):
                    fails.add(f"delete of {len(pick)} live ids deleted {n}")
                record = {"op": "delete", "ids": pick.tolist()}
                alive[pick] = False
                ops["deletes"] += 1
                ops["rows_deleted"] += len(pick)
            else:
                store.compact()
                last_compact = time.monotonic()
                record = {"op": "compact"}
                ops["compacts"] += 1
        except Exception as exc:  # noqa: BLE001 - a failed commit is a finding; keep going to see more
            fails.add(f"writer {op}: {type(exc).__name__}: {exc}")
            continue
        ms[op].append((time.perf_counter() - t) * 1e3)
        if store.version == before:
            if op == "compact":
                ops["compacts_noop"] += 1
                continue
            fails.add(f"writer {op} left the version at {before}")
            continue
        # the operation's own commit is version before + 1; automatic merges may follow it as
        # commits of their own (engine/writes.py), which change no live row
        record["v"] = before + 1
        journal.append(record)
        ops["commits"] += 1
    t_end = time.time()
    if len(store) != int(alive.sum()):
        fails.add(f"writer ends with {len(store)} live rows, its own count is {int(alive.sum())}")
    report = {"role": "writer", "seconds": t_end - t_go, "ops": ops, "version_end": store.version,
              "live_end": len(store), "op_ms": {k: percentiles(v) for k, v in ms.items()},
              "failures": fails.count, "failure_texts": fails.texts}
    journal.close()
    store.close()
    return report


class Reader:
    """One reader process: search, refresh, verify the sampled batches."""

    def __init__(self, work: Path, cfg: dict[str, Any], index: int) -> None:
        self.work, self.cfg, self.index = work, cfg, index
        start = json.loads((work / START).read_text())
        start_ids = np.load(work / START_IDS, allow_pickle=False)
        self.gen = Generator(DataSpec(**cfg["data"]))
        self.rng = np.random.default_rng([cfg["data"]["seed"], 7, index])
        self.fails = Failures()
        self.store = Store.open(work / "store")
        self.history = History(start["version"], start_ids, start["next_id"])
        self.journal = JournalReader(work / JOURNAL)
        self.oracle = Oracle(self.gen, self.store.metric, start["next_id"])
        nlist = self.store.codec.nlist
        self.nprobe = cfg["nprobe"] or max(1, nlist // 8)
        exhaustive = nlist == 1 or self.nprobe == nlist
        self.exhaustive_at = cfg["rerank"] if exhaustive else None
        self.pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.counts = {"searches": 0, "queries": 0, "refreshes": 0, "verified_searches": 0,
                       "verified_queries": 0, "mismatches": 0, "recall_below_floor": 0}
        self.seconds = {"search": 0.0, "refresh": 0.0, "verify": 0.0}  # where the reader's time went
        self.latency_ms: list[float] = []
        self.refresh_ms: list[float] = []
        self.recalls: list[float] = []
        self.batch_recalls: list[float] = []
        self.versions: set[int] = set()
        self._check_vectors(start_ids)

    def _check_vectors(self, start_ids: np.ndarray) -> None:
        """The store must hold the generator's vectors (else --reuse met other data)."""
        sample = self.rng.choice(start_ids, size=min(64, len(start_ids)), replace=False) if len(start_ids) else start_ids
        if len(sample) and not np.array_equal(self.store.get(sample), self.oracle.x[sample]):
            self.fails.add("the store's vectors differ from the generator's (other --seed/--dim/--centres?)")

    def catch_up(self) -> None:
        for rec in self.journal.poll():
            for problem in self.history.apply(rec):
                self.fails.add(problem)

    def verify_ready(self) -> None:
        """Check the pending batches whose version the journal has reached."""
        if not self.pending:
            return
        t = time.perf_counter()
        self.catch_up()
        keep = []
        for item in self.pending:
            if item[0] > self.history.version:
                keep.append(item)
                continue
            v, q, scores, ids = item
            out = check_batch(self.oracle, self.history, v, q, scores, ids, self.cfg["k"],
                              self.cfg["recall_floor"], self.exhaustive_at)
            self.counts["verified_searches"] += 1
            self.counts["verified_queries"] += len(q)
            self.counts["mismatches"] += len(out["mismatches"])
            for text in out["mismatches"]:
                self.fails.add(f"reader {self.index}: {text}")
            self.recalls += out["recall"]
            self.batch_recalls.append(float(np.mean(out["recall"])))
            if out["recall_low"]:
                self.counts["recall_below_floor"] += 1
                self.fails.add(f"reader {self.index}: {out['recall_low']}")
        self.pending = keep
        self.seconds["verify"] += time.perf_counter() - t

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        deadline = handshake_ready()
        t_go = time.time()
        next_refresh = time.monotonic() + cfg["refresh_every"]
        while time.time() < deadline and self.fails.count < 1000:
            try:
                if time.monotonic() >= next_refresh:
                    t = time.perf_counter()
                    self.store.refresh()
                    self.refresh_ms.append((time.perf_counter() - t) * 1e3)
                    self.seconds["refresh"] += self.refresh_ms[-1] / 1e3
                    self.counts["refreshes"] += 1
                    next_refresh = time.monotonic() + cfg["refresh_every"]
                q = self.gen.draw(self.rng, cfg["batch"])
                t = time.perf_counter()
                res = self.store.search(q, cfg["k"], nprobe=self.nprobe, rerank=cfg["rerank"])
                self.latency_ms.append((time.perf_counter() - t) * 1e3)
                self.seconds["search"] += self.latency_ms[-1] / 1e3
            except Exception as exc:  # noqa: BLE001 - a failed search or refresh is a finding; keep going
                self.fails.add(f"reader {self.index}: {type(exc).__name__}: {exc}")
                continue
            self.counts["searches"] += 1
            self.counts["queries"] += len(q)
            self.versions.add(self.store.version)
            if self.counts["searches"] % cfg["verify_every"] == 0:
                self.pending.append((self.store.version, q, res.scores.copy(), res.ids.copy()))
            self.verify_ready()
        t_end = time.time()
        # The writer may not have journaled the newest version yet: wait for the parent's
        # word that it exited, then the journal is complete.
        line = sys.stdin.readline().strip()
        if line != "writer-done":
            self.fails.add(f"reader {self.index}: expected 'writer-done' from the parent, found {line!r}")
        self.verify_ready()
        for v, *_ in self.pending:
            self.fails.add(f"reader {self.index}: searched v{v}, which the journal never reached "
                           f"(journal ends at v{self.history.version})")
        np.save(self.work / f"latency-reader-{self.index}.npy", np.asarray(self.latency_ms), allow_pickle=False)
        self.store.close()
        return {"role": "reader", "index": self.index, "seconds": t_end - t_go, "busy_s": self.seconds,
                "counts": self.counts,
                "versions_searched": sorted(self.versions), "refresh_ms": percentiles(self.refresh_ms),
                "recall_mean": float(np.mean(self.recalls)) if self.recalls else None,
                "recall_min_batch": min(self.batch_recalls, default=None),
                "failures": self.fails.count, "failure_texts": self.fails.texts}


def child_main(role: str, work: Path, index: int) -> None:
    cfg = json.loads((work / CONFIG).read_text())
    import numba

    numba.set_num_threads(cfg["child_threads"])
    report = run_writer(work, cfg) if role == "writer" else Reader(work, cfg, index).run()
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------------------- parent


def build_or_reuse(args: argparse.Namespace, data: DataSpec, store_dir: Path) -> dict[str, Any]:
    """The store of --rows generated vectors: built in --build-batch commits, or reused."""
    data_file = Path(args.work) / DATA
    made_of = {"data": asdict(data), "codec": args.codec, "metric": args.metric}
    if args.reuse and (store_dir / "MANIFEST-000000000001").exists():
        stored = json.loads(data_file.read_text()) if data_file.exists() else None
        if stored != made_of:
            raise SystemExit(f"--reuse: {store_dir} was built as {stored}, this run asks for {made_of}")
        print(f"reusing {store_dir}", flush=True)
        return {"built": False}
    shutil.rmtree(store_dir, ignore_errors=True)
    gen = Generator(data)
    t_gen = t_add = 0.0
    commits = 0
    with Store.create(store_dir, dim=args.dim, metric=args.metric, codec=args.codec, dense="f32",
                      seed=args.seed) as store:
        for lo in range(0, args.rows, args.build_batch):
            hi = min(args.rows, lo + args.build_batch)
            t = time.perf_counter()
            x = gen.vectors(lo, hi)
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            store.add(x)
            t_add += time.perf_counter() - t
            commits += 1
            print(f"  build: {hi:,} / {args.rows:,} rows, {t_add:.1f} s in add", flush=True)
    data_file.write_text(json.dumps(made_of))
    out = {"built": True, "rows": args.rows, "commits": commits, "generate_s": t_gen, "add_s": t_add,
           "rows_per_s": args.rows / t_add if t_add else None}
    print(f"built {args.rows:,} rows of dim {args.dim} with {args.codec} in {t_add:.1f} s "
          f"({out['rows_per_s']:,.0f} rows/s, {commits} commits; generating took {t_gen:.1f} s)", flush=True)
    return out


def write_start(work: Path, store_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Record the version, live ids and next id the run starts from; warm the kernels."""
    with Store.open(store_dir) as store:
        gen = Generator(DataSpec(**cfg["data"]))
        q = gen.draw(np.random.default_rng([cfg["data"]["seed"], 9]), cfg["batch"])
        nprobe = cfg["nprobe"] or max(1, store.codec.nlist // 8)
        for n in sorted({1, cfg["batch"]}):  # load (or compile) the search kernels once, here
            store.search(q[:n], cfg["k"], nprobe=nprobe, rerank=cfg["rerank"])
        start = {"version": store.version, "next_id": store.next_id, "live": len(store),
                 "spec": store.spec, "metric": store.metric, "dim": store.dim}
        np.save(work / START_IDS, store.ids(), allow_pickle=False)
    (work / START).write_text(json.dumps(start))
    (work / JOURNAL).unlink(missing_ok=True)
    (work / JOURNAL).touch()
    return start


def spawn(work: Path, role: str, index: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--index", str(index), "--work", str(work)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def read_line(proc: subprocess.Popen, what: str) -> str:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} (pid {proc.pid}) exited with {proc.wait()} before saying its line")
    return line.strip()


def final_state(work: Path, store_dir: Path) -> dict[str, Any]:
    """The store's live ids and version against the start ids + journal."""
    start = json.loads((work / START).read_text())
    history = History(start["version"], np.load(work / START_IDS, allow_pickle=False), start["next_id"])
    problems = []
    for rec in JournalReader(work / JOURNAL).poll():
        problems += history.apply(rec)
    with Store.open(store_dir) as store:
        ids, version = store.ids(), store.version
    expected = np.flatnonzero(history.live_mask(history.version))
    if version != history.version:
        problems.append(f"store is at v{version}, the journal ends at v{history.version}")
    if not np.array_equal(ids, expected):
        problems.append(f"store holds {len(ids)} live ids, the journal says {len(expected)} "
                        f"({len(np.setxor1d(ids, expected))} differ)")
    return {"version": version, "live": len(ids), "problems": problems}


def run_parent(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store_dir = work / "store"
    data = DataSpec(args.seed, args.dim, args.centres, args.spread, args.decay)
    cfg = {"data": asdict(data), "k": args.k, "rerank": args.rerank, "nprobe": args.nprobe, "batch": args.batch,
           "verify_every": args.verify_every, "recall_floor": args.recall_floor, "refresh_every": args.refresh_every,
           "add_batch": args.add_batch, "delete_batch": args.delete_batch, "compact_every": args.compact_every,
           "writer_rate": args.writer_rate, "child_threads": args.child_threads}
    (work / CONFIG).write_text(json.dumps(cfg))
    for old in work.glob("latency-reader-*.npy"):
        old.unlink()
    build = build_or_reuse(args, data, store_dir)
    start = write_start(work, store_dir, cfg)
    print(f"start: v{start['version']}, {start['live']:,} live rows, {start['spec']} {start['metric']} "
          f"dim {start['dim']}; {args.readers} readers + 1 writer for {args.minutes} min", flush=True)

    procs = [spawn(work, "writer", 0, args.child_threads)]
    procs += [spawn(work, "reader", i, args.child_threads) for i in range(args.readers)]
    try:
        for i, p in enumerate(procs):
            if read_line(p, f"child {i}") != "ready":
                raise RuntimeError(f"child {i} did not say ready")
        deadline = time.time() + args.minutes * 60
        t_go = time.time()
        for p in procs:
            p.stdin.write(f"go {deadline}\n")
            p.stdin.flush()
        writer = json.loads(read_line(procs[0], "writer"))
        procs[0].wait()
        for p in procs[1:]:
            p.stdin.write("writer-done\n")
            p.stdin.flush()
        readers = [json.loads(read_line(p, f"reader {i}")) for i, p in enumerate(procs[1:])]
        for p in procs[1:]:
            p.wait()
        wall = time.time() - t_go
    finally:
        for p in procs:  # only after a failure are any still running
            if p.poll() is None:
                p.kill()
                p.wait()

    # go -> deadline as each child measured it (the readers' last checks come after it)
    seconds = max(c["seconds"] for c in [writer, *readers])
    problems = check_store(store_dir)
    final = final_state(work, store_dir)
    latency = np.concatenate([np.load(work / f"latency-reader-{i}.npy") for i in range(args.readers)]) \
        if args.readers else np.empty(0)
    n_search = sum(r["counts"]["searches"] for r in readers)
    n_query = sum(r["counts"]["queries"] for r in readers)
    recalls = [r["recall_mean"] for r in readers if r["recall_mean"] is not None]
    verified = sum(r["counts"]["verified_queries"] for r in readers)
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "loadavg_1_5_15_at_end": list(os.getloadavg())},
        "build": build,
        "duration_s": seconds,
        "wall_s_with_final_checks": wall,
        "spec": start["spec"],
        "version_start": start["version"],
        "version_end": final["version"],
        "rows_start": start["live"],
        "rows_end": final["live"],
        "ops": writer["ops"],
        "writer_op_ms": writer["op_ms"],
        "searches": n_search,
        "queries": n_query,
        "searches_per_s": n_search / seconds,
        "queries_per_s": n_query / seconds,
        "search_latency_ms": percentiles(latency.tolist()),
        "refreshes": sum(r["counts"]["refreshes"] for r in readers),
        "reader_busy_s": {part: sum(r["busy_s"][part] for r in readers) for part in ("search", "refresh", "verify")},
        "refresh_ms_p50": [r["refresh_ms"]["p50"] for r in readers],
        "versions_searched": len(set().union(*[r["versions_searched"] for r in readers])) if readers else 0,
        "verified_searches": sum(r["counts"]["verified_searches"] for r in readers),
        "verified_queries": verified,
        "recall_at_k_mean": float(np.average(recalls, weights=[r["counts"]["verified_queries"] for r in readers
                                                                if r["recall_mean"] is not None]))
        if recalls else None,
        "recall_at_k_min_batch": min((r["recall_min_batch"] for r in readers if r["recall_min_batch"] is not None),
                                     default=None),
        "mismatches": sum(r["counts"]["mismatches"] for r in readers),
        "recall_below_floor": sum(r["counts"]["recall_below_floor"] for r in readers),
        "failures": writer["failures"] + sum(r["failures"] for r in readers),
        "failure_texts": writer["failure_texts"] + [t for r in readers for t in r["failure_texts"]],
        "check_store_problems": problems,
        "final_state_problems": final["problems"],
        "children": [writer, *readers],
    }
    summary["ok"] = (summary["mismatches"] == 0 and summary["recall_below_floor"] == 0 and summary["failures"] == 0
                     and not problems and not final["problems"] and summary["verified_searches"] > 0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print_summary(summary, out)
    return 0 if summary["ok"] else 1


def print_summary(s: dict[str, Any], out: Path) -> None:
    ops, lat = s["ops"], s["search_latency_ms"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    print(f"\nsoak {s['spec']}: {s['duration_s']:.1f} s, v{s['version_start']} -> v{s['version_end']}, "
          f"live rows {s['rows_start']:,} -> {s['rows_end']:,}")
    print(f"  writer: {ops['commits']} commits = {ops['adds']} adds ({ops['rows_added']:,} rows), "
          f"{ops['deletes']} deletes ({ops['rows_deleted']:,} ids), {ops['compacts']} compacts")
    print(f"  readers: {s['searches']:,} searches ({s['queries']:,} queries), {s['searches_per_s']:.1f} searches/s, "
          f"latency p50 {fmt(lat['p50'])} ms p99 {fmt(lat['p99'])} ms; {s['refreshes']} refreshes, "
          f"{s['versions_searched']} versions searched")
    busy = s["reader_busy_s"]
    print(f"  reader time: search {busy['search']:.1f} s, refresh {busy['refresh']:.1f} s (p50 "
          f"{', '.join(fmt(v) for v in s['refresh_ms_p50'])} ms), brute-force checks {busy['verify']:.1f} s")
    print(f"  verified: {s['verified_searches']:,} searches ({s['verified_queries']:,} queries), recall@k mean "
          f"{fmt(s['recall_at_k_mean'])}, worst batch {fmt(s['recall_at_k_min_batch'])}")
    print(f"  mismatches {s['mismatches']}, recall below floor {s['recall_below_floor']}, failures {s['failures']}, "
          f"check_store problems {s['check_store_problems']}, final state problems {s['final_state_problems']}")
    for text in s["failure_texts"][:10]:
        print(f"    {text}")
    print(f"  {'OK' if s['ok'] else 'FAILED'}; JSON: {out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the concurrent phase")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the built store")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--metric", default="cosine", choices=("cosine", "ip", "l2"))
    p.add_argument("--codec", default="IVF1024,RB2",
                   help="codec spec (1M x 64 built in 17.6 s on 2 cores; recall@10 0.98 at R=100)")
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--work", default="/tmp/vecz-soak", help="directory of the store, journal and run files")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the store in --work as it is (same data, codec and metric; --rows is ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "soak.json"))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank", type=int, default=100)
    p.add_argument("--nprobe", type=int, default=None, help="default: the store's (nlist // 8)")
    p.add_argument("--batch", type=int, default=8, help="queries per search call")
    p.add_argument("--verify-every", type=int, default=10, help="check one search in this many")
    p.add_argument("--recall-floor", type=float, default=0.8, help="minimum mean recall@k of a checked batch")
    p.add_argument("--refresh-every", type=float, default=2.0, help="seconds between a reader's refreshes")
    p.add_argument("--add-batch", type=int, default=1000, help="rows per add commit")
    p.add_argument("--delete-batch", type=int, default=1000, help="ids per delete commit")
    p.add_argument("--compact-every", type=float, default=60.0, help="seconds between compactions")
    p.add_argument("--writer-rate", type=float, default=4.0, help="max commits per second (0: no limit)")
    p.add_argument("--build-batch", type=int, default=100_000, help="rows per commit while building")
    p.add_argument("--centres", type=int, default=1000, help="mixture centres of the synthetic data")
    p.add_argument("--spread", type=float, default=1.5, help="noise scale of the first direction")
    p.add_argument("--decay", type=float, default=0.95, help="noise scale ratio of direction j+1 to j")
    p.add_argument("--child-threads", type=int, default=1, help="Numba/BLAS threads per child process")
    p.add_argument("--child", choices=("writer", "reader"), help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, Path(args.work), args.index)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
