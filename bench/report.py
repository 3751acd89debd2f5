"""Markdown table of a scan benchmark run: vecz against faiss, pair by pair.

Reads the JSON that pytest-benchmark writes with `--benchmark-json` (see bench/README.md)
and prints one row per (vecz variant, faiss variant) of each group: QPS of each side, the
ratio vecz / faiss, recall@10 of each and bytes per vector of each. QPS is queries divided
by the median round time (one round = one batch call over all queries, one thread).

    python bench/report.py bench/out/scans.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

__all__ = ["qps", "pairs", "render", "main"]

SIDES = ("vecz", "faiss")


def qps(bench: dict[str, Any]) -> float | None:
    """Queries per second from the median round time and the recorded query count."""
    nq = bench.get("extra_info", {}).get("nq")
    median = bench.get("stats", {}).get("median")
    if not nq or not median:
        return None
    return nq / median


def pairs(benchmarks: list[dict[str, Any]]) -> Iterator[tuple[str, dict | None, dict | None]]:
    """(group, vecz benchmark, faiss benchmark) for every combination within each group, in
    the order groups first appear; a side absent from a group (e.g. deselected) is None."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for bench in benchmarks:
        side = bench.get("extra_info", {}).get("side")
        if side not in SIDES:
            continue
        group = bench.get("group") or bench["name"]
        groups.setdefault(group, {s: [] for s in SIDES})[side].append(bench)
    for group, sides in groups.items():
        for v in sides["vecz"] or [None]:
            for f in sides["faiss"] or [None]:
                yield group, v, f


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _info(bench: dict | None, key: str) -> Any:
    return None if bench is None else bench.get("extra_info", {}).get(key)


def render(doc: dict[str, Any]) -> str:
    """The markdown report of one pytest-benchmark JSON document."""
    lines = []
    machine = doc.get("machine_info", {})
    settings = machine.get("vecz_bench", {})
    commit = doc.get("commit_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "unknown CPU"
    lines.append(f"Scan benchmarks, {doc.get('datetime', '?')}: {cpu}, one thread, k={settings.get('k', 10)}, "
                 f"{settings.get('nq', '?')} queries, {settings.get('rounds', '?')} rounds each.")
    versions = ", ".join(f"{name} {settings[name]}" for name in ("numba", "faiss", "numpy") if name in settings)
    commit_id = str(commit.get("id") or "")
    if commit_id and all(c in "0123456789abcdef" for c in commit_id):  # else "unversioned"
        versions += f"; commit {commit_id[:10]}{' (dirty)' if commit.get('dirty') else ''}"
    if versions:
        lines.append(versions.strip("; ") + ".")
    lines.append("QPS = queries / median round time; bytes/vector = codes + per-vector factors (ids excluded).")
    lines.append("")
    lines.append("| pair | vecz | faiss | vecz QPS | faiss QPS | vecz/faiss | vecz recall@10 | faiss recall@10 "
                 "| vecz B/vec | faiss B/vec |")
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    n_rows = 0
    for group, v, f in pairs(doc.get("benchmarks", [])):
        vq = qps(v) if v else None
        fq = qps(f) if f else None
        ratio = vq / fq if vq and fq else None
        lines.append(
            f"| {group} | {_info(v, 'variant') or '–'} | {_info(f, 'variant') or '–'} "
            f"| {_num(vq, ',.0f')} | {_num(fq, ',.0f')} | {_num(ratio, '.2f')}{'x' if ratio else ''} "
            f"| {_num(_info(v, 'recall'), '.3f')} | {_num(_info(f, 'recall'), '.3f')} "
            f"| {_info(v, 'bytes_per_vector') or '–'} | {_info(f, 'bytes_per_vector') or '–'} |"
        )
        n_rows += 1
    if not n_rows:
        raise ValueError("no vecz/faiss benchmarks with timings in this file (was it run with --benchmark-disable?)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON, e.g. bench/out/scans.json")
    args = parser.parse_args(argv)
    try:
        text = render(json.loads(args.json.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        print(f"report.py: {args.json}: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
