"""formats/body.py: the manifest body schema and its cross-checks. A body that a writer makes
round-trips; every field that lies about the data — swapped serials, ids beyond next_id,
counts that do not add up, names outside the grammar — is a StoreCorrupted naming it."""

from __future__ import annotations

import copy

import pytest

from vecz.formats.body import LAYOUT, SegmentRecord, StoreBody, body_files, data_file_name, parse_body
from vecz.formats.dense import DenseInfo
from vecz.formats.errors import StoreCorrupted

CONFIG = {"id": "vecz.codec", "version": 1, "spec": "SQ8", "dim": 4, "metric": "l2", "seed": 0, "train_size": 10,
          "rotation": "itq", "code_size": 4}


def _dense(serial: int, rows: int) -> DenseInfo:
    return DenseInfo(data_file_name("dense", serial), rows, 4, "f32", 64, 1000 + 16 * rows, 7)


def _body() -> StoreBody:
    segs = (
        SegmentRecord(1, data_file_name("seg", 1), 10, 0, 9, (_dense(1, 10),)),
        SegmentRecord(3, data_file_name("seg", 3), 5, 20, 40, (_dense(2, 7), _dense(3, 9)), "sections",
                      data_file_name("del", 4), 2),
    )
    return StoreBody(7, 6, "2026-01-01T00:00:00+00:00", 4, "l2", "f32", CONFIG, "codec-000000000002.vzs", segs,
                     41, 5, 8, {"rows_done": 15})


def test_round_trip_and_counts():
    body = _body()
    raw = body.to_json()
    assert raw["layout"] == LAYOUT and raw["counts"] == {"rows": 15, "live": 13}
    back = parse_body(copy.deepcopy(raw), "here")
    assert back == body
    assert body_files(back) == {"seg-000000000001.vzs", "seg-000000000003.vzs", "dense-000000000001.arrow",
                                "dense-000000000002.arrow", "dense-000000000003.arrow", "del-000000000004.vzs",
                                "codec-000000000002.vzs"}


def _broken(edit) -> dict:
    raw = _body().to_json()
    edit(raw)
    return raw


@pytest.mark.parametrize("name, edit, match", [
    ("serials swapped into a duplicate", lambda b: b["segments"][1].update(serial=1, file="seg-000000000001.vzs"),
     "share a serial"),
    ("a serial that is not its file's", lambda b: b["segments"][1].update(serial=2), "names the codes file"),
    ("serial beyond next_serial", lambda b: b.update(next_serial=3), "not below next_serial|next_serial is 3"),
    ("next_id not beyond the ids", lambda b: b.update(next_id=40), "next_id"),
    ("counts that do not add up", lambda b: b["counts"].update(live=14), "counts say"),
    ("more dead rows than rows", lambda b: b["segments"][1]["deletes"].update(count=6), "deleted rows in a segment"),
    ("a name outside the grammar", lambda b: b["segments"][0].update(file="../x.vzs"), "file name like"),
    ("a dense file named as a codes file", lambda b: b["segments"][0].update(file="dense-000000000001.arrow"),
     "file name like"),
    ("an identity map over the wrong rows", lambda b: b["segments"][0]["dense"][0].update(rows=9), "one to one"),
    ("dense files of another width", lambda b: b["segments"][0]["dense"][0].update(dim=5), "4-dim f32"),
    ("min above max", lambda b: b["segments"][0].update(min_id=12), "min_id"),
    ("a future layout", lambda b: b.update(layout=3), "layout"),
    ("retain of zero", lambda b: b.update(retain=0), "retain"),
    ("segments without a codec", lambda b: b["codec"].update(file=None), "without a trained codec"),
    ("a boolean for an integer", lambda b: b["segments"][0].update(rows=True), "rows"),
    ("a deletion file shared by two segments",
     lambda b: b["segments"][0].update(deletes={"file": "del-000000000004.vzs", "count": 1}), "same codes or deletion"),
    ("two records of one dense file that differ",
     lambda b: b["segments"][1]["dense"].append(dict(b["segments"][0]["dense"][0], rows=9)),
     "segments 1 and 3 describe dense file dense-000000000001.arrow differently"),
    ("... in any field", lambda b: b["segments"][1]["dense"].append(dict(b["segments"][0]["dense"][0], offset=72)),
     "describe dense file dense-000000000001.arrow differently"),
    # (a serial of 10**12 raised data_file_name's raw ValueError; rows of 2**63 a raw OverflowError on open)
    ("a serial beyond a name's 12 digits",
     lambda b: b["segments"][0].update(serial=10**12), r"'serial': expected an integer in 1..999999999999"),
    ("next_serial beyond a name's 12 digits", lambda b: b.update(next_serial=10**12 + 1), "next_serial"),
    ("dense rows beyond int64", lambda b: b["segments"][0]["dense"][0].update(rows=2**63), "out-of-range field"),
    ("a dense offset beyond int64", lambda b: b["segments"][0]["dense"][0].update(offset=2**64), "out-of-range field"),
])
def test_lies_in_a_body_are_refused(name, edit, match):
    with pytest.raises(StoreCorrupted, match=match):
        parse_body(_broken(edit), "MANIFEST-7")


def test_a_dense_file_may_be_named_by_several_segments_with_one_record():
    raw = _body().to_json()
    raw["segments"][1]["dense"].append(dict(raw["segments"][0]["dense"][0]))  # a merge mapping onto it
    assert parse_body(raw, "here").segments[1].dense[-1] == _dense(1, 10)


def _layout_1() -> dict:
    """A layout-1 body: one segment of 10 rows, 2 of them deleted in a cumulative file."""
    return {"format": "vecz.store", "version": 4, "parent": 3, "created": None, "dim": 4, "metric": "l2",
            "dense": "f32", "codec": {"config": CONFIG, "file": "codec-000000000002.vzs"},
            "segments": [{"serial": 1, "file": "seg-000000000001.vzs", "rows": 10, "min_id": 0, "max_id": 9,
                          "dense": _dense(1, 10).to_json()}],
            "deletes": {"file": "del-000000000004.vzs", "count": 2}, "next_id": 10, "next_serial": 2,
            "counts": {"rows": 10, "live": 8}}


def test_layout_1_reads_as_layout_2_with_legacy_deletes():
    body = parse_body(_layout_1(), "old")
    assert body.layout == 1 and body.legacy_deletes == "del-000000000004.vzs"
    assert not body.segments[0].sorted_ids and body.segments[0].dense_map == "identity"
    assert "del-000000000004.vzs" in body_files(body)
    with pytest.raises(ValueError, match="converted"):
        body.to_json()


def test_layout_1_counts_are_checked_against_its_deletes_count():
    # layout 1's top-level deletes count and counts were never compared with anything
    raw = _layout_1()
    assert parse_body(copy.deepcopy(raw), "old").legacy_dead == 2
    for field, value in (("live", 9), ("rows", 11)):
        bad = copy.deepcopy(raw)
        bad["counts"][field] = value
        with pytest.raises(StoreCorrupted, match="counts say"):
            parse_body(bad, "old")
    bad = copy.deepcopy(raw)
    bad["deletes"]["count"] = -1
    with pytest.raises(StoreCorrupted, match="count"):
        parse_body(bad, "old")


def test_a_writer_out_of_serials_says_so():
    # a body whose next_serial is past a name's 12 digits made data_file_name raise a raw ValueError
    from vecz.engine.writes import _Serials
    from vecz.formats.body import MAX_SERIAL

    assert _Serials(MAX_SERIAL).take() == MAX_SERIAL
    with pytest.raises(StoreCorrupted, match="every file serial up to 999999999999 is taken"):
        _Serials(MAX_SERIAL + 1).take()
