"""`vecz` command line (DESIGN.md's CLI): argument parsing and terminal output.

    vecz build SRC STORE --codec SPEC [--metric cosine] [--dense f32|f16|none] [--no-calibrate] [--ray]
    vecz calibrate STORE [--sample SAMPLE] [--nprobe N]
    vecz search STORE QUERIES -k 10 [--nprobe N] [--rerank R|auto[:R]] [--confidence C] [--calibrate SAMPLE]
                [--out FILE]
    vecz info STORE
    vecz check STORE
    vecz bench ...

The logic lives in `vecz.engine.store` and `vecz.engine.bench`; this module parses, streams files
through them and prints. Long work shows a progress bar on a terminal (stderr) and stays
quiet when piped. Exit codes: 0 on success, 1 when `vecz check` finds damage, 2 on bad input
(unknown dataset or file, malformed file, bad spec or option, as argparse does for bad usage;
a store another writer holds or that moved away), 3 when the operating system refuses a read
or write (disk full, read-only file system, permissions) — `vecz build` then says how many
rows are committed, and running the same command again resumes after them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
import warnings
from typing import Any, Iterator
from pathlib import Path

import numpy as np

from ..formats.importers import refuse_non_finite
from .errors import (CommitIncomplete, DimensionMismatch, InvalidInput, StorageError, StoreClosed, StoreMoved,
                     VeczError)
from .threads import plain_interrupts

__all__ = ["main", "EXIT_OK", "EXIT_DAMAGE", "EXIT_INPUT", "EXIT_STORAGE", "EXIT_INTERRUPT", "EXIT_PIPE"]

EXIT_OK = 0
EXIT_DAMAGE = 1   # vecz check found damage
EXIT_INPUT = 2    # bad input, option, spec or file; a store locked by another writer or moved away
EXIT_STORAGE = 3  # the operating system refused a read or write (disk full, read-only, permissions)
EXIT_INTERRUPT = 130  # Ctrl-C (SIGINT), as a shell reports it: what is committed stays
EXIT_PIPE = 141  # the output's reader went away (`| head`), as a shell reports SIGPIPE
# `vecz search --calibrate`: sample queries read from the file at most (each costs 100 rows
# read once; a few hundred give the model enough pairs, see `Store.calibrate`)
CALIBRATE_ROWS = 2000


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    from .bench.data import DATASETS
    from .bench.runner import DEFAULT_CODECS, SAMPLE_CODECS

    p = sub.add_parser(
        "bench",
        help="benchmark codecs: recall, bytes/vector, speed (optionally against faiss)",
        description=(
            "Benchmark codec specs on a base and queries: recall@1/10 (and @100 with --k 100 or more) "
            "against exact search, "
            "bytes per vector in RAM, QPS and per-query latency, with optional exact re-ranking of "
            "the R best candidates and a faiss baseline measured in the same run. DATA is either a "
            f"named dataset ({', '.join(DATASETS)}) or a BASE file (.npy, .fvecs, .parquet or .arrow) followed by "
            "QUERIES."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  vecz bench sample\n"
            "  vecz bench sample --codecs 'SQ8;RB1' --faiss --out bench/out/sample\n"
            "  vecz bench base.fvecs queries.fvecs --gt gt.ivecs --codecs 'PQ48x8;IVF1024,RB2' --metric l2"
        ),
    )
    p.add_argument("data", metavar="DATA", help=f"named dataset ({', '.join(DATASETS)}) or the BASE vectors file")
    p.add_argument("queries", metavar="QUERIES", nargs="?",
                   help="query vectors file, same formats as BASE (with a BASE file)")
    p.add_argument("--gt", metavar="GT", help="ground-truth ids (.npy or .ivecs, rows = queries, rank order); "
                   "default: exact top-100 computed in float32")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--gt-cache", metavar="DIR", help="cache computed ground truth in DIR (default: the user "
                       "cache directory, $XDG_CACHE_HOME/vecz/gt or ~/.cache/vecz/gt; never beside the data)")
    cache.add_argument("--no-gt-cache", action="store_true", help="compute the ground truth afresh and keep no copy")
    p.add_argument("--codecs", metavar="SPECS",
                   help="';'-separated codec specs. Default for the sample dataset: 6 specs from 16 to 384 code bytes "
                        f"({SAMPLE_CODECS!r}); for the other named datasets: 12 specs from 16 to 384 code bytes at "
                        f"384 dims ({DEFAULT_CODECS!r}); both scaled to the width, IVF left out of a base under "
                        "1,024 rows. Required with BASE QUERIES files, unless --budget")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine", help="default: cosine")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--rerank", default=None, metavar="R,R",
                   help="re-ranking depths: 0 = codes only, R >= k re-scores the best R exactly, reading those rows "
                        "from the store's dense file, auto or auto:R re-ranks by error bounds (confidence 0.999, "
                        "at most R rows; rows read and miss rate reported) (default 0,50,100, those >= k, or 0,k "
                        "above 100; not with --budget, which sweeps it)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists visited per query, vecz and faiss alike (default: nlist // 8; not with --budget, "
                        "which sweeps it)")
    p.add_argument("--budget", type=int, default=None, metavar="B",
                   help="search the codec space that fits B code bytes per vector for the spec, nprobe and "
                        "re-ranking depth reaching --target-recall fastest (--codecs then restricts the candidates)")
    p.add_argument("--target-recall", type=float, default=None, metavar="T",
                   help="recall@10 (recall@k when k < 10) to reach with --budget (default 0.95)")
    p.add_argument("--work", metavar="DIR", help="build the stores here (default: a temporary folder)")
    p.add_argument("--keep-stores", action="store_true", help="keep the stores built in --work")
    p.add_argument("--faiss", action="store_true", help="also run the closest faiss index for each spec")
    p.add_argument("--threads", type=int, default=None, help="Numba and faiss threads (default: all cores)")
    p.add_argument("--texts", metavar="BASE_TEXTS", help="base texts, line i = row i (.txt or .txt.gz)")
    p.add_argument("--query-texts", metavar="QUERY_TEXTS", help="query texts, line i = query i")
    p.add_argument("--show", type=int, default=3, metavar="N",
                   help="queries whose neighbour texts are printed when texts are available (default 3)")
    p.add_argument("--nq", type=int, default=None, metavar="N", help="use only the first N queries")
    p.add_argument("--out", metavar="DIR", help="write report.md, results.csv, results.json and plots here")


def _bench(args: argparse.Namespace, command: str) -> int:
    from ..formats.importers import check_output_dir
    from .bench import data as bench_data, report, runner

    started = time.perf_counter()
    for option, value in (("--out", args.out), ("--work", args.work)):
        if value is not None:  # refused before the benchmark runs, not after
            check_output_dir(value, option)
    if args.budget is not None:  # refused before any work, not ignored
        given = [option for option, value in (("--rerank", args.rerank), ("--nprobe", args.nprobe)) if value is not None]
        if given:
            raise InvalidInput(f"{' and '.join(given)}: not taken with --budget B, which sweeps nprobe and the "
                               f"re-ranking depth itself; expected {'them' if len(given) > 1 else 'it'} left out")
    elif args.target_recall is not None:
        raise InvalidInput(f"--target-recall {args.target_recall:g}: taken only with --budget B (a grid run "
                           "measures every --rerank depth)")
    if args.queries is None:
        if args.data not in bench_data.DATASETS and Path(args.data).is_file():
            raise InvalidInput(f"{args.data!r} is a file: give BASE QUERIES, or a dataset name "
                               f"({', '.join(bench_data.DATASETS)})")
        data = bench_data.load_named(args.data, nq=args.nq, gt=args.gt, texts=args.texts, query_texts=args.query_texts,
                                metric=args.metric)
        grid = runner.SAMPLE_CODECS if args.data == "sample" else runner.DEFAULT_CODECS
        codecs = args.codecs or (None if args.budget is not None
                                 else runner.default_codecs(*data.base.shape, grid=grid))
    else:
        if args.data in bench_data.DATASETS:
            raise InvalidInput(f"the named dataset {args.data!r} takes no QUERIES argument")
        if not args.codecs and args.budget is None:
            raise InvalidInput("--codecs 'SPEC;SPEC;...' (or --budget B) is required with BASE QUERIES files")
        data = bench_data.load_files(args.data, args.queries, gt=args.gt, texts=args.texts,
                                query_texts=args.query_texts, nq=args.nq)
        codecs = args.codecs
    if args.budget is not None:
        return _bench_budget(args, data, codecs, command, started)
    specs = runner.parse_codecs(codecs, data.base.shape[1], args.metric)
    # the default depths that re-rank at least k (--k 64 failed on the default's 50, naming a --rerank not given)
    default = ",".join(str(r) for r in (0, 50, 100) if r == 0 or r >= args.k) if args.k <= 100 else f"0,{args.k}"
    rerank = runner.parse_rerank(default if args.rerank is None else args.rerank, args.k)
    result = runner.run_bench(data, specs, rerank=rerank, nprobe=args.nprobe, **_bench_common(args))
    s = result.settings
    print(f"vecz bench {s['dataset']}: {s['n']} x {s['dim']} base, {s['nq']} queries, metric {s['metric']}, "
          f"k={s['k']}, nprobe={s['nprobe']}, {s['threads']} threads; ground truth: {s['ground_truth']}")
    print(f"bytes/vec = codes + 8-byte id in RAM; R = rows re-scored exactly per query; "
          f"* = best {result.quality_key} at or under that bytes/vec (same R)")
    print()
    print(report.format_table(result))
    _print_faiss_notes(result.rows)
    examples = report.format_examples(result, data, args.show)
    if examples:
        print()
        print(examples)
    if args.out:
        print()
        for note in report.write_outputs(result, args.out, report.machine_info(command), examples):
            print(note)
    print()
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _bench_common(args: argparse.Namespace) -> dict[str, Any]:
    """Options the grid run and the --budget search take alike."""
    return dict(metric=args.metric, k=args.k, with_faiss=args.faiss, threads=args.threads,
                progress=sys.stderr.isatty(), work=args.work, keep_stores=args.keep_stores,
                gt_cache=False if args.no_gt_cache else (args.gt_cache or True))


def _print_faiss_notes(rows: list) -> None:
    """Why faiss gave no figure for some rows (`FaissSide`'s notes), once each."""
    notes = sorted({row["faiss_note"] for row in rows if row.get("faiss_note")})
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")


def _bench_budget(args: argparse.Namespace, data: Any, codecs: str | None, command: str, started: float) -> int:
    from .bench import budget, report, runner

    specs = runner.parse_codecs(codecs, data.base.shape[1], args.metric) if codecs else None
    target = 0.95 if args.target_recall is None else args.target_recall
    result = budget.recommend(data, args.budget, target=target, specs=specs, **_bench_common(args))
    s = result.settings
    print(f"vecz bench {s['dataset']} --budget {s['budget']}: {s['n']} x {s['dim']} base, metric {s['metric']}, "
          f"k={s['k']}, {s['threads']} threads; ground truth: {s['ground_truth']}")
    print(f"candidates ({s['budget']} code bytes per vector or less): {', '.join(s['candidates'])}")
    print(f"tuned on queries {s['tune_queries'][0]}..{s['tune_queries'][1] - 1}, confirmed on held-out queries "
          f"{s['heldout_queries'][0]}..{s['heldout_queries'][1] - 1}")
    print()
    print(f"{s['recall_key']} on the tuning queries against re-ranking depth R:")
    print(budget.format_sweeps(result))
    print()
    print("confirming runs through the store (held-out queries; R rows read from disk per query):")
    print(budget.format_runs(result))
    _print_faiss_notes(result.rows)  # (why a faiss column says n/a: only report.md said it)
    print()
    print(result.recommendation["summary"])
    if args.out:
        print()
        for note in budget.write_outputs(result, args.out, report.machine_info(command)):
            print(note)
    print()
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _rerank_arg(text: str) -> int | str:
    """--rerank: an integer, or auto / auto:R (checked by Store.search)."""
    if text.strip().lower().startswith("auto"):
        return text.strip().lower()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, auto or auto:R, found {text!r}") from None


def _progress(total: int | None, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=" rows", desc=what, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


def _ray_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what}. ADDRESS: the cluster to join ('auto': this machine's); none starts a local one. "
                        f"Needs `pip install 'vecz[ray]'`; write --ray=ADDRESS or put --ray after the positionals")


def _store_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build (or append to) a store from a vectors file",
                       description="Stream SRC (.npy, .fvecs, .parquet, .arrow) into the store STORE in "
                                   "batches: the codec first trains on --train-size rows drawn at random from the "
                                   "whole file (one pass), then every batch is one durable commit.")
    p.add_argument("src", metavar="SRC", help="vectors: .npy, .fvecs, .parquet or .arrow")
    p.add_argument("store", metavar="STORE", help="store directory (created; must be new or empty unless --append)")
    p.add_argument("--codec", default=None, metavar="SPEC",
                   help="codec spec (default RB2 for a new store), e.g. 'IVF1024,PQ48x8'")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default=None, help="default: cosine for a new store")
    p.add_argument("--dense", choices=("f32", "f16", "none"), default=None,
                   help="disk tier for exact re-ranking (default f32 for a new store; none keeps codes only)")
    p.add_argument("--column", help="vector column of a .parquet/.arrow file (default: the only list column)")
    p.add_argument("--id-column", help="integer id column of a .parquet/.arrow file (default: the column named "
                   "'id' when there is an integer one, else ids 0, 1, ...; 'none' numbers the rows even then)")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="rows per commit (default: 256 MB of float32 per batch); with --ray, rows per segment "
                        "(default 262,144)")
    p.add_argument("--train-size", type=int, default=65536, metavar="N",
                   help="rows the codec trains on, drawn at random from the whole file with --seed (default 65536)")
    p.add_argument("--seed", type=int, default=0, help="seed of the codec's training (default 0)")
    p.add_argument("--append", action="store_true", help="append to an existing store instead of creating one")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="do not measure and commit the error model of --rerank auto after the build (by default "
                        "it is, once rows were added, so that no search has to measure it; see `vecz calibrate`)")
    _ray_arguments(p, "encode the batches on a Ray cluster and commit them all at once (a new store or --append; "
                      "SRC .npy or Parquet)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: batches encoded at once (default: as the cluster's CPUs allow)")

    p = sub.add_parser("search", help="search a store with query vectors from a file",
                       description="Search STORE with the vectors in QUERIES; results to stdout (TSV: query, "
                                   "rank, id, score) or to --out FILE (.parquet long table or .npy ids + "
                                   "<stem>.scores.npy).")
    p.add_argument("store", metavar="STORE")
    p.add_argument("queries", metavar="QUERIES", help="query vectors: .npy, .fvecs, .parquet or .arrow")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (default nlist // 8)")
    p.add_argument("--rerank", type=_rerank_arg, default=None, metavar="R|auto[:R]",
                   help="re-score the R best candidates exactly from disk (default max(50, 5k); 0 = codes only); "
                        "auto: read only the rows whose error bound can still change the top k, at most R "
                        "(default max(100, 10k))")
    p.add_argument("--confidence", type=float, default=None,
                   help="with --rerank auto: coverage of each side of the error interval (default 0.999)")
    p.add_argument("--calibrate", metavar="SAMPLE", default=None,
                   help="with --rerank auto: measure the error interval on these sample queries (their first "
                        f"{CALIBRATE_ROWS:,} rows, same formats as QUERIES) instead of pseudo-queries made from "
                        "the store's own rows; for queries of another kind than the stored vectors (questions "
                        "against passages)")
    p.add_argument("--column", help="vector column of a .parquet/.arrow queries file")
    p.add_argument("--out", metavar="FILE", help=".parquet or .npy output (default: TSV on stdout)")
    p.add_argument("--batch-rows", type=int, default=4096, metavar="N", help="queries per batch (default 4096)")
    _ray_arguments(p, "search with one Ray actor per shard of the store's segments (same results)")
    p.add_argument("--shards", type=int, default=None, metavar="N", help="with --ray: actors (default 2)")

    p = sub.add_parser("calibrate", help="measure and commit the error model of --rerank auto",
                       description="Measure the error interval --rerank auto bounds code scores with and commit "
                                   "it to STORE, so that searches read it instead of measuring it on their first "
                                   "auto query: on pseudo-queries made from the store's rows (what `vecz build` "
                                   "commits), or on sample queries like the ones to come (--sample).")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--sample", metavar="SAMPLE", default=None,
                   help=f"sample queries (their first {CALIBRATE_ROWS:,} rows; .npy, .fvecs, .parquet or .arrow), "
                        "held out from the queries whose answers you measure")
    p.add_argument("--column", help="vector column of a .parquet/.arrow sample")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (default nlist // 8)")

    p = sub.add_parser("info", help="spec, counts, bytes in RAM and on disk, versions")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the info as JSON")

    p = sub.add_parser("check", help="verify every checksum and cross-check; exit 1 on damage")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--all-versions", action="store_true",
                   help="check every retained version, not only the newest")


def _source_identity(source: Any) -> dict[str, Any]:
    st = os.stat(source.path)
    return {"path": str(Path(source.path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "kind": source.kind, "rows": int(source.n), "dim": int(source.dim)}


def _build_options(args: argparse.Namespace, store: Any, source: Any) -> dict[str, Any]:
    return {"codec": store.spec, "metric": store.metric, "dense": store.dense, "column": source.column,
            "id_column": source.id_column, "train_size": args.train_size, "seed": args.seed}


def _differences(recorded: dict, current: dict) -> list[str]:
    return [f"{key}: recorded {recorded.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def _open_build_store(args: argparse.Namespace, source: Any) -> tuple[Any, int]:
    """The store to build into and the rows of `source` already in it (a resumed build)."""
    from .codecs import Codec
    from .store import Store

    path = Path(args.store)
    wanted = {"codec": args.codec, "metric": args.metric, "dense": args.dense}
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if not exists:
        if args.append:
            raise InvalidInput(f"{path}: --append needs an existing store, found none")
        if source.dim < 1:  # (Store.create said "dim: expected an integer >= 1, found 0", naming no file)
            raise InvalidInput(f"{args.src}: expected at least one vector to learn the width of a new store from, "
                               f"found no rows (only .npy and fixed-size list columns record a width without rows)")
        spec = args.codec or "RB2"
        store = Store.create(path, dim=source.dim, metric=args.metric or "cosine", codec=spec,
                             dense=None if (args.dense or "f32") == "none" else (args.dense or "f32"),
                             seed=args.seed, train_size=args.train_size)
        return store, 0
    store = Store.open(path, mode="a")
    try:
        given = {k: v for k, v in wanted.items() if v is not None}
        if "codec" in given:
            given["codec"] = Codec(given["codec"], store.dim, store.metric).spec
        clash = [f"--{k} {v} (the store has {getattr(store, 'spec' if k == 'codec' else k)})" for k, v in given.items()
                 if v != (store.spec if k == "codec" else getattr(store, k))]
        if clash:
            raise InvalidInput(f"{path}: the options contradict the store: {'; '.join(clash)}; expected them to match "
                               f"or to be left out")
        if store.dim != source.dim:
            raise DimensionMismatch(f"{args.src}: expected width {store.dim} (the store's), found {source.dim}")
        record = store.build_record
        identity = _source_identity(source)
        if record and record.get("source") == identity:
            differ = _differences(record.get("options", {}), _build_options(args, store, source))
            if differ:
                raise InvalidInput(f"{path}: this build of {args.src} was started with other options "
                                   f"({'; '.join(differ)}); expected the same options to resume it")
            done = int(record.get("rows_done", 0))
            if not 0 <= done <= source.n:
                raise InvalidInput(f"{path}: the build record says {done} rows done, the source has {source.n}")
            return store, done
        if record and not args.append:
            recorded = record.get("source", {})
            differ = _differences(recorded, identity)
            touched = ""
            if [d.split(":", 1)[0] for d in differ] == ["mtime_ns"] and isinstance(recorded.get("mtime_ns"), int):
                # the same path, size and rows: maybe the same file touched, maybe not; vecz cannot tell
                when = f"{recorded['mtime_ns'] // 10 ** 9}.{recorded['mtime_ns'] % 10 ** 9:09d}"
                touched = (f" (--append adds every row of it again, beside the {record.get('rows_done', 0):,} "
                           f"committed; if only its time changed, `touch -d @{when} {shlex.quote(args.src)}` resumes "
                           f"the build)")
            raise InvalidInput(f"{path}: holds a build of another source ({recorded.get('path')}, "
                               f"differences: {'; '.join(differ)}); "
                               f"expected the same source to resume, or --append to add this one{touched}")
        if len(store) and not args.append and record is None:
            raise InvalidInput(f"{path}: expected a new or empty directory (or --append), found a store with "
                               f"{len(store)} vectors")
        return store, 0
    except BaseException:
        store.close()
        raise


@contextlib.contextmanager
def _undo_empty_build(store: Any, fresh: bool, made_dir: bool, committed: dict):
    """A build that made its store in this run and fails before committing any row removes
    it again, so the corrected command runs into the same path as if nothing happened (a
    killed build cannot; its re-run resumes instead)."""
    try:
        yield
    except BaseException:
        if fresh and not committed["rows"] and _empty(store):
            path = Path(store.path)
            store.close()
            for entry in path.iterdir():
                if entry.is_file():
                    entry.unlink()
            if made_dir and not any(path.iterdir()):
                path.rmdir()
        raise


def _empty(store: Any) -> bool:
    """Whether the store is open and holds no row. A store a failure closed (a commit that
    published and then failed to load) may hold rows its writer never saw: not empty."""
    try:
        return len(store) == 0
    except StoreClosed:
        return False


def _ray_build(args: argparse.Namespace) -> int:
    from . import ray as vray

    path = Path(args.store)
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if exists and not args.append:
        raise InvalidInput(f"{path}: expected a new or empty directory (or --append), found an existing store")
    if args.append and not exists:
        raise InvalidInput(f"{path}: --append needs an existing store, found none")
    id_column = None if args.id_column is None or args.id_column.lower() == "none" else args.id_column
    column = args.column
    if args.batch_rows is not None and args.batch_rows < 1:  # (0 meant the default, -5 named segment_rows)
        raise InvalidInput(f"--batch-rows must be >= 1, found {args.batch_rows}")
    if args.id_column is None and Path(args.src).is_file():
        # the one-process build's default: an integer column named 'id' gives the ids (--ray
        # numbered the rows instead, silently)
        from ..formats.importers import open_vectors

        with open_vectors(args.src, column=column, default_id_column="id") as source:
            id_column, column = source.id_column, source.column
    elif args.id_column is None and Path(args.src).is_dir():  # a Parquet directory: the same default
        import pyarrow as pa
        import pyarrow.dataset as pads

        try:
            schema = pads.dataset(args.src, format="parquet").schema
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{args.src}: expected a directory of Parquet files (what a distributed build reads), "
                               f"found {exc}") from None
        if "id" in schema.names and pa.types.is_integer(schema.field("id").type) and column != "id":
            id_column = "id"
    if args.id_column is None and id_column is not None:
        print(f"{args.src}: ids from column {id_column!r} (--id-column none numbers the rows instead)",
              file=sys.stderr)
    vray.connect(args.ray)
    report = vray.build(path, args.src, codec=args.codec,
                        metric=args.metric, dense=args.dense, column=column, id_column=id_column, seed=args.seed,
                        train_size=args.train_size, segment_rows=args.batch_rows or vray.DEFAULT_SEGMENT_ROWS,
                        workers=args.workers)
    print(f"{args.store}: {report.rows:,} vectors of dim {report.dim} committed as version {report.version} in "
          f"{report.segments} segment(s), codec {report.spec}; {report.seconds:.1f} s "
          f"({report.rows_per_second:,.0f} vectors/s; train {report.train_seconds:.1f} s, encode "
          f"{report.encode_seconds:.1f} s, commit {report.commit_seconds:.2f} s)")
    if args.calibrate and report.rows:
        from .store import Store

        with Store.open(path, mode="a") as store:
            _model_after_build(store, True)
    return 0


@contextlib.contextmanager
def _file_rows(x: np.ndarray, path: str, rows: int | np.ndarray) -> Iterator[None]:
    """A store call on rows of the file `path`: an InvalidInput it raises over a row of `x`
    (a NaN or inf, a row of zeros) is raised again numbered by the file's row (`rows`: the
    file row of x's row 0, or of each of its rows); others pass as they are."""
    try:
        yield
    except InvalidInput as exc:
        _by_file_row(exc, x, path, rows)
        raise


def _by_file_row(exc: InvalidInput, x: np.ndarray, path: str, rows: int | np.ndarray) -> None:
    """Raise `exc` again naming the file's row where it is about a row of `x` (see `_file_rows`)."""
    refuse_non_finite(x, path, rows)
    row = getattr(exc, "row", None)  # a row the codec refused (`codecs._row_error`)
    if row is not None:
        at = rows + row if isinstance(rows, (int, np.integer)) else int(rows[row])
        raise InvalidInput(exc.template.format(where=path, row=at)) from None


def _build(args: argparse.Namespace) -> int:
    from ..formats.importers import open_vectors

    # checked here, not only by Store.create: an --append to an untrained store uses them too
    for option, value, least in (("--train-size", args.train_size, 1), ("--seed", args.seed, 0)):
        if value < least:
            raise InvalidInput(f"{option}: expected an integer >= {least}, found {value}")
    if args.ray is not None:
        return _ray_build(args)
    if args.workers is not None:  # (ignored before)
        raise InvalidInput(f"--workers applies to --ray, found --workers {args.workers} without --ray")
    started = time.perf_counter()
    id_column, default_id = args.id_column, "id"
    if id_column is not None and id_column.lower() == "none":
        id_column = default_id = None
    committed = {"rows": 0, "version": None, "store": args.store}
    with open_vectors(args.src, column=args.column, id_column=id_column, default_id_column=default_id) as source:
        if args.id_column is None and source.id_column is not None:
            print(f"{args.src}: ids from column {source.id_column!r} (--id-column none numbers the rows instead)",
                  file=sys.stderr)
        fresh = not Path(args.store).exists() or (Path(args.store).is_dir() and not any(Path(args.store).iterdir()))
        made_dir = not Path(args.store).exists()
        store, done = _open_build_store(args, source)
        with store, _undo_empty_build(store, fresh, made_dir, committed):
            committed.update(rows=done, version=store.version)
            start_rows = done
            if done:
                print(f"{args.store}: resuming the build of {args.src} after row {done:,} of {source.n:,}",
                      file=sys.stderr)
            # batches of ~256 MB of float32 keep the build's memory bounded whatever the source size
            batch_rows = args.batch_rows if args.batch_rows is not None else max(1024, (256 << 20) // (4 * source.dim))
            if batch_rows < 1:
                raise InvalidInput(f"--batch-rows must be >= 1, found {batch_rows}")
            identity, options = _source_identity(source), _build_options(args, store, source)
            if not store.codec.is_trained and done < source.n:
                # a sample drawn from the whole source, not its first rows
                sample, sample_rows = source.sample(args.train_size, seed=args.seed, with_rows=True)
                with _file_rows(sample, args.src, sample_rows):
                    store.train(sample)
            try:
                with _progress(source.n, "build") as bar:
                    bar.update(done)
                    for vectors, ids in source.batches(batch_rows, start=done):
                        record = {"source": identity, "rows_done": done + len(vectors), "options": options}
                        if len(vectors):
                            try:
                                store.add(vectors, ids, build_progress=record)
                            except InvalidInput as exc:
                                _by_file_row(exc, vectors, args.src, done)  # a NaN, inf or zero row: by its file row
                                # else its row numbers count from the batch's first row
                                raise InvalidInput(f"{args.src}: rows {done:,}..{done + len(vectors) - 1:,}: {exc} "
                                                   f"(a row number here counts from file row {done:,})") from exc
                        done += len(vectors)
                        committed.update(rows=done, version=store.version)
                        bar.update(len(vectors))
            except (VeczError, OSError, KeyboardInterrupt) as exc:
                # an interrupt (or failure) after a publish: the store's record says what is committed
                record = store.build_record
                if record and record.get("source") == identity and record.get("rows_done", 0) > committed["rows"]:
                    committed.update(rows=int(record["rows_done"]), version=store.version)
                if fresh and not committed["rows"] and _empty(store):  # `_undo_empty_build` removes it
                    print(f"{args.store}: no rows of {args.src} committed; the new store is removed", file=sys.stderr)
                    raise
                if isinstance(exc, ValueError) and not committed["rows"]:
                    # (it advised a new store, as below, when nothing of the file was committed)
                    advice = f"the same command fails again until {args.src} is fixed; then run it again"
                elif isinstance(exc, ValueError):
                    # bad input fails again at the same row, and a fixed file is another source (no resume)
                    advice = (f"the same command fails again until {args.src} is fixed, and a changed file does not "
                              f"resume this build: build the fixed file into a new store")
                elif isinstance(exc, StoreMoved):
                    advice = (f"the store is no longer at {args.store} (moved or replaced): the rows went with it; "
                              f"resume by running the same command with STORE at its new place")
                else:  # the system refused, or an interrupt: the next run resumes
                    advice = "run the same command again to resume after them"
                print(f"{args.store}: {committed['rows']:,} of {source.n:,} rows of {args.src} are committed (version "
                      f"{committed['version']}); {advice}", file=sys.stderr)
                raise
            if args.calibrate:
                _model_after_build(store, committed["rows"] > start_rows)
            info = store.info()
    elapsed = time.perf_counter() - started
    print(f"{args.store}: {info['live']} vectors of dim {info['dim']}, codec {info['spec']} "
          f"({info['code_size']} B/vector), metric {info['metric']}, dense {info['dense']}, "
          f"version {info['version']}, {info['segments']} segment(s); {elapsed:.1f} s "
          f"({info['live'] / max(elapsed, 1e-9):,.0f} vectors/s)")
    return 0


def _sample_queries(path: str, column: str | None, option: str) -> np.ndarray:
    """The first `CALIBRATE_ROWS` queries of a sample file (`--calibrate`, `--sample`)."""
    from ..formats.importers import open_vectors

    # --column names the vector column of Parquet/Arrow files (a .npy or .fvecs sample has none)
    column = None if Path(path).suffix.lower() in (".npy", ".fvecs") else column
    with open_vectors(path, column=column) as sample:
        batch = next(iter(sample.batches(CALIBRATE_ROWS)), None)
    if batch is None or len(batch[0]) == 0:
        raise InvalidInput(f"{option} {path}: expected at least one query, found none")
    return batch[0]


def _measure_model(store: Any, queries: Any, nprobe: int | None, source: str | None = None) -> None:
    """`Store.calibrate` on `queries` (None: pseudo-queries from the rows; read from the
    first rows of the file `source`, which a refused row is named in), said on stderr; a
    store open for writing commits the model."""
    what = "pseudo-queries from the rows" if queries is None else \
        f"{len(queries):,} sample {'query' if len(queries) == 1 else 'queries'}"
    started = time.perf_counter()
    try:
        with _file_rows(queries, source, 0) if source is not None else contextlib.nullcontext():
            model = store.calibrate(queries, nprobe=nprobe)
    except DimensionMismatch as exc:  # ("calibration queries: expected width 16, found 8" named no file)
        if source is None:
            raise
        raise DimensionMismatch(f"{source}: {exc}") from None
    if model is None:  # nothing committed: the model in use (committed, or one from pseudo-queries) stays
        from .bounds import MIN_PAIRS

        then = ("the store's committed model stays in use" if store.calibration is not None else
                "the store has no committed model: --rerank auto measures one from its rows at its first search")
        print(f"{store.path}: calibrated on {what}: too few pairs for a model (at least {MIN_PAIRS} needed); "
              f"nothing {'committed' if store.mode == 'a' else 'changed'}, {then}", file=sys.stderr)
        return
    kept = f", committed in version {store.version}" if store.mode == "a" else ""
    print(f"{store.path}: calibrated on {what} ({model.pairs:,} pairs) in {time.perf_counter() - started:.2f} s"
          f"{kept}", file=sys.stderr)


def _model_after_build(store: Any, added: bool) -> None:
    """A build's error model: measured on pseudo-queries and committed when the store has
    none, or one measured so and rows were added; a model from sample queries is kept (it
    stands for the user's queries; `vecz calibrate` replaces it)."""
    if store.dense == "none" or not store.codec.is_trained or not len(store):
        return
    record = store.calibration
    if record is not None and record["source"] == "queries":
        if added:
            print(f"{store.path}: kept the error model measured on sample queries ({record['file']}); "
                  "`vecz calibrate --sample` measures it again", file=sys.stderr)
        return
    if record is None or added:
        _measure_model(store, None, None)


def _calibrate_store(args: argparse.Namespace) -> int:
    from .store import Store

    queries = None if args.sample is None else _sample_queries(args.sample, args.column, "--sample")
    with Store.open(args.store, mode="a") as store:
        if store.dense == "none":
            raise InvalidInput(f"{args.store}: calibrate needs a dense tier (--rerank auto re-scores from it); "
                               "this store was built with --dense none")
        _measure_model(store, queries, args.nprobe, args.sample)
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..formats.importers import check_results_path, open_vectors, write_results

    from .store import Store

    if args.batch_rows < 1:
        raise InvalidInput(f"--batch-rows must be >= 1, found {args.batch_rows}")
    if args.out:  # refused before the search, not after it
        check_results_path(args.out)
    started = time.perf_counter()
    all_s, all_i = [], []
    rows_read = bytes_read = candidates = 0
    per_query: list[np.ndarray] = []
    auto = isinstance(args.rerank, str) and args.rerank.startswith("auto")
    for option, given in (("--confidence", args.confidence), ("--calibrate", args.calibrate)):
        if given is not None and not auto:  # (--confidence said the API's "confidence= ... rerank='auto'")
            found = "no --rerank (a fixed depth)" if args.rerank is None else f"--rerank {args.rerank}"
            raise InvalidInput(f"{option} applies to --rerank auto, found {found}")
    if args.ray is None and args.shards is not None:  # (ignored before)
        raise InvalidInput(f"--shards applies to --ray, found --shards {args.shards} without --ray")
    if args.ray is not None:
        from . import ray as vray

        if args.calibrate is not None:
            raise InvalidInput("--calibrate measures a model for this process only, which Ray's shards do not "
                               "see; commit one with `vecz calibrate STORE --sample SAMPLE` and search with --ray")
        vray.connect(args.ray)
        searcher: Any = vray.ShardedStore(args.store, shards=2 if args.shards is None else args.shards)
    else:
        searcher = Store.open(args.store)
    options = {"confidence": args.confidence}
    with searcher as store, open_vectors(args.queries, column=args.column) as source:
        if source.dim != store.codec.dim and (source.n or source.dim):  # a 0-row file's width is checked too
            raise DimensionMismatch(f"{args.queries}: queries: expected width {store.codec.dim}, found {source.dim}")
        if args.calibrate is not None:
            _measure_model(store, _sample_queries(args.calibrate, args.column, "--calibrate"), args.nprobe,
                           args.calibrate)
        first = 0  # the file row of the batch's first query
        with _progress(source.n, "search") as bar:
            for queries, _ in source.batches(args.batch_rows):
                with _file_rows(queries, args.queries, first):
                    res = store.search(queries, args.k, nprobe=args.nprobe, rerank=args.rerank, **options)
                first += len(queries)
                if res.stats.rows_per_query is not None:
                    per_query.append(res.stats.rows_per_query)
                all_s.append(res.scores)
                all_i.append(res.ids)
                rows_read += res.stats.rows_read
                bytes_read += res.stats.bytes_read
                candidates += res.stats.candidates
                bar.update(len(queries))
    scores = np.concatenate(all_s) if all_s else np.empty((0, args.k), dtype=np.float32)
    ids = np.concatenate(all_i) if all_i else np.empty((0, args.k), dtype=np.int64)
    elapsed = time.perf_counter() - started
    nq = max(len(ids), 1)
    summary = (f"{len(ids)} queries in {elapsed:.2f} s; per query: {candidates / nq:,.0f} codes scored, "
               f"{rows_read / nq:,.1f} rows ({bytes_read / nq:,.0f} bytes) read from disk")
    if per_query:
        counts = np.concatenate(per_query)
        summary += f" (p99 {np.percentile(counts, 99):,.0f} rows)"
    if args.out:
        for path in write_results(args.out, ids, scores):
            print(f"wrote {path}", file=sys.stderr)
        print(summary, file=sys.stderr)
        return 0
    out = sys.stdout
    out.write("query\trank\tid\tscore\n")
    for q in range(ids.shape[0]):
        for r in range(ids.shape[1]):
            if ids[q, r] >= 0:
                out.write(f"{q}\t{r}\t{ids[q, r]}\t{scores[q, r]:.6g}\n")
    print(summary, file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from .store import Store

    with Store.open(args.store) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    ram = info["ram_bytes"]
    live = max(info["live"], 1)
    lines = [
        ("store", info["path"]),
        ("codec", f"{info['spec']} ({info['code_size']} B/vector{'' if info['trained'] else ', not trained'})"),
        ("dim / metric", f"{info['dim']} / {info['metric']}"),
        ("vectors", f"{info['live']:,} live, {info['deleted']:,} deleted, {info['segments']} segment(s)"),
        ("RAM", f"{info['ram_bytes_total']:,} bytes ({info['ram_bytes_total'] / live:.1f} B/vector): "
                f"index {ram['index']:,}, ids {ram['ids']:,}, codec {ram['codec']:,}, auto model {ram['model']:,}"),
        ("disk", f"{info['disk_bytes_version']:,} bytes in this version ({info['dense_bytes']:,} dense, "
                 f"tier {info['dense']}); {info['disk_bytes_total']:,} in the directory"),
        ("version", f"{info['version']} (committed versions {_ranges(info['versions'])}"
                    f"{'; pinned ' + _ranges(info['pinned']) if info['pinned'] else ''})"),
        ("auto model", "none committed (measured by the first --rerank auto search; `vecz calibrate`)"
         if info["calibration"] is None else
         f"{info['calibration']['file']}, on {_source_name(info['calibration']['source'])} "
         f"({info['calibration']['rows']:,} live rows then, nprobe {info['calibration']['nprobe']})"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _source_name(source: str) -> str:
    return "pseudo-queries from the rows" if source == "rows" else "sample queries"


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _codecs(args: argparse.Namespace) -> int:
    """`vecz codecs`: the grammar; with --dim, each spec checked and sized (code bytes + the
    8-byte id, as `vecz bench` counts a vector's bytes; codec state and dense maps apart)."""
    from .bench.metrics import ID_BYTES
    from .bench.runner import default_codecs, parse_codecs
    from .codecs import code_size

    grammar = "stages: MRL<d>, IVF<n>, PQ<M>x<4|8>, OPQ<M>x<4|8>, RB<1..8>, SQ8, SQ4, F16, Flat"
    if args.dim is None:
        if args.specs:
            raise InvalidInput(f"--dim is required to size {' '.join(args.specs)}: a spec's bytes depend on the width")
        print(grammar)
        return 0
    if args.dim < 1 or args.rows < 1:
        raise InvalidInput(f"--dim and --rows: expected integers >= 1, found {args.dim} and {args.rows}")
    specs = parse_codecs(";".join(args.specs) if args.specs else default_codecs(args.rows, args.dim),
                         args.dim, args.metric)
    rows = [(spec, code_size(spec, args.dim, args.metric)) for spec in specs]
    width = max(len("spec"), *(len(spec) for spec, _ in rows))
    ram = f"RAM for {args.rows:,} vectors"
    print(grammar)
    print(f"{'spec':<{width}}  code B/vec  B/vec with id  {ram}  ({args.dim} dims, {args.metric})")
    for spec, size in rows:
        print(f"{spec:<{width}}  {size:>10,}  {size + ID_BYTES:>13,}  {_size((size + ID_BYTES) * args.rows):>{len(ram)}}")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _check(args: argparse.Namespace) -> int:
    from .store import check_store

    problems = check_store(args.store, all_versions=args.all_versions)
    for problem in problems:
        print(f"damaged: {problem}")
    if problems:
        print(f"{args.store}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    what = "every retained version" if args.all_versions else "the newest version"
    print(f"{args.store}: ok ({what}: every checksum and cross-check verified)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `vecz` command line; returns the exit code (2 on bad input)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="vecz", description="compressed vector storage",
        epilog=f"exit codes: {EXIT_OK} ok; {EXIT_DAMAGE} vecz check found damage; {EXIT_INPUT} bad input, option, "
               f"spec or file, or a store locked by another writer or moved away; {EXIT_STORAGE} the operating "
               f"system refused a read or write (disk full, read-only, permissions): what is committed stays; "
               f"{EXIT_INTERRUPT} interrupted (Ctrl-C); {EXIT_PIPE} its output's reader went away")
    parser.add_argument("--version", action="version", version=f"vecz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "codecs", help="print the codec spec grammar; with --dim, each spec's bytes per vector",
        description="Print the stages a codec spec can chain. With --dim, also check each SPEC (default: the "
                    "specs `vecz bench` tries for that width) and print its bytes per vector and the RAM its codes "
                    "and ids take for --rows vectors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  vecz codecs --dim 768\n  vecz codecs 'IVF1024,PQ96x4' RB1 'MRL256,RB2' --dim 768 --metric ip")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="codec specs to size (needs --dim)")
    p.add_argument("--dim", type=int, help="vector width to size the specs for")
    p.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine",
                   help="metric (PQ under ip stores each row's norm: 2 bytes more; default cosine)")
    p.add_argument("--rows", type=int, default=1_000_000, help="vectors the RAM column is for (default 1,000,000)")
    _store_parsers(sub)
    _bench_parser(sub)
    args = parser.parse_args(argv)
    command = "vecz " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    commands = {"build": _build, "search": _search, "calibrate": _calibrate_store, "info": _info, "check": _check,
                "codecs": _codecs}
    if argv is None:  # the command itself (not a caller's main([...])): a warning is one line, no source line
        warnings.showwarning = lambda message, category, *_a, **_k: print(
            f"vecz {args.command}: warning: {message}", file=sys.stderr)
    try:
        with plain_interrupts():  # a Ctrl-C inside a Numba call is a KeyboardInterrupt here too
            if args.command in commands:
                return commands[args.command](args)
            return _bench(args, command)
    except BrokenPipeError:  # the reader of the output went away (`| head`): not a storage error
        with contextlib.suppress(OSError):  # and no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        print(f"vecz {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except (StorageError, CommitIncomplete) as exc:  # the system refused; a CommitIncomplete's version stands
        print(f"vecz {args.command}: storage error: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except VeczError as exc:
        print(f"vecz {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # one the code did not type: still the operating system refusing (other errors are bugs)
        where = f": {exc.filename}" if exc.filename is not None else ""
        print(f"vecz {args.command}: storage error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_STORAGE


if __name__ == "__main__":
    sys.exit(main())
