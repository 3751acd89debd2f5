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
except that the smallest dense files, as many as hold `SMALL_DENSE_BYTES` together (all
of them when they fit), are copied into one new file (its rows in
`segments.write_dense_rows` order, near vectors together), so a stream of single-row adds
does not leave thousands of tiny files, even beside one big file; `compact` copies up to
`DENSE_COPY_BYTES` per group, which reclaims the space of deleted rows. A merged segment
names only the dense files its live rows are in (a file whose rows were all deleted goes
with the next garbage collection). Rows of a merged segment are sorted by id.
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
    or the next merge would rewrite more than `auto_rows` rows.

    A segment of more than `auto_rows` rows (live and dead) is never in an automatic merge;
    it still counts in its tier, but does not hold the others of its tier back: a mostly
    deleted big segment sits in tier 0 (tiers count live rows), and the small segments
    after it are merged without it (tier 0 takes as many of the smallest as fit the budget,
    at least two)."""
    by_tier: dict[int, list[SegmentSize]] = {}
    for s in sizes:
        by_tier.setdefault(tier(s.live), []).append(s)
    for t in sorted(by_tier):
        if len(by_tier[t]) < FANOUT:
            continue
        fits = sorted((s for s in by_tier[t] if s.rows <= auto_rows), key=lambda s: s.live if t else s.rows)
        if t:
            group = fits[:FANOUT]
            if len(group) == FANOUT and sum(s.rows for s in group) <= auto_rows:
                return [s.serial for s in group]
            continue
        group, rows = [], 0  # tier 0: all the small ones at once, as many as fit
        for s in fits:
            if rows + s.rows > auto_rows:
                break
            group.append(s)
            rows += s.rows
        if len(group) >= 2:
            return [s.serial for s in group]
    for s in sorted(sizes, key=lambda s: s.live):
        if s.rows and s.dead > DEAD_FRACTION * s.rows and s.rows <= auto_rows:
            return [s.serial]
    return None


def plan_compaction(sizes: list[SegmentSize]) -> list[list[int]]:
    """Groups for an explicit compaction: segments packed into groups of up to
    `MAX_SEGMENT_ROWS` live rows, first fit by decreasing live rows (within 11/9 of the
    fewest groups plus one, and the fewest in the common cases); a group is rewritten
    when it joins several segments or drops dead rows. Each group's segments in store
    order."""
    groups: list[list[SegmentSize]] = []
    room: list[int] = []
    for s in sorted(sizes, key=lambda s: -s.live):
        j = next((j for j, r in enumerate(room) if s.live <= r), None)
        if j is None:
            groups.append([s])
            room.append(MAX_SEGMENT_ROWS - s.live)
        else:
            groups[j].append(s)
            room[j] -= s.live
    order = {s.serial: i for i, s in enumerate(sizes)}
    groups = sorted((sorted(g, key=lambda s: order[s.serial]) for g in groups), key=lambda g: order[g[0].serial])
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
        used, dfile = np.unique(dfile, return_inverse=True)  # a file no live row maps to is not named
        infos = [infos[int(j)] for j in used]
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
            infos, dfile, drow = _copy_smallest(directory, codec, pool, infos, dfile, drow, ids, lists, serial,
                                                dense_dtype, files, copy_dense_bytes)
            dense_map = "sections"
            dense_file, dense_row = dfile.astype(np.uint16), drow.astype(np.uint32)
            arrays["dense_file"], arrays["dense_row"] = dense_file, dense_row
    name = data_file_name("seg", serial)
    try:
        digest = sg.write_segment(directory / name, "codes", arrays).digest
        files.append(name)
        rec = SegmentRecord(serial, name, int(ids.size), int(ids[0]), int(ids[-1]), tuple(infos), dense_map, None, 0,
                            True, digest)
        # (loading it fails too, say on an interrupt: its files are not the caller's yet, and left
        # behind they held their serial's names, so the writer's next commit failed on "File exists")
        seg = Segment.from_arrays(rec, codec, ids, codes, lists, pool, dense_file, dense_row, directory=directory,
                                  build=build, stored_errors=arrays.get("errors"))
    except BaseException:
        for f in files:
            (directory / f).unlink(missing_ok=True)
        raise
    return rec, files, seg


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
                   dense_dtype: str, files: list[str], copy_bytes: int) -> tuple[list[DenseInfo], np.ndarray, np.ndarray]:
    """The dense files of a mapped merge (every one holding a live row, `dfile` indexing
    `infos`): the rows of the smallest files are copied into one new file (its name appended
    to `files`), as many files as hold `copy_bytes` together when that is two or more (so
    single-row adds beside a big segment leave no trail of tiny files), and at least as many
    as keep the record within `MAX_DENSE_FILES` files (its index is uint16). Returns the
    record's files and each row's (file, row) in them."""
    by_size = np.argsort([d.nbytes for d in infos], kind="stable")
    small = int(np.searchsorted(np.cumsum([infos[i].nbytes for i in by_size]), copy_bytes, side="right"))
    n_moved = max(small if small >= 2 else 0, len(infos) - MAX_DENSE_FILES + 1 if len(infos) > MAX_DENSE_FILES else 0)
    moved, keep = by_size[:n_moved], np.sort(by_size[n_moved:])
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
