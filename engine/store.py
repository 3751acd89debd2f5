"""The tiered store: compact codes in RAM, exact vectors on disk, re-ranking of the shortlist.

A store is a directory (formats/FORMAT.md, "Store directory"): one immutable manifest per
committed version naming the codec file, the segments (codes, ids, IVF lists), their dense
files (Arrow IPC, the exact vectors) and a cumulative deletes file. Every mutating call
(`train`, `add`, `delete`, `compact`) is one commit: new files are written under fresh names
and fsynced, the directory is fsynced, and the next manifest is published by an exclusive
link, so a crash leaves the previous version whole and a reader never sees half a commit.

In RAM an open store holds the codec's trained arrays, one scan layout of the live rows'
codes (`vecz.engine.codecs.CodeIndex`, built with ``keep_rows=False``) whose ids are global row
numbers, and the user id of every row (8 bytes). Dense files are memory-mapped and read a
shortlist at a time: `search(..., rerank=R)` takes the R best rows by code score, reads
exactly those rows (each batch deduplicated and sorted by file offset) and returns the top
k by exact score. `SearchResult.stats` reports candidates scored, lists probed and the rows
and bytes read from disk.

Deletes are recorded as (segment, row) pairs, so an id deleted and added again names the
new row only; `compact()` rewrites the segments that hold deleted rows (and merges small
ones). One writer at a time holds an `fcntl` lock on ``LOCK`` (released by the kernel when
its process dies, so a killed writer leaves no stale lock); readers take no lock and pin the
version they opened until `refresh()`.

Thread-safety: searches may run from several threads once the store is open; `add`,
`delete`, `compact`, `refresh` and `close` must not run concurrently with anything else on
the same object.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import fcntl
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import manifest as mf
from ..formats import segment as sg
from ..formats.dense import DenseInfo, DenseReader, check_dense, write_dense
from ..formats.errors import StoreCorrupted, StoreNotFound

from ..kernels import dense as dense_kernels

from .codecs import METRICS, RB, Codec, CodeIndex, SearchResult, SearchStats, _as_vectors
from .inputs import asarray as _asarray
from .errors import CodecSpecError, IdNotFound, InvalidInput, ReadOnlyStore, StoreClosed, StoreLocked, VeczError

__all__ = ["Store", "check_store"]

FORMAT_ID = "vecz.store"
DENSE_CHOICES = ("f32", "f16", "none")
_DATA_FILE = re.compile(r"(seg|dense|del|codec)-[0-9]{12}\.(vzs|arrow)")
_MAX_ID = (1 << 63) - 1
# compact() merges consecutive segments while the merged one stays within this many rows:
# bounded so that rewriting a segment (codes and dense rows) fits in RAM.
COMPACT_MAX_ROWS = 1 << 20
_RESCORE = {"ip": dense_kernels.RESCORE_IP, "cosine": dense_kernels.RESCORE_COSINE, "l2": dense_kernels.RESCORE_L2}


def _release_free_memory() -> None:
    """Return freed heap pages to the OS after building the scan layout (glibc only).

    Building the layout allocates several transient copies of the codes; glibc keeps freed
    chunks below its (adaptive) mmap threshold in the heap, which showed as 26 MB of RSS
    beyond the 8.7 MB the store holds after opening 117,647 RB1 vectors."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Segment:
    serial: int
    file: str
    rows: int
    min_id: int
    max_id: int
    dense: DenseInfo | None
    reader: DenseReader | None = None


def _get(body: dict, key: str, kind: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    value = body.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StoreCorrupted(f"{where}: field {key!r}: expected {name}, found {value!r:.80}")
    return value


def _plain_name(name: str, where: str) -> str:
    if not _DATA_FILE.fullmatch(name):
        raise StoreCorrupted(f"{where}: expected a data file name like 'seg-000000000001.vzs', found {name!r:.80}")
    return name


def _named_files(body: dict) -> tuple[list[str], list[Any], list[str]]:
    """What a manifest body names, tolerating malformed records: segment-format files
    (codec, deletes, codes), dense records, and a problem per malformed segment record."""
    files: list[str] = []
    dense: list[Any] = []
    problems: list[str] = []
    codec_rec = body.get("codec") if isinstance(body.get("codec"), dict) else {}
    deletes = body.get("deletes") if isinstance(body.get("deletes"), dict) else {}
    files += [f for f in (codec_rec.get("file"), deletes.get("file")) if isinstance(f, str)]
    segments = body.get("segments") if isinstance(body.get("segments"), list) else []
    for i, rec in enumerate(segments):
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str):
            problems.append(f"segment record {i} is malformed")
            continue
        files.append(rec["file"])
        if rec.get("dense") is not None:
            dense.append(rec["dense"])
    return files, dense, problems


def _as_ids(ids: Any, what: str) -> np.ndarray:
    arr = _asarray(ids, what, "a 1-D array of integer ids")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInput(f"{what}: expected a 1-D array of integer ids, found shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidInput(f"{what}: expected integer ids, found dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > _MAX_ID:
        raise InvalidInput(f"{what}: ids must fit int64, found {arr.max()}")
    return arr.astype(np.int64)


class Store:
    """A vector store on disk (see the module docstring). Use `Store.create` or `Store.open`.

    ``scores, ids = store.search(queries, k)`` works like faiss's ``D, I = index.search``.
    """

    def __init__(self, path: Path, mode: str) -> None:  # private: use create() / open()
        self.path = path
        self.mode = mode
        self._lock_fd: int | None = None
        # Before re-scoring, ask the kernel for every shortlisted row's pages at once
        # (MADV_WILLNEED), so that rows not in the page cache are read concurrently instead
        # of one page fault after another: one-query cold p50 3.7 -> 0.8 ms, warm 0.34 ->
        # 0.42 ms (IVF1024,RB1, R=50, wordnet-minilm). The call costs ~1.5 us per row, a
        # third of a warm batch's time, so None (auto) prefetches for fewer than
        # CodeIndex.PARALLEL_MIN_QUERIES queries only; True or False forces it.
        self.prefetch: bool | None = None
        self._mutex = threading.Lock()
        self._segments: list[_Segment] = []
        self._closed = False
        self._reset_memory()

    def _reset_memory(self) -> None:
        self._index: CodeIndex | None = None
        self._fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._all_ids = np.empty(0, dtype=np.int64)
        self._starts = np.zeros(1, dtype=np.int64)
        self._dead: dict[int, np.ndarray] = {}
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        dim: int | None = None,
        metric: str | None = None,
        codec: "str | Codec" = "RB2",
        dense: str | None = "f32",
        seed: int = 0,
        train_size: int = 65536,
        rotation: str = "itq",
    ) -> "Store":
        """Create an empty store in a new (or empty) directory and open it for appending.

        Parameters
        ----------
        dim : width of the vectors (may be omitted when `codec` is a `Codec`)
        metric : "cosine" (default), "ip" or "l2" (a `Codec` brings its own)
        codec : spec string of the in-memory codes (DESIGN.md), e.g. "RB2",
            "IVF1024,PQ48x8"; or a `Codec`, trained or not (e.g. `Codec.from_faiss(index)`):
            a trained one is committed with the store's first version and never retrained.
        dense : "f32", "f16" or None/"none" (no disk tier: searches cannot re-rank)
        seed, train_size, rotation : passed to `Codec` (with a spec string only)
        """
        dense = "none" if dense is None else dense
        if dense not in DENSE_CHOICES:
            raise InvalidInput(f"dense: expected one of {DENSE_CHOICES} or None, found {dense!r}")
        given = codec if isinstance(codec, Codec) else None
        if given is not None:
            for name, value, own in (("dim", dim, given.dim), ("metric", metric, given.metric)):
                if value is not None and value != own:
                    raise InvalidInput(f"{name}: the codec given is for {name} {own!r}, found {name}={value!r}")
            dim, metric = given.dim, given.metric
        metric = "cosine" if metric is None else metric
        if metric not in METRICS:
            raise InvalidInput(f"metric: expected one of {METRICS}, found {metric!r}")
        if dim is None:
            raise InvalidInput("dim: expected the width of the vectors (an integer >= 1), found None")
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise InvalidInput(f"dim: expected an integer >= 1, found {dim!r}")
        if given is None:
            given = Codec(codec, int(dim), metric, seed=seed, train_size=train_size, rotation=rotation)
        config = given.to_config()
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InvalidInput(f"{path}: expected a new or empty directory, found an existing "
                               f"{'non-empty directory' if path.is_dir() else 'file'}")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, "a")
        store._acquire_lock()
        try:
            codec_file = None
            if given.is_trained:
                codec_file = "codec-000000000001.vzs"
                sg.write_segment(path / codec_file, "codec", given.state(), meta=config)
                mf.fsync_dir(path)
            body = {
                "format": FORMAT_ID,
                "version": 1,
                "parent": None,
                "created": _now(),
                "dim": int(dim),
                "metric": metric,
                "dense": dense,
                "codec": {"config": config, "file": codec_file},
                "segments": [],
                "deletes": None,
                "next_id": 0,
                "next_serial": 1,
                "counts": {"rows": 0, "live": 0},
            }
            mf.write_manifest(path, 1, body)
            store._load(mf.read_manifest(path, 1))
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str = "r", version: int | None = None) -> "Store":
        """Open a store. ``mode="r"`` (default) reads, ``mode="a"`` also appends (one
        writer at a time: a second gets `StoreLocked`). ``version`` pins an older committed
        version (read-only)."""
        if mode not in ("r", "a"):
            raise InvalidInput(f"mode: expected 'r' or 'a', found {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise StoreNotFound(f"{path}: no store directory here")
        if mode == "a" and version is not None:
            raise InvalidInput("version= opens a past version read-only; it cannot be combined with mode='a'")
        store = cls(path, mode)
        try:
            if mode == "a":
                store._acquire_lock()
                store._collect_garbage()
            store._open_version(version)
        except BaseException:
            store.close()
            raise
        return store

    def _open_version(self, version: int | None) -> None:
        # A writer may compact (and delete the files of) the version a reader is about to
        # load; then the reader retries on the newest version.
        for attempt in range(8):
            body = mf.read_manifest(self.path, version)
            try:
                self._load(body)
                return
            except StoreCorrupted as exc:
                newest = mf.list_versions(self.path)
                if version is not None or not newest or newest[-1] == body["version"] or attempt == 7:
                    raise exc
                self._close_readers()

    def refresh(self) -> int:
        """Load the newest committed version (readers pin theirs until they call this).
        Returns the version now loaded."""
        self._check_open("refresh")
        self._close_readers()
        self._reset_memory()
        self._open_version(None)
        return self.version

    # ------------------------------------------------------------------ loading

    def _load(self, body: dict) -> None:
        self._fresh = {}  # codes read by a failed earlier attempt are not this version's
        where = f"{self.path} version {body.get('version')!r}"
        if body.get("format") != FORMAT_ID:
            raise StoreCorrupted(f"{where}: expected format {FORMAT_ID!r}, found {body.get('format')!r:.80}")
        self.version = _get(body, "version", int, where)
        self.dim = _get(body, "dim", int, where)
        self.metric = _get(body, "metric", str, where)
        self.dense = _get(body, "dense", str, where)
        if self.metric not in METRICS or self.dense not in DENSE_CHOICES or self.dim < 1:
            raise StoreCorrupted(f"{where}: bad dim/metric/dense {self.dim!r}/{self.metric!r}/{self.dense!r}")
        self.next_id = _get(body, "next_id", int, where)
        self.next_serial = _get(body, "next_serial", int, where)
        self.created = body.get("created")
        codec_rec = _get(body, "codec", dict, where)
        config = _get(codec_rec, "config", dict, where)
        codec_file = _get(codec_rec, "file", str, where, nullable=True)
        try:
            codec = Codec.from_config(config)
            if codec.dim != self.dim or codec.metric != self.metric:
                raise CodecSpecError(f"codec is for dim {codec.dim} / {codec.metric}")
            if codec_file is not None:
                arrays, _ = sg.read_segment(self.path / _plain_name(codec_file, where), kind="codec")
                codec = Codec.from_config(config, arrays)
        except (CodecSpecError, InvalidInput) as exc:
            raise StoreCorrupted(f"{where}: codec record does not load: {exc}") from None
        self.codec = codec
        self._codec_file = codec_file
        self._body = body

        segments = []
        for i, rec in enumerate(_get(body, "segments", list, where)):
            w = f"{where} segment {i}"
            rec = rec if isinstance(rec, dict) else {}
            dense_rec = rec.get("dense")
            seg = _Segment(
                serial=_get(rec, "serial", int, w),
                file=_plain_name(_get(rec, "file", str, w), w),
                rows=_get(rec, "rows", int, w),
                min_id=_get(rec, "min_id", int, w),
                max_id=_get(rec, "max_id", int, w),
                dense=None if dense_rec is None else DenseInfo.from_json(dense_rec, w),
            )
            if (seg.dense is None) != (self.dense == "none"):
                raise StoreCorrupted(f"{w}: dense record present={seg.dense is not None} but store dense={self.dense!r}")
            if seg.dense is not None and (seg.dense.rows != seg.rows or seg.dense.dim != self.dim
                                          or seg.dense.dtype != self.dense):
                raise StoreCorrupted(f"{w}: dense file holds {seg.dense.rows} x {seg.dense.dim} {seg.dense.dtype}, "
                                     f"expected {seg.rows} x {self.dim} {self.dense}")
            segments.append(seg)
        if segments and not self.codec.is_trained:
            raise StoreCorrupted(f"{where}: segments without a trained codec")
        if len({s.serial for s in segments}) != len(segments):
            raise StoreCorrupted(f"{where}: two segments share a serial number")
        self._segments = segments
        self._deletes_rec = body.get("deletes")

        # Ids of every row, then the dead rows, then the scan layout of the live rows. Each
        # segment file is read once: its codes wait in _fresh for _build_index.
        ids_parts = []
        for seg in segments:
            ids, codes, lists = self._read_codes(seg)
            ids_parts.append(ids)
            self._fresh[seg.serial] = (codes, lists)
        self._all_ids = np.concatenate(ids_parts) if ids_parts else np.empty(0, dtype=np.int64)
        self._starts = np.zeros(len(segments) + 1, dtype=np.int64)
        np.cumsum([s.rows for s in segments], out=self._starts[1:])
        self._dead = {}
        if self._deletes_rec is not None:
            drec = _get(body, "deletes", dict, where)
            dfile = _plain_name(_get(drec, "file", str, where), where)
            arrays, _ = sg.read_segment(self.path / dfile, kind="deletes")
            rows = arrays.get("rows")
            if rows is None or rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 2:
                raise StoreCorrupted(f"{self.path / dfile}: expected section 'rows' int64 (n, 2)")
            by_serial = {s.serial: s for s in segments}
            for serial in np.unique(rows[:, 0]):
                seg = by_serial.get(int(serial))
                dead = np.unique(rows[rows[:, 0] == serial, 1])
                if seg is None or (dead.size and (dead[0] < 0 or dead[-1] >= seg.rows)):
                    raise StoreCorrupted(f"{self.path / dfile}: deleted rows name a segment or row the manifest lacks")
                self._dead[int(serial)] = dead
        for seg in segments:
            if seg.dense is not None:
                seg.reader = DenseReader(self.path, seg.dense)
        self._index = None
        self._build_index()

    def _read_codes(self, seg: _Segment):
        """ids (rows,), codes (rows, code_size) and lists (rows,) of a segment."""
        if seg.serial in self._fresh:
            codes, lists = self._fresh[seg.serial]
            ids = self._all_ids[self._starts[self._segments.index(seg)]:][: seg.rows]
            return ids, codes, lists
        path = self.path / seg.file
        with sg.open_segment(path, kind="codes") as f:
            ids, codes, lists = f.read("ids"), f.read("codes"), f.read("lists")
        if ids.dtype != np.int64 or ids.shape != (seg.rows,):
            raise StoreCorrupted(f"{path}: expected ids int64 ({seg.rows},), found {ids.dtype} {ids.shape}")
        if seg.rows and (ids.min() != seg.min_id or ids.max() != seg.max_id or ids.min() < 0):
            raise StoreCorrupted(f"{path}: ids span {ids.min()}..{ids.max()}, manifest says {seg.min_id}..{seg.max_id}")
        size = self.codec.code_size
        if codes.dtype != np.uint8 or codes.shape != (seg.rows, size):
            raise StoreCorrupted(f"{path}: expected codes uint8 ({seg.rows}, {size}), found {codes.dtype} {codes.shape}")
        if lists.dtype != np.int64 or lists.shape != (seg.rows,) or (
            lists.size and (lists.min() < 0 or lists.max() >= self.codec.nlist)
        ):
            raise StoreCorrupted(f"{path}: expected lists int64 ({seg.rows},) in [0, {self.codec.nlist})")
        return ids, codes, lists

    def _build_index(self) -> None:
        """The scan layout of the live rows; its ids are global row numbers."""
        if not self.codec.is_trained:
            self._index = None
            return
        codes_parts, lists_parts, rows_parts = [], [], []
        for s, seg in enumerate(self._segments):
            _, codes, lists = self._read_codes(seg)
            live = self._live(seg)
            codes_parts.append(codes[live])
            lists_parts.append(lists[live])
            rows_parts.append(self._starts[s] + live)
        size = self.codec.code_size
        codes = np.concatenate(codes_parts) if codes_parts else np.empty((0, size), dtype=np.uint8)
        lists = np.concatenate(lists_parts) if lists_parts else np.empty(0, dtype=np.int64)
        rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, dtype=np.int64)
        self._index = self.codec.index(codes, lists, rows, keep_rows=False)
        self._fresh = {}
        del codes, lists, rows, codes_parts, lists_parts, rows_parts
        _release_free_memory()

    def _live(self, seg: _Segment) -> np.ndarray:
        """Row numbers (within the segment) of its live rows, ascending."""
        dead = self._dead.get(seg.serial)
        if dead is None:
            return np.arange(seg.rows, dtype=np.int64)
        live = np.ones(seg.rows, dtype=bool)
        live[dead] = False
        return np.flatnonzero(live)

    def _ensure_index(self) -> CodeIndex | None:
        if self._index is None and self.codec.is_trained:
            with self._mutex:
                if self._index is None:
                    self._build_index()
        return self._index

    # ------------------------------------------------------------------ properties

    @property
    def spec(self) -> str:
        return self.codec.spec

    @property
    def n_rows(self) -> int:
        """Rows in the segments, deleted ones included (`len(store)` counts live rows)."""
        return int(self._starts[-1])

    @property
    def n_deleted(self) -> int:
        return int(sum(d.size for d in self._dead.values()))

    def __len__(self) -> int:
        return self.n_rows - self.n_deleted

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, mode={self.mode!r}, version={getattr(self, 'version', None)}, "
                f"dim={getattr(self, 'dim', None)}, metric={getattr(self, 'metric', None)!r}, "
                f"codec={getattr(self, 'codec', None) and self.codec.spec!r}, live={len(self) if hasattr(self, 'codec') else 0})")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ id lookup

    def _live_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted live ids, their global rows); built on first use, dropped on change."""
        if self._lookup is None:
            parts = [self._starts[s] + self._live(seg) for s, seg in enumerate(self._segments)]
            rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            ids = self._all_ids[rows]
            order = np.argsort(ids, kind="stable")
            self._lookup = (ids[order], rows[order])
        return self._lookup

    def _find(self, ids: np.ndarray) -> np.ndarray:
        """Global row of each id, -1 where the id is not live."""
        sorted_ids, rows = self._live_lookup()
        pos = np.searchsorted(sorted_ids, ids)
        pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, rows[pos_c] if len(rows) else -1, -1)

    def __contains__(self, id_: int) -> bool:
        self._check_open("'in'")
        return bool(self._find(np.array([id_], dtype=np.int64))[0] >= 0)

    # ------------------------------------------------------------------ writing

    def _require_writer(self, what: str) -> None:
        if self.mode != "a" or self._lock_fd is None:
            raise ReadOnlyStore(f"{self.path}: {what} needs a store opened with mode='a', this one is read-only")

    def _acquire_lock(self) -> None:
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLocked(f"{self.path}: another writer holds the store ({holder}); "
                                  f"expected no writer, found one") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def _collect_garbage(self) -> None:
        """Writer only: remove temp files and data files no committed version names (what a
        crashed commit left), keeping the files of the newest manifest."""
        mf.remove_tmp_files(self.path)
        versions = mf.list_versions(self.path)
        if not versions:
            return
        files, dense, _ = _named_files(mf.read_manifest(self.path, versions[-1]))
        keep = set(files) | {d.get("file") for d in dense if isinstance(d, dict)}
        for entry in self.path.iterdir():
            if _DATA_FILE.fullmatch(entry.name) and entry.name not in keep:
                entry.unlink(missing_ok=True)

    def _commit(self, changes: dict[str, Any], new_files: list[Path]) -> None:
        """Publish version+1 = this version's body updated with `changes`. On any failure
        the new files are removed and the store stays at its current version."""
        body = dict(self._body)
        body.update(changes)
        body["version"] = self.version + 1
        body["parent"] = self.version
        body["created"] = _now()
        try:
            mf.fsync_dir(self.path)
            mf.write_manifest(self.path, self.version + 1, body)
        except BaseException:
            for p in new_files:
                p.unlink(missing_ok=True)
            raise
        self._body = body
        self.version = body["version"]
        self.next_id = body["next_id"]
        self.next_serial = body["next_serial"]

    def _counts(self, rows: int, dead: int) -> dict[str, int]:
        return {"rows": rows, "live": rows - dead}

    def train(self, sample: Any) -> None:
        """Train the codec on a sample (at most `train_size` rows are used) and commit it.
        Only an empty store can be (re)trained; `add` trains on its first batch otherwise."""
        self._check_open("train")
        self._require_writer("train")
        if self.n_rows:
            raise InvalidInput(f"{self.path}: train needs an empty store (codes already written with the "
                               f"current codec), found {self.n_rows} rows")
        codec = Codec.from_config(self.codec.to_config())
        codec.train(self._vectors(sample, "training sample"))
        self._commit_codec(codec, {})

    def _commit_codec(self, codec: Codec, changes: dict[str, Any], extra_files: list[Path] = ()) -> None:
        name = f"codec-{self.version + 1:012d}.vzs"
        path = self.path / name
        sg.write_segment(path, "codec", codec.state(), meta=codec.to_config())
        changes = dict(changes)
        changes["codec"] = {"config": codec.to_config(), "file": name}
        self._commit(changes, [path, *extra_files])
        self.codec = codec
        self._codec_file = name

    def _vectors(self, x: Any, what: str, column: str | None = None) -> np.ndarray:
        arr = _as_vectors(x, self.dim, what, column)
        if arr.shape[0] == 0:
            raise InvalidInput(f"{what}: expected at least 1 row, found 0")
        return arr

    def add(self, vectors: Any, ids: Any = None, *, column: str | None = None) -> np.ndarray:
        """Add vectors; returns their int64 ids (assigned from `next_id` unless given).
        Durable when it returns: the rows are one committed version.

        Parameters
        ----------
        vectors : (n, dim) float16/32/64 array, or anything `engine.inputs.as_matrix`
            takes: a pyarrow list/fixed-size-list array or table, a pandas Series of arrays
            or DataFrame, a torch/jax tensor (DLPack), an object with ``__array__``.
        ids : (n,) integers >= 0, optional (numpy, pyarrow, pandas, lists).
        column : the vector column when `vectors` is a table or data frame with several.

        Raises `InvalidInput` for NaN/inf, an empty batch, negative or repeated ids, ids
        already live in the store, or a zero vector under cosine; `DimensionMismatch` for
        the wrong width. Nothing is written when it raises.
        """
        self._check_open("add")
        self._require_writer("add")
        x = self._vectors(vectors, "vectors", column)
        n = x.shape[0]
        if ids is None:
            if self.next_id > _MAX_ID - n + 1:
                raise InvalidInput(f"ids: automatic ids {self.next_id}.. for {n} rows exceed int64 (the store "
                                   f"holds id {self.next_id - 1}); expected explicit ids=")
            new_ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        else:
            new_ids = _as_ids(ids, "ids")
            if new_ids.shape != (n,):
                raise InvalidInput(f"ids: expected {n} ids (one per vector), found {new_ids.shape[0]}")
            if new_ids.min() < 0:
                raise InvalidInput(f"ids must be >= 0 (-1 marks an empty result slot), found {int(new_ids.min())}")
            uniq, counts = np.unique(new_ids, return_counts=True)
            if (counts > 1).any():
                raise InvalidInput(f"ids: expected distinct ids, found {int(uniq[counts > 1][0])} "
                                   f"{int(counts.max())} times in the batch")
            present = self._find(new_ids) >= 0
            if present.any():
                raise InvalidInput(f"ids: expected ids not in the store, found id {int(new_ids[present][0])} "
                                   f"already in the store ({int(present.sum())} of the batch are); delete it first")
        if self.dense == "f16":
            big = np.abs(x) > np.finfo(np.float16).max
            if big.any():
                raise InvalidInput(f"dense='f16' stores values up to 65504 in magnitude, found "
                                   f"{float(np.abs(x).max()):.6g} in row {int(np.argwhere(big)[0, 0])}")
        codec = self.codec
        trained_now = not codec.is_trained
        prepared = codec._prepare(x, "vectors")  # normalised once for training and encoding
        if trained_now:
            codec = Codec.from_config(codec.to_config())._fit(prepared)
        codes = codec._encode_prepared(prepared)
        del prepared
        serial = self.next_serial
        seg_name = f"seg-{serial:012d}.vzs"
        written: list[Path] = []
        try:
            seg_path = self.path / seg_name
            sg.write_segment(seg_path, "codes", {"codes": codes.codes, "ids": new_ids, "lists": codes.lists})
            written.append(seg_path)
            dense_info = None
            if self.dense != "none":
                dense_info = write_dense(self.path / f"dense-{serial:012d}.arrow", new_ids, x, self.dense)
                written.append(self.path / dense_info.file)
            rec = {"serial": serial, "file": seg_name, "rows": n, "min_id": int(new_ids.min()),
                   "max_id": int(new_ids.max()), "dense": None if dense_info is None else dense_info.to_json()}
            changes = {
                "segments": list(self._body["segments"]) + [rec],
                "next_id": max(self.next_id, int(new_ids.max()) + 1),
                "next_serial": serial + 1,
                "counts": self._counts(self.n_rows + n, self.n_deleted),
            }
            if trained_now:
                self._commit_codec(codec, changes, written)
            else:
                self._commit(changes, written)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        seg = _Segment(serial, seg_name, n, int(new_ids.min()), int(new_ids.max()), dense_info)
        if dense_info is not None:
            seg.reader = DenseReader(self.path, dense_info)
        self._segments.append(seg)
        self._all_ids = np.concatenate([self._all_ids, new_ids])
        self._starts = np.append(self._starts, self._starts[-1] + n)
        self._fresh[serial] = (codes.codes, codes.lists)
        self._index = None
        self._lookup = None
        return new_ids

    def delete(self, ids: Any) -> int:
        """Delete the live rows with these ids (unknown ids are ignored); returns how many
        were deleted. Durable when it returns; `compact()` reclaims the space."""
        self._check_open("delete")
        self._require_writer("delete")
        ids = np.unique(_as_ids(ids, "ids"))
        rows = self._find(ids)
        rows = rows[rows >= 0]
        if rows.size == 0:
            return 0
        seg_idx = np.searchsorted(self._starts, rows, side="right") - 1
        dead = dict(self._dead)
        for s in np.unique(seg_idx):
            seg = self._segments[s]
            local = rows[seg_idx == s] - self._starts[s]
            dead[seg.serial] = np.union1d(dead.get(seg.serial, np.empty(0, dtype=np.int64)), local)
        self._publish_deletes(dead, {})
        self._index = None
        self._lookup = None
        return int(rows.size)

    def _publish_deletes(self, dead: dict[int, np.ndarray], changes: dict[str, Any],
                         extra_files: list[Path] = ()) -> None:
        pairs = [np.stack([np.full(d.size, serial, dtype=np.int64), d.astype(np.int64)], axis=1)
                 for serial, d in sorted(dead.items()) if d.size]
        changes = dict(changes)
        files = list(extra_files)
        n_dead = int(sum(p.shape[0] for p in pairs))
        if pairs:
            name = f"del-{self.version + 1:012d}.vzs"
            sg.write_segment(self.path / name, "deletes", {"rows": np.concatenate(pairs)})
            files.append(self.path / name)
            changes["deletes"] = {"file": name, "count": n_dead}
        else:
            changes["deletes"] = None
        rows = sum(r["rows"] for r in changes.get("segments", self._body["segments"]))
        changes["counts"] = self._counts(rows, n_dead)
        self._commit(changes, files)
        self._dead = {k: v for k, v in dead.items() if v.size}
        self._deletes_rec = changes["deletes"]

    def compact(self) -> None:
        """Rewrite the segments that hold deleted rows, merging consecutive small segments
        (up to `COMPACT_MAX_ROWS` rows each); publish a version naming only live rows, then
        remove the replaced files. Readers that opened an older version keep working: their
        codes are in RAM and their dense files stay mapped (POSIX keeps unlinked open files)."""
        self._check_open("compact")
        self._require_writer("compact")
        n_live = [seg.rows - self._dead.get(seg.serial, np.empty(0)).size for seg in self._segments]
        groups: list[list[int]] = []
        for s in range(len(self._segments)):
            if groups and sum(n_live[g] for g in groups[-1]) + n_live[s] <= COMPACT_MAX_ROWS:
                groups[-1].append(s)
            else:
                groups.append([s])
        plan = [g for g in groups if len(g) > 1 or self._segments[g[0]].serial in self._dead or n_live[g[0]] == 0]
        if not plan:
            return
        serial = self.next_serial
        new_records: dict[int, dict | None] = {}
        written: list[Path] = []
        replaced: list[_Segment] = []
        try:
            for group in plan:
                codes_p, lists_p, ids_p, vec_p = [], [], [], []
                for s in group:
                    seg = self._segments[s]
                    replaced.append(seg)
                    ids, codes, lists = self._read_codes(seg)
                    rows = self._live(seg)
                    codes_p.append(codes[rows]); lists_p.append(lists[rows]); ids_p.append(ids[rows])
                    if seg.reader is not None:
                        vec_p.append(seg.reader.read_rows(rows))
                ids = np.concatenate(ids_p)
                if ids.size == 0:
                    new_records[group[0]] = None
                    continue
                name = f"seg-{serial:012d}.vzs"
                sg.write_segment(self.path / name, "codes", {"codes": np.concatenate(codes_p),
                                                             "ids": ids, "lists": np.concatenate(lists_p)})
                written.append(self.path / name)
                dense_info = None
                if vec_p:
                    dense_info = write_dense(self.path / f"dense-{serial:012d}.arrow", ids,
                                             np.concatenate(vec_p), self.dense)
                    written.append(self.path / dense_info.file)
                new_records[group[0]] = {"serial": serial, "file": name, "rows": int(ids.size),
                                         "min_id": int(ids.min()), "max_id": int(ids.max()),
                                         "dense": None if dense_info is None else dense_info.to_json()}
                serial += 1
            in_plan = {s for g in plan for s in g}
            records = []
            for s, rec in enumerate(self._body["segments"]):
                if s in new_records:
                    if new_records[s] is not None:
                        records.append(new_records[s])
                elif s not in in_plan:
                    records.append(rec)
            kept_serials = {r["serial"] for r in records}
            dead = {k: v for k, v in self._dead.items() if k in kept_serials}
            self._publish_deletes(dead, {"segments": records, "next_serial": serial}, written)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        # Reload from the new manifest (its files are all on disk), then drop the old files.
        old_files = [self.path / s.file for s in replaced] + [self.path / s.dense.file for s in replaced if s.dense]
        self._close_readers()
        self._reset_memory()
        self._load(self._body)
        for p in old_files:
            p.unlink(missing_ok=True)
        self._collect_garbage()

    # ------------------------------------------------------------------ reading

    def _worst(self) -> float:
        return np.inf if self.metric == "l2" else -np.inf

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        nprobe: int | None = None,
        rerank: int | None = None,
        sdc: bool = False,
    ) -> SearchResult:
        """Top-k of each query: ``scores, ids = store.search(q, k)``.

        Parameters
        ----------
        queries : (nq, dim) or (dim,) float array (float16/32/64, any strides)
        k : results per query; slots beyond the live rows hold id -1 and the worst score
        nprobe : IVF lists visited per query, 1..nlist (default nlist // 8, at least 1: on
            wordnet-minilm the useful range was nlist / 8 .. nlist / 4, recall 0.97-0.98 at R=50)
        rerank : R >= k re-scores the R best candidates by code score with the exact
            vectors read from the dense files (only those rows are read); 0 returns code
            scores. Default: ``max(50, 5 * k)`` with a dense tier, else 0.
        sdc : RB only: symmetric code scoring (query binarized too)

        Returns
        -------
        SearchResult
            ``(scores float32 (nq, k), ids int64 (nq, k))``; scores descending for cosine
            and ip, ascending squared distances for l2; ``.stats`` = candidates scored,
            lists probed, rows and bytes read from disk.
        """
        self._check_open("search")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidInput(f"k must be an integer >= 1, found {k!r}")
        k = int(k)
        nlist = self.codec.nlist
        if nprobe is None:
            nprobe = max(1, nlist // 8)
        if not isinstance(nprobe, (int, np.integer)) or isinstance(nprobe, bool) or not 1 <= nprobe <= nlist:
            raise InvalidInput(f"nprobe must be an integer in 1..{nlist} (the store's IVF lists), found {nprobe!r}")
        if rerank is None:
            rerank = 0 if self.dense == "none" else max(50, 5 * k)
        if not isinstance(sdc, (bool, np.bool_)):
            raise InvalidInput(f"sdc: expected True or False, found {sdc!r}")
        if sdc and not isinstance(self.codec.quantizer, RB):
            raise InvalidInput(f"sdc=True needs an RB codec, found {self.spec!r}")
        if not isinstance(rerank, (int, np.integer)) or isinstance(rerank, bool) or rerank < 0:
            raise InvalidInput(f"rerank must be an integer >= 0, found {rerank!r}")
        if rerank and self.dense == "none":
            raise InvalidInput(f"rerank={rerank} needs a dense tier; this store was created with dense=None "
                               f"(use rerank=0)")
        if 0 < rerank < k:
            raise InvalidInput(f"rerank must be 0 or >= k={k} (it re-scores the R best candidates), found {rerank}")
        x = _as_vectors(queries, self.dim, "queries")
        nq = x.shape[0]
        index = self._ensure_index()
        if index is None or len(index) == 0 or nq == 0:
            scores = np.full((nq, k), self._worst(), dtype=np.float32)
            return SearchResult(scores, np.full((nq, k), -1, dtype=np.int64), SearchStats(0, 0))
        depth = max(k, int(rerank))
        res = index.search(x, depth, nprobe=int(nprobe), sdc=sdc)
        rows = res.ids
        if not rerank:
            ids = np.where(rows >= 0, self._all_ids[np.maximum(rows, 0)], -1)
            return SearchResult(res.scores[:, :k], ids[:, :k], res.stats)
        scores, ids, n_rows, n_bytes = self._rerank(x, rows, k)
        stats = res.stats._replace(rows_read=n_rows, bytes_read=n_bytes)
        return SearchResult(scores, ids, stats)

    def _read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Exact vectors of sorted unique global rows, read segment by segment in file order."""
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        seg_idx = np.searchsorted(self._starts, rows, side="right") - 1
        bounds = np.searchsorted(seg_idx, np.arange(len(self._segments) + 1))
        n_rows = n_bytes = 0
        for s in np.flatnonzero(np.diff(bounds)):
            lo, hi = bounds[s], bounds[s + 1]
            reader = self._segments[s].reader
            before_r, before_b = reader.rows_read, reader.bytes_read
            out[lo:hi] = reader.read_rows(rows[lo:hi] - self._starts[s])
            n_rows += reader.rows_read - before_r
            n_bytes += reader.bytes_read - before_b
        return out, n_rows, n_bytes

    def _rerank(self, x: np.ndarray, rows: np.ndarray, k: int):
        """Exact top-k of each query's shortlist (global rows (nq, R), -1 = empty): each
        dense file's rows are scored in place through its map, in ascending row order."""
        valid = rows >= 0
        ids = np.where(valid, self._all_ids[np.maximum(rows, 0)], -1)
        exact = np.zeros(rows.shape, dtype=np.float64)
        parallel = x.shape[0] >= CodeIndex.PARALLEL_MIN_QUERIES
        rescore = dense_kernels.dense_rescore_batch if parallel else dense_kernels.dense_rescore
        metric = _RESCORE[self.metric]
        n_rows = n_bytes = 0
        if len(self._segments) == 1:
            parts = [(0, rows)]
        else:
            seg_idx = np.where(valid, np.searchsorted(self._starts, rows, side="right") - 1, -1)
            parts = [(int(s), np.where(seg_idx == s, rows - self._starts[s], -1))
                     for s in np.unique(seg_idx[valid])]
        prefetch = self.prefetch if self.prefetch is not None else not parallel
        if prefetch:
            for s, local in parts:
                self._segments[s].reader.will_need(local[local >= 0])
        for s, local in parts:
            reader = self._segments[s].reader
            n = int(rescore(x, reader.values, np.ascontiguousarray(local), metric, exact))
            reader.note_read(n)
            n_rows += n
            n_bytes += n * reader.info.row_bytes
        topk = dense_kernels.rerank_topk_batch if parallel else dense_kernels.rerank_topk
        top_s, top_i = topk(exact, ids, k, self.metric == "l2")
        return top_s, top_i, n_rows, n_bytes

    def get(self, ids: Any) -> np.ndarray:
        """Exact vectors (float32 (n, dim)) of live ids, read from the dense files."""
        self._check_open("get")
        if self.dense == "none":
            raise InvalidInput(f"{self.path}: get() needs a dense tier; this store was created with dense=None")
        ids = _as_ids(ids, "ids")
        rows = self._find(ids)
        if (rows < 0).any():
            raise IdNotFound(f"ids: expected ids live in the store, found id {int(ids[rows < 0][0])} missing "
                             f"({int((rows < 0).sum())} of {ids.size} ids are missing)")
        uniq, inverse = np.unique(rows, return_inverse=True)
        vectors, _, _ = self._read_rows(uniq)
        return vectors[inverse]

    def ids(self) -> np.ndarray:
        """The live ids, ascending."""
        self._check_open("ids")
        return self._live_lookup()[0].copy()

    # ------------------------------------------------------------------ info / close

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held in RAM: codec state, scan layout (codes + their row numbers), row ids."""
        self._check_open("memory_bytes")
        state = sum(a.nbytes for a in self.codec.state().values()) if self.codec.is_trained else 0
        index = self._ensure_index()
        return {"codec": state, "index": index.nbytes if index is not None else 0,
                "ids": int(self._all_ids.nbytes)}

    def info(self) -> dict[str, Any]:
        """Spec, counts, bytes in RAM and on disk, versions (what `vecz info` prints)."""
        self._check_open("info")
        files = {}
        for entry in self.path.iterdir():
            if entry.is_file():
                files[entry.name] = entry.stat().st_size
        named, dense, _ = _named_files(self._body)
        mine = set(named) | {d["file"] for d in dense}
        memory = self.memory_bytes()
        return {
            "path": str(self.path),
            "version": self.version,
            "versions": mf.list_versions(self.path),
            "spec": self.codec.spec,
            "trained": self.codec.is_trained,
            "dim": self.dim,
            "metric": self.metric,
            "dense": self.dense,
            "code_size": self.codec.code_size,
            "rows": self.n_rows,
            "live": len(self),
            "deleted": self.n_deleted,
            "segments": len(self._segments),
            "next_id": self.next_id,
            "ram_bytes": memory,
            "ram_bytes_total": sum(memory.values()),
            "disk_bytes_version": sum(files.get(f, 0) for f in mine),
            "disk_bytes_total": sum(files.values()),
            "dense_bytes": sum(s.dense.nbytes for s in self._segments if s.dense),
        }

    def _close_readers(self) -> None:
        for seg in self._segments:
            if seg.reader is not None:
                seg.reader.close()
                seg.reader = None

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreClosed(f"{self.path}: {what} on a closed store; expected an open one (Store.open again)")

    def close(self) -> None:
        """Release the dense maps and the writer lock. Idempotent; any later call but
        `close` raises `StoreClosed`."""
        self._closed = True
        self._close_readers()
        self._index = None
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None


def check_store(path: str | os.PathLike) -> list[str]:
    """Verify every checksum of the newest version (and that every manifest parses):
    returns the problems found, empty when the store is healthy. Never raises on damage."""
    path = Path(path)
    problems: list[str] = []
    try:
        versions = mf.list_versions(path)
    except VeczError as exc:
        return [str(exc)]
    if not versions:
        return [f"{path}: no manifest (not a vecz store)"]
    for v in versions:
        try:
            mf.read_manifest(path, v)
        except VeczError as exc:
            problems.append(str(exc))
    try:
        body = mf.read_manifest(path, versions[-1])
    except VeczError:
        return problems
    files, dense, malformed = _named_files(body)
    problems += [f"{path}: {p}" for p in malformed]
    dense_infos: list[DenseInfo] = []
    for rec in dense:
        try:
            dense_infos.append(DenseInfo.from_json(rec, f"{path} dense record"))
        except VeczError as exc:
            problems.append(str(exc))
    for name in files:
        if not _DATA_FILE.fullmatch(name):
            problems.append(f"{path}: manifest names a file {name!r:.80} outside the store's naming scheme")
            continue
        problems.extend(sg.check_segment(path / name))
    for info in dense_infos:
        problems.extend(check_dense(path, info))
    if not problems:
        try:
            with Store.open(path) as store:
                if len(np.unique(store.ids())) != len(store):
                    problems.append(f"{path}: live ids are not unique")
        except (VeczError, KeyError) as exc:
            problems.append(f"{path}: store does not load: {exc}")
    return problems

