"""`vecz bench`: the compression benchmark, the library's own wing (`vecz.engine.bench`).

Modules, in the order they import each other (no cycles; tests/test_layout.py checks it):

- `exact`: exact float32 search, the truth recall is measured against, and exact re-ranking;
- `metrics`: THE `recall_at`, timing of searches, `BenchResult`, Pareto front, best per budget;
- `data`: named datasets, files, ground truth and its cache (the user cache directory);
- `faiss_side`: the faiss baselines (faiss comes from `vecz.engine.faiss_interop`);
- `plots`: recall against speed and against memory, PNG (matplotlib, the [bench] extra);
- `runner`: THE `build_store`, `measure_store`, `run_bench` (the grid behind `vecz bench`);
- `report`: terminal tables, examples, machine info, report.md / results.csv / results.json;
- `budget`: `vecz bench --budget B` (what spec, nprobe and R reach a recall fastest).

The names below are the ones `vecz bench` (engine/cli.py) and the bench/ scripts use.
"""

from __future__ import annotations

from .budget import recommend
from .data import DATASETS, Dataset, ground_truth, load_files, load_named
from .metrics import BenchResult, pareto_front, recall_at
from .plots import replot, write_plots
from .report import format_examples, format_table, machine_info, write_outputs
from .runner import (DEFAULT_CODECS, SAMPLE_CODECS, build_store, default_codecs, measure_store, parse_codecs,
                     parse_rerank, run_bench, set_blas_threads, set_threads)

__all__ = [
    "DATASETS",
    "DEFAULT_CODECS",
    "SAMPLE_CODECS",
    "Dataset",
    "BenchResult",
    "load_named",
    "load_files",
    "ground_truth",
    "recall_at",
    "pareto_front",
    "default_codecs",
    "parse_codecs",
    "parse_rerank",
    "set_threads",
    "set_blas_threads",
    "build_store",
    "measure_store",
    "run_bench",
    "recommend",
    "format_table",
    "format_examples",
    "machine_info",
    "write_outputs",
    "write_plots",
    "replot",
]
