"""`vecz` command line (DESIGN.md's CLI). The store commands arrive with the store issue."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vecz", description="compressed vector storage")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("codecs", help="list the codec stages and their bytes per vector")
    args = parser.parse_args(argv)
    if args.command == "codecs":
        print("stages: MRL<d>, IVF<n>, PQ<M>x<4|8>, RB<1..8>, SQ8, SQ4, F16, Flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
