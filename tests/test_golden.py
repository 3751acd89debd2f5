"""Golden fixtures: codecs trained and encoded by an earlier vecz (on an AMD EPYC, by
tests/fixtures/make_golden.py) must still decode, encode and search the same — on whatever
CPU Numba compiles for here. What the format promises across CPUs:

- stored codes decode to the same vectors and score the same (within float32 rounding:
  the rotation and table products run through BLAS, whose kernels differ by CPU);
- a re-encode gives the stored bytes exactly where they are integers (PQ and SQ codes, RB
  sign bits, IVF lists); the fixtures' inputs sit far from every decision boundary, which
  `test_golden_inputs_are_far_from_decision_boundaries` checks in float64 so that an exact
  comparison is fair;
- RB's two float32 factors per vector (g = |r|^2 / <s, r> and |r|^2) re-encode within
  `FACTOR_ULPS` units in the last place: they are sums over the rotated residual, which
  BLAS computes with CPU-dependent rounding (the encoder's own sums run in one fixed order
  without fastmath, `kernels.binary._dot_fixed`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vecz.engine import Codec
from vecz.engine.quantizers import pq_spread_positions

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


# Measured on an AMD EPYC: up to 5 ulps between the fastmath encoder that wrote the fixtures and
# the fixed-order one of today; issue 10 saw 1-2 ulps between AMD and Intel Xeon BLAS rotations.
FACTOR_ULPS = 16
# Margins (relative, float64) beyond which float32 rounding cannot change an integer code.
MARGIN = 1e-5


def _prepared(codec, data) -> np.ndarray:
    x = data["x"].astype(np.float64)
    if codec.metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if codec.mrl is not None:
        x = x[:, : codec.mrl.dim]
        if codec.metric != "l2":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _rb_cos(codec, data, codes) -> np.ndarray:
    """float64 cos(r, r_hat) of each vector's RB code: how good a code is, whatever its bits."""
    state = {k: v.astype(np.float64) for k, v in codec.state().items()}
    r = (_prepared(codec, data) - state["centroids"][data["lists"]]) @ state["rb_rotation"]
    bits, _ = codec._split_rb(codes)
    signs = np.unpackbits(bits, axis=2, bitorder="little")[:, :, : r.shape[1]] * 2.0 - 1
    s = sum(signs[:, lv] * 0.5 ** lv for lv in range(signs.shape[1]))
    return (s * r).sum(1) / np.linalg.norm(s, axis=1) / np.linalg.norm(r, axis=1)


def test_golden_encodes_identically(golden):
    """Integer bytes exactly; RB: level 0 (the signs of the rotated residual) exactly, the
    finer levels too unless the per-vector scale search met a near tie (then the new code
    must be as good: same cos(r, r_hat) within 1e-6), factors within FACTOR_ULPS."""
    codec, data = golden
    enc = codec.encode(data["x"])
    np.testing.assert_array_equal(enc.lists, data["lists"])
    if codec.quantizer.__class__.__name__ != "RB":
        np.testing.assert_array_equal(enc.codes, data["codes"])
        return
    bits, factors = codec._split_rb(enc.codes)
    old_bits, old_factors = codec._split_rb(data["codes"])
    np.testing.assert_array_equal(bits[:, 0], old_bits[:, 0])
    same = (bits == old_bits).all(axis=(1, 2))
    assert same.mean() > 0.95, f"only {same.mean():.3f} of the vectors re-encode to the same bits"
    cos_new, cos_old = _rb_cos(codec, data, enc.codes), _rb_cos(codec, data, data["codes"])
    np.testing.assert_allclose(cos_new[~same], cos_old[~same], rtol=0, atol=1e-6)
    assert (factors >= 0).all() and (old_factors >= 0).all()  # so int32 views order like the floats
    ulps = np.abs(factors[same].view(np.int32).astype(np.int64) - old_factors[same].view(np.int32))
    assert ulps.max() <= FACTOR_ULPS, f"RB factors moved by {ulps.max()} ulps (bound {FACTOR_ULPS})"


def _margins(codec, data) -> list[np.ndarray]:
    """How far (relative, float64) each BLAS-computed decision is from changing: IVF and PQ
    second-best minus best over best distance/score, RB |rotated residual| over its norm.
    SQ needs none: its codes are elementwise float32 maths, the same bits on every CPU."""
    x = _prepared(codec, data)
    state = {k: v.astype(np.float64) for k, v in codec.state().items()}
    out = []
    if codec.ivf is not None:
        sim = x @ state["centroids"].T if codec.metric != "l2" else -((x[:, None] - state["centroids"]) ** 2).sum(-1)
        sim.sort(axis=1)
        out.append((sim[:, -1] - sim[:, -2]) / np.abs(sim[:, -1]).clip(1e-30))
    r = x - state["centroids"][data["lists"]]
    name = codec.quantizer.__class__.__name__
    if name == "PQ":
        books = state["pq_books"]
        m, ksub, dsub = books.shape
        if codec.quantizer.rotate:
            r = r @ state["pq_rotation"]
        width = r.shape[1]
        dims = pq_spread_positions(width, m) if codec.pq_spread and width % m else np.arange(width)
        pad = np.zeros((len(r), m * dsub))
        pad[:, dims] = r
        d = ((pad.reshape(len(r), m, 1, dsub) - books[None]) ** 2).sum(-1)
        d.sort(axis=2)
        coded = np.zeros(m * dsub, dtype=bool)
        coded[dims] = True
        # a sub-space of padding alone (padding on the right, an old codec) sees zeros: its
        # choice is exact on every CPU
        out.append(((d[:, :, 1] - d[:, :, 0]) / (d[:, :, 1] + 1e-30))[:, coded.reshape(m, dsub).any(axis=1)])
    if name == "RB":
        rot = r @ state["rb_rotation"]
        out.append(np.abs(rot) / np.linalg.norm(rot, axis=1, keepdims=True))
    return out


def test_golden_inputs_are_far_from_decision_boundaries(golden):
    codec, data = golden
    for margin in _margins(codec, data):
        assert margin.min() > MARGIN, f"a fixture input is {margin.min():.2g} from a decision boundary"


def test_golden_searches_identically(golden):
    codec, data = golden
    res = codec.index(data["codes"], data["lists"]).search(data["queries"], 5, nprobe=2)
    np.testing.assert_array_equal(res.ids, data["ids"])
    np.testing.assert_allclose(res.scores, data["scores"], rtol=1e-5, atol=1e-5)
