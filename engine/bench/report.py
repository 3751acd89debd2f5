"""What a benchmark run prints and writes: tables, neighbour examples, machine info, and the
report.md / results.csv / results.json / PNG plots of an output folder.

Role and contract. Everything here reads a `metrics.BenchResult` and measures nothing:
`format_table` (terminal) and `markdown_table` (report.md) show one row per spec x R with
`*` on the Pareto front; `format_examples` prints query texts beside the neighbours found;
`machine_info` records platform, CPU and library versions; `write_outputs` writes the
folder, taking the report body from the caller for a `--budget` run
(`vecz.engine.bench.budget.write_outputs`) and plotting through `vecz.engine.bench.plots`
(a note instead when matplotlib is not installed).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import MissingDependency
from .data import Dataset
from .faiss_side import FAISS_KEYS, faiss_version
from .metrics import NEAR_BEST, BenchResult, best_compressed, best_per_budget, depth_key
from .plots import write_plots

__all__ = [
    "depth_cell",
    "num_cell",
    "measured_columns",
    "csv_columns",
    "aligned_table",
    "markdown_rows",
    "format_table",
    "markdown_table",
    "format_examples",
    "machine_info",
    "CSV_COLUMNS",
    "settings_line",
    "write_outputs",
]

Column = tuple[str, str, Callable[[dict], str]]  # header, alignment ("<" or ">"), formatter


def depth_cell(row: dict) -> str:
    """The R cell: a depth, or ``auto:R c=<confidence>``."""
    r = row.get("rerank")
    if r is None:
        return "-"
    if isinstance(r, str):
        c = row.get("confidence")
        return r if c is None else f"{r} c={c:g}"
    return str(r)


def num_cell(key: str, fmt: str) -> Callable[[dict], str]:
    """Formatter of one numeric table cell: `fmt` of row[key], '-' when it is None."""
    return lambda row: "-" if row.get(key) is None else format(row[key], fmt)


def measured_columns(qps_fmt: str) -> list[Column]:
    """The (header, alignment, formatter) columns every table shares: speed, disk reads, build."""
    return [
        ("QPS", ">", num_cell("qps", qps_fmt)),
        ("p50 ms", ">", num_cell("p50_ms", ".3f")),
        ("p99 ms", ">", num_cell("p99_ms", ".3f")),
        ("rows/q", ">", num_cell("rows_read_per_query", "g")),
        ("rows p99", ">", num_cell("rows_read_p99", "g")),
        ("miss", ">", lambda row: "-" if row.get("miss_rate") is None else f"{100 * row['miss_rate']:.2f}%"),
        ("KiB/q", ">", lambda row: "-" if row.get("bytes_read_per_query") is None
         else f"{row['bytes_read_per_query'] / 1024:.1f}"),
        ("build s", ">", num_cell("build_s", ".1f")),
    ]


def faiss_columns(key: str, qps_fmt: str) -> list[Column]:
    """faiss's `key`, its QPS and the ratio vecz / faiss ('n/a' where faiss has no figure)."""
    fkey = "faiss_" + key
    return [
        (f"faiss {key}", ">", lambda row: "n/a" if row.get(fkey) is None else f"{row[fkey]:.3f}"),
        ("faiss QPS", ">", lambda row: "n/a" if row.get("faiss_qps") is None else format(row["faiss_qps"], qps_fmt)),
        ("vs faiss", ">", lambda row: "n/a" if row.get("speed_vs_faiss") is None else f"{row['speed_vs_faiss']:.2f}x"),
    ]


def aligned_table(head: Sequence[str], lines: Sequence[Sequence[str]], aligns: Sequence[str]) -> str:
    """Plain text: columns padded to their widest cell, a dashed rule under the header."""
    cells = [list(head)] + [list(line) for line in lines]
    widths = [max(len(line[j]) for line in cells) for j in range(len(head))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(format(v, f"{aligns[j]}{widths[j]}") for j, v in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_rows(head: Sequence[str], lines: Sequence[Sequence[str]], aligns: Sequence[str]) -> str:
    """A markdown table; ">" columns are right-aligned."""
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" if a == "<" else "---:" for a in aligns) + " |"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _columns(result: BenchResult, faiss_cols: bool, mark: str = "*") -> list[Column]:
    """(header, alignment, formatter) of each table column; `mark` flags Pareto rows."""
    num = num_cell
    qkey = result.quality_key
    cols: list[Column] = [
        ("spec", "<", lambda row: row["spec"]),
        ("bytes/vec", ">", num("bytes_per_vector", "d")),
        ("RAM B/vec", ">", num("ram_bytes_per_vector", ".1f")),
        ("nprobe", ">", lambda row: "-" if row.get("nprobe") is None else str(row["nprobe"])),
        ("R", ">", depth_cell),
    ]
    for a in result.recall_ats:
        key = f"recall@{a}"
        if key == qkey:
            cols.append((key, ">", lambda row, key=key: ("-" if row[key] is None else f"{row[key]:.3f}")
                         + (mark if row.get("pareto") else " ")))
        else:
            cols.append((key, ">", num(key, ".3f")))
    cols += measured_columns(".0f")
    if faiss_cols:
        cols += faiss_columns(qkey, ".0f")
    return cols


def format_table(result: BenchResult) -> str:
    """Plain aligned text: one line per row, `*` after the quality figure of Pareto rows."""
    cols = _columns(result, bool(result.settings.get("faiss")))
    return aligned_table([c[0] for c in cols], [[c[2](row) for c in cols] for row in result.rows],
                         [c[1] for c in cols])


def markdown_table(result: BenchResult) -> str:
    """The table in markdown; Pareto rows carry `*` after their quality figure and in bold spec."""
    cols = _columns(result, bool(result.settings.get("faiss")), mark="\\*")
    lines = []
    for row in result.rows:
        cells = [c[2](row).strip() for c in cols]
        if row.get("pareto"):
            cells[0] = f"**{cells[0]}**"
        lines.append(cells)
    return markdown_rows([c[0] for c in cols], lines, [c[1] for c in cols])


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(1, width - 3)] + "..."


def format_examples(result: BenchResult, data: Dataset, n_show: int, top: int = 3) -> str | None:
    """Query texts with the top-`top` neighbour texts of the best compressed spec beside the exact ones.

    Each found neighbour is prefixed with its exact rank (``#2``; ``#-`` when outside the
    ground truth's depth). Returns None when texts are missing or nothing is to be shown.
    """
    if n_show <= 0 or data.base_texts is None or data.query_texts is None:
        return None
    pick = best_compressed(result)
    if pick is None:
        return None
    spec, r = pick
    ids = result.found[(spec, r)]
    gt = result.gt
    term = shutil.get_terminal_size((120, 24)).columns
    width = max(30, min(70, (term - 12) // 2))
    left_head = f"vecz {spec}" + (" (codes only)" if r == 0 else f" (R={r})")
    lines = [f"Neighbours found by the best compressed spec, {left_head}, beside the exact ones "
             f"(#n = the found text's exact rank):"]
    for qi in range(min(n_show, len(ids))):
        lines.append("")
        lines.append(f"query {qi}: {_clip(data.query_texts[qi], term - 12)}")
        lines.append(f"  {'':3} {left_head:<{width}}  exact (float32)")
        truth = list(gt[qi])
        for rank in range(top):
            fid = int(ids[qi, rank]) if rank < ids.shape[1] else -1
            tid = int(gt[qi, rank]) if rank < gt.shape[1] else -1
            if fid >= 0:
                where = f"#{truth.index(fid) + 1}" if fid in truth else "#-"
                left = f"{where:>4} {data.base_texts[fid]}"
            else:
                left = "   - (empty)"
            right = data.base_texts[tid] if tid >= 0 else "-"
            lines.append(f"  {rank + 1:>2}. {_clip(left, width):<{width}}  {_clip(right, width)}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info(command: str | None = None) -> dict[str, Any]:
    """Platform, CPU count and library versions (faiss: None when not installed), and the
    command line."""
    import numba

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "faiss": faiss_version(),
    }
    if command is not None:
        info["command"] = command
    return info


CSV_COLUMNS = (
    "spec", "code_size", "bytes_per_vector", "ram_bytes_per_vector", "nprobe", "rerank", "tune_recall@10",
    "recall@1", "recall@10", "recall@100", "qps", "p50_ms", "p99_ms", "rows_read_per_query", "rows_read_p99",
    "confidence", "miss_rate",
    "bytes_read_per_query", "candidates_per_query", "build_s", "train_s", "pareto", "recommended",
) + FAISS_KEYS


def _budget_markdown(result: BenchResult) -> str:
    depths = sorted({row["rerank"] for row in result.rows}, key=depth_key)
    head = ["bytes/vec budget"] + [("codes only" if r == 0 else f"R={r}") for r in depths]
    lines = []
    for entry in best_per_budget(result):
        cells = [str(entry["bytes_per_vector"])]
        for r in depths:
            b, f = entry["best"][r], entry["fastest"][r]
            cell = "-" if b is None else f"**{b[0]}** ({b[1]:.3f}, {b[2]:,.0f} QPS)"
            if f is not None and b is not None and f[0] != b[0]:
                cell += f"; fastest near it: {f[0]} ({f[1]:.3f}, {f[2]:,.0f} QPS)"
            cells.append(cell)
        lines.append(cells)
    return markdown_rows(head, lines, [">"] + ["<"] * len(depths))


def _write_json_csv(result: BenchResult, out: Path, machine: dict[str, Any]) -> None:
    payload = {"settings": result.settings, "machine": machine, "rows": result.rows}
    if result.recommendation is not None:
        payload["recommendation"] = result.recommendation
    (out / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n",
                                      encoding="utf-8")
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        columns = csv_columns(result)
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def csv_columns(result: BenchResult) -> list[str]:
    """`CSV_COLUMNS` for `result`: recall@k beside the others where k < 10 reports it, and the
    tuning recall under the key the recommender ranked by."""
    columns = list(CSV_COLUMNS)
    for a in result.recall_ats:
        if a not in (1, 10, 100):
            for prefix in ("", "faiss_"):
                columns.insert(columns.index(f"{prefix}recall@10"), f"{prefix}recall@{a}")
    columns[columns.index("tune_recall@10")] = f"tune_{result.quality_key}"
    return columns


def settings_line(s: dict[str, Any]) -> str:
    """One sentence of what was run: sizes, metric, k, threads and the ground truth's source."""
    return (f"{s['n']} base vectors x {s['dim']} dims, {s['nq']} queries, metric {s['metric']}, k = {s['k']}, "
            f"{s['threads']} threads. Ground truth: {s['ground_truth']}.")


def _grid_markdown(result: BenchResult) -> list[str]:
    s = result.settings
    return [
        f"# vecz bench: {s['dataset']}",
        "",
        settings_line(s) + f" nprobe = {s['nprobe']}.",
        "",
        "Every spec is built as a real store (codes in RAM, float32 vectors in the dense file) and searched "
        "through it. bytes/vec = code bytes + 8-byte id; RAM B/vec = what the open store measures it holds "
        "after a first search (codes in scan layout with padding, ids, trained and derived arrays) / rows; "
        "R = rows re-scored exactly per query, read from the dense file (rows/q and KiB/q as counted by the store); QPS over the whole "
        f"batch; p50/p99 over {s['latency_queries']} queries sent one at a time; build = train + encode + "
        f"write + fsync. `*` and bold: best {result.quality_key} at or under that row's bytes/vector among "
        "rows with the same R (the Pareto front)."
        + (f" faiss: closest index configuration, same data, training rows and threads (RaBitQ with qb = "
           f"{s['faiss_rabitq_qb']}; IndexRefineFlat for R > 0, which keeps the float32 vectors in RAM); "
           "'vs faiss' = vecz QPS / faiss QPS." if s.get("faiss") else ""),
        "",
        markdown_table(result),
        "",
        f"## Best spec per budget ({result.quality_key}, by re-ranking depth)",
        "",
        f"Each cell: the best {result.quality_key} among specs with at most that many bytes per vector, "
        f"and the fastest spec within {NEAR_BEST} of it when that is another one.",
        "",
        _budget_markdown(result),
        "",
    ]


def write_outputs(result: BenchResult, out: str | Path, machine: dict[str, Any], examples: str | None = None, *,
                  body: list[str] | None = None) -> list[str]:
    """Write report.md, results.csv, results.json and (with matplotlib) PNG plots into `out`.

    `body` is the top of report.md (default: a grid run's tables); the faiss notes, the
    examples and the machine follow it. Plots: see `vecz.engine.bench.plots.write_plots`.
    Returns notes for the terminal (files written, plots skipped).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    _write_json_csv(result, out, machine)
    md = list(body) if body is not None else _grid_markdown(result)
    faiss_notes = sorted({row["faiss_note"] for row in result.rows if row.get("faiss_note")})
    if faiss_notes:
        md += ["faiss notes:", ""] + [f"- {n}" for n in faiss_notes] + [""]
    if examples:
        md += ["## Neighbours", "", "```", examples, "```", ""]
    md += ["## Machine", ""] + [f"- {k}: `{v}`" for k, v in machine.items()] + [""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written = ["report.md", "results.csv", "results.json"]
    try:
        written += [p.name for p in write_plots(result, out)]
    except MissingDependency as exc:
        notes.append(f"plots skipped: {exc}")
    notes.insert(0, f"wrote {', '.join(written)} to {out}")
    return notes
