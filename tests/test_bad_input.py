"""Bad input, table-driven: each case of the bad-input issue at each entry point it applies to
(`Store.create/open/add/delete/search/get/train`, `vecz build` and `vecz search`).

- REJECTED: the call raises exactly the typed error of its row (the CLI: `main` returns 2 and
  prints the message on stderr) with a message that names what was expected and what was
  found, and every store is left as it was: same version, live count and next id, same files
  (names, sizes, mtimes, SHA-256), same search results, and no new directory.
- ACCEPTED: float64, float16, big-endian, strided, sliced, reversed, Fortran-order and
  read-only arrays, a single vector of shape (dim,), lists of lists are converted to float32
  and give the ids and scores (bit for bit) of the float32 contiguous equivalent; other
  lenient inputs (unknown or negative ids to delete, empty query batches, ...) behave as
  their row says.
- EDGES: 0-row stores (never added; emptied by deletes), k beyond the live rows, constant
  and all-zero dimensions, identical vectors, zero vectors under cosine.

docs/bad-input.md is these tables run for real (messages copied from the errors raised):
regenerate it with ``python tests/test_bad_input.py --table > docs/bad-input.md``; a test
checks that every case appears there with its error type, so the two cannot drift.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Hostile environments: cases that need real processes, signals, a full disk or a crafted
# store, tested in their own files; listed here so docs/bad-input.md names them all, and a
# test below checks every named test exists.
HOSTILE: list[tuple[str, str, str]] = [
    ('the lock file deleted while a writer runs',
     'nothing to delete: the lock is an flock on the store directory; a second writer gets `StoreLocked` naming '
     "the holder's pid",
     'tests/test_reliability.py::test_the_lock_lives_on_the_directory_and_cannot_be_deleted'),
    ('the store renamed and a new one created at its path',
     "the old writer's next commit raises `StoreMoved`; both stores open",
     'tests/test_reliability.py::test_a_writer_whose_directory_moved_stops_and_harms_neither_store'),
    ('the store directory removed under a writer',
     '`StoreMoved` before any write',
     'tests/test_reliability.py::test_a_writer_whose_directory_was_removed_stops'),
    ('`vecz build` killed (SIGKILL) mid-way',
     're-running the same command resumes after the last committed batch',
     'tests/test_reliability.py::test_a_killed_build_resumes_where_it_stopped'),
    ('`vecz build` killed before its first commit',
     'a re-run starts over in the same directory',
     'tests/test_reliability.py::test_a_build_killed_before_its_first_commit_does_not_block_a_rerun'),
    ('thousands of segments under `ulimit -n`',
     'open file descriptors do not grow with segments',
     'tests/test_reliability.py::test_file_descriptors_do_not_grow_with_segments'),
    ('a FIFO where a dense file or manifest should be',
     '`StoreCorrupted` (not a regular file, found a FIFO), never a hang',
     'tests/test_reliability.py::test_a_fifo_in_the_store_is_refused_not_waited_on'),
    ('disk full (ENOSPC) inside a commit',
     '`StorageError` with the path; no partial file; the same writer retries',
     'tests/test_reliability.py::test_a_full_disk_fails_the_commit_cleanly_and_the_same_writer_retries'),
    ('disk full during `vecz build`',
     'exit 3, the rows committed on stderr',
     'tests/test_reliability.py::test_vecz_build_on_a_full_disk_exits_3_and_says_what_is_committed'),
    ('EROFS / EACCES from the OS',
     '`StorageError` naming the operation and the path',
     'tests/test_reliability.py::test_os_errors_are_typed_with_the_path'),
    ("the directory fsync fails (or an interrupt arrives) after the manifest's link",
     'the version is published, so its files stay; `CommitIncomplete` (version, errno) says it is committed, '
     'the writer follows it and commits the next one (before stop 49 its files were deleted and the newest '
     'version did not open)',
     'tests/test_reliability.py::test_a_failure_after_the_manifest_link_keeps_the_published_version'),
    ('garbage collection, or loading the new segment, fails after a commit',
     'GC warns (the commit stands); a writer that cannot load its segment reloads the version from disk or '
     'closes with `CommitIncomplete` (before: `StorageError` "nothing committed", and a retry added the rows '
     'twice)',
     'tests/test_reliability.py::test_a_failure_after_a_commit_does_not_say_nothing_was_committed'),
    ('a search in one thread while another refreshes the reader (after a compaction) or commits on the writer',
     'the search reads through the segments it took to the end: the pool drops the readers the new version does '
     'not name instead of closing them (a search failed with a numba `TypingError` or `AttributeError` before '
     'stop 49). Deletes are marked in place, so rows the new version deletes may already be left out of its '
     'answer: every row it returns was live in the version it took, but it is not always that version\'s answer '
     '(a torn read; search after `refresh()` returns for one version\'s answer)',
     'tests/test_reliability.py::test_a_search_holding_an_older_version_reads_on_through_a_refresh'),
    ('a search in one thread while another closes the store',
     'the search answers from the segments it took, or raises `StoreClosed` (an auto search measuring its '
     'error model answered with empty slots, id -1, before stop 51)',
     'tests/test_reliability.py::test_a_search_whose_store_is_closed_midway_answers_or_raises_store_closed'),
    ('`refresh()` fails (a damaged file of the newest version)',
     "the error, and the reader keeps its version whole: the newer version's deletes are applied only once all "
     'of it has loaded (before, they were applied first and the reader lost live rows)',
     'tests/test_reliability.py::test_a_refresh_that_fails_leaves_the_readers_version_as_it_was'),
    ("a `ShardedStore`'s actor dies after a writer committed past `retain` versions",
     'the served version is pinned (`Store.pin`): the restarted actor loads it again and answers as before '
     '(the version was pruned and the search failed); unpinned (a filesystem without flock: a warning), '
     '`ShardUnavailable` says the version is no longer in the store',
     'tests/test_ray.py::test_an_actor_that_dies_after_a_writer_moved_on_loads_the_pinned_version'),
    ('the store deleted and built again at its path while a reader has it open',
     "the reader's `refresh()` loads the new codec (the codec file's name repeats; its stamp does not)",
     'tests/test_reliability.py::test_refresh_after_the_store_was_built_again_at_its_path_reads_the_new_codec'),
    ('a long-lived writer making many commits',
     'files and per-commit cost stay bounded (merges, retention)',
     'tests/test_reliability.py::test_a_long_lived_writer_does_not_grow_files_with_commits'),
    ('k or rerank of 10**9 on a small store',
     'clamped to the live rows',
     'tests/test_reliability.py::test_k_and_rerank_are_clamped_to_the_live_rows'),
    ("a manifest re-sealed with two segments' dense records swapped",
     "`vecz check` reports the dense ids that differ from the segment's",
     'tests/test_reliability.py::test_swapped_dense_records_are_found_by_check'),
    ('a manifest re-sealed with deletion files swapped',
     '`StoreCorrupted`',
     'tests/test_reliability.py::test_swapped_deletion_files_are_refused'),
    ('a manifest re-sealed with inconsistent next_id / next_serial / names',
     '`StoreCorrupted`',
     'tests/test_reliability.py::test_inconsistent_manifests_are_refused'),
    ('a damaged newest manifest',
     'the error names the newest version that opens',
     'tests/test_reliability.py::test_a_damaged_newest_manifest_names_the_newest_version_that_opens'),
    ('fork after a search (os.fork, multiprocessing pool)',
     'the child searches like the parent (TBB threading layer)',
     'tests/test_fork.py::test_fork_pool_searches_like_parent'),
    ('SIGKILL at every step of a commit (add, delete, compact, calibrate), merge or pruning',
     'exactly the last committed version opens',
     'tests/test_crash.py'),
    ("auto's error model file damaged, of another kind, missing, or with values no measurement gives (checksums "
     'valid)',
     'the store opens and searches without auto work; an auto search raises a `FormatError` (`StoreCorrupted` '
     "naming the file and what was expected) and `vecz check` reports it; a writer's `calibrate` replaces it",
     'tests/test_model_file.py::test_a_hostile_model_file_is_refused_with_a_typed_error'),
    ("a manifest's calibration record naming another kind of file, a path, an unknown source, a serial not "
     'issued or a negative count',
     '`StoreCorrupted`',
     'tests/test_model_file.py::test_a_hostile_calibration_record_is_refused'),
    ('a writer calibrates again and prunes the model file a reader loaded',
     'the reader keeps the model it read with its version',
     'tests/test_model_file.py::test_a_reader_keeps_its_model_when_a_writer_replaces_it'),
    ('an OSError no vecz code typed (EACCES writing `vecz search --out`)',
     'exit 3 and one line, `vecz <command>: storage error: <reason>: <path>`; any other exception is a bug and '
     'is raised as it is',
     'tests/test_cli.py::test_a_stray_os_error_exits_with_the_storage_code_and_a_bug_stays_visible'),
]


def test_every_hostile_case_names_a_test_that_exists():
    root = Path(__file__).resolve().parents[1]
    for _, _, where in HOSTILE:
        path, _, name = where.partition("::")
        text = (root / path).read_text()
        assert not name or re.search(rf"^def {re.escape(name)}\(", text, re.M), where


if __name__ == "__main__":  # run as a script: the Numba cache directory pytest uses (conftest.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest  # noqa: F401

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.lib import format as npy_format

from vecz.engine import Store, check_store
from vecz.engine.cli import main
from vecz.formats.importers import open_vectors, write_results
from vecz.engine.errors import (
    CodecSpecError,
    DimensionMismatch,
    IdNotFound,
    InvalidInput,
    StoreLocked,
    StoreNotFound,
    TooLarge,
    VeczError,
)

DIM = 16
MAX_ID = (1 << 63) - 1
DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
WORST = {"cosine": -np.inf, "ip": -np.inf, "l2": np.inf}


def _data(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


Q = _data(5, seed=99)  # the queries every snapshot searches with


def _with(x: np.ndarray, row: int, col: int, value: Any, dtype: Any = None) -> np.ndarray:
    """A copy of x (in `dtype`) with one value replaced."""
    y = x.astype(dtype or x.dtype, copy=True)
    y[row, col] = value
    return y


# --------------------------------------------------------------------------- the stores


class Env:
    """The stores and files the cases run against (built once per module).

    main     cosine, IVF4,RB1, dense f32: ids 0..199 in two segments, ids 0-2 deleted
    nodense  l2, IVF2,SQ8, dense None: ids 0..79
    half     ip, PQ4x8, dense f16: ids 0..39 and MAX_ID (so automatic ids are exhausted)
    halfcos  cosine, SQ8, dense f16: ids 0..39
    empty    l2, PQ4x8, dense f32: created, never trained nor added
    emptycos cosine, RB1, dense f32: created, never trained nor added
    cli      cosine, IVF4,RB1, dense f32: ids 0..99, closed (the CLI opens it)
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        x = _data(200)
        self.main = Store.create(root / "main", dim=DIM, metric="cosine", codec="IVF4,RB1", dense="f32")
        self.main.add(x[:120])
        self.main.add(x[120:])
        self.main.delete([0, 1, 2])
        self.nodense = Store.create(root / "nodense", dim=DIM, metric="l2", codec="IVF2,SQ8", dense=None)
        self.nodense.add(x[:80])
        self.half = Store.create(root / "half", dim=DIM, metric="ip", codec="PQ4x8", dense="f16")
        self.half.add(x[:40])
        self.half.add(x[40:41], ids=[MAX_ID])
        self.halfcos = Store.create(root / "halfcos", dim=DIM, metric="cosine", codec="SQ8", dense="f16")
        self.halfcos.add(x[:40])
        self.empty = Store.create(root / "empty", dim=DIM, metric="l2", codec="PQ4x8", dense="f32")
        self.emptycos = Store.create(root / "emptycos", dim=DIM, codec="RB1")
        with Store.create(root / "cli", dim=DIM, metric="cosine", codec="IVF4,RB1") as cli:
            cli.add(x[:100])
        self.stores = {"main": self.main, "nodense": self.nodense, "half": self.half, "halfcos": self.halfcos,
                       "empty": self.empty, "emptycos": self.emptycos}
        self.new = root / "new"  # fresh targets of create/build: must stay empty
        self.new.mkdir()
        self._names = itertools.count()
        self.files = root / "files"
        self.files.mkdir()
        self._write_files(x)

    def _write_files(self, x: np.ndarray) -> None:
        f = self.files
        np.save(f / "good.npy", x[:50])
        np.save(f / "int32.npy", (x[:50] * 10).astype(np.int32))
        np.save(f / "complex.npy", x[:50].astype(np.complex64))
        np.save(f / "nan.npy", _with(x[:50], 5, 3, np.nan))
        np.save(f / "vector.npy", x[0])
        np.save(f / "wide.npy", _data(20, dim=DIM + 1))
        np.save(f / "empty.npy", np.zeros((0, DIM), np.float32))
        np.save(f / "empty_wide.npy", np.zeros((0, DIM + 1), np.float32))
        np.save(f / "big64.npy", _with(x[:50], 7, 4, 1e300, np.float64))
        np.save(f / "gt_u64.npy", np.full((50, 3), 2**63 + 5, dtype=np.uint64))
        np.save(f / "gt_repeat.npy", np.tile(np.array([[3, 4, 3]], np.int64), (50, 1)))
        (f / "latin1.txt").write_bytes(b"row\n" * 3 + "caf\u00e9\n".encode("latin-1") + b"row\n" * 46)
        (f / "plain.txt.gz").write_text("row\n" * 50)  # not gzip data
        (f / "texts.txt").write_text("row\n" * 50)
        # an object array's header with junk after it: refused from the header, never unpickled
        buf = io.BytesIO()
        npy_format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (2, DIM)})
        (f / "object.npy").write_bytes(buf.getvalue() + b"\x80\x04junk")
        buf = io.BytesIO()  # a header whose row count is a bool (numpy's memmap raised a raw TypeError)
        npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (True, DIM)})
        (f / "boolshape.npy").write_bytes(buf.getvalue() + b"\0" * (4 * DIM))
        (f / "junk.npy").write_bytes(b"not an npy file at all")
        (f / "vectors.csv").write_text("1,2,3\n")
        (f / "cut.fvecs").write_bytes(np.int32(DIM).tobytes() + b"\0" * 10)
        pq.write_table(pa.table({"name": ["a", "b"]}), f / "novector.parquet")
        pq.write_table(pa.table({"emb": pa.array([], type=pa.list_(pa.float32()))}), f / "zero_rows.parquet")
        (f / "dir.npy").mkdir()

    def fresh(self) -> Path:
        """A path under new/ that nothing exists at (a failed create/build must leave none)."""
        return self.new / f"t{next(self._names)}"

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"root": sorted(os.listdir(self.root)), "new": sorted(os.listdir(self.new)),
                                "files": sorted(os.listdir(self.files))}
        for name in (*self.stores, "cli"):
            # LOCK only by name: a writer that opens the store rewrites it (FORMAT.md) before
            # it can look at the input, and it holds no data
            snap[f"{name} files"] = {
                p.name: None if p.name == "LOCK" else
                (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in sorted((self.root / name).iterdir())
            }
        for name, store in self.stores.items():
            res = store.search(Q, 10, rerank=0 if store.dense == "none" else 20)
            snap[f"{name} state"] = (store.version, len(store), store.next_id, store.n_deleted,
                                     res.ids.tobytes(), res.scores.tobytes())
        with Store.open(self.root / "cli") as cli:
            res = cli.search(Q, 10, rerank=20)
            snap["cli state"] = (cli.version, len(cli), res.ids.tobytes(), res.scores.tobytes())
        return snap

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _cli(*argv: Any) -> tuple[int, str]:
    """Run `vecz` in this process: (exit code, stderr). argparse's usage errors raise
    SystemExit(2) instead of returning; their code is returned the same way."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


class Exit2:
    """Marks a CLI case: `main` returns (or argparse exits with) 2, the message on stderr."""


@dataclass(frozen=True)
class Case:
    name: str  # unique: the row of docs/bad-input.md
    entry: str  # the entry point and argument
    call: Callable[[Env], Any]
    error: type  # the exact error type (Exit2 for the CLI)
    match: str  # regex over the message: what was expected and what was found


def _create(**kw: Any) -> Callable[[Env], Any]:
    return lambda e: Store.create(e.fresh(), **{"dim": DIM, **kw})


x4 = _data(4, seed=7)
BAD_DTYPES = [  # (label, array): rejected for vectors, queries and training samples alike
    ("int32", (x4 * 10).astype(np.int32)),
    ("int64 (a list of Python ints)", np.ones((2, DIM), dtype=np.int64).tolist()),
    ("bool", x4 > 0),
    ("complex64", x4.astype(np.complex64)),
    ("complex128", x4.astype(np.complex128)),
    ("object", x4.astype(object)),
    ("strings", np.full((2, DIM), "0.5")),
]


def _series(rows: list) -> Any:
    import pandas as pd

    return pd.Series(list(rows))


def _frame_with_id() -> Any:
    import pandas as pd

    frame = pd.DataFrame(x4, columns=[f"f{j}" for j in range(DIM)])
    frame["id"] = np.arange(4)
    return frame


def _dtype_of(value: Any) -> str:
    return re.escape(str(np.asarray(value).dtype))


CASES: list[Case] = [
    # ---- Store.create
    Case("dim 0", "Store.create(dim)", _create(dim=0), InvalidInput, r"dim: expected an integer >= 1, found 0"),
    Case("dim negative", "Store.create(dim)", _create(dim=-3), InvalidInput, r"expected an integer >= 1, found -3"),
    Case("dim not an integer", "Store.create(dim)", _create(dim=1.5), InvalidInput, r"expected an integer >= 1, found 1\.5"),
    Case("dim a bool", "Store.create(dim)", _create(dim=True), InvalidInput, r"expected an integer >= 1, found True"),
    Case("dim a string", "Store.create(dim)", _create(dim="16"), InvalidInput, r"expected an integer >= 1, found '16'"),
    Case("metric unknown", "Store.create(metric)", _create(metric="cos"), InvalidInput,
         r"metric: expected one of \('cosine', 'ip', 'l2'\), found 'cos'"),
    Case("metric in the wrong case", "Store.create(metric)", _create(metric="L2"), InvalidInput,
         r"expected one of \('cosine', 'ip', 'l2'\), found 'L2'"),
    Case("dense tier unknown", "Store.create(dense)", _create(dense="f64"), InvalidInput,
         r"dense: expected one of \('f32', 'f16', 'none'\) or None, found 'f64'"),
    Case("codec stage unknown", "Store.create(codec)", _create(codec="HNSW32"), CodecSpecError,
         r"unknown stage 'HNSW32': expected one of MRL<d>, IVF<n>, PQ<M>x<4\|8>, OPQ<M>x<4\|8>, RB<1..8>"),
    Case("codec stage with non-ASCII digits", "Store.create(codec)", _create(codec="PQ\u0663x8"), CodecSpecError,
         r"unknown stage 'PQ.x8': expected one of"),
    Case("codec stage number of 10 digits", "Store.create(codec)", _create(codec="IVF1000000000,PQ4x8"),
         CodecSpecError, r"stage 'IVF1000000000': nlist must be at most 9 digits, found 10"),
    Case("PQ under ip with a row norm below float16's range", "Store.add(vectors)",
         lambda e: e.half.add(x4 * np.float32(1e-8), ids=np.arange(5_000_000, 5_000_004)), InvalidInput,
         r"expected norms of at least 6\.1e-05 \(or 0\), found [0-9.]+e-08 in row 0"),
    Case("codec stage in lower case", "Store.create(codec)", _create(codec="rb1"), CodecSpecError,
         r"unknown stage 'rb1': expected one of"),
    Case("codec spec empty", "Store.create(codec)", _create(codec=""), CodecSpecError,
         r"codec spec '': expected comma-separated stages, found an empty stage"),
    Case("codec spec with a trailing comma", "Store.create(codec)", _create(codec="PQ4x8,"), CodecSpecError,
         r"'PQ4x8,': expected comma-separated stages, found an empty stage"),
    Case("codec spec not a string", "Store.create(codec)", _create(codec=None), CodecSpecError,
         r"a codec spec is a string, found NoneType"),
    Case("PQ bits not 4 or 8", "Store.create(codec)", _create(codec="PQ4x3"), CodecSpecError,
         r"'PQ4x3': PQ bits must be 4 or 8, found 3"),
    Case("RB levels beyond 8", "Store.create(codec)", _create(codec="RB9"), CodecSpecError,
         r"'RB9': RB levels must be 1..8, found 9"),
    Case("IVF with 0 lists", "Store.create(codec)", _create(codec="IVF0,RB1"), CodecSpecError,
         r"'IVF0': nlist must be >= 1, found 0"),
    Case("codec stages out of order", "Store.create(codec)", _create(codec="RB1,IVF4"), CodecSpecError,
         r"must end with a quantizer stage, found 'IVF4'"),
    Case("codec spec without a quantizer", "Store.create(codec)", _create(codec="IVF4"), CodecSpecError,
         r"must end with a quantizer stage, found 'IVF4'"),
    Case("codec stage repeated", "Store.create(codec)", _create(codec="IVF4,IVF4,RB1"), CodecSpecError,
         r"stage 'IVF4' is repeated or out of order \(expected MRL, then IVF\)"),
    Case("PQ sub-quantizers exceed dim", "Store.create(codec, dim)", _create(codec="PQ32x8"), CodecSpecError,
         r"'PQ32x8': M=32 sub-quantizers exceed the 16 coded dims"),
    Case("MRL keeps more dims than dim", "Store.create(codec, dim)", _create(codec="MRL32,RB1"), CodecSpecError,
         r"'MRL32' keeps 32 dims but vectors have only 16"),
    Case("PQ sub-quantizers exceed the MRL dims", "Store.create(codec, dim)", _create(codec="MRL8,PQ16x8"),
         CodecSpecError, r"'PQ16x8': M=16 sub-quantizers exceed the 8 coded dims"),
    Case("4-bit PQ beyond 512 sub-quantizers", "Store.create(codec, dim)", _create(dim=1024, codec="PQ600x4"),
         CodecSpecError, r"'PQ600x4': 4-bit PQ supports at most 512 sub-quantizers"),
    Case("IVF lists beyond what RAM can hold", "Store.create(codec)", _create(codec="IVF999999999,RB1"), TooLarge,
         r"needs 59\.6 GiB of trained arrays; expected at most 2 GiB"),
    Case("RB rotation beyond what RAM can hold", "Store.create(codec, dim)", _create(dim=65536, codec="RB1"),
         TooLarge, r"'RB1' on 65536 dims needs 16\.0 GiB of trained arrays; expected at most 2 GiB"),
    Case("rotation unknown", "Store.create(rotation)", _create(rotation="pca"), InvalidInput,
         r"rotation must be 'itq' or 'random', found 'pca'"),
    Case("seed negative", "Store.create(seed)", _create(seed=-1), InvalidInput,
         r"seed: expected an integer >= 0, found -1"),
    Case("train_size 0", "Store.create(train_size)", _create(train_size=0), InvalidInput,
         r"train_size: expected an integer >= 1, found 0"),
    Case("directory holds a store", "Store.create(path)", lambda e: Store.create(e.root / "main", dim=DIM),
         InvalidInput, r"main: expected a new or empty directory, found an existing non-empty directory"),
    Case("path is a file", "Store.create(path)", lambda e: Store.create(e.files / "good.npy", dim=DIM),
         InvalidInput, r"good\.npy: expected a new or empty directory, found an existing file"),
    # ---- Store.open
    Case("open mode unknown", "Store.open(mode)", lambda e: Store.open(e.root / "cli", mode="w"), InvalidInput,
         r"mode: expected 'r' or 'a', found 'w'"),
    Case("open a directory that does not exist", "Store.open(path)", lambda e: Store.open(e.fresh()),
         StoreNotFound, r"t\d+: no store directory here"),
    Case("open a second writer", "Store.open(mode='a')", lambda e: Store.open(e.root / "main", mode="a"),
         StoreLocked, r"another writer holds the store \(pid \d+\); expected no writer, found one"),
    # ---- Store.add: vectors
    Case("vectors one column too wide", "Store.add(vectors)", lambda e: e.main.add(_data(3, dim=DIM + 1)),
         DimensionMismatch, r"vectors: expected width 16, found 17"),
    Case("single vector of the wrong width", "Store.add(vectors)", lambda e: e.main.add(np.ones(DIM - 1, np.float32)),
         DimensionMismatch, r"vectors: expected width 16, found 15"),
    Case("vectors 3-D", "Store.add(vectors)", lambda e: e.main.add(np.ones((2, 2, DIM), np.float32)), InvalidInput,
         r"vectors must be a 2-D array \(n, 16\), found shape \(2, 2, 16\)"),
    Case("vectors None", "Store.add(vectors)", lambda e: e.main.add(None), InvalidInput,
         r"vectors must be a 2-D array \(n, 16\), found shape \(\)"),
    Case("vectors ragged lists", "Store.add(vectors)", lambda e: e.main.add([[0.5] * DIM, [0.5] * (DIM - 1)]),
         InvalidInput, r"vectors: expected a 2-D array \(n, 16\) of floats, found a list numpy cannot make one array of"),
    *[Case(f"vectors {label}", "Store.add(vectors)", (lambda e, a=arr: e.main.add(a)), InvalidInput,
           rf"vectors must be float16/32/64, found dtype {_dtype_of(arr)}") for label, arr in BAD_DTYPES],
    Case("vectors with NaN", "Store.add(vectors)", lambda e: e.main.add(_with(x4, 2, 5, np.nan)), InvalidInput,
         r"vectors: expected finite values, found nan in row 2, column 5"),
    Case("l2 vectors whose scores overflow float32", "Store.add(vectors)", lambda e: e.nodense.add(x4 * np.float32(1e30)),
         InvalidInput, r"vectors: expected vector norms below 1e\+15 \(l2 scores must stay finite in float32\), found"),
    Case("l2 queries whose scores overflow float32", "Store.search(queries)",
         lambda e: e.nodense.search(Q * np.float32(1e30), 5), InvalidInput,
         r"queries: expected vector norms below 1e\+15 \(l2 scores must stay finite in float32\), found"),
    Case("vectors with +inf", "Store.add(vectors)", lambda e: e.main.add(_with(x4, 1, 0, np.inf)), InvalidInput,
         r"vectors: expected finite values, found inf in row 1, column 0"),
    Case("float64 vectors with -inf", "Store.add(vectors)", lambda e: e.main.add(_with(x4, 3, 9, -np.inf, np.float64)),
         InvalidInput, r"vectors: expected finite values, found -inf in row 3, column 9"),
    Case("float64 vectors beyond float32's range", "Store.add(vectors)",
         lambda e: e.main.add(_with(x4, 0, 4, 1e300, np.float64)), InvalidInput,
         r"vectors: expected finite values, found 1e\+300 \(beyond float32's range\) in row 0, column 4"),
    Case("float64 row whose every value is below float32's smallest", "Store.add(vectors)",
         lambda e: e.main.add(x4[:2].astype(np.float64) * [[1.0], [1e-50]]), InvalidInput,
         r"vectors: row 1 is not all zeros, but every value is below float32's smallest \(1.4e-45; largest "
         r"\|value\| .*e-5\d\): vecz keeps float32, so scale the vectors up"),
    Case("float16 vectors with NaN", "Store.add(vectors)", lambda e: e.main.add(_with(x4, 1, 1, np.nan, np.float16)),
         InvalidInput, r"vectors: expected finite values, found nan in row 1, column 1"),
    Case("empty batch", "Store.add(vectors)", lambda e: e.main.add(np.zeros((0, DIM), np.float32)), InvalidInput,
         r"vectors: expected at least 1 row, found 0"),
    Case("empty list", "Store.add(vectors)", lambda e: e.main.add([]), InvalidInput,
         r"vectors: expected at least 1 row, found 0"),
    Case("value beyond float16 for a dense f16 tier", "Store.add(vectors)",
         lambda e: e.half.add(_with(x4, 2, 0, 7e4), ids=[600, 601, 602, 603]), InvalidInput,
         r"dense='f16' stores values up to 65504 in magnitude, found 70000 in row 2"),
    Case("zero query under cosine on a store never added", "Store.search(queries)",
         lambda e: e.emptycos.search(np.zeros((2, DIM), np.float32)),
         InvalidInput, r"queries: cosine similarity needs vectors of non-zero norm, found row 0 all zeros"),
    Case("query norm beyond 1e15 under l2 on a store never added", "Store.search(queries)",
         lambda e: e.empty.search(np.full((1, DIM), 1e15, np.float32)), InvalidInput,
         r"queries: expected vector norms below 1e\+15 \(l2 scores must stay finite in float32\), found .* in row 0"),
    Case("row of values below float16's normal range for a dense f16 tier under cosine", "Store.add(vectors)",
         lambda e: e.halfcos.add(np.vstack([x4[:1], x4[1:2] * 1e-7])), InvalidInput,
         r"vectors: dense='f16' under cosine keeps a row only when its largest value is at least 6.1e-05 \(float16's "
         r"smallest normal; below it the stored copy loses its digits, below 6e-08 it is zeros\), found .* in row 1 "
         r"\(scale the vectors up by any factor: cosine does not change\)"),
    # ---- Store.add: ids
    Case("ids repeated in the batch", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[500, 500]), InvalidInput,
         r"ids: expected distinct ids, found 500 2 times in the batch"),
    Case("ids negative", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[-1, 500]), InvalidInput,
         r"ids must be >= 0 \(-1 marks an empty result slot\), found -1"),
    Case("ids already in the store", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[500, 3]), InvalidInput,
         r"ids: expected ids not in the store, found id 3 already in the store"),
    Case("fewer ids than vectors", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[500]), InvalidInput,
         r"ids: expected 2 ids \(one per vector\), found 1"),
    Case("more ids than vectors", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[500, 501, 502]), InvalidInput,
         r"ids: expected 2 ids \(one per vector\), found 3"),
    Case("ids float", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[500.0, 501.0]), InvalidInput,
         r"ids: expected integer ids, found dtype float64"),
    Case("ids strings", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=["500", "501"]), InvalidInput,
         r"ids: expected integer ids, found dtype <U3"),
    Case("ids bool", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[True, False]), InvalidInput,
         r"ids: expected integer ids, found dtype bool"),
    Case("ids 2-D", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[[500, 501]]), InvalidInput,
         r"ids: expected a 1-D array of integer ids, found shape \(1, 2\)"),
    Case("ids ragged lists", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=[[500], [501, 502]]), InvalidInput,
         r"ids: expected a 1-D array of integer ids, found a list numpy cannot make one array of"),
    Case("ids beyond int64", "Store.add(ids)", lambda e: e.main.add(x4[:2], ids=np.array([2**63, 5], np.uint64)),
         InvalidInput, r"ids: ids must fit int64, found 9223372036854775808"),
    Case("automatic ids exhausted", "Store.add(ids=None)", lambda e: e.half.add(x4[:1]), InvalidInput,
         r"automatic ids 9223372036854775808\.\. for 1 rows exceed int64 .*; expected explicit ids="),
    # ---- Store.delete
    Case("delete float ids", "Store.delete(ids)", lambda e: e.main.delete([5.0]), InvalidInput,
         r"ids: expected integer ids, found dtype float64"),
    Case("delete string ids", "Store.delete(ids)", lambda e: e.main.delete(["5"]), InvalidInput,
         r"ids: expected integer ids, found dtype <U1"),
    Case("delete None", "Store.delete(ids)", lambda e: e.main.delete(None), InvalidInput,
         r"ids: expected integer ids, found None"),
    Case("delete a list of ids holding None", "Store.delete(ids)", lambda e: e.main.delete([5, None]), InvalidInput,
         r"ids: expected integer ids, found a missing value \(null or NaN\) at row 1"),
    Case("get a list of ids holding 2**63", "Store.get(ids)", lambda e: e.main.get([5, 2**63]), InvalidInput,
         r"ids: ids must fit int64, found 9223372036854775808 at row 1"),
    Case("delete 2-D ids", "Store.delete(ids)", lambda e: e.main.delete([[5, 6]]), InvalidInput,
         r"ids: expected a 1-D array of integer ids, found shape \(1, 2\)"),
    Case("delete ragged ids", "Store.delete(ids)", lambda e: e.main.delete([[5], [6, 7]]), InvalidInput,
         r"ids: expected a 1-D array of integer ids, found a list numpy cannot make one array of"),
    # ---- Store.search: queries
    Case("queries one column too wide", "Store.search(queries)", lambda e: e.main.search(_data(2, dim=DIM + 1)),
         DimensionMismatch, r"queries: expected width 16, found 17"),
    Case("single query of the wrong width", "Store.search(queries)", lambda e: e.main.search(np.ones(8, np.float32)),
         DimensionMismatch, r"queries: expected width 16, found 8"),
    Case("queries 3-D", "Store.search(queries)", lambda e: e.main.search(np.ones((1, 2, DIM), np.float32)),
         InvalidInput, r"queries must be a 2-D array \(n, 16\), found shape \(1, 2, 16\)"),
    Case("queries None", "Store.search(queries)", lambda e: e.main.search(None), InvalidInput,
         r"queries must be a 2-D array \(n, 16\), found shape \(\)"),
    Case("queries ragged lists", "Store.search(queries)", lambda e: e.main.search([[0.5] * DIM, [0.5]]),
         InvalidInput, r"queries: expected a 2-D array \(n, 16\) of floats, found a list numpy cannot make one array of"),
    *[Case(f"queries {label}", "Store.search(queries)", (lambda e, a=arr: e.main.search(a)), InvalidInput,
           rf"queries must be float16/32/64, found dtype {_dtype_of(arr)}") for label, arr in BAD_DTYPES],
    Case("queries with NaN", "Store.search(queries)", lambda e: e.main.search(_with(Q, 4, 2, np.nan)), InvalidInput,
         r"queries: expected finite values, found nan in row 4, column 2"),
    Case("queries with -inf", "Store.search(queries)", lambda e: e.main.search(_with(Q, 0, 7, -np.inf)),
         InvalidInput, r"queries: expected finite values, found -inf in row 0, column 7"),
    Case("queries a masked array with masked entries", "Store.search(queries)",
         lambda e: e.main.search(np.ma.masked_array(Q, mask=np.arange(Q.size).reshape(Q.shape) >= 37)),
         InvalidInput, r"queries: expected no masked entries \(fill or drop them first\), found 43 masked, the first "
                       r"in row 2, column 5"),
    Case("queries a pandas Series of arrays with NaN", "Store.search(queries)",
         lambda e: e.main.search(_series([*Q[:3], _with(Q, 3, 6, np.nan)[3]])), InvalidInput,
         r"queries: expected finite values, found nan in row 3, column 6"),
    Case("queries an empty Arrow fixed_size_list of the wrong width", "Store.search(queries)",
         lambda e: e.main.search(pa.array([], pa.list_(pa.float32(), DIM + 3))), DimensionMismatch,
         r"queries: expected width 16, found 19"),
    Case("vectors an Arrow list whose row 0 is null", "Store.add(vectors)",
         lambda e: e.main.add(pa.array([None, list(x4[1])], pa.list_(pa.float32()))), InvalidInput,
         r"vectors: row 0 is null, expected a vector of 16 values"),
    Case("vectors a pandas frame of float columns and an integer id column", "Store.add(vectors)",
         lambda e: e.main.add(_frame_with_id()), InvalidInput,
         r"vectors: expected a frame of float columns, one column of vectors, or column=NAME; found float columns "
         r"beside others \(\['id'\]\)"),
    Case("vectors a pandas frame without a float column", "Store.add(vectors)",
         lambda e: e.main.add(_frame_with_id()[["id"]]), InvalidInput,
         r"vectors: expected a frame of float columns, one column of vectors, or column=NAME; found no float column "
         r"\(dtypes: \['int64'\]\)"),
    Case("build_progress holding a lone surrogate", "Store.add(build_progress)",
         lambda e: e.main.add(x4[:1], build_progress={"s": "\ud800"}), InvalidInput,
         r"build_progress: expected a JSON object \(numbers, strings, lists, dicts; keys of one kind\), found one "
         r"JSON cannot write: 'utf-8' codec can't encode character '\\ud800'"),
    Case("build_progress holding a set", "Store.add(build_progress)",
         lambda e: e.main.add(x4[:1], build_progress={"files": {"a.npy"}}), InvalidInput,
         r"build_progress: expected a JSON object .*found one JSON cannot write: Object of type set is not JSON "
         r"serializable"),
    Case("queries with NaN on a 0-row store", "Store.search(queries)",
         lambda e: e.empty.search(_with(Q, 1, 0, np.nan)), InvalidInput,
         r"queries: expected finite values, found nan in row 1, column 0"),
    Case("queries of the wrong width on a 0-row store", "Store.search(queries)",
         lambda e: e.empty.search(_data(1, dim=DIM + 2)), DimensionMismatch, r"queries: expected width 16, found 18"),
    # ---- Store.search: k, nprobe, rerank, sdc
    Case("k 0", "Store.search(k)", lambda e: e.main.search(Q, 0), InvalidInput, r"k must be an integer >= 1, found 0"),
    Case("k negative", "Store.search(k)", lambda e: e.main.search(Q, -5), InvalidInput,
         r"k must be an integer >= 1, found -5"),
    Case("k not an integer", "Store.search(k)", lambda e: e.main.search(Q, 2.5), InvalidInput,
         r"k must be an integer >= 1, found 2\.5"),
    Case("k a bool", "Store.search(k)", lambda e: e.main.search(Q, True), InvalidInput,
         r"k must be an integer >= 1, found True"),
    Case("k a string", "Store.search(k)", lambda e: e.main.search(Q, "10"), InvalidInput,
         r"k must be an integer >= 1, found '10'"),
    Case("nprobe 0", "Store.search(nprobe)", lambda e: e.main.search(Q, 5, nprobe=0), InvalidInput,
         r"nprobe must be an integer in 1\.\.4 \(the store's IVF lists\), found 0"),
    Case("nprobe beyond nlist", "Store.search(nprobe)", lambda e: e.main.search(Q, 5, nprobe=5), InvalidInput,
         r"nprobe must be an integer in 1\.\.4 \(the store's IVF lists\), found 5"),
    Case("nprobe above 1 without IVF", "Store.search(nprobe)", lambda e: e.half.search(Q, 5, nprobe=2), InvalidInput,
         r"nprobe must be an integer in 1\.\.1 \(the store's IVF lists\), found 2"),
    Case("nprobe not an integer", "Store.search(nprobe)", lambda e: e.main.search(Q, 5, nprobe=2.0), InvalidInput,
         r"nprobe must be an integer in 1\.\.4 .*found 2\.0"),
    Case("rerank negative", "Store.search(rerank)", lambda e: e.main.search(Q, 5, rerank=-1), InvalidInput,
         r"rerank must be an integer >= 0, found -1"),
    Case("rerank below k", "Store.search(rerank)", lambda e: e.main.search(Q, 10, rerank=5), InvalidInput,
         r"rerank must be 0 or >= k=10 \(it re-scores the R best candidates\), found 5"),
    Case("rerank not an integer", "Store.search(rerank)", lambda e: e.main.search(Q, 5, rerank=50.0), InvalidInput,
         r"rerank must be an integer >= 0, found 50\.0"),
    Case("rerank without a dense tier", "Store.search(rerank)", lambda e: e.nodense.search(Q, 5, rerank=20),
         InvalidInput, r"rerank=20 needs a dense tier; this store was created with dense=None \(use rerank=0\)"),
    Case("sdc not a bool", "Store.search(sdc)", lambda e: e.main.search(Q, 5, sdc="yes"), InvalidInput,
         r"sdc: expected True or False, found 'yes'"),
    Case("sdc on a PQ store", "Store.search(sdc)", lambda e: e.half.search(Q, 5, sdc=True), InvalidInput,
         r"sdc=True needs an RB codec, found 'PQ4x8'"),
    Case("sdc on a 0-row PQ store", "Store.search(sdc)", lambda e: e.empty.search(Q, 5, sdc=True), InvalidInput,
         r"sdc=True needs an RB codec, found 'PQ4x8'"),
    # ---- Store.get
    Case("get an id never added", "Store.get(ids)", lambda e: e.main.get([7, 10**6]), IdNotFound,
         r"ids: expected ids live in the store, found id 1000000 missing \(1 of 2 ids are missing\)"),
    Case("get a deleted id", "Store.get(ids)", lambda e: e.main.get([1]), IdNotFound,
         r"expected ids live in the store, found id 1 missing"),
    Case("get a negative id", "Store.get(ids)", lambda e: e.main.get([-1]), IdNotFound,
         r"expected ids live in the store, found id -1 missing"),
    Case("get float ids", "Store.get(ids)", lambda e: e.main.get([5.0]), InvalidInput,
         r"ids: expected integer ids, found dtype float64"),
    Case("get ids with a null", "Store.get(ids)", lambda e: e.main.get(pa.array([5, None])), InvalidInput,
         r"ids: expected integer ids, found a missing value \(null or NaN\) at row 1"),
    Case("get ids with a bool in a list", "Store.get(ids)", lambda e: e.main.get([5, True]), InvalidInput,
         r"ids: expected integer ids, found True \(a bool\) at row 1"),
    Case("delete ids beyond int64 as Python ints", "Store.delete(ids)", lambda e: e.main.delete([5, 2**70]),
         InvalidInput, r"ids: ids must fit int64, found 1180591620717411303424 at row 1"),
    Case("get 2-D ids", "Store.get(ids)", lambda e: e.main.get([[5]]), InvalidInput,
         r"ids: expected a 1-D array of integer ids, found shape \(1, 1\)"),
    Case("get on a 0-row store", "Store.get(ids)", lambda e: e.empty.get([0]), IdNotFound,
         r"expected ids live in the store, found id 0 missing"),
    Case("get without a dense tier", "Store.get(ids)", lambda e: e.nodense.get([5]), InvalidInput,
         r"get\(\) needs a dense tier; this store was created with dense=None"),
    # ---- Store.train
    Case("train a store that holds rows", "Store.train(sample)", lambda e: e.main.train(_data(20)), InvalidInput,
         r"train needs an empty store .*, found 200 rows"),
    Case("train on an empty sample", "Store.train(sample)", lambda e: e.empty.train(np.zeros((0, DIM), np.float32)),
         InvalidInput, r"training sample: expected at least 1 row, found 0"),
    Case("train on a sample with NaN", "Store.train(sample)", lambda e: e.empty.train(_with(_data(20), 3, 3, np.nan)),
         InvalidInput, r"training sample: expected finite values, found nan in row 3, column 3"),
    Case("train on a sample of the wrong width", "Store.train(sample)", lambda e: e.empty.train(_data(20, dim=8)),
         DimensionMismatch, r"training sample: expected width 16, found 8"),
    Case("train on an int sample", "Store.train(sample)", lambda e: e.empty.train(np.ones((20, DIM), np.int32)),
         InvalidInput, r"training sample must be float16/32/64, found dtype int32"),
    # ---- vecz build
    Case("build: SRC missing", "vecz build SRC", lambda e: _cli("build", e.files / "missing.npy", e.fresh()), Exit2,
         r"vecz build: error: vectors: no such file '.*missing\.npy'"),
    Case("build: SRC a directory", "vecz build SRC", lambda e: _cli("build", e.files / "dir.npy", e.fresh()), Exit2,
         r"vecz build: error: vectors: expected a file, found a directory '.*dir\.npy'"),
    Case("build: a Parquet SRC of no rows (list column: no width)", "vecz build SRC",
         lambda e: _cli("build", e.files / "zero_rows.parquet", e.fresh()), Exit2,
         r"zero_rows\.parquet: expected at least one vector to learn the width of a new store from, found no rows"),
    Case("build: SRC of an unsupported type", "vecz build SRC",
         lambda e: _cli("build", e.files / "vectors.csv", e.fresh()), Exit2,
         r"expected a \.npy or \.fvecs file or Arrow data .*; found suffix '\.csv'"),
    Case("build: SRC not an .npy file", "vecz build SRC", lambda e: _cli("build", e.files / "junk.npy", e.fresh()),
         Exit2, r"junk\.npy: expected a numeric \.npy array: the magic string is not correct; expected b'\\x93NUMPY'"),
    Case("build: int32 .npy", "vecz build SRC", lambda e: _cli("build", e.files / "int32.npy", e.fresh()), Exit2,
         r"int32\.npy: vectors must be float16/32/64, found dtype int32"),
    Case("build: complex .npy", "vecz build SRC", lambda e: _cli("build", e.files / "complex.npy", e.fresh()), Exit2,
         r"complex\.npy: vectors must be float16/32/64, found dtype complex64"),
    Case("build: .npy header whose row count is a bool", "vecz build SRC",
         lambda e: _cli("build", e.files / "boolshape.npy", e.fresh()), Exit2,
         r"boolshape\.npy: expected non-negative integer dimensions in the \.npy header, found \(True, 16\)"),
    Case("sample of a negative row count", "VectorSource.sample(n)",
         lambda e: open_vectors(e.files / "good.npy").sample(-1), InvalidInput,
         r"sample n: expected an integer >= 0, found -1"),
    Case("results with uint64 ids beyond int64", "write_results(ids)",
         lambda e: write_results(e.fresh() / "r.npy", np.full((2, 3), 2**63 + 5, np.uint64), np.zeros((2, 3))),
         InvalidInput, r"ids must fit int64 \(up to 2\*\*63 - 1\), found 9223372036854775813"),
    Case("build: object .npy", "vecz build SRC", lambda e: _cli("build", e.files / "object.npy", e.fresh()), Exit2,
         r"object\.npy: vectors must be float16/32/64, found dtype object"),
    Case("build: 1-D .npy", "vecz build SRC", lambda e: _cli("build", e.files / "vector.npy", e.fresh()), Exit2,
         r"vector\.npy: vectors must be a 2-D array \(n, dim\), found shape \(16,\)"),
    Case("build: NaN in the first batch", "vecz build SRC", lambda e: _cli("build", e.files / "nan.npy", e.fresh()),
         Exit2, r"nan\.npy: expected finite values, found nan in row 5, column 3"),
    Case("build: NaN in a file row the training sample draws", "vecz build SRC",
         lambda e: _cli("build", e.files / "nan.npy", e.fresh(), "--train-size", "25"), Exit2,  # its sample row 3
         r"nan\.npy: expected finite values, found nan in row 5, column 3"),
    Case("build: float64 value beyond float32's range", "vecz build SRC",
         lambda e: _cli("build", e.files / "big64.npy", e.fresh()), Exit2,
         r"big64\.npy: expected finite values, found 1e\+300 \(beyond float32's range\) in row 7, column 4"),
    Case("build: truncated .fvecs", "vecz build SRC", lambda e: _cli("build", e.files / "cut.fvecs", e.fresh()),
         Exit2, r"cut\.fvecs: file size 14 bytes is not a multiple of the row size 68"),
    Case("build: .parquet without a vector column", "vecz build SRC",
         lambda e: _cli("build", e.files / "novector.parquet", e.fresh()), Exit2,
         r"novector\.parquet: expected a vector column .*, found none \(columns: name"),
    Case("build: bad codec spec", "vecz build --codec",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--codec", "PQ4x3"), Exit2,
         r"vecz build: error: stage 'PQ4x3': PQ bits must be 4 or 8, found 3"),
    Case("build: spec does not fit the file's width", "vecz build --codec",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--codec", "PQ32x8"), Exit2,
         r"'PQ32x8': M=32 sub-quantizers exceed the 16 coded dims"),
    Case("build: --train-size 0", "vecz build --train-size",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--train-size", "0"), Exit2,
         r"--train-size: expected an integer >= 1, found 0"),
    Case("build: --train-size negative with --append", "vecz build --train-size",
         lambda e: _cli("build", e.files / "good.npy", e.root / "cli", "--append", "--train-size", "-1"), Exit2,
         r"vecz build: error: --train-size: expected an integer >= 1, found -1"),
    Case("build: --seed negative with --append", "vecz build --seed",
         lambda e: _cli("build", e.files / "good.npy", e.root / "cli", "--append", "--seed", "-1"), Exit2,
         r"vecz build: error: --seed: expected an integer >= 0, found -1"),
    Case("build: --batch-rows 0", "vecz build --batch-rows",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--batch-rows", "0"), Exit2,
         r"--batch-rows must be >= 1, found 0"),
    Case("build: --metric unknown", "vecz build --metric",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--metric", "cos"), Exit2,
         r"argument --metric: invalid choice: 'cos' \(choose from 'cosine', 'ip', 'l2'\)"),
    Case("build: --dense unknown", "vecz build --dense",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--dense", "f64"), Exit2,
         r"argument --dense: invalid choice: 'f64' \(choose from 'f32', 'f16', 'none'\)"),
    Case("build: into an existing store", "vecz build STORE",
         lambda e: _cli("build", e.files / "good.npy", e.root / "cli"), Exit2,
         r"cli: expected a new or empty directory \(or --append\), found a store with 100 vectors"),
    Case("build: --append a file of another width", "vecz build --append",
         lambda e: _cli("build", e.files / "wide.npy", e.root / "cli", "--append"), Exit2,
         r"wide\.npy: expected width 16 \(the store's\), found 17"),
    Case("build: --append to a missing store", "vecz build --append",
         lambda e: _cli("build", e.files / "good.npy", e.fresh(), "--append"), Exit2,
         r"vecz build: error: .*t\d+: --append needs an existing store, found none"),
    # ---- vecz search
    Case("search: --calibrate SAMPLE of the wrong width", "vecz search --calibrate",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "--rerank", "auto", "--calibrate",
                        e.files / "wide.npy"), Exit2, r"wide\.npy: calibration queries: expected width 16, found 17"),
    Case("search: QUERIES missing", "vecz search QUERIES", lambda e: _cli("search", e.root / "cli", e.files / "no.npy"),
         Exit2, r"vecz search: error: vectors: no such file '.*no\.npy'"),
    Case("search: QUERIES not an .npy file", "vecz search QUERIES",
         lambda e: _cli("search", e.root / "cli", e.files / "junk.npy"), Exit2,
         r"junk\.npy: expected a numeric \.npy array: the magic string is not correct"),
    Case("search: int32 QUERIES", "vecz search QUERIES", lambda e: _cli("search", e.root / "cli", e.files / "int32.npy"),
         Exit2, r"int32\.npy: vectors must be float16/32/64, found dtype int32"),
    Case("search: NaN in QUERIES", "vecz search QUERIES", lambda e: _cli("search", e.root / "cli", e.files / "nan.npy"),
         Exit2, r"nan\.npy: expected finite values, found nan in row 5, column 3"),
    Case("search: NaN in a later batch of QUERIES", "vecz search --batch-rows",
         lambda e: _cli("search", e.root / "cli", e.files / "nan.npy", "--batch-rows", "2"), Exit2,
         r"nan\.npy: expected finite values, found nan in row 5, column 3"),
    Case("search: QUERIES of another width", "vecz search QUERIES",
         lambda e: _cli("search", e.root / "cli", e.files / "wide.npy"), Exit2, r"queries: expected width 16, found 17"),
    Case("search: QUERIES of another width and no rows", "vecz search QUERIES",
         lambda e: _cli("search", e.root / "cli", e.files / "empty_wide.npy"), Exit2,
         r"empty_wide\.npy: queries: expected width 16, found 17"),
    Case("search: -k 0", "vecz search -k", lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "-k", "0"),
         Exit2, r"k must be an integer >= 1, found 0"),
    Case("search: --nprobe beyond nlist", "vecz search --nprobe",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "--nprobe", "9"), Exit2,
         r"nprobe must be an integer in 1\.\.4 \(the store's IVF lists\), found 9"),
    Case("search: --rerank below k", "vecz search --rerank",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "-k", "10", "--rerank", "3"), Exit2,
         r"rerank must be 0 or >= k=10 .*, found 3"),
    Case("search: --out of an unknown type", "vecz search --out",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "--out", e.new / "out.txt"), Exit2,
         r"out\.txt: expected a results file ending in \.npy or \.parquet, found suffix '\.txt'"),
    Case("search: --out in a folder that is a file", "vecz search --out",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "--out", e.files / "good.npy" / "r.npy"),
         Exit2, r"its folder '.*good\.npy': expected a directory \(or a path one can be made at\), found a file at "
                r"'.*good\.npy'"),
    Case("search: --batch-rows 0", "vecz search --batch-rows",
         lambda e: _cli("search", e.root / "cli", e.files / "good.npy", "--batch-rows", "0"), Exit2,
         r"--batch-rows must be >= 1, found 0"),
    Case("search: STORE missing", "vecz search STORE", lambda e: _cli("search", e.fresh(), e.files / "good.npy"),
         Exit2, r"vecz search: error: .*t\d+: no store directory here"),
    # ---- vecz bench (BASE = QUERIES = good.npy): refused before the benchmark runs
    Case("bench: --out in a folder that is a file", "vecz bench --out",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--out",
                        e.files / "good.npy" / "report"), Exit2,
         r"--out '.*good\.npy/report': expected a directory \(or a path one can be made at\), found a file at "),
    Case("bench: --work in a folder that is a file", "vecz bench --work",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--work",
                        e.files / "good.npy" / "w"), Exit2,
         r"--work '.*good\.npy/w': expected a directory \(or a path one can be made at\), found a file at "),
    Case("bench: --texts not UTF-8", "vecz bench --texts",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--texts",
                        e.files / "latin1.txt", "--query-texts", e.files / "texts.txt"), Exit2,
         r"latin1\.txt: base texts: expected UTF-8 text, found byte 0xe9 at offset 15"),
    Case("bench: --texts .gz that is not gzip", "vecz bench --texts",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--texts",
                        e.files / "plain.txt.gz", "--query-texts", e.files / "texts.txt"), Exit2,
         r"plain\.txt\.gz: base texts: expected gzip data \(the name ends in \.gz\), found Not a gzipped file"),
    Case("bench: --gt uint64 ids beyond int64", "vecz bench --gt",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--gt",
                        e.files / "gt_u64.npy"), Exit2,
         r"gt_u64\.npy: ground-truth ids must be in \[0, 50\), found 9223372036854775813\.\.9223372036854775813"),
    Case("bench: --gt with an id repeated in a row", "vecz bench --gt",
         lambda e: _cli("bench", e.files / "good.npy", e.files / "good.npy", "--codecs", "SQ8", "--gt",
                        e.files / "gt_repeat.npy"), Exit2,
         r"gt_repeat\.npy: ground-truth row 0 names id 3 more than once \(50 rows repeat ids\)"),
    # ---- vecz check
    Case("check: STORE missing", "vecz check STORE", lambda e: _cli("check", e.fresh()), Exit2,
         r"vecz check: error: .*t\d+: no such store directory"),
]


def run_case(case: Case, env: Env) -> tuple[str, str]:
    """Run one case: (what happened, its message). Used by the test and the doc alike."""
    if case.error is Exit2:
        code, err = case.call(env)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return f"exit {code}", lines[-1] if lines else ""
    try:
        case.call(env)
    except Exception as exc:  # noqa: BLE001 - the caller checks the type
        return type(exc).__name__, str(exc)
    return "no error", ""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = Env(tmp_path_factory.mktemp("bad-input"))
    yield e
    e.close()


def test_case_names_are_unique_and_table_safe():
    names = [c.name for c in CASES] + [a.name for a in ACCEPTED] + [g.name for g in EDGES]
    assert len(names) == len(set(names))
    assert not [n for n in names if "|" in n or "`" in n]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rejected_with_a_typed_error_and_nothing_changes(env: Env, case: Case):
    before = env.snapshot()
    if case.error is Exit2:
        code, err = case.call(env)
        assert code == 2, err
        assert re.search(case.match, err), err
    else:
        with pytest.raises(VeczError) as info:
            case.call(env)
        assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
        assert re.search(case.match, str(info.value)), str(info.value)
    assert env.snapshot() == before


# --------------------------------------------------------------------------- accepted input


@dataclass(frozen=True)
class Accepted:
    name: str
    entry: str
    check: Callable[[Env, Path], str]  # asserts the behaviour; returns what happened (for the doc)


def _pair(tmp: Path, name: str) -> tuple[Store, Store]:
    """Two identical fresh stores: one gets the float32 reference, one the variant."""
    return tuple(Store.create(tmp / f"{name}-{i}", dim=DIM, metric="l2", codec="IVF2,RB1", dense="f32")
                 for i in range(2))


def _same_store_results(a: Store, b: Store) -> None:
    ra = a.search(Q, 5, nprobe=2, rerank=20)
    rb = b.search(Q, 5, nprobe=2, rerank=20)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    np.testing.assert_array_equal(a.get(a.ids()), b.get(b.ids()))
    assert (a.ids() == b.ids()).all() and len(a) == len(b)


X = _data(40, seed=5)
X16 = X.astype(np.float16)


def _strided(x: np.ndarray) -> np.ndarray:
    buf = np.zeros((2 * len(x), x.shape[1]), x.dtype)
    buf[::2] = x
    return buf[::2]


def _sliced(x: np.ndarray) -> np.ndarray:
    buf = np.zeros((len(x), 2 * x.shape[1]), x.dtype)
    buf[:, 1::2] = x
    return buf[:, 1::2]


def _read_only(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y.setflags(write=False)
    return y


def _memory_mapped(x: np.ndarray) -> np.ndarray:
    """x in a read-only map of an unnamed temporary file (the map outlives the file object)."""
    with tempfile.TemporaryFile() as f:
        f.write(np.ascontiguousarray(x, np.float32).tobytes())
        f.flush()
        return np.memmap(f, dtype=np.float32, mode="r", shape=x.shape)


VARIANTS: list[tuple[str, Callable[[np.ndarray], Any], np.ndarray]] = [
    # (label, variant of X, the float32 contiguous array it must equal)
    ("float64", lambda x: x.astype(np.float64), X),
    ("big-endian float64", lambda x: x.astype(">f8"), X),
    ("float16", lambda x: x.astype(np.float16), X16.astype(np.float32)),
    ("strided rows (every other row of a buffer)", _strided, X),
    ("sliced columns (every other column)", _sliced, X),
    ("reversed rows of a reversed copy (negative strides)", lambda x: x[::-1].copy()[::-1], X),
    ("Fortran order", np.asfortranarray, X),
    ("transposed copy, transposed back (a view)", lambda x: x.T.copy().T, X),
    ("read-only array", _read_only, X),
    ("memory-mapped file, read-only", _memory_mapped, X),
    ("list of lists of floats", lambda x: x.tolist(), X),
]


def _add_variant(label: str, make: Callable[[np.ndarray], Any], want: np.ndarray) -> Callable[[Env, Path], str]:
    def check(env: Env, tmp: Path) -> str:
        variant = make(X)
        if isinstance(variant, np.ndarray):  # the variant really is not plain float32 C-contiguous
            assert variant.dtype != np.float32 or not variant.flags.c_contiguous or not variant.flags.writeable
        ref, var = _pair(tmp, re.sub(r"\W+", "-", label))
        ref.add(want)
        var.add(variant)
        _same_store_results(ref, var)
        ref.close()
        var.close()
        return "accepted: converted to float32 C-contiguous; the same ids, scores and stored vectors as the " \
               "float32 contiguous input"
    return check


def _search_variant(label: str, make: Callable[[np.ndarray], Any], want_of: Callable[[np.ndarray], np.ndarray]):
    def check(env: Env, tmp: Path) -> str:
        got = env.main.search(make(Q), 7)
        want = env.main.search(want_of(Q), 7)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
        return "accepted: converted to float32 C-contiguous; the same ids and scores as the float32 contiguous queries"
    return check


def _single_vector_add(env: Env, tmp: Path) -> str:
    ref, var = _pair(tmp, "single")
    assert ref.add(X[:1], ids=[7]).tolist() == [7]
    assert var.add(X[0], ids=7).tolist() == [7]  # shape (dim,) and a scalar id
    _same_store_results(ref, var)
    ref.close()
    var.close()
    return "accepted: one row, as X[None, :]; a scalar id is one id"


def _single_query(env: Env, tmp: Path) -> str:
    got = env.main.search(Q[0], 4)
    want = env.main.search(Q[:1], 4)
    assert got.ids.shape == (1, 4)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    return "accepted: one query, results of shape (1, k)"


def _id_dtypes(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "ids", dim=DIM, codec="RB1") as s:
        s.add(X[:3], ids=np.array([5, 6, 7], np.uint32))
        s.add(X[3:6], ids=np.array([8, 9, 10], np.int16))
        s.add(X[6:9], ids=[11, 12, MAX_ID])
        assert s.ids().tolist() == [5, 6, 7, 8, 9, 10, 11, 12, MAX_ID]
        np.testing.assert_array_equal(s.get([MAX_ID, 5]), X[[8, 0]])
    return ("accepted: integer arrays of any width (uint32 and int16 tested) and lists of ints, converted to "
            "int64; ids up to 2**63 - 1 (uint64 values beyond it are rejected)")


def _readd_deleted(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "readd", dim=DIM, codec="RB1") as s:
        s.add(X[:5])
        s.delete([2])
        s.add(X[5:6] * 2, ids=[2])
        np.testing.assert_array_equal(s.get([2]), X[5:6] * 2)
        assert len(s) == 5
    return "accepted: a deleted id may be added again; it names the new row only"


def _delete_lenient(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "del", dim=DIM, codec="RB1") as s:
        s.add(X[:10])
        v = s.version
        assert s.delete([-1, -5, 10**9]) == 0 and s.version == v  # nothing to delete: no commit
        assert s.delete([]) == 0 and s.version == v
        assert s.delete([3, 3, 4, 4, 4, -1]) == 2 and s.version == v + 1
        assert s.delete(np.uint8(5)) == 1
        assert s.ids().tolist() == [0, 1, 2, 6, 7, 8, 9]
    return ("accepted: ids that are not live (negative, unknown, already deleted) are ignored and repeats count "
            "once; returns how many rows were deleted, and commits nothing when that is 0")


def _empty_query_batch(env: Env, tmp: Path) -> str:
    for q in (np.zeros((0, DIM), np.float32), []):
        res = env.main.search(q, 6)
        assert res.ids.shape == (0, 6) and res.scores.shape == (0, 6)
        assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    return "accepted: 0 queries give results of shape (0, k)"


def _get_nothing(env: Env, tmp: Path) -> str:
    got = env.main.get([])
    assert got.shape == (0, DIM) and got.dtype == np.float32
    return "accepted: returns an empty (0, dim) float32 array"


def _boundaries(env: Env, tmp: Path) -> str:
    live = len(env.main)
    full = env.main.search(Q, 10, nprobe=4, rerank=10)  # nprobe = nlist, rerank = k
    beyond = env.main.search(Q, 10, nprobe=4, rerank=10 * live)  # rerank beyond the live rows
    assert (full.ids >= 0).all() and (beyond.ids >= 0).all()
    assert beyond.stats.rows_read <= len(Q) * live
    return "accepted: nprobe = nlist, rerank = k, and rerank beyond the live rows (reads each live row at most once)"


def _uneven_pq(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "pq5", dim=DIM, codec="PQ5x8", metric="l2") as s:  # 16 dims, 5 sub-quantizers
        s.add(X)
        res = s.search(X[:3], 1, rerank=40)
        assert res.ids[:, 0].tolist() == [0, 1, 2]
    return ("accepted: each of the M sub-quantizers codes ceil(dim / M) or floor(dim / M) dims, padded with zeros "
            "to ceil(dim / M) (codecs made before the spread padding, whose config lacks `pq_spread`, pad on the "
            "right: PQ100x8 on 384 dims wasted 4 of its 100 bytes)")


def _more_lists_than_rows(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "ivf", dim=DIM, codec="IVF64,RB1", metric="l2") as s:
        s.add(X[:10])
        res = s.search(X[:3], 1, nprobe=64, rerank=10)
        assert res.ids[:, 0].tolist() == [0, 1, 2]
        few = s.search(X[:3], 5, nprobe=5, rerank=10)  # probes went to empty copies of one centroid
        assert (few.ids >= 0).all()
    return ("accepted: trains with more lists than rows (the lists past the distinct rows repeat their centroids, "
            "stay empty and are never probed); searching every list finds every row")


def _spec_spaces(env: Env, tmp: Path) -> str:
    with Store.create(tmp / "spaces", dim=DIM, codec=" IVF2 , RB1 ") as s:
        assert s.spec == "IVF2,RB1"
    return "accepted: spaces around stages are dropped; the spec is stored canonical ('IVF2,RB1')"


def _build_empty_file(env: Env, tmp: Path) -> str:
    code, err = _cli("build", env.files / "empty.npy", tmp / "built")
    assert code == 0, err
    with Store.open(tmp / "built") as s:
        assert len(s) == 0 and not s.codec.is_trained and s.dim == DIM
        assert (s.search(Q, 3).ids == -1).all()
    return "accepted: exit 0; a 0-row store (codec untrained) of the file's width"


def _build_fails_late(env: Env, tmp: Path) -> str:
    x = _data(60, seed=3)
    x[50, 2] = np.nan
    np.save(tmp / "late.npy", x)
    code, err = _cli("build", tmp / "late.npy", tmp / "late", "--batch-rows", "20", "--train-size", "20")
    # the file's row, not the batch's (row 10 of the third batch)
    assert code == 2 and f"{tmp / 'late.npy'}: expected finite values, found nan in row 50, column 2" in err
    assert "40 of 60 rows" in err and "fails again until" in err  # not "run the same command again"
    assert check_store(tmp / "late") == []
    with Store.open(tmp / "late") as s:  # training and batches 1-2 were committed before batch 3 failed
        assert len(s) == 40 and s.version == 4
        np.testing.assert_array_equal(s.get(np.arange(40)), x[:40])
    code, err = _cli("build", env.files / "nan.npy", tmp / "retry")
    assert code == 2 and not (tmp / "retry").exists()  # failed first batch: no store left
    code, err = _cli("build", env.files / "good.npy", tmp / "retry")
    assert code == 0, err  # so the corrected build can run into the same path
    (tmp / "emptydir").mkdir()
    code, err = _cli("build", env.files / "nan.npy", tmp / "emptydir")
    assert code == 2 and (tmp / "emptydir").is_dir() and not any((tmp / "emptydir").iterdir())
    return ("exit 2, the message naming the file and its row; a failure in the first batch leaves no store (an "
            "empty directory given stays, empty); a failure in a later batch keeps the batches committed before it "
            "(each batch is one commit) and says so, with the file to fix and build into a new store")


ACCEPTED: list[Accepted] = [
    *[Accepted(f"vectors {label}", "Store.add(vectors)", _add_variant(label, make, want))
      for label, make, want in VARIANTS],
    *[Accepted(f"queries {label}", "Store.search(queries)",
               _search_variant(label, make, (lambda q: q.astype(np.float16).astype(np.float32))
                               if label == "float16" else (lambda q: q)))
      for label, make, _ in VARIANTS],
    Accepted("single vector of shape (dim,)", "Store.add(vectors)", _single_vector_add),
    Accepted("single query of shape (dim,)", "Store.search(queries)", _single_query),
    Accepted("ids of any integer dtype", "Store.add(ids)", _id_dtypes),
    Accepted("id deleted, then added again", "Store.add(ids)", _readd_deleted),
    Accepted("delete unknown, negative or repeated ids", "Store.delete(ids)", _delete_lenient),
    Accepted("0 queries", "Store.search(queries)", _empty_query_batch),
    Accepted("get no ids", "Store.get(ids)", _get_nothing),
    Accepted("nprobe = nlist, rerank = k, rerank beyond the rows", "Store.search(nprobe, rerank)", _boundaries),
    Accepted("dim not divisible by PQ's M", "Store.create(codec)", _uneven_pq),
    Accepted("more IVF lists than rows", "Store.add(vectors)", _more_lists_than_rows),
    Accepted("spaces in the codec spec", "Store.create(codec)", _spec_spaces),
    Accepted("build: empty .npy", "vecz build SRC", _build_empty_file),
    Accepted("build: NaN in a later batch", "vecz build SRC", _build_fails_late),
]


@pytest.mark.parametrize("acc", ACCEPTED, ids=lambda a: a.name)
def test_accepted(env: Env, tmp_path: Path, acc: Accepted):
    acc.check(env, tmp_path)


def test_ints_are_rejected_not_converted(env: Env):
    """The issue lists ints under "wrong dtype": they are refused, never silently cast, on
    every path that takes vectors (lists of Python ints too)."""
    for call in (env.main.add, env.main.search, env.empty.train):
        for arr in (np.ones((2, DIM), np.int8), np.ones((2, DIM), np.uint64), [[1] * DIM]):
            with pytest.raises(InvalidInput, match=r"float16/32/64, found dtype u?int(8|64)"):
                call(arr)


# --------------------------------------------------------------------------- edge stores


@dataclass(frozen=True)
class Edge:
    name: str
    entry: str
    check: Callable[[Path], str]


def _brute(base: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str):
    """Exact top-k (ties by smaller id), float64."""
    b, x = base.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    s = ((x[:, None] - b[None]) ** 2).sum(-1) if metric == "l2" else (x[:, None] * b[None]).sum(-1)
    order = np.lexsort((np.broadcast_to(ids, s.shape), s if metric == "l2" else -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


def _assert_padded(res, k: int, metric: str) -> None:
    assert res.ids.shape == (len(Q), k) and (res.ids == -1).all()
    assert (res.scores == WORST[metric]).all()


def _zero_rows_never_added(tmp: Path) -> str:
    for metric in WORST:
        path = tmp / metric
        with Store.create(path, dim=DIM, metric=metric, codec="IVF4,PQ4x4") as s:
            for rerank in (None, 0, 30):
                _assert_padded(s.search(Q, 7, rerank=rerank), 7, metric)
            assert len(s) == 0 and s.ids().size == 0
            with pytest.raises(IdNotFound, match="expected ids live in the store, found id 0 missing"):
                s.get([0])
            assert s.delete([0, 1]) == 0
            s.compact()
            assert s.version == 1 and s.n_rows == 0
        with Store.open(path) as r:
            _assert_padded(r.search(Q, 3), 3, metric)
        assert check_store(path) == []
    return ("len 0; search pads every slot with id -1 and the metric's worst score (-inf for cosine/ip, +inf "
            "for l2) at any rerank; get raises IdNotFound; delete returns 0; compact is a no-op (no new version)")


def _zero_rows_after_deletes(tmp: Path) -> str:
    for metric in WORST:
        path = tmp / metric
        with Store.create(path, dim=DIM, metric=metric, codec="RB2") as s:
            ids = np.concatenate([s.add(X[:20]), s.add(X[20:])])
            assert s.delete(ids) == 40
            for rerank in (0, 40):
                _assert_padded(s.search(Q, 5, rerank=rerank), 5, metric)
            with pytest.raises(IdNotFound, match="found id 0 missing"):
                s.get([0])
            # the merge policy rewrote the all-dead segments away already; compact has nothing to do
            assert s.info()["segments"] == 0 and len(s) == 0
            v = s.version
            s.compact()
            assert s.version == v and s.info()["segments"] == 0
            _assert_padded(s.search(Q, 5), 5, metric)
            assert s.add(X[:1]).tolist() == [40]  # ids are never reused
        assert check_store(path) == []
    return ("len 0; search pads (-1, worst score); get raises IdNotFound; the merge policy drops the all-dead "
            "segments in a commit of its own; the next add gets a new id (ids are not reused)")


def _k_beyond_live(tmp: Path) -> str:
    base = _data(6, seed=11)
    for metric, worst in WORST.items():
        for spec in ("RB1", "IVF2,SQ8"):
            with Store.create(tmp / f"{metric}-{spec}", dim=DIM, metric=metric, codec=spec) as s:
                ids = s.add(base)
                s.delete(ids[[1, 4]])
                live = np.delete(base, [1, 4], axis=0)
                want_s, want_i = _brute(live, np.delete(ids, [1, 4]), Q, 4, metric)
                for rerank in (0, 9):
                    res = s.search(Q, 9, nprobe=s.codec.nlist, rerank=rerank)
                    assert res.ids.shape == (len(Q), 9)
                    assert (res.ids[:, 4:] == -1).all() and (res.scores[:, 4:] == worst).all()
                    assert (np.sort(res.ids[:, :4], axis=1) == np.sort(want_i, axis=1)).all()
                    assert np.isfinite(res.scores[:, :4]).all()
                    if rerank:
                        np.testing.assert_array_equal(res.ids[:, :4], want_i)
                        np.testing.assert_allclose(res.scores[:, :4], want_s, rtol=1e-5, atol=1e-5)
    return ("the live rows come first (exact order and scores with rerank), then id -1 with the metric's worst "
            "score; deleted rows never appear")


SPECS = ("RB1", "RB2", "PQ4x8", "IVF2,PQ4x4", "SQ8", "SQ4", "F16", "MRL8,RB1")


def _constant_dims(tmp: Path) -> str:
    base = _data(60, seed=12)
    base[:, 3] = 0.0  # always zero
    base[:, 5] = 2.5  # constant
    base[:, 11] = -1e-3  # constant and small
    q = base[:4] + 0.01 * _data(4, seed=13)
    q[:, 3] = 0.0
    for metric in WORST:
        for spec in SPECS:
            with Store.create(tmp / f"{metric}-{spec}", dim=DIM, metric=metric, codec=spec) as s:
                ids = s.add(base)
                codes = s.search(q, 5, nprobe=s.codec.nlist, rerank=0)
                assert np.isfinite(codes.scores).all() and (codes.ids >= 0).all()
                assert all(len(set(row)) == 5 for row in codes.ids.tolist())
                res = s.search(q, 5, nprobe=s.codec.nlist, rerank=60)
                want_s, want_i = _brute(base, ids, q, 5, metric)
                np.testing.assert_array_equal(res.ids, want_i, err_msg=f"{metric} {spec}")
                np.testing.assert_allclose(res.scores, want_s, rtol=1e-5, atol=1e-5)
    return (f"accepted by every codec family ({', '.join(SPECS)}) and metric: code scores finite, re-ranked "
            "results equal exact search")


def _identical_vectors(tmp: Path) -> str:
    same = np.repeat(_data(1, seed=14), 30, axis=0)
    self_score = {"cosine": 1.0, "ip": float(same[0] @ same[0]), "l2": 0.0}
    for metric in WORST:
        for spec in SPECS:
            with Store.create(tmp / f"{metric}-{spec}", dim=DIM, metric=metric, codec=spec) as s:
                ids = s.add(same)
                for rerank in (0, 30):
                    res = s.search(same[:2], 10, nprobe=s.codec.nlist, rerank=rerank)
                    assert np.isin(res.ids, ids).all() and all(len(set(r)) == 10 for r in res.ids.tolist())
                    assert np.isfinite(res.scores).all() and (np.ptp(res.scores, axis=1) == 0).all()
                    want = self_score[metric]
                    if not rerank and metric == "ip" and spec.startswith("MRL"):
                        want = 1.0  # MRL renormalises the kept dims for ip (DESIGN.md)
                    tol = 1e-4 * max(1.0, abs(want)) if rerank else 0.02 * max(1.0, want)
                    np.testing.assert_allclose(res.scores, want, atol=tol, err_msg=f"{metric} {spec} R={rerank}")
    return ("accepted (codecs train on one distinct point): k distinct ids, all with the same score, the "
            "self-score (1 cosine, |x|^2 ip, 0 l2; exact with rerank, within 2% from codes, where MRL's "
            "renormalised ip code score is 1)")


def _zero_vectors_cosine(tmp: Path) -> str:
    base = _data(30, seed=15)
    base[7] = 0.0
    with Store.create(tmp / "cos", dim=DIM, metric="cosine", codec="RB1") as s:
        with pytest.raises(InvalidInput, match="vectors: cosine similarity needs vectors of non-zero norm, found row 7"):
            s.add(base)
        assert len(s) == 0 and s.version == 1
        s.add(np.delete(base, 7, axis=0))
        zero_q = np.zeros((2, DIM), np.float32)
        for rerank in (0, 30):
            with pytest.raises(InvalidInput, match="queries: cosine similarity needs vectors of non-zero norm"):
                s.search(zero_q, 5, rerank=rerank)
    with Store.create(tmp / "ip", dim=DIM, metric="ip", codec="PQ4x8") as s:
        s.add(base)
        res = s.search(np.zeros((1, DIM), np.float32), 3, rerank=10)
        assert (res.scores == 0).all() and (res.ids >= 0).all()
    return ("refused (InvalidInput naming the row): a zero vector has no direction, so cosine cannot score it; "
            "under ip and l2 zero vectors and queries are accepted (ip scores them 0)")


EDGES: list[Edge] = [
    Edge("0-row store, never added", "search, get, len, delete, compact", _zero_rows_never_added),
    Edge("0-row store, every row deleted", "search, get, len, compact, add", _zero_rows_after_deletes),
    Edge("k larger than the live rows", "Store.search(k)", _k_beyond_live),
    Edge("constant and all-zero dimensions", "Store.add, Store.search", _constant_dims),
    Edge("all vectors identical", "Store.add, Store.search", _identical_vectors),
    Edge("zero vectors under cosine", "Store.add, Store.search, Store.get", _zero_vectors_cosine),
]


@pytest.mark.parametrize("edge", EDGES, ids=lambda g: g.name)
def test_edge_store(tmp_path: Path, edge: Edge):
    edge.check(tmp_path)


# --------------------------------------------------------------------------- the doc


def _doc_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows[line.split(" | ")[0][2:].strip()] = line
    return rows


def test_doc_lists_every_case_with_its_outcome():
    rows = _doc_rows()
    for case in CASES:
        assert case.name in rows, f"docs/bad-input.md lacks {case.name!r}: regenerate it (module docstring)"
        want = "exit 2" if case.error is Exit2 else f"`{case.error.__name__}`"
        assert want in rows[case.name], rows[case.name]
    for item in [*ACCEPTED, *EDGES]:
        assert item.name in rows, f"docs/bad-input.md lacks {item.name!r}: regenerate it (module docstring)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def print_table(out=sys.stdout) -> None:
    """docs/bad-input.md, from running every case (messages as raised; paths as <tmp>)."""
    with tempfile.TemporaryDirectory(prefix="vecz-bad-input-") as tmp:
        root = Path(tmp)
        env = Env(root / "env")
        p = lambda *a: print(*a, file=out)
        p("# Bad input: what each entry point does with it")
        p()
        p("Generated by `python tests/test_bad_input.py --table > docs/bad-input.md`: every row was run and its")
        p("message copied from the error raised. `tests/test_bad_input.py` asserts each row (error type, a")
        p("message naming what was expected and what was found, nothing changed) and that this page lists")
        p("every case. Paths inside messages are shown as `<tmp>/...`, a lock holder as `<pid>`.")
        p()
        p("Every error is typed (`vecz.errors`; each subclasses `VeczError` and the builtin it refines:")
        p("`InvalidInput`, `DimensionMismatch` and `CodecSpecError` are `ValueError`s, `IdNotFound` a `KeyError`,")
        p("`StoreNotFound` a `FileNotFoundError`). A rejected call changes nothing: the store keeps its version,")
        p("files (names, sizes, mtimes, hashes) and search results, and a failed `Store.create` or `vecz build`")
        p("leaves no directory behind. The CLI prints `vecz <command>: error: <message>` on stderr and exits")
        p("with 2 (usage errors caught by argparse also exit with 2, after printing the usage).")
        p()
        p("The stores the rows run against (dim 16):")
        p()
        for line in Env.__doc__.strip().splitlines()[2:]:
            p(f"- `{line.split()[0]}`: {' '.join(line.split()[1:])}")
        p()
        p("## Rejected")
        p()
        p("| case | entry point | error | message |")
        p("| --- | --- | --- | --- |")
        for case in CASES:
            what, msg = run_case(case, env)
            msg = re.sub(r"pid \d+\)", "pid <pid>)", msg.replace(str(root / "env"), "<tmp>"))
            what = what if what.startswith("exit") else f"`{what}`"
            p(f"| {case.name} | `{case.entry}` | {what} | `{_cell(msg)}` |")
        p()
        p("## Accepted")
        p()
        p("Vectors, queries and training samples go through one conversion: any float dtype (float16/32/64,")
        p("either byte order), any strides or memory order, read-only or memory-mapped arrays, nested lists,")
        p("and a single vector of shape (dim,) become a float32 C-contiguous (n, dim) array. Ints, bools,")
        p("complex numbers, objects and strings are rejected (above), never cast.")
        p()
        p("| case | entry point | what happens |")
        p("| --- | --- | --- |")
        for i, acc in enumerate(ACCEPTED):
            work = root / f"acc{i}"
            work.mkdir()
            p(f"| {acc.name} | `{acc.entry}` | {_cell(acc.check(env, work))} |")
        p()
        p("## Edge stores")
        p()
        p("| case | entry point | what happens |")
        p("| --- | --- | --- |")
        for i, edge in enumerate(EDGES):
            work = root / f"edge{i}"
            work.mkdir()
            p(f"| {edge.name} | {edge.entry} | {_cell(edge.check(work))} |")
        env.close()
    p()
    p("## Hostile environments")
    p()
    p("Cases that need real processes, signals, a full disk or a crafted store; each is run by the test named.")
    p()
    p("| case | what happens | test |")
    p("| --- | --- | --- |")
    for case, what, where in HOSTILE:
        p(f"| {case} | {what} | `{where}` |")


if __name__ == "__main__":
    if sys.argv[1:] != ["--table"]:
        sys.exit("usage: python tests/test_bad_input.py --table > docs/bad-input.md")
    print_table()
