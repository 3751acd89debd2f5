"""Golden fixtures: codecs trained and encoded by an earlier vecz must still decode,
encode and search the same (tests/fixtures/make_golden.py wrote them once)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vecz.engine import Codec

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
FOLDERS = sorted(p for p in GOLDEN.iterdir() if p.is_dir())


def test_fixtures_present():
    assert len(FOLDERS) >= 10, f"expected the golden fixtures under {GOLDEN}, found {len(FOLDERS)}"


@pytest.fixture(params=FOLDERS, ids=[p.name for p in FOLDERS])
def golden(request):
    folder = request.param
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "state.npz", allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    with np.load(folder / "data.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    return Codec.from_config(config, state), data


def test_golden_decodes(golden):
    codec, data = golden
    np.testing.assert_allclose(codec.decode(data["codes"], data["lists"]), data["decoded"], rtol=1e-5, atol=1e-6)


def test_golden_encodes_identically(golden):
    codec, data = golden
    enc = codec.encode(data["x"])
    np.testing.assert_array_equal(enc.lists, data["lists"])
    np.testing.assert_array_equal(enc.codes, data["codes"])


def test_golden_searches_identically(golden):
    codec, data = golden
    res = codec.index(data["codes"], data["lists"]).search(data["queries"], 5, nprobe=2)
    np.testing.assert_array_equal(res.ids, data["ids"])
    np.testing.assert_allclose(res.scores, data["scores"], rtol=1e-5, atol=1e-5)
