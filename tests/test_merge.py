"""engine/merge.py's policy: size tiers, at most FANOUT - 1 segments per tier after the merges
it asks for, a segment count logarithmic in the rows for any stream of commit sizes,
bounded rows per automatic merge, dead-heavy segments rewritten."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecz import Store
from vecz.engine import merge
from vecz.engine.merge import FANOUT, SegmentSize, plan_compaction, plan_merges, tier


def _settle(sizes: list[SegmentSize], next_serial: int, auto_rows: int) -> tuple[list[SegmentSize], int, int]:
    """Apply plan_merges until it has nothing to do within `auto_rows`; returns the sizes,
    the next serial and the rows rewritten."""
    rewritten = 0
    while True:
        group = plan_merges(sizes, auto_rows=auto_rows - rewritten)
        if group is None:
            return sizes, next_serial, rewritten
        merged = [s for s in sizes if s.serial in group]
        rewritten += sum(s.rows for s in merged)
        live = sum(s.live for s in merged)
        sizes = [s for s in sizes if s.serial not in group] + ([SegmentSize(next_serial, live, 0)] if live else [])
        next_serial += 1


def test_tiers():
    assert tier(0) == tier(1) == tier(merge.BASE_ROWS * FANOUT - 1) == 0
    assert tier(merge.BASE_ROWS * FANOUT) == 1
    assert tier(merge.BASE_ROWS * FANOUT ** 3) == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([1, 7, 100, 4096, 10_000, 90_000]), min_size=1, max_size=300))
def test_a_stream_of_adds_keeps_the_segment_count_logarithmic(batches):
    sizes: list[SegmentSize] = []
    serial = 1
    total = 0
    for rows in batches:
        sizes.append(SegmentSize(serial, rows, 0))
        serial += 1
        total += rows
        sizes, serial, rewritten = _settle(sizes, serial, merge.AUTO_MERGE_ROWS)
        assert rewritten <= merge.AUTO_MERGE_ROWS
    assert sum(s.live for s in sizes) == total
    # no auto merge was ever too big here (every merge fits AUTO_MERGE_ROWS): at most
    # FANOUT - 1 segments per tier
    per_tier: dict[int, int] = {}
    for s in sizes:
        per_tier[tier(s.live)] = per_tier.get(tier(s.live), 0) + 1
    assert max(per_tier.values()) <= FANOUT - 1, per_tier
    bound = (FANOUT - 1) * (1 + max(0, math.ceil(math.log(max(total, 1) / merge.BASE_ROWS, FANOUT))))
    assert len(sizes) <= bound, (len(sizes), bound, total)


def test_two_thousand_single_row_adds_leave_few_segments():
    sizes, serial = [], 1
    for _ in range(2000):
        sizes.append(SegmentSize(serial, 1, 0))
        serial += 1
        sizes, serial, _ = _settle(sizes, serial, merge.AUTO_MERGE_ROWS)
    assert len(sizes) <= FANOUT - 1 and sum(s.rows for s in sizes) == 2000


def test_automatic_merges_stay_within_their_row_budget():
    big = [SegmentSize(i, 2_000_000, 0) for i in range(1, FANOUT + 1)]
    assert plan_merges(big, auto_rows=merge.AUTO_MERGE_ROWS) is None  # too big for a commit
    assert sorted(plan_merges(big, auto_rows=10**9)) == [1, 2, 3, 4]


def test_dead_heavy_segments_are_rewritten():
    sizes = [SegmentSize(1, 100_000, 30_000), SegmentSize(2, 100_000, 10_000)]
    assert plan_merges(sizes) == [1]
    assert plan_merges([SegmentSize(1, 100_000, 20_000)]) is None


def test_compaction_packs_segments_up_to_the_cap():
    cap = merge.MAX_SEGMENT_ROWS
    sizes = [SegmentSize(1, cap // 2, 0), SegmentSize(2, cap // 2, 0), SegmentSize(3, 10, 0),
             SegmentSize(4, cap, 5), SegmentSize(5, 10, 10)]
    groups = plan_compaction(sizes)
    # 3 alone has nothing to drop; 4 takes the empty 5 along and drops its dead rows
    assert groups == [[1, 2], [4, 5]]
    assert all(sum(s.live for s in sizes if s.serial in g) <= cap for g in groups)
    assert plan_compaction([SegmentSize(1, 10, 0)]) == []


# ------------------------------------------------------------------ the store's segments


def _layouts(store) -> dict[int, object]:
    return {seg.serial: seg.layout for seg in store._segments}


def test_commits_and_refresh_reuse_every_layout_they_already_have(tmp_path):
    """A commit builds the new segment's layout only; a delete marks rows dead in the
    layout it already has; a reader's refresh loads only segments it has not seen."""
    import numpy as np

    from vecz import Store

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3 * merge.BASE_ROWS, 16)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=16, metric="l2", codec="IVF4,PQ4x8", dense="f16") as w:
        w.auto_merge_rows = 0  # no merges: this test is about reuse across plain commits
        w.add(x[: merge.BASE_ROWS])
        w.add(x[merge.BASE_ROWS : 2 * merge.BASE_ROWS])
        reader = Store.open(tmp_path / "s")
        before_w, before_r = _layouts(w), _layouts(reader)
        w.add(x[2 * merge.BASE_ROWS :])
        after = _layouts(w)
        assert len(after) == 3 and all(after[s] is before_w[s] for s in before_w)
        reader.refresh()
        seen = _layouts(reader)
        assert len(seen) == 3 and all(seen[s] is before_r[s] for s in before_r)
        want = w.search(x[:5], 5, rerank=0)
        w.delete([0, 1, merge.BASE_ROWS])           # rows of the first two segments
        assert all(_layouts(w)[s] is after[s] for s in after)
        reader.refresh()
        assert all(_layouts(reader)[s] is seen[s] for s in seen)
        res = reader.search(x[:5], 5, rerank=0)
        assert not np.isin(res.ids, [0, 1, merge.BASE_ROWS]).any()
        # the rows that were not deleted keep their ranks
        kept = [[i for i in row if i not in (0, 1, merge.BASE_ROWS)] for row in want.ids.tolist()]
        assert all(r[: len(k)] == k for r, k in zip(res.ids.tolist(), kept))
        reader.close()


def test_a_writer_that_has_not_searched_holds_no_layout(tmp_path):
    """A build (a writer that only writes) keeps no scan layout in RAM, through adds,
    deletes and merges; its first search builds them from the segment files, dead rows
    hidden, and finds what a reader of the same version finds. From then on the writer
    builds each new segment's layout when it writes it."""
    import numpy as np

    from vecz import Store

    rng = np.random.default_rng(5)
    n = 2 * merge.BASE_ROWS + 100
    x = rng.standard_normal((n, 16)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=16, metric="l2", codec="IVF4,RB1", dense="f16") as w:
        for start in range(0, n, 700):
            w.add(x[start : start + 700])
        w.delete([3, 4, n - 1])
        assert w.memory_bytes()["index"] == 0 and all(seg.built is None for seg in w._segments)
        w.compact()
        assert w.memory_bytes()["index"] == 0
        with Store.open(tmp_path / "s") as reader:
            assert reader.memory_bytes()["index"] > 0  # readers build at open
            want = reader.search(x[:20], 10, rerank=30)
        got = w.search(x[:20], 10, rerank=30)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert not np.isin(got.ids, [3, 4, n - 1]).any()
        assert all(seg.built is not None for seg in w._segments)
        w.add(x[:10])
        assert w._segments[-1].built is not None  # a writer that has searched builds at once


@pytest.mark.parametrize("limit", [1, 2, 4, 5])
def test_a_mapped_merge_over_too_many_dense_files_copies_the_smallest(tmp_path, monkeypatch, limit):
    """A mapped merge records each row's dense file as uint16: over `MAX_DENSE_FILES` files
    (65,536; made small here) the index wrapped and rows were answered with another file's
    vectors. Files no live row maps to are dropped, the rows of the smallest others copied
    into one new file, and every row still reads its own vector."""
    import numpy as np

    from vecz import Store, check_store

    monkeypatch.setattr(merge, "MAX_DENSE_FILES", limit)
    monkeypatch.setattr(merge, "DENSE_COPY_BYTES", 0)  # compact maps rows where they are
    rng = np.random.default_rng(7)
    sizes = [70, 3, 90, 5, 66, 12]  # one dense file each; 3 rows all deleted below
    x = rng.standard_normal((sum(sizes), 8)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=8, metric="l2", codec="SQ8", dense="f32") as w:
        w.auto_merge_rows = 0
        ids = [w.add(x[a: a + n]) for a, n in zip(np.cumsum([0] + sizes[:-1]), sizes)]
        files = [s.rec.dense[0] for s in w._segments]  # in add order
        w.delete(np.concatenate([ids[1], ids[4][::7]]))
        w.compact()
        assert len(w._segments) == 1
        rec = w._segments[0].rec
    live = np.setdiff1d(np.concatenate(ids), np.concatenate([ids[1], ids[4][::7]]))
    used = sorted(files[:1] + files[2:], key=lambda d: d.nbytes)  # the 5 files live rows map to
    mapped = [d.file for d in rec.dense]
    assert rec.dense_map == "sections" and len(mapped) <= limit
    if limit >= len(used):
        assert sorted(mapped) == sorted(d.file for d in used)  # nothing copied, the unused file dropped
    else:  # the largest limit - 1 kept, the rest copied into the merge's own file
        assert sorted(mapped[:-1]) == sorted(d.file for d in used[len(used) - limit + 1:])
        assert mapped[-1] not in {d.file for d in files}
    assert check_store(tmp_path / "s") == []
    with Store.open(tmp_path / "s") as r:
        np.testing.assert_array_equal(r.get(live), x[live])
        res = r.search(x[live[:20]], 1, rerank=10)
        np.testing.assert_array_equal(res.ids[:, 0], live[:20])


def test_a_mostly_deleted_big_segment_does_not_hold_back_the_small_merges():
    """Tiers count live rows, so a segment of more rows than an automatic merge may rewrite
    but few live ones sits in tier 0; every tier-0 group then held it and was over budget,
    and no small merge ran again (1,000 adds left 1,001 segments)."""
    budget = merge.AUTO_MERGE_ROWS
    for big in [SegmentSize(1, 4 * budget, 4 * budget), SegmentSize(1, 2 * budget, 2 * budget - 10_000)]:
        sizes, serial = [big], 2
        for _ in range(1000):
            sizes, serial, _ = _settle(sizes + [SegmentSize(serial, 1000, 0)], serial + 1, budget)
        assert big in sizes  # too big for an automatic merge: it waits for compact
        assert len(sizes) <= 1 + (FANOUT - 1) * (1 + math.log(1_000_000 / merge.BASE_ROWS, FANOUT)), len(sizes)


def test_the_store_merges_small_adds_beside_a_mostly_deleted_big_segment(tmp_path):
    import numpy as np

    from vecz import Store

    x = np.random.default_rng(3).standard_normal((2600, 4)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=4, metric="l2", codec="SQ8", dense=None) as w:
        w.auto_merge_rows = 2000
        ids = w.add(x[:2500])
        w.delete(ids[:-10])  # 2,500 rows, 10 live: tier 0, and too big to rewrite within 2,000 rows
        for i in range(40):
            w.add(x[2500 + i:2501 + i])
        assert len(w._segments) <= FANOUT, [s.rows for s in w._segments]  # was 41
        assert len(w) == 50


def test_compaction_makes_as_few_segments_as_the_cap_allows():
    big = merge.MAX_SEGMENT_ROWS
    three, two = int(big * 0.7), int(big * 0.45)
    sizes = [SegmentSize(1, three, 0), SegmentSize(2, two, 0), SegmentSize(3, three, 0), SegmentSize(4, two, 0)]
    groups = plan_compaction(sizes)
    assert groups == [[2, 4]]  # consecutive packing made 4 segments of these; 3 is the fewest


def test_merges_copy_the_small_dense_files_beside_a_big_one(tmp_path, monkeypatch):
    """A tier-0 merge whose dense files hold more than SMALL_DENSE_BYTES together mapped every
    file where it was: beside one big file (wide rows: 11,000 rows of 1536-d f32 pass 64 MB)
    each single-row add kept a file of its own for ever. Now the small files are copied into
    one and the big one mapped."""
    import numpy as np

    from vecz import Store, check_store

    monkeypatch.setattr(merge, "SMALL_DENSE_BYTES", 40_000)
    x = np.random.default_rng(4).standard_normal((1100, 16)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=16, metric="l2", codec="SQ8", dense="f32", retain=1) as w:
        ids = list(w.add(x[:1000]))  # 64 kB of vectors: more than the patched 40 kB
        for i in range(60):
            ids += list(w.add(x[1000 + i:1001 + i]))
        named = {d.file for s in w._segments for d in s.rec.dense}
        assert len(named) <= 2 * len(w._segments), (len(named), len(w._segments))  # was 61 files
        on_disk = [p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("dense-")]
        assert sorted(on_disk) == sorted(named)
    assert check_store(tmp_path / "s") == []
    with Store.open(tmp_path / "s") as r:
        np.testing.assert_array_equal(r.get(np.array(ids)), x[:1060])
        res = r.search(x[:1060:7], 1, rerank=10)
        np.testing.assert_array_equal(res.ids[:, 0], np.array(ids)[::7])


def test_a_merge_does_not_name_a_dense_file_none_of_its_rows_live_in(tmp_path, monkeypatch):
    """A mapped merge named every dense file of its sources, also one whose rows were all
    deleted: that file was kept (and counted in dense_bytes) for ever."""
    import numpy as np

    from vecz import Store, check_store

    monkeypatch.setattr(merge, "SMALL_DENSE_BYTES", 0)  # map, never copy
    x = np.random.default_rng(5).standard_normal((400, 8)).astype(np.float32)
    with Store.create(tmp_path / "s", dim=8, metric="l2", codec="SQ8", dense="f32", retain=1) as w:
        batches = [w.add(x[i * 100:(i + 1) * 100]) for i in range(4)]  # the fourth add merges all four
        assert len(w._segments) == 1 and len(w._segments[0].rec.dense) == 4
        first = {d.file for d in w._segments[0].rec.dense} - {d.file for d in w._segments[0].rec.dense[1:]}
        w.delete(np.concatenate([batches[0], batches[1][:10]]))  # > 1/4 dead: rewritten
        named = {d.file for s in w._segments for d in s.rec.dense}
        assert w.n_deleted == 0 and len(named) == 3 and not first & named
        assert not (tmp_path / "s" / first.pop()).exists()
        assert w.info()["dense_bytes"] == sum(d.nbytes for d in w._segments[0].rec.dense)
    assert check_store(tmp_path / "s") == []
    with Store.open(tmp_path / "s") as r:
        live = np.concatenate([batches[1][10:]] + batches[2:])
        np.testing.assert_array_equal(r.get(live), x[110:])


def test_auto_merge_rows_takes_a_count_of_rows_only(tmp_path):
    # None or "100" made the next add commit its rows and then raise a raw TypeError: a
    # retry stored the rows twice under new ids
    from vecz.errors import InvalidInput

    rng = np.random.default_rng(0)
    with Store.create(tmp_path / "s", dim=8, codec="SQ8") as s:
        for bad in (None, "100", -1, 1.5, True):
            with pytest.raises(InvalidInput, match="auto_merge_rows: expected an integer >= 0"):
                s.auto_merge_rows = bad
        s.auto_merge_rows = np.int64(0)
        assert s.auto_merge_rows == 0 and type(s.auto_merge_rows) is int
        s.add(rng.standard_normal((5, 8)).astype(np.float32))
        assert len(s) == 5 and s.version == 2
