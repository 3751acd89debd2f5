"""Build and search a vecz store with Ray (the optional extra ``pip install 'vecz[ray]'``).

Ray is the engine here: its Data library reads and splits the source, its tasks and actors
run the work and retry it, its object store carries the arrays. vecz adds what is its own:
the codec trained once, segments written where every worker sees them, one commit, and an
exact merge of the shards' answers. Without Ray installed, vecz is whole and this module
raises `MissingDependency` when called.

Build (`build`), the pattern of Lance's distributed indexing:

1. The driver opens (or creates) the store as its one writer and holds the lock throughout.
2. The codec is trained once, on the driver, on a bounded sample drawn across the whole
   dataset (``Dataset.random_sample``, then at most `train_size` rows), unless the store is
   trained already; the training is its own commit (an empty, trained store).
3. Workers receive the trained codec as its JSON config plus its arrays (through Ray's
   object store; nothing is pickled into the store), encode their blocks
   (``map_batches``, at most `segment_rows` rows per batch) and write each batch as one
   codes file and one dense file, fsynced, into a staging directory inside the store
   (formats/FORMAT.md "Segments written by other processes"), named by a random token.
4. The driver checks the batches' ids (distinct, not in the store), renames every staged
   file to a fresh serial of its own and publishes them all in ONE manifest: all or
   nothing. A worker that dies mid-batch leaves a partial staged file that no one adopts;
   Ray Data re-runs its batch on another worker. A build that fails anyway leaves the
   store at its previous version; the staging directory is removed then, or by the next
   writer's garbage collection if the driver itself died.

The rows are the same as a one-process build with the same trained codec: the same codes,
ids, stored errors and exact vectors for every id (tests/test_ray.py); only the segment
boundaries differ (one per batch). A row's code depends on the row and the codec only, not on
its batch (``kernels.transform.matmul_rows``), given workers on the driver's CPU model.

Search (`ShardedStore`): the segments of one committed version are split into shards
balanced by live rows; each shard is a Ray actor holding its segments' codes in its own RAM
and reading their dense files itself. A query batch runs in two rounds, so that the answer
is exactly the one-process answer (same ids and scores, ties by the smaller id):

1. every shard returns its best ``depth`` candidates by code score (ids and scores); the
   driver merges them into the version's best ``depth`` with the tie rule of
   engine/search.py;
2. with ``rerank``, every shard re-scores exactly those of the merged candidates it holds;
   the driver takes the top k by exact score.

``rerank="auto"`` (engine/bounds.py) runs in two rounds too, each shard walking its own
shortlist by upper bound (``vecz.engine.search.AutoWalk``):

1. every shard reads its first `seed_rows` candidates (together about `SEED_SHARE` x k
   over all shards) and returns their exact scores and its shortlist of R by code score;
   the driver takes the k-th best exact score of all seeds, per query, as the floor, and
   merges the shortlists into the best R of all, the shortlist one store would walk
   (`auto_limits`: each shard's part of it is a prefix of its own);
2. every shard goes on reading the candidates of its part whose upper bound reaches the
   floor or its own k-th exact score, whichever is higher (a row it skips could reach
   neither, so not the merged k-th score either), and returns its top k; the driver keeps
   the best k.

Without the floor every shard would read at least k rows and walk as if it held the whole
answer, and without the merged shortlist up to R rows each: the rows read grew with the
shards (docs/recipes/ray.md has the figures). R stays a cap on a query's rows, as in one
store, but for seed rows outside the merged shortlist.

The driver pins the version it serves (`commit.VersionPin`) until `close`, so a writer's
garbage collection keeps its manifest and files however many versions it commits meanwhile:
an actor that dies is restarted (``max_restarts``), loads its shard of that version again
and the call is retried; when it cannot be,
the search raises `ShardUnavailable` naming the shard, or, with ``partial=True``, answers
from the shards left and lists the missing ones in ``result.missing_shards``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.body import SegmentRecord, data_file_name, parse_body
from ..formats import manifest as mf
from ..formats import segment as sg
from ..formats.dense import DenseInfo
from . import writes
from .codecs import Codec, SearchResult, SearchStats, _as_vectors
from .commit import VersionPin, storage_errors
from .errors import (InvalidInput, MissingDependency, ShardUnavailable, StorageError, StoreClosed, StoreCorrupted,
                     StoreNotFound, VeczError)

__all__ = ["build", "BuildReport", "ShardedStore", "connect", "read_dataset", "DEFAULT_SEGMENT_ROWS"]

# rerank="auto" over shards: the seed rows of all shards together, in multiples of k (each shard
# reads ceil(SEED_SHARE * k / shards), `seed_rows`). On wordnet-minilm (IVF256,RB2 f16, 500
# queries, shards by id, offline) 1 x k left the floor low (36.6 rows a query at 4 shards
# against 26.4 for one walk), 1.5 and 2 x k 30.3 and 29.6; 2 x k at 16 shards 39.0 (one walk's
# rows, whatever the shards, are the least a floor could give).
SEED_SHARE = 2.0
# seed walks an actor keeps between the two rounds (the oldest dropped past it: a driver that
# dies between them leaves its walks behind)
_PENDING_WALKS = 16

# Rows per batch, hence per segment written by a worker: 256 Ki rows of 768 float32 are
# 768 MiB of input per worker at a time (the batch, its codes and the dense copy).
DEFAULT_SEGMENT_ROWS = 1 << 18
_ID_COLUMN = "__vecz_id"
# Test hook (tests/test_ray.py): while the file DIR/pause exists (DIR = this variable), every
# batch, after writing its codes file, touches DIR/<pid>-<token> and sleeps the seconds the
# file holds, so that a test can kill the worker there; while DIR/pause-search exists, every
# shard's first round touches DIR/search-<pid> and sleeps likewise, mid-search; DIR/pause-finish
# does the same (DIR/finish-<pid>) at the start of an auto search's second round.
_PAUSE_ENV = "VECZ_TEST_RAY_PAUSE"


def _pause(switch: str, marker: str) -> None:
    """The test hook (`_PAUSE_ENV`): while DIR/switch exists, touch DIR/marker and sleep the
    seconds it holds (a switch removed meanwhile means no pause)."""
    control = os.environ.get(_PAUSE_ENV)
    if not control:
        return
    try:
        seconds = float(Path(control, switch).read_text())
    except (FileNotFoundError, ValueError):
        return
    Path(control, marker).touch()
    time.sleep(seconds)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(f"this needs Ray, which is not installed ({exc}); expected it from "
                                f"`pip install 'vecz[ray]'`") from None
    return ray


def connect(address: str | None = None, **init_args: Any) -> None:
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to), or start
    a local one (None), unless Ray is initialised already in this process."""
    ray = _ray()
    if not ray.is_initialized():
        init_args.setdefault("include_dashboard", False)
        ray.init(address=address or None, **init_args)


# ---------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildReport:
    """What `build` did: rows and segments committed in `version`, and its timings (s)."""

    path: str
    version: int
    rows: int
    segments: int
    dim: int
    spec: str
    seconds: float
    train_seconds: float
    encode_seconds: float
    commit_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def read_dataset(data: Any, *, block_rows: int | None = None, rows: int | None = None) -> Any:
    """A Ray Dataset of `data`: a Dataset as is; a .npy file (column ``data``), a Parquet
    file or directory of them, read by Ray Data; a numpy array (column ``data``). With
    `block_rows`, a file or array is read into blocks of about that many rows (Ray Data's
    default splits a 370 MB .npy into 200 blocks, whose per-block costs dominated a build);
    `rows` is its row count when the caller knows it already (else read from metadata)."""
    ray = _ray()
    if isinstance(data, ray.data.Dataset):
        return data
    _check_source(data)
    blocks = {}
    if block_rows is not None:
        blocks = {"override_num_blocks": _blocks(_source_rows(data) if rows is None else rows, block_rows)}
    if isinstance(data, np.ndarray):
        if block_rows is None or data.shape[0] <= block_rows:
            return ray.data.from_numpy(data)
        size = -(-data.shape[0] // blocks["override_num_blocks"])
        return ray.data.from_numpy([data[i:i + size] for i in range(0, data.shape[0], size)])
    if Path(data).suffix == ".npy":
        return ray.data.read_numpy(str(data), **blocks)
    return ray.data.read_parquet(str(data), **blocks)


def _check_source(data: Any) -> None:
    """A numpy array, or an existing .npy file or Parquet file/directory (else InvalidInput)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise InvalidInput(f"{path}: expected a .npy file or Parquet file/directory, found nothing there")
        if path.suffix != ".npy" and path.suffix != ".parquet" and not path.is_dir():
            raise InvalidInput(f"{path}: a distributed build reads .npy or Parquet (file or directory), found "
                               f"{path.suffix or 'no suffix'}")
    elif not isinstance(data, np.ndarray):
        raise InvalidInput(f"data: expected a Ray Dataset, a .npy/Parquet path or a numpy array, found "
                           f"{type(data).__name__}")


def _blocks(rows: int, block_rows: int) -> int:
    """Blocks to ask of Ray Data for blocks of at most about `block_rows` rows (its split
    varies by ~10%: ask for 0.9 of it)."""
    return max(1, -(-int(rows) // max(1, int(0.9 * block_rows))))


def _source_rows(data: Any) -> int | None:
    """Rows of a .npy / Parquet source or an array from its metadata; None for a Dataset."""
    if isinstance(data, np.ndarray):
        return int(data.shape[0])
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix == ".npy":
            return int(np.load(path, mmap_mode="r").shape[0])
        import pyarrow as pa
        import pyarrow.dataset as pads

        try:
            return int(pads.dataset(str(path), format="parquet").count_rows())
        except (pa.ArrowException, OSError) as exc:  # (a raw ArrowInvalid: a non-Parquet file in a directory)
            raise InvalidInput(f"{path}: expected a Parquet file or a directory of Parquet files, found {exc}") from None
    return None


def _vector_column(names: list[str], column: str | None, id_column: str | None) -> str:
    if column is not None:
        if column not in names:
            raise InvalidInput(f"column: expected one of {names}, found {column!r}")
        return column
    others = [n for n in names if n != id_column]
    if len(others) != 1:
        raise InvalidInput(f"expected one vector column besides the ids, found {others}; name it with column= "
                           f"(vecz build: --column)")
    return others[0]


def _matrix(values: Any, what: str) -> np.ndarray:
    """A batch column (tensor array, or object array of per-row arrays) as a 2-D array."""
    arr = np.asarray(values)
    if arr.dtype == object:
        rows = [np.asarray(v) for v in arr]
        widths = {r.shape for r in rows}
        if len(widths) > 1:  # a variable-width list column: np.stack raised a raw ValueError
            bad = next(i for i, r in enumerate(rows) if r.shape != rows[0].shape)
            raise InvalidInput(f"{what}: expected rows of one width, found {rows[0].shape} in the batch's row 0 and "
                               f"{rows[bad].shape} in its row {bad}")
        arr = np.stack(rows) if rows else arr.reshape(0, 0)
    if arr.ndim != 2:
        raise InvalidInput(f"{what}: expected one vector per row (a 2-D batch), found shape {arr.shape}")
    return arr


def _sample(ds: Any, column: str, n: int, size: int, seed: int) -> np.ndarray:
    """At most `size` rows drawn at random across the whole dataset."""
    if n <= size:
        part = ds.select_columns([column])
    else:
        part = ds.select_columns([column]).random_sample(min(1.0, 1.25 * size / n), seed=seed)
    rows = [_matrix(b[column], "training sample") for b in part.iter_batches(batch_format="numpy", batch_size=8192)]
    x = np.concatenate(rows) if rows else np.empty((0, 0), dtype=np.float32)
    if x.shape[0] > size:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], size, replace=False))]
    return x


_CODECS: dict[str, Codec] = {}  # per worker process: the codec of each build, made once


_RECORD_FIELDS = ("seg", "dense", "dense_map", "rows", "min_id", "max_id", "error")


def _encode_batch(batch: dict[str, np.ndarray], **kwargs: Any) -> dict:
    """Ray Data UDF: one batch -> staged segments of at most `segment_rows` rows (codes and
    dense files, the rows sorted by id across them); returns their records. A vecz error
    (bad rows or ids) comes back as one record whose ``error`` is its type and message:
    raised in the UDF, Ray Data wraps it where its type and message are lost (a Dataset
    source gave a bare RayTaskError(UserCodeException)); `_raise_batch_error` raises it."""
    try:
        return _encode_rows(batch, **kwargs)
    except VeczError as exc:
        return {**{name: [""] for name in ("seg", "dense", "dense_map")}, "rows": [0], "min_id": [0], "max_id": [0],
                "error": [f"{type(exc).__name__}\t{exc}"]}


def _raise_batch_error(records: list[dict]) -> None:
    """Raise the first vecz error a batch returned (`_encode_batch`) as its own type."""
    from . import errors as vecz_errors

    for r in records:
        if r.get("error"):
            name, _, message = str(r["error"]).partition("\t")
            kind = getattr(vecz_errors, name, None)
            if not (isinstance(kind, type) and issubclass(kind, VeczError)):
                kind = VeczError
            try:
                exc = kind(message)
            except TypeError:  # an error whose constructor wants more than a message
                exc = VeczError(message)
            raise exc


def _encode_rows(batch: dict[str, np.ndarray], *, codec_ref: Any, key: str, column: str, id_column: str,
                 id_offset: int, staging: str, dense: str, dim: int, threads: int,
                 segment_rows: int) -> dict:
    """`_encode_batch` of a batch whose rows and ids are good."""
    ray = _ray()
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    codec = _CODECS.get(key)
    if codec is None:
        config, arrays = ray.get(codec_ref[0])
        codec = _CODECS[key] = Codec.from_config(config, arrays)
    x = _as_vectors(_matrix(batch[column], "vectors"), dim, "vectors", metric=codec.metric)
    ids = np.asarray(batch[id_column])
    if ids.dtype.kind not in "iu" or ids.shape != (x.shape[0],):
        raise InvalidInput(f"ids: expected one integer id per row, found {ids.dtype} {ids.shape}")
    if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:  # the cast would wrap them
        raise InvalidInput(f"ids: ids must fit int64, found {ids.max()}")
    ids = ids.astype(np.int64) + np.int64(id_offset)
    try:
        writes.check_rows(x, dense, "vectors", codec.metric)
    except InvalidInput as exc:  # a batch's row number means nothing to the caller: name the row's id
        template, row = getattr(exc, "template", None), getattr(exc, "row", None)
        if template is None or row is None:
            raise
        raise InvalidInput(template.format(where="vectors", row=f"{row} of a batch (id {int(ids[row])})")) from None
    if ids.min() < 0:
        raise InvalidInput(f"ids must be >= 0 (-1 marks an empty result slot), found {int(ids.min())}")
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        order = np.argsort(ids, kind="stable")
        ids, x = ids[order], x[order]
        if (np.diff(ids) == 0).any():
            raise InvalidInput(f"ids: expected distinct ids, found {int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])} "
                               f"twice in one batch")
    out: dict[str, list] = {name: [] for name in _RECORD_FIELDS}
    # Ray Data's blocks are about, not at most, the size asked: a larger batch is cut into
    # equal parts of at most segment_rows rows
    edges = np.linspace(0, x.shape[0], -(-x.shape[0] // segment_rows) + 1).astype(np.int64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        arrays, vectors = writes.encode_rows(codec, codec._prepare(x[lo:hi], "vectors"), x[lo:hi], ids[lo:hi])
        token = uuid.uuid4().hex
        info, dense_map = _stage(Path(staging), token, arrays, vectors, dense, codec.metric)
        for name, value in (("seg", f"{token}.seg"), ("dense", json.dumps(info.to_json()) if info else ""),
                            ("dense_map", dense_map), ("rows", int(hi - lo)), ("min_id", int(arrays["ids"][0])),
                            ("max_id", int(arrays["ids"][-1])), ("error", "")):
            out[name].append(value)
    return out


def _stage(directory: Path, token: str, arrays: dict[str, np.ndarray], vectors: np.ndarray,
           dense: str, metric: str) -> tuple[DenseInfo | None, str]:
    """Write one segment's dense file (rows in `segments.write_dense_rows` order) and codes
    file into the staging directory (formats/FORMAT.md, "Segments written by other
    processes"); a failure removes what it wrote. Returns the dense file's info and the
    segment's ``dense_map``."""
    from .segments import write_dense_rows

    names = (f"{token}.seg", f"{token}.dense")
    files: list[str] = []
    info, dense_map = None, "identity"
    try:
        if dense != "none":
            with storage_errors("ray build: write the dense file", directory / names[1]):
                info, sections = write_dense_rows(directory / names[1], arrays["ids"], vectors, arrays["lists"],
                                                  dense, metric)
            files.append(names[1])
            if sections:
                dense_map = "sections"
                arrays = {**arrays, **sections}
        _pause("pause", f"{os.getpid()}-{token}")
        with storage_errors("ray build: write the codes segment", directory / names[0]):
            sg.write_segment(directory / names[0], "codes", arrays)
        files.append(names[0])
    except BaseException:
        for name in files:
            (directory / name).unlink(missing_ok=True)
        raise
    return info, dense_map


@contextmanager
def _settings(ray: Any):
    """While a build runs, Ray Data keeps the source's row order (automatic ids depend on
    it). A worker's vecz error comes back as a record (`_encode_batch`), not as an exception."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = before


def _open_or_create(path: Path, codec: str | Codec | None, dim: int, metric: str | None, dense: str | None, seed: int,
                    train_size: int, rotation: str) -> Any:
    from .store import Store

    if path.exists() and path.is_dir() and any(path.iterdir()):
        store = Store.open(path, mode="a")
        try:
            if store.dim != dim:
                raise InvalidInput(f"{path}: the store holds width {store.dim}, the data has {dim}")
            for name, given, own in (("metric", metric, store.metric), ("dense", dense, store.dense)):
                if given is not None and given != own:
                    raise InvalidInput(f"{path}: {name} {given!r} given, the store has {own!r}")
            given = codec.spec if isinstance(codec, Codec) else codec
            if given is not None and Codec(given, dim, store.metric).spec != store.spec:
                raise InvalidInput(f"{path}: codec {given!r} given, the store has {store.spec!r}")
        except BaseException:
            store.close()
            raise
        return store
    return Store.create(path, dim=dim, metric=metric, codec="RB2" if codec is None else codec, dense=dense or "f32", seed=seed,
                        train_size=train_size, rotation=rotation)


def _check_ids(store: Any, staging: Path, recs: list[dict]) -> None:
    """Ids of the staged batches are distinct across batches and new to the store; batches
    whose id ranges overlap another's (or the store's segments') have their ids read back."""
    ranges = sorted((r["min_id"], r["max_id"], j) for j, r in enumerate(recs))
    suspect: set[int] = set()
    # a sweep with the running maximum: a range may overlap any earlier one, not only the one
    # before it (batches [0, 100], [10, 20], [50, 60] sharing id 55 were compared as two pairs,
    # neither holding both, and committed it twice)
    reach, group = None, []
    for lo, hi, j in ranges:
        if reach is not None and lo <= reach:
            group.append(j)
            reach = max(reach, hi)
            continue
        if len(group) > 1:
            suspect.update(group)
        reach, group = hi, [j]
    if len(group) > 1:
        suspect.update(group)
    existing = [(s.rec.min_id, s.rec.max_id) for s in store._segments]
    for lo, hi, j in ranges:
        if any(lo <= e_hi and e_lo <= hi for e_lo, e_hi in existing):
            suspect.add(j)
    if not suspect:
        return
    seen: list[np.ndarray] = []
    for j in sorted(suspect):
        with sg.open_segment(staging / recs[j]["seg"], kind="codes") as f:
            ids = f.read("ids")
        present = store._find(ids, store._segments)[0] >= 0
        if present.any():
            raise InvalidInput(f"ids: expected ids not in the store, found id {int(ids[present][0])} already in it")
        seen.append(ids)
    allids = np.concatenate(seen)
    uniq, counts = np.unique(allids, return_counts=True)
    if (counts > 1).any():
        raise InvalidInput(f"ids: expected distinct ids, found {int(uniq[counts > 1][0])} in two batches")


def build(path: str | os.PathLike, data: Any, *, codec: str | Codec | None = None, metric: str | None = None,
          dense: str | None = None, column: str | None = None, id_column: str | None = None, seed: int = 0,
          train_size: int = 65536, rotation: str = "itq", segment_rows: int = DEFAULT_SEGMENT_ROWS,
          workers: int | None = None, threads_per_worker: int = 1,
          address: str | None = None) -> BuildReport:
    """Build (or append to) the store at `path` from `data` on a Ray cluster (module
    docstring): one commit of every row, or none.

    Parameters
    ----------
    data : a Ray Dataset, a .npy file, a Parquet file or directory (read by Ray Data), or a
        numpy array; `column` names its vector column (default: the only one besides ids)
    id_column : integer ids column; default: ids ``next_id + row number`` in dataset order
    codec, metric, dense, seed, train_size, rotation : as `Store.create` for a new store
        (codec default "RB2"); an existing store must agree with the codec, metric and dense
        given, and trains (if it is not yet trained) with its own seed, train size and rotation
    segment_rows : rows per batch, hence at most per segment written
    workers : batches encoded at once (default: as many as the cluster's CPUs allow)
    threads_per_worker : CPUs each batch asks of Ray (and Numba threads it uses)
    address : the cluster to join (None: the one this process is connected to, else a new
        local one; "auto": this machine's)

    Raises
    ------
    InvalidInput
        Bad rows (NaN, wrong width, norms too large) or ids (negative, repeated, already in
        the store), or options the store contradicts. Nothing is committed.
    MissingDependency
        Ray is not installed.

    Notes
    -----
    A batch that raises anything else fails the build the same way, with what Ray raised
    (Ray Data re-runs a batch whose worker died, without limit).
    """
    ray = _ray()
    connect(address)
    with _settings(ray):
        return _build(ray, Path(path), data, codec, metric, dense, column, id_column, seed, train_size, rotation,
                      segment_rows, workers, threads_per_worker)


def _build(ray: Any, path: Path, data: Any, codec: str | Codec | None, metric: str | None, dense: str | None,
           column: str | None, id_column: str | None, seed: int, train_size: int, rotation: str, segment_rows: int,
           workers: int | None, threads_per_worker: int) -> BuildReport:
    started = time.perf_counter()
    if not isinstance(segment_rows, (int, np.integer)) or isinstance(segment_rows, bool) or segment_rows < 1:
        raise InvalidInput(f"segment_rows: expected an integer >= 1, found {segment_rows!r}")
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
            raise InvalidInput(f"{name}: expected None or an integer >= 1, found {value!r}")
    # a file or an array is read in blocks of at most segment_rows rows, one batch (one
    # segment) each; a Dataset keeps its blocks and is cut into batches of segment_rows
    aligned = not isinstance(data, ray.data.Dataset)
    if aligned:
        _check_source(data)
    n = _source_rows(data)  # from the file's metadata; None for a Dataset
    ds = read_dataset(data, block_rows=int(segment_rows) if aligned else None, rows=n)
    # one row gives the columns and the width; the row count comes from the files' metadata
    # (a Ray Data schema() or count() on a .npy reads all of it)
    try:
        head = ds.take_batch(1, batch_format="numpy")
    except ValueError:
        head = {}
    names = list(head)
    if not names:
        raise InvalidInput("data: expected at least 1 row, found 0")
    if id_column is not None and id_column not in names:
        raise InvalidInput(f"id_column: expected one of {names}, found {id_column!r}")
    column = _vector_column(names, column, id_column)
    dim = int(_matrix(head[column], "vectors").shape[1])
    if n is None and id_column is None:
        n = ds.count()  # automatic ids number the rows: their count is needed first
    made = not path.exists()
    fresh = made or (path.is_dir() and not any(path.iterdir()))
    store = _open_or_create(path, codec, dim, metric, dense, seed, train_size, rotation)
    staging: Path | None = None
    moved: list[str] = []
    committed = False
    try:
        lock = store._lock
        t0 = time.perf_counter()
        if not store.codec.is_trained:
            rows = n if n is not None else ds.count()
            sample = _sample(ds, column, rows, store.codec.train_size, store.codec.seed)
            try:
                store.train(sample)
            except InvalidInput as exc:  # (its row number is the sample's: it named a healthy data row)
                raise InvalidInput(f"{exc} (a row of the {len(sample):,} drawn at random from the data to train the "
                                   f"codec, not the data's row of that number)") from None
        train_seconds = time.perf_counter() - t0
        trained = store.codec
        codec_ref = [ray.put((trained.to_config(), trained.state()))]  # in a list: Ray passes the ref as is
        if id_column is None:
            # ids in dataset order: row i gets next_id + i (zip pairs rows by position; the
            # context's preserve_order makes that order the source's)
            offset = store.next_id
            writes.check_auto_ids(store, n)  # (else a raw OverflowError from a worker, in a RayTaskError)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ids = ray.data.range(n, **({"override_num_blocks": _blocks(n, segment_rows)} if aligned else {}))
                ds = ds.select_columns([column]).zip(ids.rename_columns({"id": _ID_COLUMN}))
            id_column = _ID_COLUMN
        else:
            offset = 0
            ds = ds.select_columns([column, id_column])
        staging = path / f"staging-{uuid.uuid4().hex}"
        with storage_errors("ray build: make the staging directory", staging):
            staging.mkdir()
        t0 = time.perf_counter()
        out = ds.map_batches(
            _encode_batch, batch_size=None if aligned else int(segment_rows), batch_format="numpy",
            zero_copy_batch=True,
            fn_kwargs={"codec_ref": codec_ref, "key": uuid.uuid4().hex, "column": column, "id_column": id_column,
                       "id_offset": int(offset), "staging": str(staging), "dense": store.dense,
                       "dim": dim, "threads": int(threads_per_worker),
                       "segment_rows": int(segment_rows)},
            num_cpus=threads_per_worker, compute=ray.data.TaskPoolStrategy(size=workers)).take_all()
        encode_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        _raise_batch_error(out)
        recs = sorted(out, key=lambda r: r["min_id"])
        if n is None:
            n = sum(r["rows"] for r in recs)
        if sum(r["rows"] for r in recs) != n:
            raise VeczError(f"ray build: the batches hold {sum(r['rows'] for r in recs)} rows, the data {n}")
        lock.check("ray build")
        _check_ids(store, staging, recs)
        serials = writes._Serials(store._body.next_serial)
        body = writes._base_body(store, lock, serials, moved)
        new = []
        for r in recs:
            serial = serials.take()
            seg_name = data_file_name("seg", serial)
            with storage_errors("ray build: adopt a staged segment", path / seg_name):
                os.rename(staging / r["seg"], path / seg_name)
            moved.append(seg_name)
            infos = ()
            if r["dense"]:
                dense_name = data_file_name("dense", serial)
                with storage_errors("ray build: adopt a staged dense file", path / dense_name):
                    os.rename(staging / r["seg"].replace(".seg", ".dense"), path / dense_name)
                moved.append(dense_name)
                infos = (replace(DenseInfo.from_json(json.loads(r["dense"]), "staged batch"), file=dense_name),)
            dense_map = str(r.get("dense_map") or "identity")
            if dense_map not in ("identity", "sections") or (dense_map == "sections" and not infos):
                raise StoreCorrupted(f"staged segment {r['seg']}: dense_map {dense_map!r} with "
                                     f"{len(infos)} dense file(s)")
            with storage_errors("ray build: read a staged segment's digest", path / seg_name):
                digest = sg.segment_digest(path / seg_name)
            new.append(SegmentRecord(serial, seg_name, int(r["rows"]), int(r["min_id"]), int(r["max_id"]), infos,
                                     dense_map, digest=digest))
        top = max(r["max_id"] for r in recs)
        body = replace(body, segments=body.segments + tuple(new), next_id=max(body.next_id, int(top) + 1),
                       next_serial=serials.next)
        writes._publish(store, lock, body, moved, "ray build")
        committed = True
        commit_seconds = time.perf_counter() - t0
        shutil.rmtree(staging, ignore_errors=True)
        staging = None
        writes._after_commit(store, lock)
        version = store.version
    except BaseException:
        if not committed and moved and store._lock is not None:
            store._lock.remove(moved)
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        spec = store.spec
        store.close()
        if fresh and not committed:
            # the store this call created never held a row: leave the path as it was
            if made:
                shutil.rmtree(path, ignore_errors=True)
            else:
                for entry in path.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return BuildReport(str(path), version, n, len(recs), dim, spec, time.perf_counter() - started, train_seconds,
                       encode_seconds, commit_seconds)


# ---------------------------------------------------------------------------- search


class _Shard:
    """A Ray actor's state: the segments of one shard, read-only (`Store._open_shard`)."""

    def __init__(self, path: str, version: int, serials: list[int], threads: int) -> None:
        import numba

        from .store import Store

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self.store = Store._open_shard(path, version, serials)
        self._walks: dict[str, Any] = {}  # token -> a seeded auto walk (`auto_seed`), oldest first
        for seg in self.store._segments:
            if seg.live:
                seg.layout  # noqa: B018 (built now, not at the first query)

    def pid(self) -> int:
        return os.getpid()

    def distinct_lists(self) -> int:
        """Lists a query of this shard can probe: the codec's distinct centroids, 1 without
        IVF (`Codec.lists_probed`; the driver's codec holds no centroids)."""
        codec = self.store.codec
        return codec.lists_probed(codec.nlist if codec.ivf is not None else 1)

    def shortlist(self, x: np.ndarray, depth: int, nprobe: int, sdc: bool) -> tuple[np.ndarray, np.ndarray, int]:
        from .search import PARALLEL_MIN_QUERIES, _shortlist
        from .threads import query_threads

        s = self.store
        with query_threads(x.shape[0], PARALLEL_MIN_QUERIES):
            scores, _, _, ids, candidates = _shortlist(s.codec, s._segments, x, depth, nprobe, sdc)
        _pause("pause-search", f"search-{os.getpid()}")
        return scores, ids, candidates

    def auto(self, x: np.ndarray, k: int, nprobe: int, cap: int, confidence: float) -> tuple[Any, int]:
        """This shard's part of a ``rerank="auto"`` search (`vecz.engine.search.shard_auto`:
        its walk over its own shortlist of `cap`, bounded by the store's committed error
        model when it has one): its `AutoResult` and the codes it scored."""
        from .search import shard_auto

        s = self.store
        out = shard_auto(s.codec, s.metric, s._segments, x, k, nprobe=nprobe, cap=cap, model=s.error_model(),
                         confidence=confidence, prefetch=s.prefetch)
        _pause("pause-search", f"search-{os.getpid()}")
        return out

    def auto_seed(self, token: str, x: np.ndarray, k: int, nprobe: int, cap: int, confidence: float,
                  seeds: int) -> tuple[Any, int, np.ndarray, np.ndarray]:
        """Round 1 of a ``rerank="auto"`` search over several shards (module docstring): this
        shard's walk reads its first `seeds` candidates and is kept under `token` for
        `auto_finish`. Returns the seed rows' `AutoResult`, the codes scored and the
        shortlist's code scores and ids (best first)."""
        from .search import seeded_shortlist, shard_auto_seed

        s = self.store
        walk, seeded, candidates = shard_auto_seed(s.codec, s.metric, s._segments, x, k, nprobe=nprobe, cap=cap,
                                                   model=s.error_model(), confidence=confidence,
                                                   prefetch=s.prefetch, seeds=seeds)
        self._walks[token] = walk
        while len(self._walks) > _PENDING_WALKS:
            self._walks.pop(next(iter(self._walks)))
        _pause("pause-search", f"search-{os.getpid()}")
        return (seeded, candidates, *seeded_shortlist(walk, x.shape[0]))

    def auto_finish(self, token: str, floor: np.ndarray, limit: np.ndarray, x: np.ndarray, k: int, nprobe: int,
                    cap: int, confidence: float, seeds: int) -> Any:
        """Round 2: the walk `auto_seed` kept under `token` reads on above `floor` (the k-th
        best exact score of every shard's seeds), in the first limit[i] candidates of its
        shortlist (its part of the merged one). An actor restarted between the rounds has
        lost it: it seeds the same walk again (the same rows: the shortlist depends on the
        queries and the shard only). Returns the `AutoResult` of both rounds."""
        from .search import shard_auto_finish, shard_auto_seed

        s = self.store
        _pause("pause-finish", f"finish-{os.getpid()}")
        if token in self._walks:
            walk = self._walks.pop(token)
        else:
            walk = shard_auto_seed(s.codec, s.metric, s._segments, x, k, nprobe=nprobe, cap=cap,
                                   model=s.error_model(), confidence=confidence, prefetch=s.prefetch,
                                   seeds=seeds)[0]
        return shard_auto_finish(walk, floor, x.shape[0], k, s.metric, limit)

    def auto_drop(self, token: str) -> None:
        """Forget the walk kept under `token` (a search that failed between its rounds)."""
        self._walks.pop(token, None)

    def exact(self, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int, int]:
        from .search import PARALLEL_MIN_QUERIES, _exact
        from .threads import query_threads

        s = self.store
        segments = s._taken("search")
        seg_of, rows = s._find(ids.ravel(), segments)
        with query_threads(x.shape[0], PARALLEL_MIN_QUERIES):
            return _exact(s.metric, segments, x, seg_of.reshape(ids.shape), rows.reshape(ids.shape), s.prefetch)


def _merged(metric: str, parts: list[Any], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k of shards' `AutoResult`s by their float64 exact scores (`merge_shortlists`,
    ties by the smaller id, as one store ranks them) and its k-th score per query,
    larger-is-better (-inf where fewer than k were found)."""
    from .search import merge_shortlists

    better = [np.where(p.ids >= 0, -p.scores if metric == "l2" else p.scores, -np.inf) for p in parts]
    top_s, top_i, (top_better,) = merge_shortlists(metric, [p.scores for p in parts], [p.ids for p in parts],
                                                   [better], k)
    tau = np.full(top_i.shape[0], -np.inf)
    if k and top_i.shape[1] == k:
        tau = np.where(top_i[:, -1] >= 0, top_better[:, -1], -np.inf)
    return top_s, top_i, tau


def seed_rows(k: int, shards: int) -> int:
    """Rows each of `shards` shards reads in round 1 of a ``rerank="auto"`` search:
    ceil(SEED_SHARE * k / shards), at least 1."""
    return max(1, int(np.ceil(SEED_SHARE * k / max(1, shards))))


def auto_floor(metric: str, seeds: list[Any], k: int) -> np.ndarray:
    """The floor of round 2 (module docstring): per query the k-th best exact score of all
    shards' seed rows (their `AutoResult`s), larger-is-better, float64; -inf where they
    hold fewer than k rows."""
    return _merged(metric, seeds, k)[2]


def auto_limits(metric: str, shortlists: list[tuple[np.ndarray, np.ndarray]], depth: int) -> list[np.ndarray]:
    """Round 2's cap (module docstring): per shard, how many of its shortlist's candidates
    (code scores and ids, (nq, *) each, best first with ties by the smaller id) are among
    the best `depth` of all shards' by the same rule, int64 (nq,) each: the store's own
    shortlist is their union, each shard's part of it a prefix of its shortlist."""
    from .search import merge_shortlists

    owner = [np.where(ids >= 0, j, -1) for j, (_, ids) in enumerate(shortlists)]
    _, _, (top_o,) = merge_shortlists(metric, [sc for sc, _ in shortlists], [ids for _, ids in shortlists], [owner],
                                      depth)
    return [np.count_nonzero(top_o == j, axis=1).astype(np.int64) for j in range(len(shortlists))]


def auto_in_process(shards: list[Any], x: np.ndarray, k: int, *, nprobe: int, cap: int, confidence: float,
                    prefetch: bool | None = None, rounds: int = 2, walks: list | None = None) -> list[Any]:
    """What `ShardedStore.search(rerank="auto")` has its actors compute, run in this process
    over opened shards (`Store._open_shard`, one per `_split` group), for the benchmark and
    the tests: with one shard (or `rounds` = 1) each shard's own walk (`search.shard_auto`),
    else the two rounds (`search.shard_auto_seed`, `auto_floor`, `auto_limits`,
    `search.shard_auto_finish`). x float32, checked. Returns each shard's `AutoResult`
    (`merge_auto` merges them); `walks`, a list, receives the two-round walks."""
    from .search import seeded_shortlist, shard_auto, shard_auto_finish, shard_auto_seed, shortlist_depth

    metric = shards[0].metric
    if len(shards) == 1 or rounds == 1:
        return [shard_auto(s.codec, s.metric, s._segments, x, k, nprobe=nprobe, cap=cap, model=s.error_model(),
                           confidence=confidence, prefetch=prefetch)[0] for s in shards]
    seeded = [shard_auto_seed(s.codec, s.metric, s._segments, x, k, nprobe=nprobe, cap=cap, model=s.error_model(),
                              confidence=confidence, prefetch=prefetch, seeds=seed_rows(k, len(shards)))
              for s in shards]
    floor = auto_floor(metric, [p[1] for p in seeded], k)
    depth = shortlist_depth(k, cap, sum(len(s) for s in shards))
    limits = auto_limits(metric, [seeded_shortlist(p[0], x.shape[0]) for p in seeded], depth)
    if walks is not None:
        walks.extend(p[0] for p in seeded)
    return [shard_auto_finish(p[0], floor, x.shape[0], k, metric, lim) for p, lim in zip(seeded, limits)]


def merge_auto(metric: str, parts: list[Any], k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The top-k of shards' `AutoResult`s (`_merged`), and the queries counted capped: those
    where a row beyond some shard's shortlist could still reach the merged k-th score.
    Returns float32 scores (the user's convention), ids (-1 past the rows found) and that
    count."""
    top_s, top_i, tau = _merged(metric, parts, k)
    reach = np.max(np.stack([p.reach for p in parts]), axis=0)
    return top_s, top_i, int(np.count_nonzero(reach >= tau))


def _split(records: tuple[SegmentRecord, ...], shards: int) -> list[list[SegmentRecord]]:
    """Segments into `shards` groups of about equal live rows (largest first, each to the
    lightest group), every group non-empty when there are enough segments."""
    groups: list[list[SegmentRecord]] = [[] for _ in range(shards)]
    load = [0] * shards
    for rec in sorted(records, key=lambda r: (-r.live, r.serial)):
        j = min(range(shards), key=lambda i: (load[i], len(groups[i])))
        groups[j].append(rec)
        load[j] += rec.live
    return [g for g in groups if g]


class ShardedStore:
    """One committed version of a store searched by Ray actors, one per shard of its
    segments (module docstring). ``scores, ids = sharded.search(q, k)`` equals
    ``Store.open(path, version=v).search(q, k)``.

    Parameters
    ----------
    path : the store directory, on a filesystem every actor's machine sees
    shards : actors (default 2; at most the number of segments)
    version : the version to serve (default: the newest) until `close`, pinned meanwhile
        (`Store.pin`): an actor that dies loads its files again, however many versions a
        writer commits. Where the pin cannot be made (a filesystem without flock) it warns
        and serves unpinned: a restart then works only while the store keeps the version
        (a writer's garbage collection keeps the newest `retain`)
    address : the Ray cluster (as `connect`)
    max_restarts : times an actor that dies is restarted (its call retried); 0: never
    threads_per_shard : Numba threads each actor searches with
    cpus_per_shard : CPUs each actor reserves from Ray (default `threads_per_shard`)
    start_timeout : seconds to wait for every actor to start (a cluster without the CPUs
        for them raises `ShardUnavailable` then, instead of waiting for ever)
    """

    def __init__(self, path: str | os.PathLike, *, shards: int = 2, version: int | None = None,
                 address: str | None = None, max_restarts: int = 1, threads_per_shard: int = 1,
                 cpus_per_shard: float | None = None, start_timeout: float = 120.0) -> None:
        for name, value in (("shards", shards), ("threads_per_shard", threads_per_shard)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name}: expected an integer >= 1, found {value!r}")
        if not isinstance(max_restarts, (int, np.integer)) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise InvalidInput(f"max_restarts: expected an integer >= 0, found {max_restarts!r}")
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float, np.integer, np.floating)) \
                or not start_timeout > 0:
            raise InvalidInput(f"start_timeout: expected a number of seconds > 0, found {start_timeout!r}")
        if cpus_per_shard is not None and (isinstance(cpus_per_shard, bool) or not isinstance(
                cpus_per_shard, (int, float, np.integer, np.floating)) or not 0 < cpus_per_shard < math.inf):
            raise InvalidInput(f"cpus_per_shard: expected None or a number > 0, found {cpus_per_shard!r}")
        if isinstance(version, np.integer) and not isinstance(version, np.bool_):
            version = int(version)  # as Store.open
        self._ray = _ray()
        connect(address)
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreNotFound(f"{self.path}: no store directory here")
        self.pin: VersionPin | None = None
        self.actors = None
        body = self._pinned_body(version)
        try:
            self._start(body, shards, max_restarts, threads_per_shard, cpus_per_shard, start_timeout)
        except BaseException:
            self.close()  # the pin with it
            raise

    def _start(self, body: Any, shards: int, max_restarts: int, threads_per_shard: int,
               cpus_per_shard: float | None, start_timeout: float) -> None:
        ray = self._ray
        self.body = body
        self.codec = Codec.from_config(body.codec_config)
        self.groups = _split(body.segments, int(shards))
        cpus = threads_per_shard if cpus_per_shard is None else cpus_per_shard
        actor = ray.remote(_Shard).options(max_restarts=max_restarts, max_task_retries=max_restarts, num_cpus=cpus)
        self.actors = [actor.remote(str(self.path), body.version, [r.serial for r in g], threads_per_shard)
                       for g in self.groups]
        refs = [a.pid.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=start_timeout)
        if len(ready) < len(refs):
            late = [j for j, r in enumerate(refs) if r not in ready]
            raise ShardUnavailable(f"{self._describe(late[0])}: its actor did not start within {start_timeout:g} s "
                                   f"({len(late)} of {len(refs)} shards waiting; each asks {cpus:g} CPU(s) of a "
                                   f"cluster with {ray.cluster_resources().get('CPU', 0):g})")
        self._gather(refs, partial=False)
        # the lists a query can probe, from a shard's codec (a version without segments has no
        # actor, and its searches answer before they probe)
        self.lists = int(self._gather([self.actors[0].distinct_lists.remote()], partial=False)[0][0]) \
            if self.actors else 1

    def _pinned_body(self, version: int | None) -> Any:
        """The manifest body of `version` (the newest by default), its version pinned in
        `self.pin` (None with a warning where pins cannot be made)."""
        from .store import read_body

        for attempt in range(8):
            body = parse_body(read_body(self.path, version, "ShardedStore"), f"{self.path} version {version}")
            try:
                self.pin = VersionPin(self.path, body.version)
            except StoreNotFound:
                if version is not None or attempt == 7:
                    raise
                continue  # the newest version read was pruned before the pin: read the newest again
            except StorageError as exc:  # a filesystem without flock (some network mounts)
                warnings.warn(f"{self.path}: version {body.version} served unpinned ({exc}): an actor that dies can "
                              f"load it again only while a writer's garbage collection keeps it", RuntimeWarning,
                              stacklevel=3)
            return body
        raise AssertionError("unreachable")

    @property
    def version(self) -> int:
        return self.body.version

    def __len__(self) -> int:
        return self.body.live

    def __enter__(self) -> "ShardedStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _describe(self, j: int) -> str:
        g = self.groups[j]
        return (f"shard {j} of {len(self.groups)} ({len(g)} segment(s), serials {[r.serial for r in g]}, "
                f"{sum(r.live for r in g)} live rows) of {self.path} version {self.version}")

    def _pruned(self) -> str:
        """Why a restart cannot work, when it cannot: the version's manifest is gone."""
        if (self.path / mf.manifest_name(self.version)).exists():
            return ""
        return (f": version {self.version} is no longer in the store (it was served unpinned, and a writer's "
                f"garbage collection keeps the newest `retain` versions), so no actor can load it again; serve the "
                f"newest version with a new ShardedStore")

    def _gather(self, refs: list, partial: bool, shards: list[int] | None = None) -> tuple[list, list[int]]:
        """Results of one call per shard (refs[i] to shard shards[i], default i); a shard
        whose actor is gone raises ShardUnavailable (or, with `partial`, gives None and is
        listed by its shard number)."""
        exc_types = (self._ray.exceptions.RayActorError,)
        out, missing = [], []
        for j, ref in zip(range(len(refs)) if shards is None else shards, refs):
            try:
                out.append(self._ray.get(ref))
            except exc_types as exc:
                if not partial and getattr(exc, "actor_init_failed", False):
                    # its constructor raised (a damaged segment file, say): the cause, not "died"
                    # (the error's own text ends with the exception its creation task raised)
                    cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
                    raise ShardUnavailable(f"{self._describe(j)}: its actor could not load its segments: "
                                           f"{cause[0].strip()}{self._pruned()}") from None
                if not partial:
                    raise ShardUnavailable(f"{self._describe(j)}: its actor died and was not restarted "
                                           f"({type(exc).__name__}){self._pruned()}; expected an answer from every "
                                           f"shard (partial=True answers from the shards left)") from None
                out.append(None)
                missing.append(j)
        return out, missing

    def _check_open(self, what: str) -> None:
        if self.actors is None:
            raise StoreClosed(f"{self.path}: {what} on a closed ShardedStore; expected an open one")

    def pids(self) -> list[int]:
        """Process ids of the shards' actors (what a test kills)."""
        self._check_open("pids")
        return self._gather([a.pid.remote() for a in self.actors], partial=False)[0]

    def search(self, queries: Any, k: int = 10, *, nprobe: int | None = None, rerank: int | str | None = None,
               sdc: bool = False, confidence: float | None = None, partial: bool = False) -> SearchResult:
        """Top-k like `Store.search`. With ``partial=True`` a shard that is gone is skipped
        and named in ``result.missing_shards`` instead of raising `ShardUnavailable`.

        ``rerank="auto"`` (or ``"auto:R"``, with `confidence`) walks the store's shortlist
        of R (engine/bounds.py), each shard its own part of it, in two rounds (module
        docstring): every shard reads a few seed rows, then the candidates of its part whose
        upper bound reaches the k-th best exact score of all seeds or its own k-th, and the
        best k exact scores of all are kept: a row a shard skipped could reach neither, so
        not the merged k-th score either. A shard's upper offset at rank r is the largest of
        the store's at ranks r and beyond (a row's rank in its shard's shortlist is at most
        its rank in the store's), so a shard never bounds a row tighter than the store
        would: where the bounds hold, the answer is at least as good as one walk's over the
        store, for somewhat more rows (the seeds, 2 k a query over all shards, and each
        shard's own k-th score rising more slowly than one walk's). ``stats.capped``
        counts a query once, when a row beyond the merged shortlist could still reach the
        merged k-th score (as one store counts it). ``sdc=True`` takes a fixed depth only,
        as in `Store.search`.
        Shards bound code scores with the store's committed error model (`Store.calibrate`,
        `vecz build`); without one each measures its own on its segments."""
        from ..kernels import dense as dense_kernels
        from .search import (PARALLEL_MIN_QUERIES, _worst, check_search_args, merge_shortlists, pad_to_k,
                             shortlist_depth)
        from .store import MAX_RESULT_BYTES

        self._check_open("search")
        if not isinstance(partial, (bool, np.bool_)):
            raise InvalidInput(f"partial: expected True or False, found {partial!r}")
        k, nprobe, rerank, auto, confidence = check_search_args(self.codec, self.body.dense, k, nprobe, rerank, sdc,
                                                                confidence)
        x = _as_vectors(queries, self.body.dim, "queries", metric=self.body.metric)
        # the query checks of a store's search (norms, zero rows under cosine), before the actors run
        # (and where none runs: a version without live rows)
        self.codec._prepare_rows(x, "queries")
        metric, nq = self.body.metric, x.shape[0]
        live = self.body.live
        if nq == 0 or live == 0 or self.body.codec_file is None:
            out = SearchResult(np.full((nq, 0), _worst(metric), dtype=np.float32), np.full((nq, 0), -1, np.int64),
                               SearchStats(0, 0))
            res = pad_to_k(out, k, metric, MAX_RESULT_BYTES)
            res.missing_shards = ()
            return res
        kk, rr = min(k, live), min(rerank, live)
        depth = shortlist_depth(kk, rr, live)
        xref = self._ray.put(x)
        if auto:
            res = self._auto(xref, nq, kk, nprobe, rr, depth, confidence, partial)
            out = pad_to_k(res, k, metric, MAX_RESULT_BYTES)
            out.missing_shards = res.missing_shards
            return out
        parts, missing = self._gather([a.shortlist.remote(xref, depth, nprobe, bool(sdc)) for a in self.actors],
                                      partial)
        got = [(j, p) for j, p in enumerate(parts) if p is not None]
        if not got:
            raise ShardUnavailable(f"{self.path}: every shard is gone")
        candidates = sum(int(p[2]) for _, p in got)
        top_s, top_i, (top_o,) = merge_shortlists(metric, [p[0] for _, p in got], [p[1] for _, p in got],
                                                  [[np.where(p[1] >= 0, j, -1) for j, p in got]], depth)
        probes = nq * min(int(nprobe), self.lists)
        stats = SearchStats(candidates, probes)
        if not rr:
            w = min(kk, depth)
            out = SearchResult(top_s[:, :w], top_i[:, :w], stats)
        else:
            refs = {j: self.actors[j].exact.remote(xref, np.where(top_o == j, top_i, -1))
                    for j in np.unique(top_o[top_o >= 0]).tolist()}
            done, lost = self._gather(list(refs.values()), partial, list(refs))
            missing = sorted(set(missing) | set(lost))
            exact = np.zeros(top_i.shape, dtype=np.float64)
            n_rows = n_bytes = 0
            keep = top_i.copy()
            for j, res in zip(refs, done):
                if res is None:
                    keep[top_o == j] = -1
                    continue
                exact += res[0]
                n_rows += int(res[1])
                n_bytes += int(res[2])
            topk = dense_kernels.rerank_topk_batch if nq >= PARALLEL_MIN_QUERIES else dense_kernels.rerank_topk
            f_s, f_i = topk(exact, np.ascontiguousarray(keep), kk, metric == "l2")
            out = SearchResult(f_s, f_i, stats._replace(rows_read=n_rows, bytes_read=n_bytes))
        res = pad_to_k(out, k, metric, MAX_RESULT_BYTES)
        res.missing_shards = tuple(missing)
        return res

    def _auto(self, xref: Any, nq: int, k: int, nprobe: int, cap: int, depth: int, confidence: float,
              partial: bool) -> SearchResult:
        """`search` with ``rerank="auto"``: one shard walks alone (`_Shard.auto`); several
        walk in two rounds (module docstring: `_Shard.auto_seed`, `auto_floor`,
        `_Shard.auto_finish`), merged by `merge_auto`. A shard lost in round 2 (with
        `partial`) still gives its seed rows."""
        metric = self.body.metric
        if len(self.actors) == 1:
            parts, missing = self._gather([self.actors[0].auto.remote(xref, k, nprobe, cap, confidence)], partial)
            got = [p for p in parts if p is not None]
            results = [p[0] for p in got]
        else:
            token, seeds = uuid.uuid4().hex, seed_rows(k, len(self.actors))
            try:
                parts, missing = self._gather([a.auto_seed.remote(token, xref, k, nprobe, cap, confidence, seeds)
                                               for a in self.actors], partial)
                got = [(j, p) for j, p in enumerate(parts) if p is not None]
                refs = []
                if got:
                    floor = auto_floor(metric, [p[0] for _, p in got], k)
                    limits = auto_limits(metric, [(p[2], p[3]) for _, p in got], depth)
                    refs = [self.actors[j].auto_finish.remote(token, floor, lim, xref, k, nprobe, cap, confidence,
                                                              seeds) for (j, _), lim in zip(got, limits)]
            except BaseException:
                # (a shard gone with partial=False, an error or an interrupt here) the shards
                # that answered would keep their walks for a round 2 that will not come
                for a in self.actors:
                    try:
                        a.auto_drop.remote(token)
                    except Exception:  # noqa: BLE001 (an actor already gone holds nothing)
                        pass
                raise
            finished, lost = self._gather(refs, partial, [j for j, _ in got])
            missing = sorted(set(missing) | set(lost))
            results = [r if r is not None else p[0] for (_, p), r in zip(got, finished)]
            got = [p for _, p in got]
        if not got:
            raise ShardUnavailable(f"{self.path}: every shard is gone")
        top_s, top_i, capped = merge_auto(metric, results, k)
        probes = nq * min(int(nprobe), self.lists)
        over, rows = sum(r.over for r in results), sum(r.rows for r in results)
        from .search import warn_if_unlike

        warn_if_unlike(over, sum(r.checked for r in results), confidence)
        stats = SearchStats(sum(int(p[1]) for p in got), probes, rows_read=rows,
                            bytes_read=sum(r.bytes for r in results),
                            rows_per_query=np.sum([r.per_query for r in results], axis=0), capped=capped,
                            bound_exceeded=over)
        out = SearchResult(top_s, top_i, stats)
        out.missing_shards = tuple(missing)
        return out

    def close(self) -> None:
        """Stop the actors and release the version's pin (idempotent)."""
        if getattr(self, "actors", None):
            for a in self.actors:
                try:
                    self._ray.kill(a)
                except Exception:  # noqa: BLE001 (an actor already gone is fine)
                    pass
        self.actors = None
        if getattr(self, "pin", None) is not None:
            self.pin.release()
