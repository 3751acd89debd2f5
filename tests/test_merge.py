"""engine/merge.py's policy: size tiers, at most FANOUT - 1 segments per tier after the merges
it asks for, a segment count logarithmic in the rows for any stream of commit sizes,
bounded rows per automatic merge, dead-heavy segments rewritten."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

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
