"""Fixtures of the scan benchmarks: the wordnet-minilm data, one thread, trained indexes.

Training, encoding and index building happen once per session, in these fixtures, never
inside a timed call; indexes are built lazily, so `-k` selects what gets trained. The whole
session runs single-threaded on both sides: Numba (vecz's prange drivers run serially),
faiss's OpenMP, and the OpenBLAS libraries of numpy and faiss (query rotations are BLAS
calls on both sides). Settings and data: see harness.py.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import faiss
import numba
import numpy as np
import pytest

from vecz.engine.codecs import Codec, CodeIndex
from harness import (
    DATA_DIR,
    DIM,
    FAISS_BUILDERS,
    K,
    NQ,
    NTRAIN,
    ROUNDS,
    Data,
    blas_single_thread,
    load_data,
    missing_data,
)
from vecz.kernels import binary


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> dict[str, Any]:
    """One thread for vecz, faiss and BLAS for the whole session; returns the counts read back."""
    numba.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    settings = {
        "numba": numba.get_num_threads(),
        "faiss_omp": faiss.omp_get_max_threads(),
        "openblas": blas_single_thread(),
    }
    if settings["numba"] != 1 or settings["faiss_omp"] != 1 or any(n != 1 for n in settings["openblas"].values()):
        raise RuntimeError(f"could not limit the benchmarks to one thread: {settings}")
    return settings


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["vecz_bench"] = {
        "nq": NQ,
        "ntrain": NTRAIN,
        "rounds": ROUNDS,
        "k": K,
        "threads": 1,
        "numba": numba.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "data": str(DATA_DIR),
    }


@pytest.fixture(scope="session")
def data(single_thread) -> Data:
    missing = missing_data()
    if missing:
        pytest.skip(f"wordnet-minilm data not found: {DATA_DIR} lacks {', '.join(missing)} "
                    f"(the benchmarks read ../shared/data next to the repository)")
    return load_data()


class VeczIndex(NamedTuple):
    codec: Codec
    index: CodeIndex


@pytest.fixture(scope="session")
def vecz_index(data: Data) -> Callable[..., VeczIndex]:
    """`vecz_index(spec, metric="cosine")`: a codec trained on `data.train`, the base encoded,
    built once (the rows are unit vectors: l2 ranks them as cosine does)."""
    cache: dict[tuple[str, str], VeczIndex] = {}

    def get(spec: str, metric: str = "cosine") -> VeczIndex:
        if (spec, metric) not in cache:
            # train_size = len(train): the codec trains on exactly these rows, no resampling.
            codec = Codec(spec, DIM, metric, seed=0, train_size=len(data.train)).train(data.train)
            enc = codec.encode(data.base)
            cache[spec, metric] = VeczIndex(codec, codec.index(enc.codes, enc.lists))
        return cache[spec, metric]

    return get


@pytest.fixture(scope="session")
def faiss_index(data: Data) -> Callable[[str], faiss.Index]:
    """`faiss_index(name)`: a harness.FAISS_BUILDERS index trained on `data.train`, base added."""
    cache: dict[str, faiss.Index] = {}

    def get(name: str) -> faiss.Index:
        if name not in cache:
            index = FAISS_BUILDERS[name]()
            index.train(data.train)
            index.add(data.base)
            cache[name] = index
        return cache[name]

    return get


class SignCodes(NamedTuple):
    base_bytes: np.ndarray  # uint8 (n, DIM / 8), binary.sign_pack: bit t of byte j = dim 8j + t
    query_bytes: np.ndarray  # uint8 (nq, DIM / 8)
    base_words: np.ndarray  # uint64 (n, W): the same bits, 8 bytes to a word
    query_words: np.ndarray  # uint64 (nq, W)
    ids: np.ndarray  # int64 (n,)


@pytest.fixture(scope="session")
def sign_codes(data: Data) -> SignCodes:
    """Plain sign bits (x >= 0) of base and queries, packed once and shared by both sides."""
    base_bytes = binary.sign_pack(data.base)
    query_bytes = binary.sign_pack(data.queries)

    def words(b: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(binary.rb_words(b[:, None, :]).reshape(len(b), -1))

    ids = np.arange(len(base_bytes), dtype=np.int64)
    return SignCodes(base_bytes, query_bytes, words(base_bytes), words(query_bytes), ids)


@pytest.fixture(scope="session")
def faiss_binary(sign_codes: SignCodes) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(DIM)
    index.add(sign_codes.base_bytes)
    return index
