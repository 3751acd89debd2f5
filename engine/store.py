"""The tiered store: compact codes in RAM, exact vectors on disk, re-ranking of the shortlist.

A store is a directory (formats/FORMAT.md, "Store directory"): one immutable manifest per
committed version naming the codec file, the segments (codes, ids, IVF lists), the dense
files holding their exact vectors (Arrow IPC) and each segment's deletion file. Every
mutating call (`train`, `add`, `delete`, `compact`, and the merges the policy runs after
them) is one commit (engine/commit.py): new files written and fsynced under fresh names,
then the next manifest linked into place, so a crash leaves the previous version whole and
a reader never sees half a commit.

In RAM an open store holds the codec's trained arrays and, per segment (engine/segments.py),
its scan layout, its user ids (8 bytes a row) and where each row's exact vector lives (4
bytes a row for a segment of 64 rows or more, whose dense file holds its rows in locality
order; 6 for a merged segment over several dense files). A segment's layout is built once
and kept across commits and `refresh()`; deletes mark rows dead in place. A commit therefore costs
O(rows changed): an add encodes and writes its rows as a new segment, a delete rewrites
the deletion files of the segments it touches, and a size-tiered merge policy
(engine/merge.py) keeps the segment count logarithmic with bounded work per commit.
Search (engine/search.py) prepares the queries once, scans every segment, merges the
shortlists and re-ranks the merged shortlist once, reading exactly those rows.

One writer at a time holds the store directory locked (engine/commit.py: an flock on the
directory itself, released by the kernel if the writer dies); any number of readers take no
lock and pin the version they opened until `refresh()`. The newest ``retain`` versions are
kept (default 8), older manifests and the files only they name are pruned, except versions
a live `VersionPin` holds (`Store.pin()`): a process that must open its version again later
(a `ShardedStore`'s restarted actors) pins it.

Thread-safety: searches may run from several threads once the store is open; `add`,
`delete`, `compact`, `train`, `refresh` and `close` must not run concurrently with each other
on the same object. A search racing one of them reads through the segments it took (it
does not crash, and a search racing `close` answers or raises `StoreClosed`), but deletes are
marked in place: rows the newer version deletes may already be missing from its answer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import manifest as mf
from ..formats import segment as sg
from ..formats.body import (DATA_FILE_RE, DENSE_CHOICES, FORMAT_ID, SegmentRecord, StoreBody, body_files,
                            data_file_name, parse_body)
from . import writes
from .codecs import METRICS, Codec, SearchResult, _as_vectors
from .commit import VersionPin, WriterLock, collect_garbage, pinned_versions, storage_errors
from .errors import (
    CodecSpecError,
    FormatError,
    IdNotFound,
    InvalidInput,
    ReadOnlyStore,
    StorageError,
    StoreClosed,
    StoreCorrupted,
    StoreNotFound,
    TooLarge,
    VeczError,
)
from .inputs import as_ids as _as_ids
from .bounds import ErrorModel
from .parallel import threading_layer
from .search import calibrate, check_search_args, pad_to_k, per_row_scales, search_segments
from .segments import DensePool, Segment, SegmentGone, load_segment
from .threads import plain_interrupts

__all__ = ["Store", "check_store", "FORMAT_ID", "MAX_NORM", "MAX_STATE_BYTES"]

MAX_NORM = writes.MAX_NORM
# A codec whose trained arrays would exceed this is refused at create (say, IVF with a
# billion lists, or RB on 65,536 dims: a 16 GiB rotation).
MAX_STATE_BYTES = 2 << 30
DEFAULT_RETAIN = 8
# Results wider than the live rows are padded with -1 up to k only within this many bytes.
MAX_RESULT_BYTES = 256 << 20
# a search whose lazily built segment lost its file to a commit retries on the newer segments
# this many times (`SegmentGone`)
SEARCH_RETRIES = 8
# A committed error model measured on pseudo-queries serves while the live rows are within
# this factor of those it was measured on (`Store.error_model`): its pairs' neighbours come
# from the rows there were, and a store four times as large (or small) has other ones.
STALE_FACTOR = 2.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _state_bytes(codec: Codec) -> int:
    return int(sum(4 * int(np.prod(shape)) for shape in codec._state_shapes_at_most().values()))


class Store:
    """A vector store on disk (see the module docstring). Use `Store.create` or `Store.open`.

    ``scores, ids = store.search(queries, k)`` works like faiss's ``D, I = index.search``.
    """

    def __init__(self, path: Path, mode: str) -> None:  # private: use create() / open()
        self.path = path
        self.mode = mode
        # Before re-scoring, ask the kernel for every shortlisted row's pages at once
        # (MADV_WILLNEED), so that rows not in the page cache are read concurrently instead
        # of one page fault after another. None (auto) does it for fewer than 8 queries, for
        # each dense file not found 99% cached at its last look (at most once a second:
        # formats/dense.py `DenseReader.cached`).
        self.prefetch: bool | None = None
        self._auto_merge_rows = writes.AUTO_MERGE_ROWS
        self._lock: WriterLock | None = None
        self._mutex = threading.Lock()
        self._closed = False
        self._pool = DensePool(path)
        self._segments: list[Segment] = []
        self._body: StoreBody | None = None
        self.codec: Codec | None = None
        # (device, inode, size, mtime) of the codec file `codec` was read from (None: made
        # by this writer, or no file): a load keeps the codec only while the file is the same
        self._codec_stamp: tuple[int, int, int, int] | None = None
        # Build each segment's scan layout as soon as it is loaded or written: readers do;
        # a writer from its first search on (until then layouts wait for a scan, so a
        # build or import never holds them; engine/segments.py).
        self._build_layouts = mode == "r"
        # `error_model`'s (codec, `_model_key()`, model, pinned): pinned for a model this
        # object measured on sample queries without committing it (kept while the codec is)
        self._error_model: tuple[Codec, tuple | None, ErrorModel | None, bool] | None = None
        # the committed model of the loaded version, read with it (its file, the model, or
        # the error reading it raised, re-raised where the model is needed)
        self._model_file: str | None = None
        self._model: ErrorModel | None = None
        self._model_error: VeczError | None = None
        # A shard (engine/ray.py) loads only these segments (by serial); None: every segment.
        self._only: frozenset[int] | None = None

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
        retain: int = DEFAULT_RETAIN,
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
        retain : committed versions kept (>= 1); older manifests and the files only they
            name are deleted (formats/FORMAT.md, "Retention")

        Raises
        ------
        TooLarge
            The codec's trained state would exceed `MAX_STATE_BYTES`.
        """
        dense = "none" if dense is None else dense
        if dense not in DENSE_CHOICES:
            raise InvalidInput(f"dense: expected one of {DENSE_CHOICES} or None, found {dense!r}")
        if not isinstance(retain, (int, np.integer)) or isinstance(retain, bool) or retain < 1:
            raise InvalidInput(f"retain: expected an integer >= 1 (versions kept), found {retain!r}")
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
        state = _state_bytes(given)
        if state > MAX_STATE_BYTES:
            raise TooLarge(f"codec {given.spec!r} on {dim} dims needs {state / 2**30:.1f} GiB of trained arrays; "
                           f"expected at most {MAX_STATE_BYTES / 2**30:.0f} GiB (fewer IVF lists, or MRL to fewer dims)")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InvalidInput(f"{path}: expected a new or empty directory, found an existing "
                               f"{'non-empty directory' if path.is_dir() else 'file'}")
        with storage_errors("create", path):
            path.mkdir(parents=True, exist_ok=True)
        store = cls(path, "a")
        try:
            store._lock = WriterLock(path)
            files = []
            codec_file = digest = None
            if given.is_trained:
                codec_file = data_file_name("codec", 1)
                with storage_errors("create: write the codec", path / codec_file):
                    digest = sg.write_segment(path / codec_file, "codec", given.state(), meta=given.to_config()).digest
                files.append(codec_file)
            body = StoreBody(1, None, _now(), int(dim), metric, dense, given.to_config(), codec_file, (), 0, 1,
                             int(retain), codec_digest=digest)
            store._lock.publish(1, body.to_json(), files, "create")
            store._load(body.to_json())
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str = "r", version: int | None = None) -> "Store":
        """Open a store. ``mode="r"`` (default) reads, ``mode="a"`` also appends (one
        writer at a time: a second gets `StoreLocked`). ``version`` pins an older committed
        version (read-only; only the retained versions exist)."""
        if mode not in ("r", "a"):
            raise InvalidInput(f"mode: expected 'r' or 'a', found {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise StoreNotFound(f"{path}: no store directory here")
        if mode == "a" and version is not None:
            raise InvalidInput("version= opens a past version read-only; it cannot be combined with mode='a'")
        if isinstance(version, np.integer) and not isinstance(version, np.bool_):
            version = int(version)  # as every other integer argument (a version read from info()["versions"])
        store = cls(path, mode)
        try:
            if mode == "a":
                store._lock = WriterLock(path)
                with storage_errors("open: collect garbage", path):
                    collect_garbage(store._lock)
            store._open_version(version)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _open_shard(cls, path: str | os.PathLike, version: int, serials: Any) -> "Store":
        """Read-only: `version` with only the segments whose serials are given (one shard of
        a distributed search, engine/ray.py). Counts (`len`, `n_rows`) are the shard's."""
        store = cls(Path(path), "r")
        store._only = frozenset(int(s) for s in serials)
        try:
            store._open_version(version)
            missing = store._only - {seg.serial for seg in store._segments}
            if missing:
                raise StoreCorrupted(f"{path} version {version}: has no segment with serial {min(missing)}")
        except BaseException:
            store.close()
            raise
        return store

    def _open_version(self, version: int | None) -> None:
        # A writer may prune the files of the version a reader is about to load; then the
        # reader retries on the newest version.
        for attempt in range(8):
            body = self._read_body(version)
            try:
                self._load(body)
                return
            except StoreCorrupted as exc:
                newest = mf.list_versions(self.path)
                if version is not None and version not in newest:  # pruned while it loaded: not damage
                    raise StoreNotFound(f"{self.path}: version {version} was removed by a writer's garbage collection "
                                        f"while it loaded (versions now {newest}; a pinned version stays: "
                                        f"Store.pin)") from exc
                if version is not None or not newest or newest[-1] == body.get("version") or attempt == 7:
                    raise exc

    def _read_body(self, version: int | None) -> dict:
        """The manifest body of `version` (newest by default): `read_body`."""
        return read_body(self.path, version, "Store.open")

    def pin(self) -> VersionPin:
        """Keep this object's version from a writer's garbage collection until the pin is
        released (``with store.pin(): ...`` or ``pin.release()``) or the process ends, so
        that ``Store.open(path, version=v)`` can load it again later; neither dropping the
        pin object nor closing the store releases it, and a forked child does not hold it.
        A reader that only searches the version it has loaded needs no pin (module
        docstring). The pin is a shared flock on the version's manifest: it writes nothing.
        Raises `StoreNotFound` when a writer's garbage collection has removed the version
        since this object loaded it (pin before it is pruned)."""
        self._check_open("pin")
        if not self.version:
            raise InvalidInput(f"{self.path}: pin: expected a committed version, found none (an empty store)")
        return VersionPin(self.path, self.version)

    def refresh(self) -> int:
        """Load the newest committed version (readers pin theirs until they call this),
        reusing the layout of every segment already loaded. Returns the version now loaded."""
        self._check_open("refresh")
        self._open_version(None)
        return self.version

    # ------------------------------------------------------------------ loading

    def _load(self, raw: dict) -> None:
        where = f"{self.path} version {raw.get('version')!r}"
        body = parse_body(raw, where)
        try:
            codec = Codec.from_config(body.codec_config)
            if codec.dim != body.dim or codec.metric != body.metric:
                raise CodecSpecError(f"codec is for dim {codec.dim} / {codec.metric}")
            stamp = None
            if body.codec_file is not None:
                stamp = _file_stamp(self.path / body.codec_file)
                if self.codec is not None and self._body is not None and self._body.codec_file == body.codec_file \
                        and self.codec.is_trained and self._codec_stamp in (None, stamp):
                    # the same trained codec: keep it (and every layout built with it). The
                    # name alone does not say so: a store deleted and built again at this
                    # path names its codec file alike, but the file is another
                    codec = self.codec
                else:
                    arrays, _ = sg.read_segment(self.path / body.codec_file, kind="codec", digest=body.codec_digest)
                    for name, arr in arrays.items():  # FORMAT.md: one <f4 array each (a <u4 read as values)
                        if arr.dtype != np.dtype("<f4"):
                            raise CodecSpecError(f"{body.codec_file}: array {name!r}: expected dtype <f4, "
                                                 f"found {arr.dtype.str}")
                    codec = Codec.from_config(body.codec_config, arrays)
        except (CodecSpecError, InvalidInput) as exc:
            raise StoreCorrupted(f"{where}: codec record does not load: {exc}") from None
        reuse = codec is self.codec
        model_state = self._load_model(body, reuse)
        legacy = writes.read_legacy_deletes(self.path, body) if body.legacy_deletes else {}
        known = {s.serial: s for s in self._segments} if reuse else {}
        pool = None if body.dense == "none" else self._pool
        segments: list[Segment | None] = []
        todo: list[tuple[int, SegmentRecord]] = []  # (slot, record) of segments not seen yet
        # (segment kept, its new record, rows newly dead): applied once the whole version has
        # loaded, so that a load that fails leaves the version this object has as it was
        kept: list[tuple[Segment, SegmentRecord, np.ndarray]] = []
        for rec in body.segments:
            if self._only is not None and rec.serial not in self._only:
                continue
            seg = known.get(rec.serial)
            if seg is not None and seg.rec.file == rec.file and seg.rec.rows == rec.rows and seg.rec.dense == rec.dense:
                newly = np.zeros(0, dtype=np.int64)
                if rec.deletes != seg.rec.deletes:
                    dead = writes.dead_rows_of(self.path, rec, legacy)
                    if np.setdiff1d(seg.dead, dead).size:
                        seg = None  # rows came back to life: not a newer version of this segment
                    else:
                        newly = np.setdiff1d(dead, seg.dead)
                if seg is not None:
                    kept.append((seg, rec, newly))
                    segments.append(seg)
                    continue
            todo.append((len(segments), rec))
            segments.append(None)
        # Segments not seen yet load two at a time: one's file is read while another's
        # layout is built (file reads and the layout kernels release the GIL).

        def load(rec: SegmentRecord) -> Segment:
            dead = writes.dead_rows_of(self.path, rec, legacy)
            return load_segment(self.path, rec, codec, pool, dead, build=self._build_layouts)

        recs = [rec for _, rec in todo]
        # (only under tbb or omp: workqueue, or a selector such as "default" that may resolve
        # to it, aborts the process when two threads launch parallel kernels at once, and the
        # layouts' kernels run outside any `parallel_region`)
        if len(recs) > 1 and threading_layer() in ("tbb", "omp"):
            with ThreadPoolExecutor(max_workers=2) as ex:
                loaded = list(ex.map(load, recs))
        else:
            loaded = [load(rec) for rec in recs]
        for (slot, _), seg in zip(todo, loaded):
            segments[slot] = seg
        for seg, rec, newly in kept:
            seg.kill(newly)
            seg.rec = rec
        self.codec = codec
        self._codec_stamp = stamp
        self._body = body
        self._segments = segments
        self._model_file, self._model, self._model_error = model_state
        if pool is not None:
            self._pool.keep_only({d.file for s in segments for d in s.rec.dense})

    def _load_model(self, body: StoreBody, same_codec: bool) -> tuple:
        """(file, model, error) of the version's committed model, read now like every
        other file of the version, so that a reader keeps it when a writer prunes the
        version later; the one already loaded when the file and codec are the same. A file
        that does not read or check is remembered and re-raised where the model is needed
        (`error_model`, `check_store`), so that the store still opens for other searches
        and for `calibrate` to replace it; but while a newer version exists the error is
        raised (a writer may have pruned this version: `_open_version` retries)."""
        record = body.calibration
        if record is None:
            return None, None, None
        if same_codec and record.file == self._model_file:
            return self._model_file, self._model, self._model_error
        try:
            return record.file, self._read_model(record.file, body.dim, record.digest), None
        except FormatError as exc:
            newest = mf.list_versions(self.path)
            if isinstance(exc, StoreCorrupted) and newest and newest[-1] != body.version:
                raise
            return record.file, None, exc

    # ------------------------------------------------------------------ properties

    @property
    def auto_merge_rows(self) -> int:
        """Rows an automatic merge may rewrite after a commit (engine/merge.py); 0: none."""
        return self._auto_merge_rows

    @auto_merge_rows.setter
    def auto_merge_rows(self, rows: int) -> None:
        # (None or "100" made the next add commit its rows and then raise a raw TypeError:
        # a retry stored them twice)
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
            raise InvalidInput(f"auto_merge_rows: expected an integer >= 0, found {rows!r:.40}")
        self._auto_merge_rows = int(rows)

    @property
    def version(self) -> int:
        return self._body.version if self._body else 0

    @property
    def dim(self) -> int:
        return self._body.dim

    @property
    def metric(self) -> str:
        return self._body.metric

    @property
    def dense(self) -> str:
        return self._body.dense

    @property
    def next_id(self) -> int:
        return self._body.next_id

    @property
    def retain(self) -> int:
        return self._body.retain

    @property
    def build_record(self) -> dict | None:
        """What `vecz build` recorded in the newest commit (source and rows consumed), or None."""
        return self._body.build if self._body else None

    @property
    def calibration(self) -> dict | None:
        """The committed error model's record (`calibrate`): its file, the live rows it was
        measured on, its source ("rows": pseudo-queries; "queries": a sample) and nprobe; or
        None when no model is committed."""
        rec = self._body.calibration if self._body else None
        return None if rec is None else rec.to_json()

    @property
    def spec(self) -> str:
        return self.codec.spec

    @property
    def n_rows(self) -> int:
        """Rows in the segments, deleted ones included (`len(store)` counts live rows)."""
        self._check_open("n_rows")
        return sum(s.rows for s in self._segments)

    @property
    def n_deleted(self) -> int:
        self._check_open("n_deleted")
        return sum(int(s.dead.size) for s in self._segments)

    def __len__(self) -> int:
        self._check_open("len")  # a closed store has dropped its segments: 0 would be a lie
        return sum(s.live for s in self._segments)

    def __repr__(self) -> str:
        if self._body is None or self._closed:
            return f"Store({str(self.path)!r}, mode={self.mode!r}, closed)"
        return (f"Store({str(self.path)!r}, mode={self.mode!r}, version={self.version}, dim={self.dim}, "
                f"metric={self.metric!r}, codec={self.codec.spec!r}, live={len(self)})")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ id lookup

    def _taken(self, what: str) -> list[Segment]:
        """The segments taken once, then the store found open: close() marks the store closed
        before it drops them and refresh() swaps the list, so a caller reading
        self._segments twice met an emptied or another version's list (raw IndexError, a live
        id 'missing'); it works on these and answers or raises StoreClosed."""
        segments = self._segments
        self._check_open(what)
        return segments

    def _find(self, ids: np.ndarray, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, local row) of each id live in `segments`, (-1, -1) elsewhere."""
        seg_of = np.full(ids.shape, -1, dtype=np.int64)
        rows = np.full(ids.shape, -1, dtype=np.int64)
        for g, seg in enumerate(segments):
            r = seg.find(ids)
            hit = r >= 0
            seg_of[hit], rows[hit] = g, r[hit]
        return seg_of, rows

    def __contains__(self, id_: Any) -> bool:
        """Whether `id_` is a live id; False for anything but an integer in int64's range
        (``5.7``, ``"5"``, ``2**70``, a bool), where ``get`` and ``delete`` would refuse it."""
        self._check_open("'in'")
        if isinstance(id_, (bool, np.bool_)) or not isinstance(id_, (int, np.integer)):
            return False
        if not -(1 << 63) <= int(id_) < 1 << 63:
            return False
        return bool(self._find(np.array([int(id_)], dtype=np.int64), self._taken("'in'"))[0][0] >= 0)

    def ids(self) -> np.ndarray:
        """The live ids, ascending."""
        self._check_open("ids")
        parts = [seg.ids[seg.live_rows()] for seg in self._segments]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ writing

    def _require_writer(self, what: str) -> WriterLock:
        if self.mode != "a" or self._lock is None:
            raise ReadOnlyStore(f"{self.path}: {what} needs a store opened with mode='a', this one is read-only")
        self._lock.check(what)  # the directory this writer locked is still the store at its path
        return self._lock

    def _vectors(self, x: Any, what: str, column: str | None = None) -> np.ndarray:
        arr = _as_vectors(x, self.dim, what, column, self.metric)
        writes.check_rows(arr, "none", what, self.metric)
        return arr

    def train(self, sample: Any) -> None:
        """Train the codec on a sample (at most `train_size` rows are used) and commit it.
        Only an empty store can be (re)trained; `add` trains on its first batch otherwise."""
        self._check_open("train")
        writes.train(self, self._require_writer("train"), self._vectors(sample, "training sample"))

    def add(self, vectors: Any, ids: Any = None, *, column: str | None = None,
            build_progress: dict | None = None) -> np.ndarray:
        """Add vectors; returns their int64 ids (assigned from `next_id` unless given).
        Durable when it returns: the rows are one committed version.

        Parameters
        ----------
        vectors : (n, dim) float16/32/64 array, or anything `engine.inputs.as_matrix`
            takes: a pyarrow list/fixed-size-list array or table, a pandas Series of arrays
            or DataFrame, a torch/jax tensor (DLPack), an object with ``__array__``.
        ids : (n,) integers >= 0, optional (numpy, pyarrow, pandas, lists).
        column : the vector column when `vectors` is a table or data frame with several.
        build_progress : JSON-able record committed with the rows (`vecz build` stores the
            source it reads and the rows consumed so far, to resume; see ``build_record``).

        Raises `InvalidInput` for NaN/inf, norms beyond `MAX_NORM` (ip, l2), an empty batch,
        negative or repeated ids, ids already live in the store, or a zero vector under
        cosine; `DimensionMismatch` for the wrong width; `StorageError` when the disk
        refuses. Nothing is committed when it raises.
        """
        self._check_open("add")
        lock = self._require_writer("add")
        # writes.add checks the rows (norms, f16 range) once, with the store's dense tier
        with plain_interrupts():
            x = _as_vectors(vectors, self.dim, "vectors", column, self.metric)
            return writes.add(self, lock, x, ids, build_progress)

    def delete(self, ids: Any) -> int:
        """Delete the live rows with these ids (unknown ids are ignored); returns how many
        were deleted. Durable when it returns; the merge policy (or `compact()`) drops
        them from the segments later."""
        self._check_open("delete")
        lock = self._require_writer("delete")
        return writes.delete(self, lock, np.unique(_as_ids(ids, "ids")))

    def compact(self) -> None:
        """Merge the segments into as few as the size cap allows (`merge.MAX_SEGMENT_ROWS`
        live rows each, packed first fit by decreasing size), dropping deleted rows and
        copying the live dense rows of each group's smallest files, up to
        `merge.DENSE_COPY_BYTES` together; one commit. Readers of older versions keep working."""
        self._check_open("compact")
        writes.compact(self, self._require_writer("compact"))

    # ------------------------------------------------------------------ reading

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        nprobe: int | None = None,
        rerank: int | str | None = None,
        sdc: bool = False,
        confidence: float | None = None,
    ) -> SearchResult:
        """Top-k of each query: ``scores, ids = store.search(q, k)``.

        Parameters
        ----------
        queries : (nq, dim) or (dim,) float array (float16/32/64, any strides), or any
            input `add` takes
        k : results per query; slots beyond the live rows hold id -1 and the worst score
            (a k whose padding would exceed `MAX_RESULT_BYTES` gives results as wide as
            the live rows instead)
        nprobe : IVF lists visited per query, 1..nlist (default nlist // 8, at least 1: on
            wordnet-minilm the useful range was nlist / 8 .. nlist / 4, recall 0.97-0.98 at R=50)
        rerank : R >= k re-scores the R best candidates by code score with the exact
            vectors read from the dense files (only those rows are read); 0 returns code
            scores. Default: ``max(50, 5 * k)`` with a dense tier, else 0. k and R beyond
            the live rows cost no more than the live rows. ``"auto"`` (or ``"auto:R"``)
            reads a candidate's exact vector only while its error interval can still
            change the top-k, at most R rows (default `bounds.auto_cap`); ``.stats`` gives the
            rows each query read (engine/bounds.py). The first auto search of an open store
            measures the codec's error on pseudo-queries made from the store's own rows
            (`error_model`: about 28,000 rows read once).
        sdc : RB only: symmetric code scoring (query binarized too), with a fixed depth or
            none (its code scores have no error model for ``"auto"``)
        confidence : with ``rerank="auto"``: the share of exact scores each side of the
            interval must hold, 0.5..1 (default `bounds.DEFAULT_CONFIDENCE`); higher reads
            more rows and misses fewer true neighbours.

        Returns
        -------
        SearchResult
            ``(scores float32 (nq, k), ids int64 (nq, k))``; scores descending for cosine
            and ip, ascending squared distances for l2; ``.stats`` = candidates scored,
            lists probed, rows and bytes read from disk.
        """
        with plain_interrupts():
            return self._search(queries, k, nprobe, rerank, sdc, confidence)

    def _search(self, queries: Any, k: int, nprobe: int | None, rerank: int | str | None, sdc: bool,
                confidence: float | None) -> SearchResult:
        self._check_open("search")
        k, nprobe, rerank, auto, confidence = check_search_args(self.codec, self.dense, k, nprobe, rerank, sdc,
                                                                confidence)
        x = _as_vectors(queries, self.dim, "queries", metric=self.metric)
        if not self.codec.is_trained:
            self.codec._prepare_rows(x, "queries")  # the query checks a search of rows makes (zero rows, norms)
            nq = x.shape[0]
            worst = np.inf if self.metric == "l2" else -np.inf
            return SearchResult(np.full((nq, k), worst, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64))
        self._build_layouts = True
        # the segments taken once, then the store found open (close() marks it closed before
        # it drops them): a close() on another thread left a later read of self._segments
        # empty, and the search answered "no neighbours" instead of StoreClosed or an answer
        return self._on_segments("search", lambda segments: self._search_in(segments, x, k, nprobe, rerank, sdc,
                                                                             auto, confidence))

    def _on_segments(self, what: str, work: Any) -> Any:
        """work(segments) on the segments taken once (`_taken`). A writer's segment whose
        layout waited for its first use may have lost its file to a commit on another thread
        (its version pruned: `SegmentGone`); the newer segments hold its rows, and the work
        runs again on them. The same segments again would be a real loss (as would commits
        outpacing `SEARCH_RETRIES` retries)."""
        for retry in itertools.count():
            segments = self._taken(what)
            try:
                return work(segments)
            except SegmentGone:
                if self._segments is segments or retry >= SEARCH_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _search_in(self, segments: list[Segment], x: np.ndarray, k: int, nprobe: int | None, rerank: int,
                   sdc: bool, auto: bool, confidence: float | None) -> SearchResult:
        live = sum(s.live for s in segments)
        # k and rerank are clamped to the live rows for every scan and work array; the result
        # is padded up to k (id -1, like faiss) unless the padding alone would exceed
        # MAX_RESULT_BYTES, then it is as wide as the live rows
        bound = (self.error_model(), confidence) if auto else None
        out = search_segments(self.codec, self.metric, segments, x, min(k, max(live, 1)),
                              nprobe=int(nprobe), rerank=min(int(rerank), live), sdc=bool(sdc), prefetch=self.prefetch,
                              bound=bound)
        return pad_to_k(out, k, self.metric, MAX_RESULT_BYTES)

    def error_model(self) -> ErrorModel | None:
        """The error model `rerank="auto"` bounds code scores with (engine/bounds.py).

        The one the store committed (`calibrate`), read with the version; a model measured
        on pseudo-queries is not used while the live rows are beyond `STALE_FACTOR` times
        (or below 1 / STALE_FACTOR of) those it was measured on (one from sample queries
        is used whatever the rows). Otherwise measured on first use, in RAM only, on
        pseudo-queries made from this store's rows (each a row less a random share of the
        rows' mean, so that queries less aligned with the corpus than its rows are
        covered); about 28,000 rows read, 0.04-0.6 s on 100,000 rows and 24 s on a cold
        10M store. Kept while the codec, the committed model and whether it applies stay
        the same; a model this object measured on sample queries (`calibrate` without
        committing) while the codec does (None: too few rows to measure; auto then reads
        its whole shortlist). Raises the error that reading the committed model's file
        raised (`StoreCorrupted` and the like) when that model applies."""
        self._check_open("error_model")
        key = self._model_key()
        cached = self._error_model
        if cached is not None and cached[0] is self.codec and (cached[3] or cached[1] == key):
            return cached[2]
        model = None
        if key is not None and key[1]:
            if self._model_error is not None:
                raise self._model_error
            # a model applies to the error scales and the scores it was measured with (one
            # committed before the codec's scores changed is measured again, in RAM)
            # (under l2, one without `q_min`, written before it, is measured again too: it
            # bounded a query nearer the origin than any calibrated one by an interval of 0)
            if self._model is not None and self._model.per_row == per_row_scales(self._segments) \
                    and self._model.scores == self.codec.score_rule \
                    and not (self.metric == "l2" and self._model.q_min == 0.0):
                model = self._model
        if model is None:
            self._build_layouts = True
            model = self._on_segments("error_model", lambda segments: calibrate(
                self.codec, self.metric, segments, nprobe=max(1, self.codec.nlist // 8)))
        self._error_model = (self.codec, key, model, False)
        return model

    def _model_key(self) -> tuple | None:
        """(committed model file, whether it applies to the live rows now), or None."""
        record = self._body.calibration if self._body is not None else None
        if record is None:
            return None
        live = self._body.live
        fresh = record.rows / STALE_FACTOR <= live <= record.rows * STALE_FACTOR
        return record.file, record.source == "queries" or fresh

    def _read_model(self, name: str, dim: int, digest: int | None = None) -> ErrorModel:
        """The error model in file `name`, checked (`StoreCorrupted` when it is not one, or
        not the file of the recorded `digest`)."""
        path = self.path / name
        arrays, meta = sg.read_segment(path, kind="model", digest=digest)
        try:
            return ErrorModel.from_arrays(arrays, meta, dim)
        except InvalidInput as exc:
            raise StoreCorrupted(f"{path}: {exc}") from None

    def calibrate(self, queries: Any = None, *, nprobe: int | None = None,
                  commit: bool | None = None) -> ErrorModel | None:
        """Measure the error model of ``rerank="auto"`` and use it from now on; a store open
        for writing also commits it (a version of its own), so every later open of the
        store reads it instead of measuring again (`error_model`).

        With `queries`, each query's best 100 candidates by code score are re-scored
        exactly (100 rows read a query, once; a few hundred queries is enough: at least
        `bounds.MIN_PAIRS` pairs, 10 / (1 - confidence) pairs per rank band). Without,
        pseudo-queries made from the store's rows serve, as `error_model` measures them:
        commit that after a build, and no reader measures it again (a 10M store's first
        auto search took 24 s to measure it, its rows read cold).

        Why sample queries: the default model is measured on pseudo-queries made from
        stored rows, which cover queries less aligned with the corpus mean than its rows
        (engine/bounds.py, "Queries unlike the rows"); queries that differ from the rows in
        other ways (they stand farther from all their neighbours) may see larger errors
        than it allows. Sample queries measure them; the model then has no covariate (the
        sample stands for the queries to come).

        Parameters
        ----------
        queries : (nq, dim) float array, or any input `add` takes: queries held out from
            the ones whose answers are measured; None: pseudo-queries from the rows
        nprobe : IVF lists visited (default as `search`: nlist // 8)
        commit : commit the model (default: when the store is open for writing; True on
            a store opened for reading raises `ReadOnlyStore`)

        Returns
        -------
        ErrorModel or None
            The model now in use; None when there were too few pairs (or no dense tier):
            then nothing is committed and the model in use stays.
        """
        self._check_open("calibrate")
        lock = None
        if commit is not None and not isinstance(commit, (bool, np.bool_)):
            raise InvalidInput(f"commit: expected True, False or None, found {commit!r}")
        if commit or (commit is None and self.mode == "a"):
            lock = self._require_writer("calibrate")
        if not self.codec.is_trained:
            raise InvalidInput("calibrate: expected a trained store, found no training")
        x, source = None, "rows"
        if queries is not None:
            x, source = _as_vectors(queries, self.dim, "calibration queries", metric=self.metric), "queries"
        _, nprobe, *_ = check_search_args(self.codec, self.dense, 1, nprobe, None, False, None)
        if x is not None and x.shape[0] == 0:
            raise InvalidInput("calibrate: expected at least one query, found 0 queries")
        self._build_layouts = True
        model = self._on_segments("calibrate", lambda segments: calibrate(self.codec, self.metric, segments,
                                                                           nprobe=int(nprobe), queries=x))
        if model is None:
            return None  # nothing measured: the model in use stays
        if lock is not None:
            writes.calibrate(self, lock, model, source, int(nprobe))  # raises: nothing changed
            self._model_file, self._model, self._model_error = self._body.calibration.file, model, None
        self._error_model = (self.codec, self._model_key(), model, lock is None and x is not None)
        return model

    def get(self, ids: Any) -> np.ndarray:
        """Exact vectors (float32 (n, dim)) of live ids, read from the dense files."""
        self._check_open("get")
        if self.dense == "none":
            raise InvalidInput(f"{self.path}: get() needs a dense tier; this store was created with dense=None")
        ids = _as_ids(ids, "ids")
        segments = self._taken("get")
        seg_of, rows = self._find(ids, segments)
        if (rows < 0).any():
            raise IdNotFound(f"ids: expected ids live in the store, found id {int(ids[rows < 0][0])} missing "
                             f"({int((rows < 0).sum())} of {ids.size} ids are missing)")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for g in np.unique(seg_of):
            at = np.flatnonzero(seg_of == g)
            out[at] = segments[int(g)].vectors(rows[at], self.dim)
        return out

    # ------------------------------------------------------------------ info / close

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held in RAM: codec state (with what searches derive from it, such as PQ's
        per-list l2 terms), scan layouts (codes + their row numbers), ids and dense maps, and
        the error models of ``rerank="auto"`` held (the committed one, one measured in RAM)."""
        segments = self._taken("memory_bytes")
        state = sum(a.nbytes for a in self.codec.state().values()) if self.codec.is_trained else 0
        state += self.codec.derived_nbytes()
        layouts = sum(int(s.built.nbytes) for s in segments if s.built is not None)
        other = sum(s.nbytes() for s in segments) - layouts
        cached = self._error_model
        models = {id(m): m for m in (self._model, cached[2] if cached is not None else None) if m is not None}
        return {"codec": state, "index": layouts, "ids": other,
                "model": sum(m.nbytes() for m in models.values())}

    def info(self) -> dict[str, Any]:
        """Spec, counts, bytes in RAM and on disk, versions (what `vecz info` prints)."""
        self._check_open("info")
        files = {}
        for entry in os.scandir(self.path):
            with contextlib.suppress(FileNotFoundError):  # a writer's temporary manifest comes and goes
                if entry.is_file(follow_symlinks=False):
                    files[entry.name] = entry.stat(follow_symlinks=False).st_size
        mine = body_files(self._body)
        memory = self.memory_bytes()
        return {
            "path": str(self.path),
            "version": self.version,
            "versions": mf.list_versions(self.path),
            "retain": self.retain,
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
            "segment_rows": [s.rows for s in self._segments],
            "dense_files": len({d.file for s in self._segments for d in s.rec.dense}),
            "next_id": self.next_id,
            "ram_bytes": memory,
            "ram_bytes_total": sum(memory.values()),
            "disk_bytes_version": sum(files.get(f, 0) for f in mine),
            "disk_bytes_total": sum(files.values()),
            "dense_bytes": sum(d.nbytes for d in {d.file: d for s in self._segments for d in s.rec.dense}.values()),
            "build": self.build_record,
            "calibration": self.calibration,
            "pinned": pinned_versions(self.path),
        }

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreClosed(f"{self.path}: {what} on a closed store; expected an open one (Store.open again)")

    def close(self) -> None:
        """Release the dense maps and the writer lock. Idempotent; any later method call but
        `close` raises `StoreClosed`, as do ``len()``, ``n_rows`` and ``n_deleted``; the
        plain attributes (``version``, ``next_id``, ``calibration``, ``build_record``...)
        keep their last values."""
        self._closed = True
        self._pool.close()
        self._segments = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime in ns) of `path`, None when it cannot be read: data files
    are never rewritten in place, so a file with the same name and another stamp is another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_body(path: Path, version: int | None, opener: str) -> dict:
    """The manifest body of `version` (newest by default). A damaged newest manifest is
    reported with the newest older version that still opens, and how `opener` (``Store.open``,
    ``ShardedStore``) reads it."""
    try:
        return mf.read_manifest(path, version)
    except StoreCorrupted as exc:
        if version is not None:
            raise
        for v in reversed(mf.list_versions(path)[:-1]):
            try:
                parse_body(mf.read_manifest(path, v), f"{path} version {v}")
            except VeczError:
                continue
            raise StoreCorrupted(f"{exc}. The newest version that opens is {v}: {opener}({str(path)!r}, "
                                 f"version={v}) reads it") from None
        raise


def check_store(path: str | os.PathLike, *, all_versions: bool = False) -> list[str]:
    """Verify the store: every retained manifest (checksums and cross-checks, formats/body.py);
    every checksum of every file the newest version names (of every retained version with
    `all_versions`); that each dense file's id column equals its segment's ids; that live
    ids are unique. Returns the problems found, empty when the store is healthy. Never
    raises on damage; raises `StoreNotFound` when `path` is not a directory or holds neither
    a manifest nor a data file (nothing there to be damaged: a mistyped path or an empty
    folder, not a damaged store), and `StorageError` when the system refuses to read a file
    (permissions, too many open files: the file may be healthy)."""
    path = Path(path)
    try:
        versions = mf.list_versions(path)
    except StoreNotFound:
        raise
    except VeczError as exc:
        return [str(exc)]
    if not versions:
        if not any(DATA_FILE_RE.fullmatch(name) for name in os.listdir(path)):
            raise StoreNotFound(f"{path}: no vecz store here (expected a manifest, found none and no data files)")
        return [f"{path}: no manifest, but vecz data files (a store whose manifests are gone)"]
    # Each version checked is pinned first: a writer committing meanwhile would otherwise
    # collect the manifests and files the check reads (on a healthy store, 21 of 570 checks
    # beside a writer reported a missing file); a version gone before its pin was pruned.
    pins: list[VersionPin] = []
    try:
        for _ in range(8):
            kept = []
            for v in versions:
                try:
                    pins.append(VersionPin(path, v))
                except (StoreNotFound, StoreCorrupted):
                    if not os.path.lexists(path / mf.manifest_name(v)):
                        continue  # pruned since listed
                    # (something not a manifest in its place, a FIFO: the check says what)
                kept.append(v)
            if kept:
                return _check_pinned(path, kept, all_versions)
            versions = mf.list_versions(path)  # a writer pruned every version listed: the ones kept now
        return [f"{path}: no version stayed long enough to check (a writer committing fast; check again)"]
    finally:
        for pin in pins:
            pin.release()


def _check_pinned(path: Path, versions: list[int], all_versions: bool) -> list[str]:
    """`check_store` of the `versions` (pinned, ascending)."""
    problems: list[str] = []
    # every retained manifest is read (at most `retain` small files); the data files of the
    # newest version, or of every retained one
    for v in versions:
        try:
            body = parse_body(mf.read_manifest(path, v), f"{path} version {v}")
        except StorageError:  # the system refused a read (permissions...): not damage
            raise
        except VeczError as exc:
            problems.append(str(exc))
            continue
        if all_versions or v == versions[-1]:
            problems += writes.check_files(path, body)
    if not problems:
        try:
            with Store.open(path, version=versions[-1]) as store:
                problems += writes.check_dense_ids(store)
                if store._model_error is not None:
                    problems.append(str(store._model_error))
                ids = store.ids()
                if ids.size and (np.diff(ids) == 0).any():
                    problems.append(f"{path}: live ids are not unique")
        except StorageError:
            raise
        except (VeczError, KeyError, OSError) as exc:
            problems.append(f"{path}: store does not load: {exc}")
    return problems
