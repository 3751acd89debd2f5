"""Merging segments: the size-tiered policy that keeps a store's segment count logarithmic
in its rows, and the merge itself.

Policy (`plan_merges`). A segment's tier is ``floor(log_F(live / BASE_ROWS))`` (0 below
``BASE_ROWS * F`` live rows), F = `FANOUT`. When a tier holds F segments they are merged
into one of the next tier, so at most F - 1 segments sit in each tier and a store of n rows
has at most (F - 1) * (1 + log_F(n / BASE_ROWS)) segments. A segment whose deleted share
exceeds `DEAD_FRACTION` is rewritten without its dead rows. Automatic merges run after a
commit that leaves work to do, as a commit of their own, and rewrite at most
``auto_rows`` rows (`AUTO_MERGE_ROWS` by default) so that a commit's cost stays bounded;
bigger merges wait for an explicit `Store.compact`, which merges everything into segments
of up to `MAX_SEGMENT_ROWS` live rows.

A merge rewrites codes, never more than it must of the exact vectors: the merged segment
maps its rows onto the dense files they already live in (``dense_map = "sections"``),
except that small dense files (together below `SMALL_DENSE_BYTES`) are copied into one
new file (its rows in `segments.write_dense_rows` order, near vectors together), so a
stream of single-row adds does not leave thousands of tiny files; `compact` also copies
the live rows of dense files a group owns, up to `DENSE_COPY_BYTES` per group, which
reclaims the space of deleted rows. Rows of a merged segment are sorted by id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats import segment as sg
from ..formats.body import SegmentRecord, data_file_name
from ..formats.dense import DenseInfo
from .codecs import Codec
from .errors import StoreCorrupted
from .segments import DensePool, Segment, read_codes, write_dense_rows

__all__ = ["FANOUT", "BASE_ROWS", "AUTO_MERGE_ROWS", "MAX_SEGMENT_ROWS", "DEAD_FRACTION", "tier", "plan_merges",
           "plan_compaction", "merge_segments"]

FANOUT = 4
BASE_ROWS = 4096
# Rows an automatic merge may rewrite after one commit: at ~100 B of code per row the merge
# reads, re-lays out and writes ~100 MB, about a second on 2 cores.
AUTO_MERGE_ROWS = 1 << 20
MAX_SEGMENT_ROWS = 1 << 22
DEAD_FRACTION = 0.25
SMALL_DENSE_BYTES = 64 << 20
DENSE_COPY_BYTES = 1 << 30
# A mapped segment's `dense_file` section is uint16: its record may name at most this many
# dense files (a mapped merge over more copies the rows of the smallest into a new one).
MAX_DENSE_FILES = 1 << 16


def tier(live: int) -> int:
    """The size tier of a segment of `live` rows (0 for the smallest)."""
    if live < BASE_ROWS * FANOUT:
        return 0
    return int(math.floor(math.log(live / BASE_ROWS, FANOUT) + 1e-9))


@dataclass(frozen=True)
class SegmentSize:
    serial: int
    rows: int
    dead: int

    @property
    def live(self) -> int:
        return self.rows - self.dead


def plan_merges(sizes: list[SegmentSize], *, auto_rows: int = AUTO_MERGE_ROWS) -> list[int] | None:
    """The serials of the segments to merge next (one group), or None when the policy is met
    or the next merge would rewrite more than `auto_rows` rows."""
    by_tier: dict[int, list[SegmentSize]] = {}
    for s in sizes:
        by_tier.setdefault(tier(s.live), []).append(s)
    for t in sorted(by_tier):
        group = sorted(by_tier[t], key=lambda s: s.live)
        if len(group) >= FANOUT:
            group = group[:FANOUT] if t else group  # tier 0: take all the small ones at once
            if sum(s.rows for s in group) <= auto_rows:
                return [s.serial for s in group]
    for s in sorted(sizes, key=lambda s: s.live):
        if s.rows and s.dead > DEAD_FRACTION * s.rows and s.rows <= auto_rows:
            return [s.serial]
    return None


def plan_compaction(sizes: list[SegmentSize]) -> list[list[int]]:
    """Groups for an explicit compaction: consecutive segments packed into groups of up to
    `MAX_SEGMENT_ROWS` live rows; a group is rewritten when it joins several segments or
    drops dead rows."""
    groups: list[list[SegmentSize]] = []
    for s in sizes:
        if groups and sum(g.live for g in groups[-1]) + s.live <= MAX_SEGMENT_ROWS:
            groups[-1].append(s)
        else:
            groups.append([s])
    return [[s.serial for s in g] for g in groups if len(g) > 1 or g[0].dead or not g[0].live]


def merge_segments(directory: Path, codec: Codec, sources: list[Segment], serial: int, dense_dtype: str,
                   pool: DensePool | None, *, copy_dense_bytes: int, build: bool = True) -> tuple[SegmentRecord | None, list[str], Segment | None]:
    """Write one segment holding the live rows of `sources`, sorted by id.

    Dense rows are copied into a new file when the dense files the sources use hold at most
    `copy_dense_bytes` together, else mapped where they are (through a uint16 file index: the
    rows of the smallest files are copied into a new one when more than `MAX_DENSE_FILES`
    would be mapped, `_copy_smallest`). Returns the record, the names
    of the files written (for the commit) and the loaded segment; (None, [], None) when no
    row is live."""
    ids_p, codes_p, lists_p, loc_file, loc_row = [], [], [], [], []
    errors_p: list[np.ndarray | None] = []
    infos: list = []
    index_of: dict[str, int] = {}
    for src in sources:
        arrays = read_codes(directory, src.rec, codec)
        live = src.live_rows()
        ids_p.append(arrays["ids"][live])
        codes_p.append(arrays["codes"][live])
        errors_p.append(None if "errors" not in arrays else arrays["errors"][live])
        lists_p.append(arrays["lists"][live])
        if src.rec.dense:
            for d in src.rec.dense:
                if d.file not in index_of:
                    index_of[d.file] = len(infos)
                    infos.append(d)
            local = np.array([index_of[d.file] for d in src.rec.dense], dtype=np.int64)
            f, r = src.dense_location(live)
            loc_file.append(local[f])
            loc_row.append(r)
    ids = np.concatenate(ids_p)
    if ids.size == 0:
        return None, [], None
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(ids[order])
    codes = np.ascontiguousarray(np.concatenate(codes_p)[order])
    lists = np.ascontiguousarray(np.concatenate(lists_p)[order])
    files: list[str] = []
    arrays = {"codes": codes, "ids": ids, "lists": lists}
    if errors_p and all(e is not None for e in errors_p):  # kept only when every source has them
        arrays["errors"] = np.ascontiguousarray(np.concatenate(errors_p)[order])
    dense_file = dense_row = None
    dense_map = "identity"
    if infos:
        dfile = np.concatenate(loc_file)[order]
        drow = np.concatenate(loc_row)[order]
        if sum(d.nbytes for d in infos) <= copy_dense_bytes:
            name = data_file_name("dense", serial)
            vectors = _read_vectors(pool, infos, dfile, drow)
            info, sections = write_dense_rows(directory / name, ids, vectors, lists, dense_dtype, codec.metric)
            del vectors
            files.append(name)
            infos = [info]
            if sections:  # the rows in locality order (`write_dense_rows`)
                dense_map = "sections"
                arrays.update(sections)
                dense_file, dense_row = sections["dense_file"], sections["dense_row"]
        else:
            if len(infos) > MAX_DENSE_FILES:
                infos, dfile, drow = _copy_smallest(directory, codec, pool, infos, dfile, drow, ids, lists, serial,
                                                    dense_dtype, files)
            dense_map = "sections"
            dense_file, dense_row = dfile.astype(np.uint16), drow.astype(np.uint32)
            arrays["dense_file"], arrays["dense_row"] = dense_file, dense_row
    name = data_file_name("seg", serial)
    try:
        sg.write_segment(directory / name, "codes", arrays)
    except BaseException:
        for f in files:
            (directory / f).unlink(missing_ok=True)
        raise
    files.append(name)
    rec = SegmentRecord(serial, name, int(ids.size), int(ids[0]), int(ids[-1]), tuple(infos), dense_map, None, 0, True)
    return rec, files, Segment.from_arrays(rec, codec, ids, codes, lists, pool, dense_file, dense_row,
                                           directory=directory, build=build, stored_errors=arrays.get("errors"))


def _read_vectors(pool: DensePool | None, infos: list[DenseInfo], dfile: np.ndarray, drow: np.ndarray) -> np.ndarray:
    """The float32 vectors of rows at (`dfile` index into `infos`, `drow`), each file read in
    row order."""
    if pool is None:
        raise StoreCorrupted(f"merge: rows map onto dense files {infos[0].file}... but the store has no dense tier")
    vectors = np.empty((dfile.size, infos[0].dim), dtype=np.float32)
    for j in np.unique(dfile):
        at = np.flatnonzero(dfile == j)
        rows = drow[at]
        srt = np.argsort(rows, kind="stable")  # read each file in row order
        vectors[at[srt]] = pool.get(infos[int(j)]).read_rows(rows[srt])
    return vectors


def _copy_smallest(directory: Path, codec: Codec, pool: DensePool | None, infos: list[DenseInfo],
                   dfile: np.ndarray, drow: np.ndarray, ids: np.ndarray, lists: np.ndarray, serial: int,
                   dense_dtype: str, files: list[str]) -> tuple[list[DenseInfo], np.ndarray, np.ndarray]:
    """Fit a mapped merge's rows into `MAX_DENSE_FILES` dense files: the files no row maps to
    are dropped, and the rows of the smallest of the rest are copied into one new file (its
    name appended to `files`), so the record's index never wraps. Returns the record's
    files and each row's (file, row) in them."""
    used = np.zeros(len(infos), dtype=bool)
    used[dfile] = True
    keep = np.flatnonzero(used)
    moved = np.zeros(0, dtype=np.int64)
    if keep.size > MAX_DENSE_FILES:
        by_size = keep[np.argsort([infos[i].nbytes for i in keep], kind="stable")]
        moved, keep = by_size[:keep.size - MAX_DENSE_FILES + 1], np.sort(by_size[keep.size - MAX_DENSE_FILES + 1:])
    index = np.full(len(infos), -1, dtype=np.int64)
    index[keep] = np.arange(keep.size)
    new_file, new_row = index[dfile], drow.astype(np.int64)
    out = [infos[i] for i in keep]
    if moved.size:
        at = np.flatnonzero(np.isin(dfile, moved))
        name = data_file_name("dense", serial)
        vectors = _read_vectors(pool, infos, dfile[at], drow[at])
        info, sections = write_dense_rows(directory / name, ids[at], vectors, lists[at], dense_dtype, codec.metric)
        files.append(name)  # removed by merge_segments if writing the segment fails
        new_file[at] = len(out)
        new_row[at] = sections["dense_row"] if sections else np.arange(at.size)
        out.append(info)
    return out, new_file, new_row
