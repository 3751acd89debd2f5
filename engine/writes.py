"""What the store's writes do: train, add, delete, merge, compact — each one commit (or an
add/delete followed by the merge commits the policy asks for), O(rows changed).

Each function takes the open `Store` and its `WriterLock` (engine/commit.py), writes new
files under fresh serials, publishes the next version and then updates the store's
segments in RAM without rebuilding anything it already has:

- `add` encodes the batch once (trains the codec first if needed), sorts it by id and
  writes one codes segment and one dense file; its layout is built from the codes in hand
  (in a writer that has not searched yet: on its first search, engine/segments.py).
- `delete` writes, for each segment it touches, that segment's new deletion file (its dead
  rows, cumulative); the rows are then marked dead in the segment's layout in place.
- after either, `merge_due` runs the size-tiered policy (engine/merge.py) while it asks for
  merges within the store's ``auto_merge_rows``, each merge a commit of its own.
- `compact` merges everything the policy's size cap allows, in one commit.

Garbage collection (the retention rule) follows every commit. A store read in layout 1
(the first layout, no ``layout`` key) has its cumulative deletes file split into
per-segment deletion files by its first commit. Consistency checks for `check_store` live
here too.
"""

from __future__ import annotations


import datetime as _dt
import json
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..formats import segment as sg
from ..formats.body import MAX_SERIAL, CalibrationRecord, SegmentRecord, StoreBody, body_files, data_file_name
from ..formats.dense import check_dense
from . import merge
from .bounds import ErrorModel
from .codecs import F16_MAX, F16_NORMAL_MIN, MAX_NORM, Codec, _row_error
from .commit import WriterLock, collect_garbage, storage_errors
from .errors import CommitIncomplete, InvalidInput, StoreCorrupted, VeczError
from .inputs import as_ids as _as_ids
from .segments import Segment, read_dead_rows, write_dense_rows

if TYPE_CHECKING:
    from .store import Store

__all__ = ["AUTO_MERGE_ROWS", "MAX_NORM", "check_rows", "encode_rows", "write_rows", "add", "delete", "train",
           "compact", "calibrate", "merge_due", "read_legacy_deletes", "dead_rows_of", "check_files",
           "check_dense_ids"]

AUTO_MERGE_ROWS = merge.AUTO_MERGE_ROWS
_MAX_ID = (1 << 63) - 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Serials:
    """Fresh file serials for one commit, from the body's next_serial."""

    def __init__(self, first: int) -> None:
        self.next = first

    def take(self) -> int:
        if self.next > MAX_SERIAL:  # a name's 12 digits: reachable only through a damaged body
            raise StoreCorrupted(f"next_serial {self.next}: every file serial up to {MAX_SERIAL} is taken")
        self.next += 1
        return self.next - 1


def _publish(store: "Store", lock: WriterLock, body: StoreBody, files: list[str], operation: str) -> StoreBody:
    version = store.version + 1
    body = replace(body, version=version, parent=store.version, created=_now())
    try:
        lock.publish(version, body.to_json(), files, operation)
    except BaseException:
        if lock.linked == version:  # published all the same (`WriterLock.publish`): the writer follows it
            _follow(store, version)
        raise
    store._body = body
    return body


def _follow(store: "Store", version: int) -> bool:
    """Load the committed `version` from disk into the writer, whose own state failed to
    follow its commit; when that fails too, close the store (its state would not be the
    store's) and return False."""
    try:
        store._open_version(version)
        return True
    except Exception:
        store.close()
        return False


def _install_codec(store: "Store", codec: Codec) -> None:
    """The writer's codec after a commit: one it trained is its own (no file stamp, see
    `Store._codec_stamp`)."""
    if codec is not store.codec:
        store._codec_stamp = None
    store.codec = codec


def _after_commit(store: "Store", lock: WriterLock) -> None:
    """Garbage collection after a commit that succeeded: a failure leaves files that the
    next commit's collection removes, so it warns rather than making the commit look failed
    (a caller who retried would commit its rows twice)."""
    try:
        collect_garbage(lock)
    except (VeczError, OSError, MemoryError) as exc:
        warnings.warn(f"{store.path}: garbage collection after version {store.version} failed and will be retried "
                      f"after the next commit; the commit stands: {str(exc) or repr(exc)}", RuntimeWarning,
                      stacklevel=3)


def _write_deletes(store: "Store", rec: SegmentRecord, dead: np.ndarray, serials: _Serials,
                   files: list[str]) -> SegmentRecord:
    """The record of `rec` with deletion file holding `dead` (written now; none if empty)."""
    if not dead.size:
        return replace(rec, deletes=None, dead=0, deletes_digest=None)
    name = data_file_name("del", serials.take())
    with storage_errors("write a deletion file", store.path / name):
        digest = sg.write_segment(store.path / name, "deletes", {"rows": np.ascontiguousarray(dead, dtype=np.int64)},
                                  meta={"segment": rec.serial, "segment_file": rec.file}).digest
    files.append(name)
    return replace(rec, deletes=name, dead=int(dead.size), deletes_digest=digest)


def _base_body(store: "Store", lock: WriterLock, serials: _Serials, files: list[str]) -> StoreBody:
    """The current body, with layout 1's cumulative deletes turned into per-segment files."""
    body = store._body
    if body.legacy_deletes is None:
        return body
    recs = [_write_deletes(store, seg.rec, seg.dead, serials, files) for seg in store._segments]
    for seg, rec in zip(store._segments, recs):
        seg.rec = rec
    return replace(body, segments=tuple(recs), legacy_deletes=None, retain=8)


def _fail(lock: WriterLock, files: list[str]) -> None:
    lock.remove(files)


def train(store: "Store", lock: WriterLock, sample: np.ndarray) -> None:
    if store.n_rows:
        raise InvalidInput(f"{store.path}: train needs an empty store (codes already written with the current "
                           f"codec), found {store.n_rows} rows")
    codec = Codec.from_config(store.codec.to_config())
    codec.train(sample)
    files: list[str] = []
    try:
        lock.check("train")
        body = _with_codec(store, codec, store._body, files)
        _publish(store, lock, body, files, "train")
    except BaseException:
        _fail(lock, files)
        raise
    _install_codec(store, codec)
    _after_commit(store, lock)


def _with_codec(store: "Store", codec: Codec, body: StoreBody, files: list[str]) -> StoreBody:
    name = data_file_name("codec", store.version + 1)
    with storage_errors("write the trained codec", store.path / name):
        digest = sg.write_segment(store.path / name, "codec", codec.state(), meta=codec.to_config()).digest
    files.append(name)
    # a model measured with another codec says nothing about this one
    return replace(body, codec_config=codec.to_config(), codec_file=name, codec_digest=digest, calibration=None)


def check_auto_ids(store: "Store", n: int) -> None:
    """InvalidInput when automatic ids for `n` more rows (from the store's next id) pass int64."""
    if store.next_id > _MAX_ID - n + 1:
        raise InvalidInput(f"ids: automatic ids {store.next_id}.. for {n} rows exceed int64 (the store "
                           f"holds id {store.next_id - 1}); expected explicit ids=")


def _check_new_ids(store: "Store", ids: Any, n: int) -> np.ndarray:
    if ids is None:
        check_auto_ids(store, n)
        return np.arange(store.next_id, store.next_id + n, dtype=np.int64)
    new_ids = _as_ids(ids, "ids")
    if new_ids.shape != (n,):
        raise InvalidInput(f"ids: expected {n} ids (one per vector), found {new_ids.shape[0]}")
    if new_ids.min() < 0:
        raise InvalidInput(f"ids must be >= 0 (-1 marks an empty result slot), found {int(new_ids.min())}")
    uniq, counts = np.unique(new_ids, return_counts=True)
    if (counts > 1).any():
        raise InvalidInput(f"ids: expected distinct ids, found {int(uniq[counts > 1][0])} "
                           f"{int(counts.max())} times in the batch")
    present = store._find(new_ids, store._segments)[0] >= 0
    if present.any():
        raise InvalidInput(f"ids: expected ids not in the store, found id {int(new_ids[present][0])} "
                           f"already in the store ({int(present.sum())} of the batch are); delete it first")
    return new_ids


def check_rows(x: np.ndarray, dense: str, what: str, metric: str) -> None:
    """What a batch must satisfy beyond `_as_vectors` (finite, right width) and the codec's
    own checks when it prepares the rows (norms below `MAX_NORM` under ip/l2,
    `codecs.check_norms`): at least one row, values an f16 dense tier can hold (under cosine,
    where a row's scale is free, every nonzero row with a value of float16's normal range:
    a row of values below 6.1e-05 is kept to a few bits, below 6e-08 as zeros, and its exact
    score is then wrong or 0)."""
    if x.shape[0] == 0:
        raise InvalidInput(f"{what}: expected at least 1 row, found 0")
    if dense == "f16":
        peak = np.abs(x).max(axis=1)  # each row's largest magnitude: both checks read it
        big = np.flatnonzero(peak > F16_MAX)
        if big.size:
            raise InvalidInput(f"dense='f16' stores values up to 65504 in magnitude, found "
                               f"{float(peak.max()):.6g} in row {int(big[0])}")
        if metric == "cosine":
            faint = np.flatnonzero((peak > 0) & (peak < F16_NORMAL_MIN))
            if faint.size:
                raise _row_error(
                    f"{{where}}: dense='f16' under cosine keeps a row only when its largest value is at least "
                    f"{F16_NORMAL_MIN:.3g} (float16's smallest normal; below it the stored copy loses its digits, "
                    f"below 6e-08 it is zeros), found {float(peak[faint[0]]):.3g} in row {{row}} (scale the vectors "
                    "up by any factor: cosine does not change)", what, int(faint[0]))


def encode_rows(codec: Codec, prepared: np.ndarray, x: np.ndarray,
                ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One segment's sections (codes, ids, lists and the stored errors, if the codec has
    them) and its exact vectors, sorted by id. `prepared` is `codec._prepare(x)`."""
    codes = codec._encode_prepared(prepared)
    errors = codec._stored_errors(prepared, codes)
    n = ids.shape[0]
    order = None if n < 2 or (np.diff(ids) > 0).all() else np.argsort(ids, kind="stable")

    def sort(a: np.ndarray) -> np.ndarray:
        return a if order is None else a[order]

    arrays = {"codes": sort(codes.codes), "ids": sort(ids), "lists": sort(codes.lists)}
    if errors is not None:
        arrays["errors"] = sort(errors)
    return arrays, sort(x)


def write_rows(directory: Path, names: tuple[str, str], arrays: dict[str, np.ndarray], vectors: np.ndarray,
               dense: str, metric: str, serial: int, files: list[str],
               operation: str = "add") -> tuple[SegmentRecord, dict[str, np.ndarray]]:
    """Write one segment (codes file ``names[0]``, dense file ``names[1]`` unless the store
    has no dense tier, its rows in `segments.write_dense_rows` order) into `directory`,
    appending each name to `files` once created. Returns its record under `serial` and the
    sections written (`arrays`, with ``dense_file``/``dense_row`` when the dense file's rows
    are not in the segment's order). `operation` names the call in storage errors."""
    seg_ids = arrays["ids"]
    infos = ()
    dense_map = "identity"
    if dense != "none":  # first: the segment names each row's place in it
        with storage_errors(f"{operation}: write the dense file", directory / names[1]):
            info, sections = write_dense_rows(directory / names[1], seg_ids, vectors, arrays["lists"], dense, metric)
        files.append(names[1])
        infos = (info,)
        if sections:
            dense_map = "sections"
            arrays = {**arrays, **sections}
    with storage_errors(f"{operation}: write the codes segment", directory / names[0]):
        digest = sg.write_segment(directory / names[0], "codes", arrays).digest
    files.append(names[0])
    rec = SegmentRecord(serial, names[0], int(seg_ids.size), int(seg_ids[0]), int(seg_ids[-1]), infos, dense_map,
                        None, 0, True, digest)
    return rec, arrays


def add(store: "Store", lock: WriterLock, x: np.ndarray, ids: Any, build_progress: dict | None) -> np.ndarray:
    check_rows(x, store.dense, "vectors", store.metric)
    if build_progress is not None and not isinstance(build_progress, dict):
        raise InvalidInput(f"build_progress: expected a dict (a JSON object) or None, found "
                           f"{type(build_progress).__name__}")
    if build_progress is not None:  # kept as a reader will read it (tuples as lists, int keys as strings)
        try:
            text = json.dumps(build_progress, sort_keys=True, allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")  # as the manifest will be: a lone surrogate does not encode
            build_progress = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"build_progress: expected a JSON object (numbers, strings, lists, dicts; keys of "
                               f"one kind), found one JSON cannot write: {exc}") from None
    n = x.shape[0]
    new_ids = _check_new_ids(store, ids, n)
    codec = store.codec
    trained_now = not codec.is_trained
    prepared = codec._prepare(x, "vectors")  # normalised once for training and encoding
    if trained_now:
        codec = Codec.from_config(codec.to_config())._fit(prepared)
    arrays, seg_x = encode_rows(codec, prepared, x, new_ids)
    del prepared
    serials = _Serials(store._body.next_serial)
    files: list[str] = []
    try:
        lock.check("add")
        body = _base_body(store, lock, serials, files)
        if trained_now:
            body = _with_codec(store, codec, body, files)
        serial = serials.take()
        names = (data_file_name("seg", serial), data_file_name("dense", serial))
        rec, arrays = write_rows(store.path, names, arrays, seg_x, store.dense, store.metric, serial, files)
        body = replace(body, segments=body.segments + (rec,), next_id=max(body.next_id, int(new_ids.max()) + 1),
                       next_serial=serials.next, build=build_progress if build_progress is not None else body.build)
        _publish(store, lock, body, files, "add")
    except BaseException:
        _fail(lock, files)
        raise
    _install_codec(store, codec)
    pool = None if store.dense == "none" else store._pool

    def load() -> None:
        store._segments.append(Segment.from_arrays(
            rec, codec, arrays["ids"], arrays["codes"], arrays["lists"], pool, arrays.get("dense_file"),
            arrays.get("dense_row"), directory=store.path, build=store._build_layouts,
            stored_errors=arrays.get("errors")))

    _after_publish(store, lock, "add", f"with its {len(new_ids)} rows", "; do not add them again", load)
    return new_ids


def _after_publish(store: "Store", lock: WriterLock, operation: str, what: str, advice: str,
                   take_in: Callable[[], None]) -> None:
    """The steps after an operation's commit was published: `take_in` brings the writer's
    state in step with it (an add's new segment, a delete's dead rows), then garbage
    collection and the merges due (which only warn when they fail).

    A writer left out of step with its body corrupts later commits (a delete matched its
    segments to the body's by position and removed other ids, or wrote deleted rows back; a
    merge dropped a segment's rows), so when `take_in` fails the writer loads the committed
    version from disk, or closes with `CommitIncomplete`; on an interrupt (Ctrl-C,
    SystemExit) it closes. An interrupt anywhere here passes on, noted with what is
    committed, so that a caller does not repeat the operation (an add repeated commits its
    rows twice)."""
    version = store.version
    try:
        try:
            take_in()
        except Exception as exc:
            if not _follow(store, version):
                raise CommitIncomplete(f"{store.path}: {operation}: version {version} is committed {what}, but this "
                                       f"writer could not take it in ({str(exc) or repr(exc)}) and is closed{advice}; "
                                       f"open the store again", version, getattr(exc, "errno", None)) from exc
        except BaseException:
            store.close()
            raise
        _after_commit(store, lock)
        _merge_quietly(store, lock)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            tail = "this writer is closed: open the store again" if store._closed else "this writer goes on from it"
            exc.add_note(f"vecz: {store.path}: {operation}: version {version} is committed {what}; the interrupt "
                         f"came after the commit{advice} ({tail})")
        raise


def delete(store: "Store", lock: WriterLock, ids: np.ndarray) -> int:
    seg_of, rows = store._find(ids, store._segments)
    found = rows >= 0
    if not found.any():
        return 0
    serials = _Serials(store._body.next_serial)
    files: list[str] = []
    changed: dict[int, np.ndarray] = {}
    try:
        lock.check("delete")
        body = _base_body(store, lock, serials, files)
        recs = list(body.segments)
        for g in np.unique(seg_of[found]):
            seg = store._segments[int(g)]
            new = np.unique(rows[seg_of == g])
            changed[int(g)] = new
            recs[int(g)] = _write_deletes(store, recs[int(g)], np.union1d(seg.dead, new), serials, files)
        body = replace(body, segments=tuple(recs), next_serial=serials.next)
        _publish(store, lock, body, files, "delete")
    except BaseException:
        _fail(lock, files)
        raise

    def kill() -> None:
        for g, new in changed.items():
            seg = store._segments[g]
            seg.kill(new)
            seg.rec = store._body.segments[g]

    _after_publish(store, lock, "delete", f"with its {int(found.sum())} rows deleted", "", kill)
    return int(found.sum())


def calibrate(store: "Store", lock: WriterLock, model: ErrorModel, source: str, nprobe: int) -> None:
    """Commit `model` as the store's error model (``Store.calibrate``): one ``"model"``
    segment under a fresh serial, named by the body's ``calibration`` record with the live
    rows it was measured on; the model it replaces is collected with its last version."""
    arrays, meta = model.to_arrays()
    try:  # what every reader will check: a model it refuses would break auto for all of them
        ErrorModel.from_arrays(arrays, meta, store.dim)
    except InvalidInput as exc:
        raise InvalidInput(f"{store.path}: the measured error model does not fit a model file ({exc}); nothing "
                           "committed") from None
    serials = _Serials(store._body.next_serial)
    files: list[str] = []
    try:
        lock.check("calibrate")
        body = _base_body(store, lock, serials, files)
        name = data_file_name("model", serials.take())
        files.append(name)  # removed on any failure from here on, written or not
        with storage_errors("calibrate: write the error model", store.path / name):
            digest = sg.write_segment(store.path / name, "model", arrays, meta=meta).digest
        record = CalibrationRecord(name, int(store._body.live), source, int(nprobe), digest)
        _publish(store, lock, replace(body, calibration=record, next_serial=serials.next), files, "calibrate")
    except BaseException:
        _fail(lock, files)
        raise
    _after_commit(store, lock)


def _sizes(store: "Store") -> list[merge.SegmentSize]:
    return [merge.SegmentSize(s.serial, s.rows, int(s.dead.size)) for s in store._segments]


def _merge_groups(store: "Store", lock: WriterLock, groups: list[list[int]], operation: str,
                  copy_dense_bytes: int) -> None:
    """One commit replacing each group of segments (serials) by its merge."""
    by_serial = {s.serial: s for s in store._segments}
    serials = _Serials(store._body.next_serial)
    files: list[str] = []
    merged: dict[int, tuple[SegmentRecord | None, Segment | None]] = {}
    try:
        lock.check(operation)
        body = _base_body(store, lock, serials, files)
        pool = None if store.dense == "none" else store._pool
        for group in groups:
            sources = [by_serial[s] for s in group]
            with storage_errors(f"{operation}: write a merged segment", store.path):
                rec, written, seg = merge.merge_segments(store.path, store.codec, sources, serials.take(), store.dense,
                                                         pool, copy_dense_bytes=copy_dense_bytes,
                                                         build=store._build_layouts)
            files += written
            merged[group[0]] = (rec, seg)
        dropped = {s for g in groups for s in g}
        recs, segs = [], []
        for seg, rec in zip(store._segments, body.segments, strict=True):  # never a segment left out
            if seg.serial in merged:
                new_rec, new_seg = merged[seg.serial]
                if new_rec is not None:
                    recs.append(new_rec)
                    segs.append(new_seg)
            elif seg.serial not in dropped:
                recs.append(rec)
                segs.append(seg)
        body = replace(body, segments=tuple(recs), next_serial=serials.next)
        _publish(store, lock, body, files, operation)
    except BaseException:
        _fail(lock, files)
        raise
    store._segments = segs
    if store.dense != "none":
        store._pool.keep_only({d.file for s in segs for d in s.rec.dense})
    _after_commit(store, lock)


def merge_due(store: "Store", lock: WriterLock) -> int:
    """Run the merges the policy asks for, within `store.auto_merge_rows` rows in all;
    returns the rows rewritten."""
    budget = store.auto_merge_rows
    done = 0
    while budget > 0:
        group = merge.plan_merges(_sizes(store), auto_rows=budget)
        if group is None:
            break
        rows = sum(s.rows for s in store._segments if s.serial in group)
        _merge_groups(store, lock, [group], "merge", merge.SMALL_DENSE_BYTES)
        done += rows
        budget -= rows
    return done


def _merge_quietly(store: "Store", lock: WriterLock) -> None:
    """The merges due after a commit that succeeded: a merge that fails (say, the disk
    filled up) leaves the committed rows as they are and is retried after the next commit,
    so it warns rather than making the add or delete look failed."""
    try:
        merge_due(store, lock)
    except (VeczError, OSError, MemoryError) as exc:
        warnings.warn(f"{store.path}: the merge after this commit failed and will be retried: {str(exc) or repr(exc)}",
                      RuntimeWarning, stacklevel=3)


def compact(store: "Store", lock: WriterLock) -> None:
    groups = merge.plan_compaction(_sizes(store))
    if groups:
        _merge_groups(store, lock, groups, "compact", merge.DENSE_COPY_BYTES)


# ---------------------------------------------------------------------------- loading helpers


def read_legacy_deletes(directory: Path, body: StoreBody) -> dict[int, np.ndarray]:
    """Layout 1's cumulative deletes file as dead rows per segment serial."""
    path = directory / body.legacy_deletes
    arrays, _ = sg.read_segment(path, kind="deletes")
    rows = arrays.get("rows")
    if rows is None or rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 2:
        raise StoreCorrupted(f"{path}: expected section 'rows' int64 (n, 2)")
    sizes = {s.serial: s.rows for s in body.segments}
    out = {}
    for serial in np.unique(rows[:, 0]):
        dead = np.unique(rows[rows[:, 0] == serial, 1])
        if int(serial) not in sizes or (dead.size and (dead[0] < 0 or dead[-1] >= sizes[int(serial)])):
            raise StoreCorrupted(f"{path}: deleted rows name a segment or row the manifest lacks")
        out[int(serial)] = dead
    found = sum(d.size for d in out.values())
    if found != body.legacy_dead or len(rows) != found:  # another version's file, or pairs repeated
        raise StoreCorrupted(f"{path}: holds {len(rows)} (serial, row) pairs, {found} distinct; the manifest's "
                             f"deletes count is {body.legacy_dead}")
    return out


def dead_rows_of(directory: Path, rec: SegmentRecord, legacy: dict[int, np.ndarray]) -> np.ndarray:
    if rec.deletes is None:
        return legacy.get(rec.serial, np.empty(0, dtype=np.int64))
    dead = read_dead_rows(directory, rec.deletes, rec.rows, rec.serial, rec.deletes_digest)
    if dead.size != rec.dead:
        raise StoreCorrupted(f"{directory / rec.deletes}: holds {dead.size} rows, the manifest says {rec.dead}")
    return dead


# ---------------------------------------------------------------------------- checking


def _digests(body: StoreBody) -> dict[str, int | None]:
    """The digest `body` records for each segment file it names with one (None: none)."""
    out = {s.file: s.digest for s in body.segments}
    out.update((s.deletes, s.deletes_digest) for s in body.segments if s.deletes)
    if body.codec_file:
        out[body.codec_file] = body.codec_digest
    if body.calibration is not None:
        out[body.calibration.file] = body.calibration.digest
    return out


def check_files(path: Path, body: StoreBody) -> list[str]:
    """Checksums of every file a version names (never raises)."""
    problems = []
    seen: set[str] = set()
    digests = _digests(body)  # each file the one this version wrote (not another store's copy)
    for name in sorted(body_files(body)):
        if not name.startswith("dense-"):
            problems += sg.check_segment(path / name, digests.get(name))
    for seg in body.segments:
        for info in seg.dense:
            if info.file not in seen:
                seen.add(info.file)
                problems += check_dense(path, info)
    return problems


def check_dense_ids(store: "Store") -> list[str]:
    """Each row's dense vector is stored under the same id as its code (never raises)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    problems = []
    for seg in store._segments:
        if not seg.dense:
            continue
        try:
            dense_ids = []
            for reader in seg.dense:
                with pa.memory_map(str(reader.path)) as source:
                    dense_ids.append(ipc.open_file(source).get_batch(0).column(0).to_numpy())
            f, r = seg.dense_location(np.arange(seg.rows))
            got = np.empty(seg.rows, dtype=np.int64)
            for j, ids in enumerate(dense_ids):
                at = f == j
                got[at] = ids[r[at]]
            bad = np.flatnonzero(got != seg.ids)
            if bad.size:
                problems.append(f"{store.path / seg.rec.file}: row {int(bad[0])} has id {int(seg.ids[bad[0]])} but its "
                                f"dense vector is stored under id {int(got[bad[0]])} ({bad.size} rows differ)")
        except (VeczError, pa.ArrowException, OSError, IndexError) as exc:
            problems.append(f"{store.path / seg.rec.file}: dense ids do not read: {exc}")
    return problems
