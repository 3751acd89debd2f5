"""The manifest body: its schema, the store's file-name grammar, and the cross-checks a reader
makes before it trusts a version (formats/FORMAT.md, "Manifest body" and "Store directory").

`parse_body(body, where)` turns the JSON object of a manifest (formats/manifest.py reads and
checksums the bytes) into a `StoreBody`, checking every field's type and range and the
consistency between fields: segment serials unique and below ``next_serial``, ids within
``[0, next_id)``, row counts that add up to ``counts``, dense files that hold the rows
their segments map to, file names in the store's grammar (so a manifest cannot point
outside the directory). Hostile or damaged bodies raise `StoreCorrupted` naming the field.

Two body layouts are read:

- layout 2 (the layout written now): ``"layout": 2``; each segment record lists the dense
  files its rows live in and names its own deletion file; rows are sorted by id.
- layout 1 (the first layout, no ``"layout"`` key): one dense file per segment holding its
  rows in order, one cumulative deletes file for the whole store, rows in add order. It is
  read as layout 2 with ``legacy_deletes`` set; the next commit writes layout 2.

Writers build bodies with `StoreBody.to_json`. Tested in tests/test_body.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .dense import DenseInfo
from .errors import StoreCorrupted

__all__ = [
    "FORMAT_ID",
    "LAYOUT",
    "DATA_FILE_RE",
    "STAGING_RE",
    "DENSE_CHOICES",
    "METRICS",
    "SegmentRecord",
    "CalibrationRecord",
    "CALIBRATION_SOURCES",
    "StoreBody",
    "parse_body",
    "data_file_name",
    "body_files",
]

FORMAT_ID = "vecz.store"
LAYOUT = 2
DENSE_CHOICES = ("f32", "f16", "none")
METRICS = ("cosine", "ip", "l2")
DATA_FILE_RE = re.compile(r"(seg|dense|del|codec|model)-([0-9]{12})\.(vzs|arrow)")
"""Names of the data files a manifest may name (use ``fullmatch``); group 2 is the serial."""
STAGING_RE = re.compile(r"staging-[0-9a-f]{32}")
"""Names of staging directories (formats/FORMAT.md, "Segments written by other processes"):
files a writer that does not hold the lock wrote for the lock holder to adopt."""
_SUFFIX = {"seg": "vzs", "dense": "arrow", "del": "vzs", "codec": "vzs", "model": "vzs"}
CALIBRATION_SOURCES = ("rows", "queries")
_MAX_INT = (1 << 63) - 1


# the largest serial a file name's 12 digits hold
MAX_SERIAL = 10**12 - 1


def data_file_name(kind: str, serial: int) -> str:
    """``seg-000000000012.vzs`` and the like: `kind` in seg, dense, del, codec, model."""
    if kind not in _SUFFIX or not 0 <= serial <= MAX_SERIAL:
        raise ValueError(f"data_file_name: expected a kind in {sorted(_SUFFIX)} and a 12-digit serial, "
                         f"found {kind!r}, {serial!r}")
    return f"{kind}-{serial:012d}.{_SUFFIX[kind]}"


@dataclass(frozen=True)
class SegmentRecord:
    """One segment of a version: its codes file, the dense files its rows live in, and its
    deletion file (the segment's dead rows, cumulative), if any.

    ``dense_map`` tells how rows map to dense files: ``"identity"`` (one dense file, row i
    at row i) or ``"sections"`` (the segment file's ``dense_file``/``dense_row`` sections).
    """

    serial: int
    file: str
    rows: int
    min_id: int
    max_id: int
    dense: tuple[DenseInfo, ...] = ()
    dense_map: str = "identity"
    deletes: str | None = None
    dead: int = 0
    sorted_ids: bool = True
    # the codes and deletion files' digests (`segment.segment_digest`), None where a version
    # written before them recorded none
    digest: int | None = None
    deletes_digest: int | None = None

    @property
    def live(self) -> int:
        return self.rows - self.dead

    def to_json(self) -> dict[str, Any]:
        out = {"serial": self.serial, "file": self.file, "rows": self.rows, "min_id": self.min_id,
               "max_id": self.max_id, "dense": [d.to_json() for d in self.dense], "dense_map": self.dense_map,
               "deletes": None if self.deletes is None else
               _with_digest({"file": self.deletes, "count": self.dead}, self.deletes_digest),
               "sorted_ids": self.sorted_ids}
        return _with_digest(out, self.digest)


def _with_digest(rec: dict[str, Any], digest: int | None) -> dict[str, Any]:
    if digest is not None:
        rec["digest"] = digest
    return rec


@dataclass(frozen=True)
class CalibrationRecord:
    """The error model ``rerank="auto"`` uses, measured and committed (``Store.calibrate``):
    its file (a segment of kind ``"model"``), the live rows the store held when it was
    measured, what served as queries (``"rows"``: pseudo-queries made from the rows;
    ``"queries"``: sample queries the user gave) and the nprobe it was measured with."""

    file: str
    rows: int
    source: str
    nprobe: int
    digest: int | None = None  # the model file's (`segment.segment_digest`)

    def to_json(self) -> dict[str, Any]:
        return _with_digest({"file": self.file, "rows": self.rows, "source": self.source, "nprobe": self.nprobe},
                            self.digest)


@dataclass(frozen=True)
class StoreBody:
    """A manifest body, checked (see `parse_body`)."""

    version: int
    parent: int | None
    created: str | None
    dim: int
    metric: str
    dense: str
    codec_config: dict
    codec_file: str | None
    segments: tuple[SegmentRecord, ...]
    next_id: int
    next_serial: int
    retain: int = 8
    build: dict | None = None
    layout: int = LAYOUT
    legacy_deletes: str | None = None  # layout 1's cumulative deletes file (read, never written)
    extra: dict = field(default_factory=dict)  # unknown keys, carried over unchanged
    calibration: CalibrationRecord | None = None
    legacy_dead: int = 0  # layout 1: the (serial, row) pairs its deletes file holds, by its count
    codec_digest: int | None = None  # the codec file's (`segment.segment_digest`)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def live(self) -> int:
        return sum(s.live for s in self.segments)

    def with_changes(self, **changes: Any) -> "StoreBody":
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of a layout-2 manifest for this body."""
        if self.legacy_deletes is not None:
            raise ValueError("a body with layout 1's cumulative deletes must be converted before it is written")
        out = dict(self.extra)
        out.update({
            "format": FORMAT_ID, "layout": LAYOUT, "version": self.version, "parent": self.parent,
            "created": self.created, "dim": self.dim, "metric": self.metric, "dense": self.dense,
            "codec": _with_digest({"config": self.codec_config, "file": self.codec_file}, self.codec_digest),
            "segments": [s.to_json() for s in self.segments],
            "next_id": self.next_id, "next_serial": self.next_serial,
            "counts": {"rows": self.rows, "live": self.live},
            "retain": self.retain, "build": self.build,
        })
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_json()
        return out


def _get(obj: dict, key: str, kind: type | tuple[type, ...], where: str, *, nullable: bool = False,
         low: int | None = None, high: int = _MAX_INT) -> Any:
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StoreCorrupted(f"{where}: field {key!r}: expected {name}, found {value!r:.80}")
    if low is not None and not low <= value <= high:
        top = {_MAX_INT: "2**63-1", _MAX_INT + 1: "2**63"}.get(high, f"{high}")
        raise StoreCorrupted(f"{where}: field {key!r}: expected an integer in {low}..{top}, found {value!r}")
    return value


def _name(value: str, kinds: tuple[str, ...], where: str) -> str:
    m = DATA_FILE_RE.fullmatch(value)
    if not m or m.group(1) not in kinds or _SUFFIX[m.group(1)] != m.group(3):
        expected = " or ".join(f"'{k}-<12 digits>.{_SUFFIX[k]}'" for k in kinds)
        raise StoreCorrupted(f"{where}: expected a file name like {expected}, found {value!r:.80}")
    return value


def _segment(rec: Any, i: int, layout: int, store_dense: str, dim: int, where: str) -> SegmentRecord:
    w = f"{where} segment {i}"
    if not isinstance(rec, dict):
        raise StoreCorrupted(f"{w}: expected an object, found {type(rec).__name__}")
    serial = _get(rec, "serial", int, w, low=1, high=MAX_SERIAL)  # 10**12 raised data_file_name's ValueError
    file = _name(_get(rec, "file", str, w), ("seg",), w)
    if int(DATA_FILE_RE.fullmatch(file).group(2)) != serial:
        raise StoreCorrupted(f"{w}: segment {serial} names the codes file {file}; expected "
                             f"{data_file_name('seg', serial)}")
    rows = _get(rec, "rows", int, w, low=0)
    min_id = _get(rec, "min_id", int, w, low=0)
    max_id = _get(rec, "max_id", int, w, low=0)
    if rows and min_id > max_id:
        raise StoreCorrupted(f"{w}: min_id {min_id} > max_id {max_id}")
    raw_dense = rec.get("dense")
    if layout == 1:
        raw_dense = [] if raw_dense is None else [raw_dense]
        dense_map, deletes, dead, sorted_ids, deletes_digest = "identity", None, 0, False, None
    else:
        if not isinstance(raw_dense, list):
            raise StoreCorrupted(f"{w}: field 'dense': expected a list of dense records, found {raw_dense!r:.80}")
        dense_map = _get(rec, "dense_map", str, w)
        if dense_map not in ("identity", "sections"):
            raise StoreCorrupted(f"{w}: field 'dense_map': expected 'identity' or 'sections', found {dense_map!r:.40}")
        drec = rec.get("deletes")
        if drec is None:
            deletes, dead, deletes_digest = None, 0, None
        else:
            if not isinstance(drec, dict):
                raise StoreCorrupted(f"{w}: field 'deletes': expected an object or null, found {drec!r:.80}")
            deletes = _name(_get(drec, "file", str, w), ("del",), w)
            dead = _get(drec, "count", int, w, low=1)
            deletes_digest = _digest(drec, f"{w} deletes")
            if dead > rows:
                raise StoreCorrupted(f"{w}: {dead} deleted rows in a segment of {rows}")
        sorted_ids = _get(rec, "sorted_ids", bool, w)
    dense = tuple(DenseInfo.from_json(d, f"{w} dense {j}") for j, d in enumerate(raw_dense))
    for j, d in enumerate(dense):
        _name(d.file, ("dense",), f"{w} dense {j}")
        if d.dim != dim or d.dtype != store_dense:
            raise StoreCorrupted(f"{w} dense {j}: holds {d.dim}-dim {d.dtype} vectors, expected {dim}-dim {store_dense}")
    if store_dense == "none":
        if dense:
            raise StoreCorrupted(f"{w}: names dense files, but the store has no dense tier")
    elif rows:
        if not dense:
            raise StoreCorrupted(f"{w}: names no dense file for its {rows} rows (store dense={store_dense!r})")
        if dense_map == "identity" and (len(dense) != 1 or dense[0].rows != rows):
            raise StoreCorrupted(f"{w}: maps its {rows} rows one to one onto dense files of "
                                 f"{[d.rows for d in dense]} rows; expected one file of {rows}")
    if len({d.file for d in dense}) != len(dense):
        raise StoreCorrupted(f"{w}: names the same dense file twice")
    return SegmentRecord(serial, file, rows, min_id, max_id, dense, dense_map, deletes, dead, sorted_ids,
                         _digest(rec, w), deletes_digest)


def parse_body(body: Any, where: str) -> StoreBody:
    """Check a manifest body and return it as a `StoreBody` (layout 1 or 2)."""
    if not isinstance(body, dict):
        raise StoreCorrupted(f"{where}: expected a JSON object, found {type(body).__name__}")
    if body.get("format") != FORMAT_ID:
        raise StoreCorrupted(f"{where}: expected format {FORMAT_ID!r}, found {body.get('format')!r:.80}")
    layout = body.get("layout", 1)
    if layout not in (1, 2) or isinstance(layout, bool):
        raise StoreCorrupted(f"{where}: field 'layout': expected 1 or 2, found {layout!r:.40} (written by a newer vecz?)")
    version = _get(body, "version", int, where, low=1)
    parent = _get(body, "parent", int, where, nullable=True, low=1)
    created = _get(body, "created", str, where, nullable=True)
    dim = _get(body, "dim", int, where, low=1)
    metric = _get(body, "metric", str, where)
    dense = _get(body, "dense", str, where)
    if metric not in METRICS or dense not in DENSE_CHOICES:
        raise StoreCorrupted(f"{where}: expected metric in {METRICS} and dense in {DENSE_CHOICES}, "
                             f"found {metric!r:.20} / {dense!r:.20}")
    codec = _get(body, "codec", dict, where)
    config = _get(codec, "config", dict, f"{where} codec")
    codec_file = _get(codec, "file", str, f"{where} codec", nullable=True)
    if codec_file is not None:
        _name(codec_file, ("codec",), f"{where} codec")
    codec_digest = _digest(codec, f"{where} codec")
    raw_segments = _get(body, "segments", list, where)
    segments = tuple(_segment(r, i, layout, dense, dim, where) for i, r in enumerate(raw_segments))
    next_id = _get(body, "next_id", int, where, low=0, high=_MAX_INT + 1)  # 2**63 once id 2**63-1 is added
    next_serial = _get(body, "next_serial", int, where, low=1, high=MAX_SERIAL + 1)
    legacy, legacy_dead = None, 0
    if layout == 1:
        drec = body.get("deletes")
        if drec is not None:
            drec = _get(body, "deletes", dict, where)
            legacy = _name(_get(drec, "file", str, f"{where} deletes"), ("del",), f"{where} deletes")
            legacy_dead = _get(drec, "count", int, f"{where} deletes", low=0)
        retain, build = 1 << 30, None  # layout 1 kept every manifest
        # layout 1 named deletes files by version: serials issued from now on must not meet them
        next_serial = max(next_serial, version + 1)
    else:
        retain = _get(body, "retain", int, where, low=1)
        build = _get(body, "build", dict, where, nullable=True)
    calibration = None
    if layout == 2 and body.get("calibration") is not None:
        calibration = _calibration(_get(body, "calibration", dict, where), f"{where} calibration")
    known = {"format", "layout", "version", "parent", "created", "dim", "metric", "dense", "codec", "segments",
             "next_id", "next_serial", "counts", "retain", "build", "deletes", "calibration"}
    out = StoreBody(version, parent, created, dim, metric, dense, config, codec_file, segments, next_id,
                    next_serial, retain, build, layout, legacy, {k: v for k, v in body.items() if k not in known},
                    calibration, legacy_dead, codec_digest)
    _cross_check(out, body, where)
    return out


def _calibration(rec: dict, where: str) -> CalibrationRecord:
    source = _get(rec, "source", str, where)
    if source not in CALIBRATION_SOURCES:
        raise StoreCorrupted(f"{where}: field 'source': expected one of {CALIBRATION_SOURCES}, found {source!r:.40}")
    name = _name(_get(rec, "file", str, where), ("model",), where)
    return CalibrationRecord(name, _get(rec, "rows", int, where, low=0), source, _get(rec, "nprobe", int, where, low=1),
                             _digest(rec, where))


def _digest(rec: dict, where: str) -> int | None:
    """A record's optional file digest (a CRC32; versions before stop 54 recorded none)."""
    return _get(rec, "digest", int, where, nullable=True, low=0, high=(1 << 32) - 1)


def _cross_check(b: StoreBody, raw: dict, where: str) -> None:
    """Fields that must agree with each other, beyond each one's own type and range."""
    serials = [s.serial for s in b.segments]
    if len(set(serials)) != len(serials):
        raise StoreCorrupted(f"{where}: two segments share a serial number")
    files = [s.file for s in b.segments] + [s.deletes for s in b.segments if s.deletes]
    files += [d.file for s in b.segments for d in s.dense]
    if len(set(files)) != len(files) and b.layout == 2:
        # layout 2 merges may share dense files between segments; codes and deletion files never
        own = [s.file for s in b.segments] + [s.deletes for s in b.segments if s.deletes]
        if len(set(own)) != len(own):
            raise StoreCorrupted(f"{where}: two segments name the same codes or deletion file")
    # a dense file is immutable, so every record naming it must say the same (rows, offset,
    # size, CRC): readers map each file once, by name, and read it through one record
    dense: dict[str, tuple[int, DenseInfo]] = {}
    for s in b.segments:
        for d in s.dense:
            first = dense.setdefault(d.file, (s.serial, d))
            if first[1] != d:
                raise StoreCorrupted(f"{where}: segments {first[0]} and {s.serial} describe dense file {d.file} "
                                     f"differently; expected one record, found {first[1].to_json()} and {d.to_json()}")
    model = [b.calibration.file] if b.calibration else []
    for name in files + ([b.codec_file] if b.codec_file else []) + model:
        serial = int(DATA_FILE_RE.fullmatch(name).group(2))
        if name.startswith(("seg-", "dense-", "del-", "model-")) and serial >= b.next_serial:
            raise StoreCorrupted(f"{where}: file {name} has serial {serial}, but next_serial is {b.next_serial}; "
                                 f"expected every serial below it")
    if serials and max(serials) >= b.next_serial:
        raise StoreCorrupted(f"{where}: segment serial {max(serials)} is not below next_serial {b.next_serial}")
    max_id = max((s.max_id for s in b.segments if s.rows), default=-1)
    if max_id >= b.next_id:
        raise StoreCorrupted(f"{where}: a segment holds id {max_id}, but next_id is {b.next_id}; expected next_id "
                             f"beyond every id in the store")
    if b.segments and b.codec_file is None:
        raise StoreCorrupted(f"{where}: segments without a trained codec")
    counts = _get(raw, "counts", dict, where)
    # layout 1: its segments hold no deletes; the top-level count says how many rows are dead
    live = b.live if b.layout == 2 else b.rows - b.legacy_dead
    if counts.get("rows") != b.rows or counts.get("live") != live:
        raise StoreCorrupted(f"{where}: counts say {counts.get('rows')!r} rows / {counts.get('live')!r} live, "
                             f"the segments hold {b.rows} / {live}")


def body_files(b: StoreBody) -> set[str]:
    """Every data file a version names (codec, codes, dense, deletion and model files)."""
    out = {s.file for s in b.segments}
    out |= {d.file for s in b.segments for d in s.dense}
    out |= {s.deletes for s in b.segments if s.deletes}
    if b.codec_file:
        out.add(b.codec_file)
    if b.calibration:
        out.add(b.calibration.file)
    if b.legacy_deletes:
        out.add(b.legacy_deletes)
    return out
