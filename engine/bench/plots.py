"""Plots of a benchmark run, read at a glance in the convention of ann-benchmarks.

Role and contract. `write_plots` draws, from the rows of a `metrics.BenchResult`:

- ``recall_vs_qps.png``: recall (x) against queries per second (y, log). Every spec family
  (`family`: PQ x8, PQ x4, RB, IVF+RB, MRL+RB, SQ, ...) is one colour and one line through
  its Pareto front (`pareto_line`: no other point of the family is both faster and better);
  the family's sizes, re-ranking depths R and nprobe values are the points. faiss's
  counterparts are drawn in the same colour, dashed, with 'x' markers. A --budget run adds
  its target recall and marks the recommended point.
- ``recall_vs_bytes.png`` (grid runs): one panel per R, bytes/vector (x, log) against recall
  (y), points coloured by family, the Pareto front as steps (vecz solid, faiss dashed).

Recall is drawn on a stretched axis, ``-log10(1 - recall)`` (`RecallAxis`), on which 0.9,
0.99 and 0.999 are equally far apart: that is where codecs are chosen. Labels name the points
on the fronts; `place_labels` puts each where it overlaps no other label and no marker, and
leaves out one that finds no free place (its point keeps its family's colour).

matplotlib (the [bench] extra) is imported only here and only when drawing, through its
object API (no pyplot, no global backend change); without it `write_plots` and `replot`
raise `MissingDependency`. `replot(results_json)` redraws the plots of a saved run without
running anything::

    python -c "from vecz.engine.bench.plots import replot; replot('docs/results/minilm/results.json')"
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInput, MissingDependency
from .metrics import BenchResult, depth_key, quality_at

__all__ = ["family", "pareto_line", "RecallAxis", "place_labels", "write_plots", "replot"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels

# A spec's family: its stages with the sizes taken out, PQ keeping its bits (x8 and x4 scan
# differently). "IVF1024,PQ96x4" -> "IVF+PQ x4", "MRL256,RB2" -> "MRL+RB", "SQ4" -> "SQ".
_FAMILY_STAGES = ((r"PQ\d+x(\d+)", r"PQ x\1"), (r"(MRL|IVF|RB|SQ)\d+", r"\1"))

_DPI = 120
_LABEL_SIZE = 7.0  # points
_MARKER_PX = 4.5  # half the side of the box a marker keeps free of labels


def family(spec: str) -> str:
    """The family a spec belongs to, e.g. ``PQ48x8`` -> ``PQ x8``, ``IVF1024,RB1`` -> ``IVF+RB``."""
    parts = []
    for stage in spec.split(","):
        for pattern, name in _FAMILY_STAGES:
            if re.fullmatch(pattern, stage):
                stage = re.sub(pattern, name, stage)
                break
        parts.append(stage)
    return "+".join(parts)


def pareto_line(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats on both coordinates (higher is better
    on both), ordered by x ascending (so y descends along the line). Of equal points, the
    first is kept."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1], i))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front[::-1]


class RecallAxis:
    """The stretched recall scale ``t = -log10(1 - recall)``: 0.5 -> 0.3, 0.9 -> 1, 0.99 -> 2.

    Recall 1 would be infinitely far: `clip` draws recall above ``1 - eps`` at ``1 - eps``,
    `eps` being half the recall step of the run (1 / (2 x queries x r) for recall@r), so
    exact recall sits just past the highest figure a run can measure below it, and its tick
    reads 1. With more than 5,000 query-neighbours the step is floored at 1e-4 (the 0.9-0.99
    band keeps its width) and the tick reads >=0.9999. The scale itself reaches a little
    further, for the axis margin.
    """

    # Candidate ticks, most wanted first; `ticks` keeps those in range that do not crowd.
    _TICKS = (0.9, 0.99, 0.999, 0.5, 0.95, 0.995, 0.9999, 0.8, 0.98, 0.998, 0.3, 0.7, 0.6, 0.4, 0.2, 0.9995, 0.0,
              0.96, 0.97, 0.985, 0.93, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.1)

    def __init__(self, n_queries: int, at: int) -> None:
        step = 0.5 / max(1, n_queries * at)
        self.eps = max(1e-4, step)
        # the top tick reads 1 when only exact recall can be drawn there
        self.top_label = "1" if self.eps == step else f">={1 - self.eps:g}"

    def clip(self, recall: Any) -> Any:
        """`recall` with values above ``1 - eps`` drawn at ``1 - eps`` (a scalar stays a float)."""
        out = np.minimum(np.asarray(recall, dtype=np.float64), 1.0 - self.eps)
        return float(out) if out.ndim == 0 else out

    def forward(self, recall: Any) -> np.ndarray:
        r = np.clip(np.asarray(recall, dtype=np.float64), 0.0, 1.0 - self.eps / 20)
        return -np.log10(1.0 - r)

    def inverse(self, t: Any) -> np.ndarray:
        return 1.0 - 10.0 ** (-np.asarray(t, dtype=np.float64))

    def limits(self, recalls: Sequence[float]) -> tuple[float, float]:
        """Axis limits in recall that hold `recalls` with a margin of 4% of the span each side."""
        t = self.forward(self.clip(list(recalls)))
        lo, hi = float(t.min()), float(t.max())
        margin = max(0.04 * (hi - lo), 0.05)
        return float(self.inverse(max(0.0, lo - margin))), float(self.inverse(hi + margin))

    def ticks(self, lo: float, hi: float) -> tuple[list[float], list[str]]:
        """Tick positions (recall) and labels within [lo, hi], at least 7% of the span apart;
        1 is ticked at its clipped place when in range."""
        t_lo, t_hi = float(self.forward(lo)), float(self.forward(hi))
        gap = 0.07 * (t_hi - t_lo)
        top = 1.0 - self.eps
        chosen: list[float] = [top] if t_lo <= float(self.forward(top)) <= t_hi else []
        for r in self._TICKS:
            t = float(self.forward(r))
            if t_lo <= t <= t_hi and all(abs(t - float(self.forward(c))) >= gap for c in chosen):
                chosen.append(r)
        chosen.sort()
        return chosen, [self.top_label if r == top else f"{r:g}" for r in chosen]


def _hits(box: Box, others: np.ndarray, pad: float) -> bool:
    """Does `box` come within `pad` of any row (x0, y0, x1, y1) of `others`?"""
    return bool(len(others)) and bool(np.any((box[0] < others[:, 2] + pad) & (others[:, 0] < box[2] + pad)
                                             & (box[1] < others[:, 3] + pad) & (others[:, 1] < box[3] + pad)))


# Where a label may go around its point, nearest first: directions (right-up first, as a
# reader scans) at growing distances in pixels.
_DIRECTIONS = ((1, 1), (1, 0), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1))
_RADII = (3.0, 8.0, 14.0, 22.0, 32.0, 44.0, 58.0)


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]], *, bounds: Box,
                 obstacles: Sequence[Box] = (), soft: Sequence[Box] = (), pad: float = 1.0,
                 radii: Sequence[float] = _RADII) -> list[Box | None]:
    """Greedy label placement: each label, in the order given, takes the nearest candidate
    box around its anchor that lies inside `bounds` and overlaps (by less than `pad`) no label
    placed before it and no obstacle (the markers); None when every candidate is taken.

    Boxes in `soft` (e.g. short pieces of the plotted lines) are avoided too while some
    candidate can, and given up on, radius by radius, before a label is left out.

    Parameters
    ----------
    anchors : (x, y) per label, display pixels (y up)
    sizes : (width, height) per label, pixels
    bounds : (x0, y0, x1, y1) the labels must stay inside

    Returns
    -------
    The box (x0, y0, x1, y1) of each label, or None; placed boxes never overlap each other
    or an obstacle.
    """
    hard = np.asarray(obstacles, dtype=np.float64).reshape(-1, 4)
    lines = np.asarray(soft, dtype=np.float64).reshape(-1, 4)
    placed = np.empty((0, 4))
    out: list[Box | None] = []
    for (ax, ay), (w, h) in zip(anchors, sizes):
        free: list[Box] = []
        for r in radii:
            for dx, dy in _DIRECTIONS:
                x0 = ax + r if dx > 0 else (ax - r - w if dx < 0 else ax - w / 2)
                y0 = ay + r if dy > 0 else (ay - r - h if dy < 0 else ay - h / 2)
                box = (x0, y0, x0 + w, y0 + h)
                if (bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1] and box[3] <= bounds[3]
                        and not _hits(box, placed, pad) and not _hits(box, hard, 0.0)):
                    free.append(box)
            clear = [box for box in free if not _hits(box, lines, 0.0)]
            if clear:
                free = clear
                break
        found = free[0] if free else None
        out.append(found)
        if found is not None:
            placed = np.vstack([placed, found])
    return out


def _line_boxes(points_px: np.ndarray, step: float = 4.0, half: float = 1.0) -> list[Box]:
    """Small boxes every `step` pixels along a polyline (display pixels), as soft obstacles."""
    boxes = []
    for (x0, y0), (x1, y1) in zip(points_px[:-1], points_px[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        for t in np.linspace(0.0, 1.0, n + 1):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            boxes.append((x - half, y - half, x + half, y + half))
    return boxes


# --------------------------------------------------------------------------- drawing


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise MissingDependency("matplotlib is not installed (pip install 'vecz[bench]')") from None
    return matplotlib


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any, list[Any]]:
    """A figure with its own Agg canvas (no pyplot state) and `ncols` axes sharing y."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, sharey=True, squeeze=False)[0]
    return fig, canvas, list(axes)


# Fixed colours (tab10 indices) for the usual families, so a family looks the same in every
# plot; others take Dark2's colours in the order they appear.
_FAMILY_COLOUR = {"PQ x8": 0, "PQ x4": 1, "MRL+RB": 2, "RB": 3, "IVF+RB": 4, "IVF+PQ x4": 5, "SQ": 6, "Flat": 7,
                  "IVF+PQ x8": 8, "MRL+IVF+RB": 9}


def _colours(families: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    fixed, extra = matplotlib.colormaps["tab10"], matplotlib.colormaps["Dark2"]
    others = [f for f in families if f not in _FAMILY_COLOUR]
    return {f: fixed(_FAMILY_COLOUR[f]) if f in _FAMILY_COLOUR else extra(others.index(f) % extra.N)
            for f in families}


def _families(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The families of `rows`, the usual ones in `_FAMILY_COLOUR`'s order, then the others."""
    found = list(dict.fromkeys(family(row["spec"]) for row in rows))
    return sorted(found, key=lambda f: (_FAMILY_COLOUR.get(f, len(_FAMILY_COLOUR)), found.index(f)))


def _recall_axis(settings: dict[str, Any], key: str, budget_mode: bool) -> RecallAxis:
    nq = (settings["heldout_queries"][1] - settings["heldout_queries"][0]) if budget_mode else settings["nq"]
    return RecallAxis(int(nq), int(key.split("@")[1]))


def _apply_recall_axis(ax: Any, axis: RecallAxis, recalls: Sequence[float], which: str) -> None:
    from matplotlib.ticker import NullLocator

    lo, hi = axis.limits(recalls)
    getattr(ax, f"set_{which}scale")("function", functions=(axis.forward, axis.inverse))
    getattr(ax, f"set_{which}lim")(lo, hi)
    getattr(ax, f"set_{which}ticks")(*axis.ticks(lo, hi))
    getattr(ax, f"{which}axis").set_minor_locator(NullLocator())


def _label_points(fig: Any, canvas: Any, ax: Any, labels: Sequence[tuple[float, float, str, Any]],
                  markers: Sequence[tuple[float, float]], lines: Sequence[Sequence[tuple[float, float]]]) -> int:
    """Write `labels` (x, y, text, colour; data coordinates, in priority order) beside their
    points where `place_labels` finds room, off the `markers` and, where it can, off the
    `lines` (polylines, data coordinates); returns how many were left out."""
    canvas.draw()  # fixes the layout: display coordinates are final from here on
    renderer = canvas.get_renderer()
    probe = ax.text(0, 0, "", fontsize=_LABEL_SIZE)
    sizes = []
    for _, _, text, _ in labels:
        probe.set_text(text)
        ext = probe.get_window_extent(renderer)
        sizes.append((ext.width, ext.height))
    probe.remove()
    to_px = ax.transData.transform
    anchors = [tuple(to_px((x, y))) for x, y, _, _ in labels]
    obstacles = [(px - _MARKER_PX, py - _MARKER_PX, px + _MARKER_PX, py + _MARKER_PX)
                 for px, py in (to_px(m) for m in markers)]
    soft = [box for line in lines if len(line) > 1 for box in _line_boxes(to_px(np.asarray(line, dtype=float)))]
    bb = ax.bbox
    boxes = place_labels(anchors, sizes, bounds=(bb.x0 + 2, bb.y0 + 2, bb.x1 - 2, bb.y1 - 2), obstacles=obstacles,
                         soft=soft)
    scale = 72.0 / fig.dpi  # pixels -> points, for offsets that survive any later dpi
    for (x, y, text, colour), (ax_px, ay_px), box in zip(labels, anchors, boxes):
        if box is None:
            continue
        far = max(box[0] - ax_px, ax_px - box[2], box[1] - ay_px, ay_px - box[3]) > 6
        ax.annotate(text, (x, y), xytext=((box[0] - ax_px) * scale, (box[1] - ay_px) * scale),
                    textcoords="offset points", ha="left", va="bottom", fontsize=_LABEL_SIZE, color=colour,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=colour, alpha=0.7, shrinkA=0, shrinkB=3)
                    if far else None)
    return sum(box is None for box in boxes)


def _plain_log_labels(axis: Any) -> None:
    """Label a log axis 2,000 / 5,000 / 10,000 rather than 2x10^3 / 10^4: every decade, and
    the 2s and 5s between when the axis spans under two decades."""
    from matplotlib.ticker import FuncFormatter

    def label(v: float, _: Any) -> str:
        lo, hi = sorted(axis.get_view_interval())
        lead = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        if lead == 1 or (lead in (2, 5) and hi / max(lo, 1e-300) < 100):
            return f"{v:,.0f}" if v >= 1 else f"{v:g}"
        return ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def _point_label(row: dict[str, Any], budget_mode: bool) -> str:
    npr = f" np{row['nprobe']}" if budget_mode and row.get("nprobe") else ""
    return f"{row['spec']}{npr} R{row['rerank']}"


def _style_handles(with_faiss: bool) -> list[Any]:
    from matplotlib.lines import Line2D

    out = [Line2D([], [], color="0.2", marker="o", markersize=5, lw=1.6, label="vecz: Pareto front (solid)"),
           Line2D([], [], color="0.2", marker="o", markersize=4, lw=0, alpha=0.35, label="vecz: off the front")]
    if with_faiss:
        out.append(Line2D([], [], color="0.2", marker="x", markersize=6, lw=1.1, ls="--",
                          label="faiss counterpart (dashed)"))
    return out


def plot_recall_vs_qps(rows: Sequence[dict[str, Any]], settings: dict[str, Any], key: str, path: Path,
                       recommendation: dict[str, Any] | None = None) -> Path:
    """recall_vs_qps.png: one Pareto line per family, faiss dashed in the same colour."""
    from matplotlib.lines import Line2D

    budget_mode = recommendation is not None
    rows = [row for row in rows if row.get(key) is not None and row.get("qps")]
    fkey = "faiss_" + key
    frows = [row for row in rows if row.get(fkey) is not None and row.get("faiss_qps")]
    families = _families(rows)
    colour = _colours(families)
    axis = _recall_axis(settings, key, budget_mode)

    fig, canvas, (ax,) = _figure(11.5, 6.6)
    labels: list[tuple[float, float, str, Any]] = []
    markers: list[tuple[float, float]] = []
    lines: list[list[tuple[float, float]]] = []
    for fam in families:
        c = colour[fam]
        mine = [row for row in rows if family(row["spec"]) == fam]
        pts = [(axis.clip(row[key]), row["qps"]) for row in mine]
        front = pareto_line(pts)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, color=c, alpha=0.35, linewidths=0, zorder=2)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=c, lw=1.6, marker="o", markersize=5,
                zorder=3)
        markers += pts
        lines.append([pts[i] for i in front])
        labels += [(pts[i][0], pts[i][1], _point_label(mine[i], budget_mode), c) for i in reversed(front)]
        theirs = [row for row in frows if family(row["spec"]) == fam]
        fpts = [(axis.clip(row[fkey]), row["faiss_qps"]) for row in theirs]
        if fpts:
            ffront = pareto_line(fpts)
            ax.scatter([p[0] for p in fpts], [p[1] for p in fpts], s=18, color=c, alpha=0.35, marker="x",
                       linewidths=1, zorder=2)
            ax.plot([fpts[i][0] for i in ffront], [fpts[i][1] for i in ffront], color=c, lw=1.1, ls="--", marker="x",
                    markersize=6, zorder=3)
            markers += fpts
            lines.append([fpts[i] for i in ffront])
    extra: list[Any] = []
    if budget_mode:
        target = settings["target_recall"]
        ax.axvline(target, color="0.4", ls=":", lw=1.2, zorder=1)
        extra.append(Line2D([], [], color="0.4", ls=":", lw=1.2, label=f"target {key} >= {target:g}"))
        chosen = [row for row in rows if row.get("recommended")]
        if chosen:
            ax.scatter([axis.clip(chosen[0][key])], [chosen[0]["qps"]], s=180, marker="*", facecolor="none",
                       edgecolor="black", linewidths=1.2, zorder=4)
            extra.append(Line2D([], [], color="black", marker="*", markersize=11, markerfacecolor="none", lw=0,
                                label="recommended"))

    _apply_recall_axis(ax, axis, [p[0] for p in markers] + ([settings["target_recall"]] if budget_mode else []), "x")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.1)
    nq = (settings["heldout_queries"][1] - settings["heldout_queries"][0]) if budget_mode else settings["nq"]
    ax.set_xlabel(f"{key}   (axis stretched toward 1: equal steps for 0.9, 0.99, 0.999)")
    ax.set_ylabel(f"queries per second, log scale ({settings['threads']} threads, batch of {nq})")
    title = settings["dataset"] + (f", budget {settings['budget']} B/vector" if budget_mode else "")
    ax.set_title(f"{title}: {key} vs speed (up and right is better)", fontsize=11)
    handles = [Line2D([], [], color=colour[f], marker="o", markersize=5, lw=1.6, label=f) for f in families]
    handles += _style_handles(bool(frows)) + extra
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="family", title_fontsize=8, alignment="left")
    ax.text(1.01, 0.0, "labels: spec and R, the rows\nre-ranked exactly (R0: codes only)"
            + (";\nnp: IVF lists probed" if budget_mode else ""), transform=ax.transAxes, fontsize=7,
            va="bottom", color="0.35")
    fig.tight_layout()
    _label_points(fig, canvas, ax, labels, markers, lines)
    fig.savefig(path, dpi=_DPI)
    return path


def plot_recall_vs_bytes(rows: Sequence[dict[str, Any]], settings: dict[str, Any], key: str, path: Path) -> Path:
    """recall_vs_bytes.png: a panel per re-ranking depth R, the Pareto front as steps."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    rows = [row for row in rows if row.get(key) is not None]
    fkey = "faiss_" + key
    families = _families(rows)
    colour = _colours(families)
    axis = _recall_axis(settings, key, False)
    depths = sorted({row["rerank"] for row in rows}, key=depth_key)
    fig, canvas, axes = _figure(3.9 * len(depths) + 2.4, 6.0, ncols=len(depths))

    all_recalls = [row[key] for row in rows] + [row[fkey] for row in rows if row.get(fkey) is not None]
    all_bytes = [row["bytes_per_vector"] for row in rows] + [row["faiss_bytes_per_vector"] for row in rows
                                                             if row.get(fkey) is not None
                                                             and row.get("faiss_bytes_per_vector")]
    panels = []
    for ax, r in zip(axes, depths):
        mine = [row for row in rows if row["rerank"] == r]
        theirs = [row for row in mine if row.get(fkey) is not None and row.get("faiss_bytes_per_vector")]
        markers: list[tuple[float, float]] = []
        labels: list[tuple[float, float, str, Any]] = []
        lines: list[list[tuple[float, float]]] = []
        for side, group, bkey, rkey, marker in (("vecz", mine, "bytes_per_vector", key, "o"),
                                                ("faiss", theirs, "faiss_bytes_per_vector", fkey, "x")):
            if not group:
                continue
            pts = [(row[bkey], axis.clip(row[rkey])) for row in group]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[colour[family(row["spec"])] for row in group],
                       marker=marker, s=30 if marker == "o" else 34, linewidths=1.2 if marker == "x" else 0,
                       zorder=3)
            front = pareto_line([(-p[0], p[1]) for p in pts])[::-1]  # bytes ascending
            ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.3",
                    lw=1.3 if side == "vecz" else 1.0, ls="-" if side == "vecz" else "--", alpha=0.8, zorder=2)
            markers += pts
            steps = [pts[i] for i in front]
            lines.append([p for a, b in zip(steps, steps[1:]) for p in (a, (b[0], a[1]))] + steps[-1:])
            if side == "vecz":
                labels = [(pts[i][0], pts[i][1], group[i]["spec"], colour[family(group[i]["spec"])]) for i in front]
        ax.set_title("codes only (R=0)" if r == 0 else f"re-ranked exactly, R={r}", fontsize=10)
        ax.set_xscale("log", base=2)
        lo, hi = min(all_bytes), max(all_bytes)
        ax.set_xlim(lo / 1.25, hi * 1.25)
        ax.xaxis.set_major_locator(FixedLocator([2 ** e for e in range(int(math.log2(lo)), int(math.log2(hi)) + 2)]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.grid(True, alpha=0.3)
        panels.append((ax, labels, markers, lines))
    _apply_recall_axis(axes[0], axis, all_recalls, "y")
    axes[0].set_ylabel(f"{key}   (axis stretched toward 1)")
    fig.supxlabel("bytes / vector in RAM (codes + 8-byte id), log scale", fontsize=10)
    fig.suptitle(f"{settings['dataset']}: {key} vs memory (up and left is better; steps: Pareto front)",
                 fontsize=11)
    handles = [Line2D([], [], color=colour[f], marker="o", markersize=5, lw=0, label=f) for f in families]
    handles += [Line2D([], [], color="0.3", marker="o", markersize=4, lw=1.3, label="vecz (front: solid)")]
    if any(row.get(fkey) is not None for row in rows):
        handles += [Line2D([], [], color="0.3", marker="x", markersize=6, lw=1.0, ls="--",
                           label="faiss counterpart\n(front: dashed)")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                    title="family", title_fontsize=8, alignment="left")
    fig.tight_layout()
    for ax, labels, markers, lines in panels:
        _label_points(fig, canvas, ax, labels, markers, lines)
    fig.savefig(path, dpi=_DPI)
    return path


def _quality_key(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    if settings.get("recall_key"):
        return settings["recall_key"]
    # the depth the run ranked by (`metrics.quality_at`): 10, else the deepest reported (k < 10: recall@k,
    # which this read as recall@1 when the settings did not name it)
    have = sorted({int(key[7:]) for row in rows for key, value in row.items()
                   if key.startswith("recall@") and key[7:].isdigit() and value is not None})
    if not have:
        raise InvalidInput("expected rows with recall@1, @10 or @100, found none")
    return f"recall@{quality_at(have)}"


def _draw(rows: Sequence[dict[str, Any]], settings: dict[str, Any], key: str, out: Path,
          recommendation: dict[str, Any] | None) -> list[Path]:
    _matplotlib()
    if not any(row.get(key) is not None for row in rows):  # e.g. a --budget search that confirmed nothing
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if recommendation is None:
        written.append(plot_recall_vs_bytes(rows, settings, key, out / "recall_vs_bytes.png"))
    written.append(plot_recall_vs_qps(rows, settings, key, out / "recall_vs_qps.png", recommendation))
    return written


def write_plots(result: BenchResult, out: str | Path) -> list[Path]:
    """recall_vs_bytes.png (grid runs) and recall_vs_qps.png (both kinds) into `out`; none
    when no row has a recall figure.

    Raises `MissingDependency` when matplotlib is not installed.
    """
    return _draw(result.rows, result.settings, result.quality_key, Path(out), result.recommendation)


def replot(results_json: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw the plots of a saved run (its results.json) into `out_dir` (default: beside it),
    without running anything. Returns the files written."""
    path = Path(results_json)
    payload = json.loads(path.read_text(encoding="utf-8"))
    rows, settings = payload["rows"], payload["settings"]
    return _draw(rows, settings, _quality_key(rows, settings), Path(out_dir) if out_dir else path.parent,
                 payload.get("recommendation"))
