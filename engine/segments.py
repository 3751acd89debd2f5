"""Segments in RAM: each immutable segment file of a store becomes one `Segment` — its scan
layout, its ids and dead rows, and where its rows' exact vectors live.

A segment's layout is built once and reused by every later version that still names the
segment: a commit or `Store.refresh` loads only the segments it has not seen. It is built
when the segment is written (`Segment.from_arrays`) or loaded (`load_segment`) with
``build=True`` (a store open for reading, or a writer that has searched), else on the
first scan, from the segment file (``build=False``: a writer that only writes, such as
`vecz build`, holds no layout at all, 115 bytes a row at 768-d RB1 that a 10M-row build
does not need in RAM). Deletes apply
at scan time: the layout marks dead rows in place (`CodeIndex.mark_dead`, O(rows deleted)),
so a delete never rebuilds anything. Layout ids are row numbers within the segment; the
user ids are `Segment.ids`, ascending in segments written since layout 2, so an id is found
by binary search (`Segment.find`) without any extra index.

Dense rows: a segment maps its rows onto one or more dense files (formats/FORMAT.md,
"Segment kinds"): one to one when ``dense_map == "identity"``, else through the
``dense_file``/``dense_row`` sections. Merges that leave the rows where they are write
them, and so does every segment of at least `LOCALITY_MIN_ROWS` rows written with its own
dense file (`write_dense_rows`): its rows go to the file in `kernels.locality` order (near
vectors on near pages, so a cold query's shortlist needs fewer storage requests), while
the segment keeps its rows in id order. Dense files are shared through a `DensePool`, so a
file named by several versions (or segments) is mapped once.

Memory per row: the layout (codes in scan order + 8 bytes of layout id), 8 bytes of user
id, and the dense location: none one to one, 4 bytes (row) into one dense file, 6 bytes
(file and row) into several.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..formats import segment as sg
from ..formats.body import SegmentRecord
from ..formats.dense import DENSE_DTYPES, DenseInfo, DenseReader, write_dense
from ..kernels.locality import locality_order
from .codecs import Codec, CodeIndex
from .errors import StoreCorrupted

__all__ = ["DensePool", "Segment", "load_segment", "read_dead_rows", "read_codes", "write_dense_rows",
           "LOCALITY_MIN_ROWS"]

# segments of fewer rows write their dense file in id order (a few pages: nothing to gain)
LOCALITY_MIN_ROWS = 64
# rows copied at a time into the ordered dense file
ORDER_CHUNK_ROWS = 65536


class DensePool:
    """The dense files a store has mapped, by name (one `DenseReader` per file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.readers: dict[str, DenseReader] = {}

    def get(self, info: DenseInfo) -> DenseReader:
        reader = self.readers.get(info.file)
        if reader is None or reader.info != info:
            # a different record for a mapped name (a file of a failed commit written again
            # under its serial): the old reader is dropped, not closed, since segments that
            # hold it may still read through it; its map goes with the last of them
            reader = self.readers[info.file] = DenseReader(self.directory, info)
        return reader

    def keep_only(self, names: set[str]) -> None:
        """Forget the readers of files not in `names`. Dropped, not closed: a search that
        still holds the segments of an older version (another thread's, during a refresh or
        a merge) reads through them; a file's map goes with the last reference to it."""
        for name in list(self.readers):
            if name not in names:
                del self.readers[name]

    def close(self) -> None:
        self.keep_only(set())


class SegmentGone(StoreCorrupted):
    """A segment whose layout was left to build on first use (a writer's) lost its file
    before that use: a commit since pruned the version it belonged to. The store's newer
    segments hold its rows; `Store.search` takes those and searches again."""


@dataclass
class Segment:
    """One segment of a loaded version (see the module docstring)."""

    rec: SegmentRecord
    ids: np.ndarray                      # (rows,) int64 user ids; ascending when rec.sorted_ids
    built: CodeIndex | None              # the scan layout, None until first needed (`layout`)
    dense: list[DenseReader] = field(default_factory=list)
    dense_file: np.ndarray | None = None  # (rows,) uint16 index into `dense` (None: file 0)
    dense_row: np.ndarray | None = None   # (rows,) uint32 row within that file (None: one to one)
    dead: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sorted local rows
    id_order: np.ndarray | None = None    # argsort of ids for segments not sorted by id (layout 1)
    source: tuple[Path, Codec] | None = None  # (store directory, codec) to build `layout` from the file
    # per row, the scale of its code score's error (`Quantizer.row_errors`), set with the
    # layout; None when the codec has none (or truncates: an MRL tail is not in it)
    errors: np.ndarray | None = None
    _error_max: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def error_max(self) -> float:
        """The largest row error scale (0 without them), computed once they exist."""
        if self._error_max is None:
            if self.errors is None:
                return 0.0
            self._error_max = float(self.errors.max(initial=0.0))
        return self._error_max

    @property
    def layout(self) -> CodeIndex:
        """The scan layout, built from the segment file on first use when not built yet,
        with the dead rows marked (thread-safe: one thread builds, the others wait)."""
        if self.built is None:
            with self._lock:
                if self.built is None:
                    if self.source is None:
                        raise StoreCorrupted(f"segment {self.rec.serial}: no layout and no file to build it from")
                    directory, codec = self.source
                    try:
                        arrays = read_codes(directory, self.rec, codec)
                    except StoreCorrupted as exc:
                        if not os.path.lexists(directory / self.rec.file):
                            raise SegmentGone(str(exc)) from exc
                        raise
                    if not np.array_equal(arrays["ids"], self.ids):
                        raise StoreCorrupted(f"{directory / self.rec.file}: its ids changed since it was loaded")
                    layout = codec.index(arrays["codes"], arrays["lists"], np.arange(self.rows, dtype=np.int64),
                                         keep_rows=False)
                    if self.dead.size:
                        layout.mark_dead(self.dead)
                    self.errors = _row_errors(codec, arrays["codes"], arrays.get("errors"))
                    self.built = layout
        return self.built

    @property
    def serial(self) -> int:
        return self.rec.serial

    @property
    def rows(self) -> int:
        return self.rec.rows

    @property
    def live(self) -> int:
        return self.rec.rows - int(self.dead.size)

    def nbytes(self) -> int:
        """Bytes of RAM this segment holds (layout, ids, dense map, dead rows)."""
        extra = sum(a.nbytes for a in (self.ids, self.dead, self.dense_file, self.dense_row, self.id_order,
                                       self.errors)
                    if a is not None)
        return int((0 if self.built is None else self.built.nbytes) + extra)

    def live_rows(self) -> np.ndarray:
        """Row numbers of the live rows, ascending."""
        if not self.dead.size:
            return np.arange(self.rows, dtype=np.int64)
        mask = np.ones(self.rows, dtype=bool)
        mask[self.dead] = False
        return np.flatnonzero(mask)

    def is_dead(self, rows: np.ndarray) -> np.ndarray:
        if not self.dead.size:
            return np.zeros(rows.shape, dtype=bool)
        pos = np.searchsorted(self.dead, rows)
        return (pos < self.dead.size) & (self.dead[np.minimum(pos, self.dead.size - 1)] == rows)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Local row of each id if it is live here, else -1."""
        out = np.full(ids.shape, -1, dtype=np.int64)
        if not self.rows:
            return out
        inside = (ids >= self.rec.min_id) & (ids <= self.rec.max_id)
        if not inside.any():
            return out
        keys = ids[inside]
        sorted_ids = self.ids if self.id_order is None else self.ids[self.id_order]
        pos = np.minimum(np.searchsorted(sorted_ids, keys), self.rows - 1)
        hit = sorted_ids[pos] == keys
        rows = pos if self.id_order is None else self.id_order[pos]
        rows = np.where(hit, rows, -1)
        rows[(rows >= 0) & self.is_dead(np.maximum(rows, 0))] = -1
        out[inside] = rows
        return out

    def kill(self, rows: np.ndarray) -> None:
        """Mark more rows dead (sorted unique local rows, none dead yet)."""
        if rows.size:
            with self._lock:
                if self.built is not None:
                    self.built.mark_dead(rows)
                self.dead = np.union1d(self.dead, rows)

    def dense_location(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `dense`, row within that file) of local rows (>= 0)."""
        if self.dense_row is None:
            return np.zeros(rows.shape, dtype=np.int64), rows.astype(np.int64)
        row = self.dense_row[rows].astype(np.int64)
        if self.dense_file is None:  # one dense file
            return np.zeros(rows.shape, dtype=np.int64), row
        return self.dense_file[rows].astype(np.int64), row

    def vectors(self, rows: np.ndarray, dim: int) -> np.ndarray:
        """Exact vectors float32 (n, dim) of local rows (>= 0), each dense file read in row order."""
        out = np.empty((rows.size, dim), dtype=np.float32)
        files, file_rows = self.dense_location(rows)
        for j in np.unique(files):
            at = np.flatnonzero(files == j)
            order = np.argsort(file_rows[at], kind="stable")
            out[at[order]] = self.dense[int(j)].read_rows(file_rows[at][order])
        return out

    @classmethod
    def from_arrays(cls, rec: SegmentRecord, codec: Codec, ids: np.ndarray, codes: np.ndarray, lists: np.ndarray,
                    pool: DensePool | None, dense_file: np.ndarray | None = None,
                    dense_row: np.ndarray | None = None, *, directory: Path | None = None,
                    build: bool = True, stored_errors: np.ndarray | None = None) -> "Segment":
        """The segment just written (or read): its layout built from the codes in hand, or
        with ``build=False`` later from the file in `directory` (`layout`)."""
        if not build and directory is None:
            raise ValueError("build=False needs the directory to build the layout from later")
        layout = codec.index(codes, lists, np.arange(rec.rows, dtype=np.int64), keep_rows=False) if build else None
        dense = [pool.get(info) for info in rec.dense] if pool is not None else []
        if dense_file is not None and len(rec.dense) == 1:
            dense_file = None  # every row in file 0 (checked by whoever read it): 2 bytes a row less
        id_order = None
        if not rec.sorted_ids and ids.size > 1 and not (np.diff(ids) > 0).all():
            id_order = np.argsort(ids, kind="stable")
        return cls(rec, ids, layout, dense, dense_file, dense_row, id_order=id_order,
                   source=None if directory is None else (directory, codec),
                   errors=_row_errors(codec, codes, stored_errors) if build else None)


def write_dense_rows(path: Path, ids: np.ndarray, vectors: np.ndarray, lists: np.ndarray, dtype: str,
                     metric: str) -> tuple[DenseInfo, dict[str, np.ndarray]]:
    """Write the dense file of a segment whose rows (ids ascending, their IVF `lists`) are
    `vectors`: with at least `LOCALITY_MIN_ROWS` rows in `kernels.locality` order (by IVF
    list, then near vectors together; by direction under cosine), else in the segment's
    order. Returns the file's info and the sections the segment's codes file must carry:
    ``dense_file`` (zeros) and ``dense_row`` (each segment row's row in the file, uint32)
    for a reordered file (its record's ``dense_map`` is then ``"sections"``), none for a
    file one to one with the segment."""
    n = ids.shape[0]
    np_dtype = DENSE_DTYPES.get(dtype)
    if n < LOCALITY_MIN_ROWS or n >= 2**32 or np_dtype is None:  # (an unknown dtype: write_dense says so)
        return write_dense(path, ids, vectors, dtype), {}
    scale = None
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    order = locality_order(vectors, lists, row_scale=scale)
    where = np.empty(n, dtype=np.uint32)
    where[order] = np.arange(n, dtype=np.uint32)
    # gathered a chunk at a time straight into the file's dtype: no float32 copy of them all
    ordered = np.empty(vectors.shape, dtype=np_dtype)
    for a in range(0, n, ORDER_CHUNK_ROWS):
        ordered[a: a + ORDER_CHUNK_ROWS] = vectors[order[a: a + ORDER_CHUNK_ROWS]]
    info = write_dense(path, ids[order], ordered, dtype)
    return info, {"dense_file": np.zeros(n, dtype=np.uint16), "dense_row": where}


def _row_errors(codec: Codec, codes: np.ndarray, stored: np.ndarray | None) -> np.ndarray | None:
    """The rows' error scales: the segment's ``errors`` section when it has one (PQ, SQ
    segments written before their codec could tell), else from the codes and the trained
    state (RB, PQ with `pq_cell_err`)."""
    if codec.width != codec.dim:
        return None
    if stored is not None:
        return stored
    state = codec.state()
    if codec.quantizer.errors_from_code(state):
        return codec.quantizer.row_errors(codes, codec.width, state)
    return None


def read_codes(directory: Path, rec: SegmentRecord, codec: Codec) -> dict[str, np.ndarray]:
    """The sections of a codes segment, checked against its record and the codec."""
    path = directory / rec.file
    with sg.open_segment(path, kind="codes", digest=rec.digest) as f:
        arrays = {name: f.read(name) for name in ("ids", "codes", "lists")}
        if "errors" in f.sections:
            arrays["errors"] = f.read("errors")
        if rec.dense_map == "sections":
            for name in ("dense_file", "dense_row"):
                if name not in f.sections:
                    raise StoreCorrupted(f"{path}: expected section {name!r} (the record maps rows through it)")
                arrays[name] = f.read(name)
        elif rec.dense and ("dense_row" in f.sections or "dense_file" in f.sections):
            # the file maps its rows onto its dense files: read one to one, rows would be
            # answered with other rows' vectors
            raise StoreCorrupted(f"{path}: maps its rows through sections 'dense_file'/'dense_row', the manifest "
                                 f"says {rec.dense_map!r} (row i of the dense file)")
    ids, codes, lists = arrays["ids"], arrays["codes"], arrays["lists"]
    n = rec.rows
    if ids.dtype != np.int64 or ids.shape != (n,):
        raise StoreCorrupted(f"{path}: expected ids int64 ({n},), found {ids.dtype} {ids.shape}")
    if n and (ids.min() != rec.min_id or ids.max() != rec.max_id or ids.min() < 0):
        raise StoreCorrupted(f"{path}: ids span {ids.min()}..{ids.max()}, the manifest says {rec.min_id}..{rec.max_id}")
    if rec.sorted_ids and n > 1 and not (np.diff(ids) > 0).all():
        raise StoreCorrupted(f"{path}: the manifest says its ids ascend, found them out of order or repeated")
    size = codec.code_size
    if codes.dtype != np.uint8 or codes.shape != (n, size):
        raise StoreCorrupted(f"{path}: expected codes uint8 ({n}, {size}), found {codes.dtype} {codes.shape}")
    if lists.dtype != np.int64 or lists.shape != (n,):
        raise StoreCorrupted(f"{path}: expected lists int64 ({n},), found {lists.dtype} {lists.shape}")
    if lists.size and (lists.min() < 0 or lists.max() >= codec.nlist):
        raise StoreCorrupted(f"{path}: expected lists in [0, {codec.nlist}), found values in "
                             f"{lists.min()}..{lists.max()}")
    if "errors" in arrays:
        err = arrays["errors"]
        if err.dtype != np.float32 or err.shape != (n,) or (n and not (np.isfinite(err).all() and err.min() >= 0)):
            raise StoreCorrupted(f"{path}: expected errors float32 ({n},), finite and >= 0, found {err.dtype} "
                                 f"{err.shape}")
    if rec.dense_map == "sections":
        df, dr = arrays["dense_file"], arrays["dense_row"]
        if df.dtype != np.uint16 or dr.dtype != np.uint32 or df.shape != (n,) or dr.shape != (n,):
            raise StoreCorrupted(f"{path}: expected dense_file uint16 ({n},) and dense_row uint32 ({n},), found "
                                 f"{df.dtype} {df.shape} and {dr.dtype} {dr.shape}")
        if n and df.max() >= len(rec.dense):
            raise StoreCorrupted(f"{path}: a row maps to dense file {int(df.max())}, the record names {len(rec.dense)}")
        limits = np.array([d.rows for d in rec.dense], dtype=np.int64)
        beyond = np.flatnonzero(dr.astype(np.int64) >= limits[df]) if n else np.zeros(0, dtype=np.int64)
        if beyond.size:
            i = int(beyond[0])
            f = int(df[i])
            raise StoreCorrupted(f"{path}: expected each row within its dense file, found row {i} mapped to row "
                                 f"{int(dr[i])} of {rec.dense[f].file}, which holds {int(limits[f])} rows "
                                 f"({beyond.size} of {n} rows beyond their file)")
    return arrays


def read_dead_rows(directory: Path, name: str, rows: int, serial: int | None = None,
                   digest: int | None = None) -> np.ndarray:
    """A segment's deletion file: sorted unique row numbers in [0, rows). The file names the
    segment it belongs to, so a manifest that hands it to another segment is caught; its
    `digest`, where the manifest recorded one, must be the file's."""
    path = directory / name
    arrays, meta = sg.read_segment(path, kind="deletes", digest=digest)
    if serial is not None and meta.get("segment") != serial:
        raise StoreCorrupted(f"{path}: holds the deleted rows of segment {meta.get('segment')!r}, the manifest "
                             f"gives it to segment {serial}")
    dead = arrays.get("rows")
    if dead is None or dead.dtype != np.int64 or dead.ndim != 1:
        raise StoreCorrupted(f"{path}: expected section 'rows' int64 (n,)")
    bad = (dead < 0) | (dead >= rows)
    bad[1:] |= np.diff(dead) <= 0
    if bad.any():
        i = int(np.argmax(bad))
        after = f" after {int(dead[i - 1])}" if i else ""
        raise StoreCorrupted(f"{path}: expected ascending unique rows in [0, {rows}), found {int(dead[i])} at "
                             f"index {i}{after}")
    return dead


def load_segment(directory: Path, rec: SegmentRecord, codec: Codec, pool: DensePool | None,
                 dead: np.ndarray | None = None, *, build: bool = True) -> Segment:
    """Read a segment file and build its layout (``build=False``: on first use); `dead`
    (sorted local rows) marked dead."""
    arrays = read_codes(directory, rec, codec)
    seg = Segment.from_arrays(rec, codec, arrays["ids"], arrays["codes"], arrays["lists"], pool,
                              arrays.get("dense_file"), arrays.get("dense_row"), directory=directory, build=build,
                              stored_errors=arrays.get("errors"))
    del arrays
    if dead is None and rec.deletes is not None:
        dead = read_dead_rows(directory, rec.deletes, rec.rows, rec.serial, rec.deletes_digest)
        if dead.size != rec.dead:
            raise StoreCorrupted(f"{directory / rec.deletes}: holds {dead.size} rows, the manifest says {rec.dead}")
    if dead is not None:
        seg.kill(dead)
    return seg
