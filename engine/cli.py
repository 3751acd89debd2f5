"""`vecz` command line (DESIGN.md's CLI): argument parsing and terminal output.

`vecz bench` is implemented here on top of `engine.bench` (the logic); the store commands
(build, search, info, check) arrive with the store issue. Exit codes: 0 on success, 2 on
bad input (unknown dataset or file, malformed file, bad spec or option), as argparse does
for bad usage.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .errors import InvalidInput, VeczError

__all__ = ["main"]


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    from .bench import DATASETS, DEFAULT_CODECS

    p = sub.add_parser(
        "bench",
        help="benchmark codecs: recall, bytes/vector, speed (optionally against faiss)",
        description=(
            "Benchmark codec specs on a base and queries: recall@1/10/100 against exact search, "
            "bytes per vector in RAM, QPS and per-query latency, with optional exact re-ranking of "
            "the R best candidates and a faiss baseline measured in the same run. DATA is either a "
            f"named dataset ({', '.join(DATASETS)}) or a BASE file (.npy or .fvecs) followed by QUERIES."
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
    p.add_argument("queries", metavar="QUERIES", nargs="?", help="query vectors file (with a BASE file)")
    p.add_argument("--gt", metavar="GT", help="ground-truth ids (.npy or .ivecs, rows = queries, rank order); "
                   "default: exact top-100 computed in float32")
    p.add_argument("--codecs", metavar="SPECS",
                   help=f"';'-separated codec specs (default for named datasets: {DEFAULT_CODECS!r})")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine", help="default: cosine")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--rerank", default="0,50", metavar="R,R",
                   help="re-ranking depths: 0 = codes only, R >= k re-scores the best R exactly (default 0,50)")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query (default 16)")
    p.add_argument("--faiss", action="store_true", help="also run the closest faiss index for each spec")
    p.add_argument("--threads", type=int, default=None, help="Numba and faiss threads (default: all cores)")
    p.add_argument("--texts", metavar="BASE_TEXTS", help="base texts, line i = row i (.txt or .txt.gz)")
    p.add_argument("--query-texts", metavar="QUERY_TEXTS", help="query texts, line i = query i")
    p.add_argument("--show", type=int, default=3, metavar="N",
                   help="queries whose neighbour texts are printed when texts are available (default 3)")
    p.add_argument("--nq", type=int, default=None, metavar="N", help="use only the first N queries")
    p.add_argument("--out", metavar="DIR", help="write report.md, results.csv, results.json and plots here")


def _bench(args: argparse.Namespace, command: str) -> int:
    from . import bench

    started = time.perf_counter()
    if args.queries is None:
        if args.data not in bench.DATASETS and Path(args.data).is_file():
            raise InvalidInput(f"{args.data!r} is a file: give BASE QUERIES, or a dataset name "
                               f"({', '.join(bench.DATASETS)})")
        data = bench.load_named(args.data, nq=args.nq, gt=args.gt, texts=args.texts, query_texts=args.query_texts)
        codecs = args.codecs or bench.DEFAULT_CODECS
    else:
        if args.data in bench.DATASETS:
            raise InvalidInput(f"the named dataset {args.data!r} takes no QUERIES argument")
        if not args.codecs:
            raise InvalidInput("--codecs 'SPEC;SPEC;...' is required with BASE QUERIES files")
        data = bench.load_files(args.data, args.queries, gt=args.gt, texts=args.texts,
                                query_texts=args.query_texts, nq=args.nq)
        codecs = args.codecs
    specs = bench.parse_codecs(codecs, data.base.shape[1], args.metric)
    rerank = bench.parse_rerank(args.rerank, args.k)
    result = bench.run_bench(
        data,
        specs,
        metric=args.metric,
        k=args.k,
        rerank=rerank,
        nprobe=args.nprobe,
        with_faiss=args.faiss,
        threads=args.threads,
        progress=sys.stdout.isatty(),
    )
    s = result.settings
    print(f"vecz bench {s['dataset']}: {s['n']} x {s['dim']} base, {s['nq']} queries, metric {s['metric']}, "
          f"k={s['k']}, nprobe={s['nprobe']}, {s['threads']} threads; ground truth: {s['ground_truth']}")
    print(f"bytes/vec = codes + 8-byte id in RAM; R = rows re-scored exactly per query; "
          f"* = best {result.quality_key} at or under that bytes/vec (same R)")
    print()
    print(bench.format_table(result))
    notes = sorted({row["faiss_note"] for row in result.rows if row.get("faiss_note")})
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")
    examples = bench.format_examples(result, data, args.show)
    if examples:
        print()
        print(examples)
    if args.out:
        print()
        for note in bench.write_outputs(result, args.out, bench.machine_info(command), examples):
            print(note)
    print()
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `vecz` command line; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="vecz", description="compressed vector storage")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("codecs", help="list the codec stages and their bytes per vector")
    _bench_parser(sub)
    args = parser.parse_args(argv)
    command = "vecz " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.command == "codecs":
        print("stages: MRL<d>, IVF<n>, PQ<M>x<4|8>, RB<1..8>, SQ8, SQ4, F16, Flat")
        return 0
    try:
        return _bench(args, command)
    except VeczError as exc:
        print(f"vecz {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
