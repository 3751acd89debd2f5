"""Reference writers of the interchange formats the importers read (what another tool
would produce), shared by the importer and benchmark tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_fvecs(path: Path, x: np.ndarray) -> Path:
    """`x` as .fvecs: per row a little-endian int32 width, then the float32 values."""
    x = np.asarray(x, dtype="<f4")
    rows = np.empty((x.shape[0], x.shape[1] + 1), dtype="<i4")
    rows[:, 0] = x.shape[1]
    rows[:, 1:] = x.view("<i4")
    rows.tofile(path)
    return path
