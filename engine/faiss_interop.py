"""faiss interop: the one module of vecz that imports faiss (an optional extra, `vecz[faiss]`).

`import_faiss()` returns the faiss module or raises `MissingDependency` with the pip command;
every other module (the benchmark's faiss side included) gets faiss through it.

`codec_from_faiss(index, Codec)` (``Codec.from_faiss(index)``) turns a trained faiss index
into a trained vecz `Codec` that encodes as faiss's ``index.sa_encode`` does; `codec_to_faiss(codec)`
(``codec.to_faiss()``) builds the trained, empty faiss index that encodes as the codec does.
Neither moves stored vectors: a faiss index's codes are imported with `split_sa_codes`, and a
vecz `Store` is filled by ``store.add``. Tested against faiss in tests/test_faiss_interop.py.

Mapping (faiss <-> vecz spec; "identical" = the same code bytes, tested bit for bit):

==============================================  ======================  =====================
faiss index (trained)                            vecz spec               codes
==============================================  ======================  =====================
IndexFlat (L2 / IP)                              ``Flat``                identical
IndexScalarQuantizer QT_fp16                     ``F16``                 identical but at exact
                                                                         float16 half-way ties
IndexScalarQuantizer QT_8bit (or _uniform)       ``SQ8``                 identical but on level
IndexScalarQuantizer QT_4bit (or _uniform)       ``SQ4``                 boundaries (below)
IndexPQ (nbits b = 8 or 4), IndexPQFastScan      ``PQ<M>x<b>``           identical
IndexIVFFlat                                     ``IVF<n>,Flat``         identical
IndexIVFScalarQuantizer QT_fp16, no residual     ``IVF<n>,F16``          as F16
IndexIVFScalarQuantizer QT_8bit/4bit, residual   ``IVF<n>,SQ8|SQ4``      as SQ
IndexIVFPQ, IndexIVFPQFastScan, by_residual      ``IVF<n>,PQ<M>x<b>``    identical
a PQ index above behind an OPQMatrix             ``[IVF,]OPQ<M>x<b>``    up to rounding (below)
any of these IVF indexes with nlist = 1          the spec without IVF    (as above)
==============================================  ======================  =====================

IVF codes are compared after `split_sa_codes`: faiss's ``sa_encode`` writes the list number
first, in `coarse_code_size` little-endian bytes; vecz keeps it apart (``Codes.lists``).
With nlist = 1 the list's centroid becomes vecz's "centroids" (the training mean vecz's PQ and
SQ subtract) when faiss codes residuals, zeros otherwise; faiss's IndexPQ and
IndexScalarQuantizer subtract nothing, so their vecz codecs hold a zero mean.

Metrics: METRIC_L2 <-> ``"l2"``, METRIC_INNER_PRODUCT <-> ``"ip"``, and an IndexPreTransform
whose chain is a NormalizationTransform (L2) over an inner-product index <-> ``"cosine"``.
``MRL<m>`` is a LinearTransform keeping the first m dims (no bias) followed, for ``ip`` and
``cosine``, by a NormalizationTransform, as vecz renormalises truncated vectors. IndexIDMap
and IndexIDMap2 are unwrapped (ids are not part of a codec). Everything else is refused with
`CodecSpecError` naming what was expected and what was found: RaBitQ (vecz RB codes differ),
HNSW, LSH, PCA/ITQ transforms (and OPQ anywhere but right in front of a PQ index),
refinement indexes, other metrics, PQ of other bit widths,
IVF PQ/SQ without ``by_residual`` (vecz IVF always codes the residual), F16/Flat with it,
IVF coarse quantizers that are not an IndexFlat of the matching metric.

Why the few non-identical cases are not identical (vecz's kernels are left as they are):

- SQ: faiss codes ``floor(L (x - vmin) / vdiff)`` (L = 2**b - 1) and decodes to the middle
  of the level, ``vmin + (u + 1/2) vdiff / L``; vecz rounds ``(x - vmin') L / vdiff`` half to
  even and decodes to ``vmin' + u vdiff / L``. With ``vmin' = vmin + vdiff / (2 L)`` the two
  have the same level boundaries and the same reconstructions, so the trained range is
  converted so (vdiff is kept). faiss -> vecz moves vmin' down by eps of a level (a few
  float32 ulps, `_sq_offset`) so that a value exactly on a faiss boundary (the training
  maximum, for one) codes up as faiss's floor does; vecz -> faiss uses exactly half a level,
  as vecz's own boundaries are the ones to copy. A value within float rounding of a boundary,
  or exactly half-way for vecz's ``rint``, can still code one level apart: on the shipped
  sample (5,000 x 384) 0-100 of 1.9M values faiss -> vecz, 9-378 vecz -> faiss (float16
  source data puts many values exactly on half-way points); the tests bound both.
- F16: faiss's float16 conversion rounds half-way ties away from zero, numpy's (vecz's) to
  even; only values exactly half-way between two float16 differ (by one unit in the last
  place). Data that was float16 to begin with has no such values.
- OPQ: faiss rotates x (an OPQMatrix, y = A x) and then picks a list and codes y - c',
  vecz picks the list for x and codes (x - c) R with R = A^T and c' = c R: the same lists
  and codes but for float rounding (8 of 96,000 rows on wordnet-minilm's IVF16,OPQ96x4).
- cosine: vecz normalises with a float64 norm, faiss with a float32 one, so normalised
  vectors may differ in the last bit; PQ and IVF codes agreed on every vector we tried, but
  ``Flat`` codes under cosine are the normalised floats themselves and differ in the last bit.

`codec_to_faiss` of a codec without IVF whose PQ/SQ subtracts a non-zero training mean
builds an IndexIVFPQ / IndexIVFPQFastScan / IndexIVFScalarQuantizer with nlist = 1, the mean
as its one centroid and ``by_residual``: faiss's residual is ``x - c`` in one float32
subtraction, exactly vecz's, its ``sa_encode`` prepends no list number at nlist = 1 (0 bytes),
and it scores ``<q, c> + <q, r>`` (ip) or per-list tables on ``q - c`` (l2) as vecz does. A
LinearTransform with the mean as bias would cost a d x d matrix product per vector and is
exact only because the matrix is the identity. RB has no faiss twin (`CodecSpecError`), and
PQ over a width M does not divide (vecz pads its sub-spaces, faiss needs d % M == 0)
is refused too.

4-bit codes: vecz's `pq4_pack` puts sub-code 2j in the low nibble of byte j and 2j+1 in the
high one, which is faiss's bit order for IndexPQ(nbits=4) and the fast-scan indexes'
``sa_encode`` (and vecz's SQ4 / faiss's QT_4bit: dimension 2j low). No conversion is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

# No import of .codecs: Codec's from_faiss/to_faiss import this module, so it works on the
# codec object and class it is handed (and spells stages as spec strings, DESIGN.md).
from .errors import CodecSpecError, DimensionMismatch, InvalidInput, MissingDependency, NotTrained

__all__ = ["import_faiss", "codec_from_faiss", "codec_to_faiss", "coarse_code_size", "split_sa_codes",
           "join_sa_codes"]


def import_faiss() -> Any:
    """The faiss module; `MissingDependency` if faiss-cpu is not installed."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency(
            f"this needs faiss, which is not installed ({exc}); expected it from `pip install 'vecz[faiss]'` "
            "(or 'vecz[bench]' for the benchmark)"
        ) from None
    return faiss


# --------------------------------------------------------------------------- list numbers


def coarse_code_size(nlist: int) -> int:
    """Bytes faiss's IVF ``sa_encode`` spends on the list number: those of ``nlist - 1``
    (0 for one list, 1 up to 256 lists, 2 up to 65,536), little-endian."""
    n, size = int(nlist) - 1, 0
    while n > 0:
        size, n = size + 1, n >> 8
    return size


def split_sa_codes(codec: Any, sa_codes: Any) -> tuple[np.ndarray, np.ndarray]:
    """vecz codes and lists from the output of ``index.sa_encode`` of the codec's faiss twin.

    Parameters
    ----------
    codec : Codec
        The vecz codec (``Codec.from_faiss(index)``, or the codec ``index`` came from).
    sa_codes : uint8 array (n, coarse_code_size(nlist) + codec.code_size)
        faiss's standalone codes: for IVF the list number in the first bytes, little-endian.

    Returns
    -------
    codes : uint8 (n, code_size)
    lists : int64 (n,)
        As ``codec.encode(x)`` gives them (its `Codes` fields), ready for ``codec.decode``,
        ``codec.index`` or a comparison.
    """
    nb = coarse_code_size(codec.nlist)
    sa = np.asarray(sa_codes)
    if sa.dtype != np.uint8 or sa.ndim != 2 or sa.shape[1] != nb + codec.code_size:
        raise DimensionMismatch(f"faiss sa codes of {codec.spec!r}: expected uint8 (n, {nb + codec.code_size}) "
                                f"({nb} bytes of list number + {codec.code_size} of code), "
                                f"found {sa.dtype} {sa.shape}")
    lists = np.zeros(sa.shape[0], dtype=np.int64)
    for b in range(nb):
        lists |= sa[:, b].astype(np.int64) << (8 * b)
    if lists.size and lists.max() >= codec.nlist:
        raise InvalidInput(f"faiss sa codes: expected list numbers below {codec.nlist}, found {int(lists.max())}")
    return np.ascontiguousarray(sa[:, nb:]), lists


def join_sa_codes(codec: Any, codes: Any, lists: Any = None) -> np.ndarray:
    """Inverse of `split_sa_codes`: faiss ``sa_decode`` input from vecz codes and lists
    (lists may be omitted without IVF). ``join_sa_codes(codec, *codec.encode(x))``."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != codec.code_size:
        raise DimensionMismatch(f"codes of {codec.spec!r}: expected uint8 (n, {codec.code_size}), "
                                f"found {codes.dtype} {codes.shape}")
    if lists is None:
        lists = np.zeros(codes.shape[0], dtype=np.int64)
    else:
        lists = np.asarray(lists)
        if lists.dtype.kind not in "iu" or (lists.dtype.kind == "u" and lists.size and lists.max() >= codec.nlist):
            raise InvalidInput(f"lists: expected integer list numbers in [0, {codec.nlist}), found {lists.dtype}"
                               + (f" up to {lists.max()}" if lists.dtype.kind == "u" and lists.size else ""))
        lists = lists.astype(np.int64)
    if lists.shape != (codes.shape[0],) or (lists.size and (lists.min() < 0 or lists.max() >= codec.nlist)):
        raise InvalidInput(f"lists: expected {codes.shape[0]} values in [0, {codec.nlist}), found shape {lists.shape}"
                           + (f", range [{lists.min()}, {lists.max()}]" if lists.size else ""))
    nb = coarse_code_size(codec.nlist)
    prefix = np.empty((codes.shape[0], nb), dtype=np.uint8)
    for b in range(nb):
        prefix[:, b] = (lists >> (8 * b)) & 0xFF
    return np.ascontiguousarray(np.concatenate([prefix, codes], axis=1))


# --------------------------------------------------------------------------- SQ ranges


def _sq_offset(vmin: np.ndarray, vdiff: np.ndarray, nbits: int) -> np.ndarray:
    """vecz's vmin minus faiss's: (1/2 - eps) of a level (module docstring), float64.

    eps is 2**-23 of (L + |vmin| / step) levels: the float32 rounding of x - vmin and of
    its product with L / vdiff, in units of a level, so a value exactly on faiss's boundary
    codes up in vecz too; measured the fewest disagreements among 2**-24..2**-21. Capped at
    1/128 of a level for ranges tiny next to |vmin|; a zero range (vdiff = 0) stays put."""
    levels = (1 << nbits) - 1
    step = np.asarray(vdiff, dtype=np.float64) / levels
    safe = np.where(step > 0, step, 1.0)
    eps = np.minimum((levels + np.abs(np.asarray(vmin, dtype=np.float64)) / safe) * 2.0**-23, 2.0**-7)
    return np.where(step > 0, (0.5 - eps) * step, 0.0)


# --------------------------------------------------------------------------- faiss -> vecz


class _Core(NamedTuple):
    """What a faiss index codes: the vecz quantizer stage, its arrays, and the IVF part."""

    quantizer: str  # the stage as spelled in a spec: "PQ16x8", "SQ4", "F16", "Flat"
    state: dict[str, np.ndarray]
    nlist: int  # 0: not an IVF index
    centroids: np.ndarray | None  # (nlist, d) coarse centroids
    by_residual: bool


def _read_flat(faiss: Any, index: Any) -> tuple[str, dict]:
    return "Flat", {}


def _read_sq(faiss: Any, index: Any) -> tuple[str, dict]:
    sq, d = index.sq, index.d
    qt = faiss.ScalarQuantizer
    if sq.qtype == qt.QT_fp16:
        return "F16", {}
    nbits = {qt.QT_8bit: 8, qt.QT_8bit_uniform: 8, qt.QT_4bit: 4, qt.QT_4bit_uniform: 4}.get(sq.qtype)
    if nbits is None:
        names = {getattr(qt, n): n for n in dir(qt) if n.startswith("QT_")}
        raise CodecSpecError(f"faiss ScalarQuantizer type with no vecz equivalent: expected QT_8bit, QT_4bit (or "
                             f"their _uniform forms) or QT_fp16, found {names.get(sq.qtype, sq.qtype)}")
    trained = faiss.vector_to_array(sq.trained).astype(np.float64)
    if trained.size not in (2, 2 * d):
        raise CodecSpecError(f"faiss ScalarQuantizer: expected 2 or {2 * d} trained values, found {trained.size}")
    half = trained.size // 2
    vmin = np.broadcast_to(trained[:half], (d,))
    vdiff = np.broadcast_to(trained[half:], (d,))
    state = {"sq_vmin": (vmin + _sq_offset(vmin, vdiff, nbits)).astype(np.float32),
             "sq_vdiff": vdiff.astype(np.float32)}
    return f"SQ{nbits}", state


def _read_pq(faiss: Any, index: Any) -> tuple[str, dict]:
    p = index.pq
    if p.nbits not in (4, 8):
        raise CodecSpecError(f"faiss product quantizer with {p.nbits}-bit codes: expected nbits 4 or 8 (vecz PQ<M>x4 "
                             f"or PQ<M>x8), found {p.nbits}")
    books = faiss.vector_to_array(p.centroids).reshape(p.M, p.ksub, p.dsub)
    return f"PQ{p.M}x{p.nbits}", {"pq_books": books.astype(np.float32)}


# One table: each supported faiss class, whether it is an IVF index, and its reader.
_READERS = {
    "IndexFlat": (False, _read_flat),
    "IndexFlatL2": (False, _read_flat),
    "IndexFlatIP": (False, _read_flat),
    "IndexScalarQuantizer": (False, _read_sq),
    "IndexPQ": (False, _read_pq),
    "IndexPQFastScan": (False, _read_pq),
    "IndexIVFFlat": (True, _read_flat),
    "IndexIVFScalarQuantizer": (True, _read_sq),
    "IndexIVFPQ": (True, _read_pq),
    "IndexIVFPQFastScan": (True, _read_pq),
}


def _metric_name(faiss: Any, index: Any) -> str:
    names = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "ip"}
    if index.metric_type not in names:
        found = next((n for n in dir(faiss) if n.startswith("METRIC_") and getattr(faiss, n) == index.metric_type),
                     index.metric_type)
        raise CodecSpecError(f"faiss metric with no vecz equivalent: expected METRIC_L2 or METRIC_INNER_PRODUCT "
                             f"(or the latter behind an L2 NormalizationTransform for cosine), found {found}")
    return names[index.metric_type]


def _read_core(faiss: Any, index: Any) -> _Core:
    name = type(index).__name__
    if name not in _READERS:
        hint = " (RaBitQ codes differ from vecz's RB codes)" if "RaBitQ" in name else ""
        raise CodecSpecError(f"faiss index type with no vecz equivalent: expected one of {', '.join(sorted(_READERS))} "
                             f"(optionally in an IndexPreTransform or IndexIDMap), found {name}{hint}")
    if not index.is_trained:
        raise NotTrained(f"faiss {name}: expected a trained index, found is_trained=False")
    is_ivf, reader = _READERS[name]
    quantizer, state = reader(faiss, index)
    if not is_ivf:
        return _Core(quantizer, state, 0, None, False)
    coarse = faiss.downcast_index(index.quantizer)
    if not isinstance(coarse, faiss.IndexFlat):
        raise CodecSpecError(f"faiss {name}: expected an IndexFlat coarse quantizer (exact list assignment), "
                             f"found {type(coarse).__name__}")
    if coarse.metric_type != index.metric_type:
        raise CodecSpecError(f"faiss {name}: expected its coarse quantizer to use the index's metric "
                             f"({_metric_name(faiss, index)}), found {_metric_name(faiss, coarse)}")
    if coarse.ntotal != index.nlist:
        raise CodecSpecError(f"faiss {name}: expected {index.nlist} coarse centroids, found {coarse.ntotal}")
    centroids = coarse.reconstruct_n(0, index.nlist).astype(np.float32)
    return _Core(quantizer, state, int(index.nlist), centroids, bool(index.by_residual))


def _unwrap(faiss: Any, index: Any) -> tuple[list, Any]:
    """(transforms of the pre-transform chains, outermost first; the innermost index)."""
    chain: list = []
    while True:
        if isinstance(index, faiss.IndexPreTransform):
            chain += [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
            index = faiss.downcast_index(index.index)
        elif isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            index = faiss.downcast_index(index.index)
        else:
            return chain, index


def _keep_first(faiss: Any, t: Any) -> int | None:
    """m if `t` is a LinearTransform that keeps the first m of its inputs, else None."""
    if type(t).__name__ != "LinearTransform" or not t.is_trained or t.d_out > t.d_in:
        return None
    a = faiss.vector_to_array(t.A)
    if a.size != t.d_out * t.d_in or not np.array_equal(a.reshape(t.d_out, t.d_in), np.eye(t.d_out, t.d_in)):
        return None
    if t.have_bias and np.any(faiss.vector_to_array(t.b) != 0):
        return None
    return int(t.d_out)


# Pre-transform chains vecz stands for -> (vecz metric, metric the index inside must use).
# "norm": an L2 NormalizationTransform; "keep": a LinearTransform keeping the first m dims.
_CHAINS = {
    ("norm",): ("cosine", "ip"),
    ("keep",): ("l2", "l2"),  # MRL<m>; vecz renormalises truncated vectors for ip and cosine:
    ("keep", "norm"): ("ip", "ip"),
    ("norm", "keep", "norm"): ("cosine", "ip"),
}


def _read_chain(faiss: Any, chain: list, metric: str) -> tuple[str, int | None]:
    """(vecz metric, MRL width or None) of a pre-transform chain over an index of `metric`."""
    kinds = []
    mrl = None
    for t in chain:
        if type(t).__name__ == "NormalizationTransform" and t.norm == 2.0:
            kinds.append("norm")
        elif (m := _keep_first(faiss, t)) is not None and mrl is None:
            kinds.append("keep")
            mrl = m
        else:
            kinds.append(type(t).__name__)
    if not kinds:
        return metric, None
    found = f"[{', '.join(kinds)}]"
    if tuple(kinds) not in _CHAINS:
        raise CodecSpecError(
            "faiss pre-transform chain with no vecz equivalent: expected one of "
            f"{', '.join('[' + ', '.join(k) + ']' for k in _CHAINS)}, where norm is an L2 NormalizationTransform "
            f"and keep a LinearTransform keeping the first m dims (MRL), found {found}")
    vecz_metric, needs = _CHAINS[tuple(kinds)]
    if needs != metric:
        spell = {"l2": "METRIC_L2", "ip": "METRIC_INNER_PRODUCT"}
        raise CodecSpecError(f"faiss pre-transform chain {found}: expected an index with {spell[needs]} inside, "
                             f"found {spell[metric]}")
    return vecz_metric, mrl


def _rotation(faiss: Any, t: Any) -> np.ndarray | None:
    """vecz's OPQ rotation R (float32 (d, d), coding x @ R) of a trained square orthonormal
    LinearTransform without bias (faiss's OPQMatrix, or the one `codec_to_faiss` writes):
    its A transposed. None for any other transform."""
    if not isinstance(t, faiss.LinearTransform) or not t.is_trained or t.d_out != t.d_in:
        return None
    if t.have_bias and np.any(faiss.vector_to_array(t.b) != 0):
        return None
    a = faiss.vector_to_array(t.A).reshape(t.d_out, t.d_in).astype(np.float64)
    if not np.allclose(a @ a.T, np.eye(t.d_out), atol=1e-4):
        return None
    return np.ascontiguousarray(a.T, dtype=np.float32)


def codec_from_faiss(index: Any, codec_class: type) -> Any:
    """A trained vecz codec that codes vectors as the trained faiss `index` does.

    Parameters
    ----------
    index : faiss.Index
        A trained index of a family in the module's mapping table (its stored vectors, if
        any, are not imported; see `split_sa_codes` for its codes).
    codec_class : type
        `vecz.engine.codecs.Codec` (or a subclass): ``Codec.from_faiss`` passes its own.

    Returns
    -------
    Codec
        Spec, dim and metric from the index; state from its trained arrays: ``pq_books`` =
        ``pq.centroids`` (M, ksub, dsub); ``sq_vmin``/``sq_vdiff`` from ``sq.trained`` with
        vmin moved (1/2 - eps) of a level (module docstring); ``centroids`` = the coarse
        quantizer's vectors for IVF, the one list's centroid at nlist = 1 with
        ``by_residual``, zeros otherwise (faiss's IndexPQ / IndexScalarQuantizer subtract
        nothing). ``codec.encode(x)`` then equals ``split_sa_codes(codec, index.sa_encode(x))``.

    Raises
    ------
    InvalidInput
        `index` is not a faiss index.
    NotTrained
        The index is not trained.
    CodecSpecError
        The index (type, metric, transform, residual mode, bit width) has no vecz
        equivalent; the message names what was expected and what was found.
    """
    faiss = import_faiss()
    if not isinstance(index, faiss.Index):
        raise InvalidInput(f"expected a faiss.Index, found {type(index).__name__}")
    chain, core_index = _unwrap(faiss, faiss.downcast_index(index))
    core = _read_core(faiss, core_index)
    # an exact identity is MRL<d> keeping every dim (`codec_to_faiss`'s keep), not a rotation
    keep_all = bool(chain) and _keep_first(faiss, chain[-1]) == int(core_index.d)
    rotation = _rotation(faiss, chain[-1]) if chain and core.quantizer.startswith("PQ") and not keep_all else None
    if rotation is not None:  # OPQ: the last transform rotates what the PQ (and IVF) index sees
        chain = chain[:-1]
        core = core._replace(quantizer="O" + core.quantizer, state={**core.state, "pq_rotation": rotation})
        if core.centroids is not None:  # faiss's centroids are c R: vecz keeps c
            core = core._replace(centroids=np.ascontiguousarray(core.centroids @ rotation.T, dtype=np.float32))
    metric, mrl_dim = _read_chain(faiss, chain, _metric_name(faiss, core_index))
    width = int(core_index.d)
    name = type(core_index).__name__
    residual_quantizer = core.quantizer.startswith(("PQ", "OPQ", "SQ"))  # vecz codes x - c (F16, Flat code x)
    centroids = np.zeros((1, width), dtype=np.float32)
    if core.nlist:
        if core.by_residual != residual_quantizer and (core.nlist > 1 or not residual_quantizer):
            what = "codes the residual to the list centroid" if residual_quantizer else "codes the vector itself"
            raise CodecSpecError(f"faiss {name}: vecz's IVF,{core.quantizer} {what}, so expected "
                                 f"by_residual={residual_quantizer}, found by_residual={core.by_residual}")
        if core.nlist > 1 or core.by_residual:
            centroids = core.centroids  # at nlist = 1: vecz's trained mean
    stages = ([f"MRL{mrl_dim}"] if mrl_dim is not None else []) + (
        [f"IVF{core.nlist}"] if core.nlist > 1 else []) + [core.quantizer]
    # faiss's PQ codes carry no row norms (`Codec`'s row_norms): they score <q, x_hat>
    codec = codec_class(",".join(stages), int(index.d), metric, row_norms=False)
    if codec.width != width:
        raise CodecSpecError(f"faiss {name}: expected width {codec.width} after the pre-transforms, found {width}")
    return codec_class.from_config(codec.to_config(), {"centroids": centroids, **core.state})


# --------------------------------------------------------------------------- vecz -> faiss


def _faiss_sq_trained(state: dict, nbits: int) -> np.ndarray:
    """faiss's ``sq.trained`` (vmin, then vdiff) for vecz's range: vmin half a level lower.

    Exactly half, not the (1/2 - eps) of `_sq_offset`: here the boundaries to copy are
    vecz's (``rint``), so faiss's ``floor`` thresholds go on them, and any eps would only
    widen the band where the two disagree (measured: 2-17 instead of 10-81 of 1.9M codes
    under cosine). The price is a round trip through faiss that moves vmin by eps levels."""
    vmin = state["sq_vmin"].astype(np.float64)
    vdiff = state["sq_vdiff"].astype(np.float64)
    return np.concatenate([vmin - 0.5 * vdiff / ((1 << nbits) - 1), vdiff]).astype(np.float32)


def _build_core(faiss: Any, codec: Any, fast_scan: bool) -> Any:
    """The trained faiss index for the coded space (width `codec.width`), no pre-transform."""
    q, d, state = codec.quantizer, codec.width, codec.state()
    kind = type(q).__name__  # the stage classes of vecz.engine.codecs: PQ, RB, SQ, F16, Flat
    fmetric = faiss.METRIC_L2 if codec.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind not in ("PQ", "SQ", "F16", "Flat"):
        raise CodecSpecError(f"{codec.spec!r} has no faiss equivalent: expected a PQ, SQ8, SQ4, F16 or Flat "
                             f"quantizer, found {q} (recurrent binarization; faiss's nearest family, RaBitQ, codes "
                             "differently: random rotation, its own per-vector factors, no learned rotation or levels)")
    if kind == "PQ" and d % q.m:
        raise CodecSpecError(f"{codec.spec!r} on {d} dims: faiss PQ expected a width divisible by M={q.m}, found "
                             f"{d} % {q.m} = {d % q.m} (vecz pads its sub-spaces, faiss cannot)")
    centroids = state["centroids"]
    if kind == "PQ" and q.rotate:  # faiss rotates x before the coarse quantizer: x R - c R = (x - c) R
        centroids = centroids @ state["pq_rotation"]
    residual = kind in ("PQ", "SQ")
    nlist = codec.nlist if codec.ivf is not None else (1 if residual and np.any(centroids != 0) else 0)
    coarse = None
    if nlist:
        coarse = faiss.IndexFlat(d, fmetric)
        coarse.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if kind == "PQ":
        fs = q.nbits == 4 and fast_scan
        if nlist:
            cls = faiss.IndexIVFPQFastScan if fs else faiss.IndexIVFPQ
            index = cls(coarse, d, nlist, q.m, q.nbits, fmetric)
            index.by_residual = True
        else:
            index = faiss.IndexPQFastScan(d, q.m, q.nbits, fmetric) if fs else faiss.IndexPQ(d, q.m, q.nbits, fmetric)
        books = np.ascontiguousarray(state["pq_books"], dtype=np.float32)
        faiss.copy_array_to_vector(books.ravel(), index.pq.centroids)
    elif kind in ("SQ", "F16"):
        qt = faiss.ScalarQuantizer
        qtype = qt.QT_fp16 if kind == "F16" else (qt.QT_8bit if q.nbits == 8 else qt.QT_4bit)
        if nlist:
            index = faiss.IndexIVFScalarQuantizer(coarse, d, nlist, qtype, fmetric, residual)
        else:
            index = faiss.IndexScalarQuantizer(d, qtype, fmetric)
        if kind == "SQ":
            faiss.copy_array_to_vector(_faiss_sq_trained(state, q.nbits), index.sq.trained)
    else:
        index = faiss.IndexIVFFlat(coarse, d, nlist, fmetric) if nlist else faiss.IndexFlat(d, fmetric)
    index.is_trained = True
    if nlist and kind == "PQ" and codec.metric == "l2":
        index.precompute_table()  # what faiss's own training ends with (tables of <c, codeword>)
    return index


def codec_to_faiss(codec: Any, *, fast_scan: bool = True) -> Any:
    """A trained, empty faiss index that codes vectors as the trained vecz `codec` does.

    Parameters
    ----------
    codec : Codec
        A trained codec: PQ (width divisible by M), SQ8, SQ4, F16 or Flat, with or without
        IVF and MRL, under any metric. RB is refused.
    fast_scan : bool
        PQ<M>x4: an IndexPQFastScan / IndexIVFPQFastScan (default, the fast-scan search vecz
        also uses) or, if False, an IndexPQ / IndexIVFPQ with 4-bit codes. Same codes either way.

    Returns
    -------
    faiss.Index
        The inverse of `codec_from_faiss` (module table); a codec without IVF whose PQ/SQ
        subtracts a non-zero mean becomes an IVF index with nlist = 1 (module docstring).
        ``index.sa_encode(x)`` equals ``join_sa_codes(codec, *codec.encode(x))`` (SQ, F16
        and cosine Flat: see the module docstring) and ``Codec.from_faiss(index) == codec``
        for F16 and Flat, and for PQ less its optional ``pq_cell_err`` (faiss has no place for
        it: the codec from faiss stores each row's error instead; same codes) (SQ's vmin
        comes back eps of a level lower; ``IVF1`` comes back without the stage, with the
        same codes).

        ``OPQ<M>x<b>`` becomes a LinearTransform (A = R^T, the codec's ``pq_rotation``
        transposed) in front of the PQ index, whose coarse centroids are vecz's rotated
        (c R): faiss rotates x before it picks a list, vecz rotates the residual, the same
        codes up to float rounding (the product x R is summed in another order), and
        ``from_faiss`` gives back the centroids within rounding.

    Raises
    ------
    NotTrained
        The codec is not trained.
    CodecSpecError
        RB, PQ over a width M does not divide, or PQ whose codes carry row norms (under
        ip, `Codec`'s ``row_norms``: faiss's codes have no place for them).
    """
    faiss = import_faiss()
    if not all(hasattr(codec, a) for a in ("quantizer", "state", "mrl", "ivf")):
        raise InvalidInput(f"expected a vecz Codec, found {type(codec).__name__}")
    if not isinstance(fast_scan, (bool, np.bool_)):  # "no" was true, and chose the fast scan
        raise InvalidInput(f"fast_scan: expected True or False, found {fast_scan!r:.40}")
    if getattr(codec, "row_norms", False):
        raise CodecSpecError(f"{codec.spec!r} under ip codes each row's norm, faiss's PQ codes have no place for it: "
                             "expected a codec made with row_norms=False for a faiss twin")
    core = _build_core(faiss, codec, fast_scan)
    chain = []
    if codec.metric == "cosine":
        chain.append(faiss.NormalizationTransform(codec.dim, 2.0))
    if codec.mrl is not None:
        keep = faiss.LinearTransform(codec.dim, codec.width, False)
        faiss.copy_array_to_vector(np.eye(codec.width, codec.dim, dtype=np.float32).ravel(), keep.A)
        keep.is_trained = True
        keep.set_is_orthonormal()  # sa_decode's reverse transform needs it (pads zeros back)
        chain.append(keep)
        if codec.metric != "l2":
            chain.append(faiss.NormalizationTransform(codec.width, 2.0))
    if type(codec.quantizer).__name__ == "PQ" and codec.quantizer.rotate:
        # OPQ: y = A x with A = R^T (vecz codes x @ R); faiss's OPQMatrix is the same kind of
        # LinearTransform, trained by faiss instead
        rotate = faiss.LinearTransform(codec.width, codec.width, False)
        rot = np.ascontiguousarray(codec.state()["pq_rotation"].T, dtype=np.float32)
        faiss.copy_array_to_vector(rot.ravel(), rotate.A)
        rotate.is_trained = True
        rotate.set_is_orthonormal()
        chain.append(rotate)
    if not chain:
        return core
    wrapped = faiss.IndexPreTransform(core)
    for t in reversed(chain):
        wrapped.prepend_transform(t)  # faiss's Python layer keeps t and core alive with `wrapped`
    return wrapped
