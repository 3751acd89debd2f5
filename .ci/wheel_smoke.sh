#!/usr/bin/env bash
# Wheel smoke job: build vecz's wheel, install it into a fresh virtual environment OUTSIDE
# the checkout (so nothing can be imported from the repository's folders), then use it as a
# new user would: import, build a small store, search, reopen, `vecz bench sample` on 2
# specs. Checks that site-packages gains nothing at the top level but vecz and its
# dist-info. Usage: bash .ci/wheel_smoke.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/vecz-*.whl)
echo "wheel: $(basename "$wheel") $(du -k "$wheel" | cut -f1) KiB"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$wheel"
cd "$work"  # away from the checkout
NUMBA_CACHE_DIR="$work/numba" "$work/venv/bin/python" - <<'PY'
import importlib.metadata, subprocess, sys, tempfile, time
import numpy as np
t0 = time.perf_counter()
import vecz
from vecz import Codec, Store, errors
print(f"import vecz: {time.perf_counter() - t0:.2f} s, version {vecz.__version__}")
assert vecz.__version__ == importlib.metadata.version("vecz")
assert "site-packages" in vecz.__file__, vecz.__file__
rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 64)).astype(np.float32)
with tempfile.TemporaryDirectory() as d:
    with Store.create(d + "/s", dim=64, codec="IVF16,RB1") as s:
        ids = s.add(x)
    with Store.open(d + "/s") as s:
        D, I = s.search(x[:5], k=3, rerank=30)
        assert (I[:, 0] == ids[:5]).all(), I
        try:
            s.add(x[:1])
        except errors.ReadOnlyStore:
            pass
        else:
            raise AssertionError("a read-only store accepted add")
print("store: build, search, reopen ok")
PY
# what the wheel put into site-packages: vecz/ and its dist-info only (and the console script)
"$work/venv/bin/python" - <<'PY'
import importlib.metadata
files = [str(f) for f in importlib.metadata.files("vecz")]
tops = sorted({f.split("/")[0] for f in files if not f.startswith("..")})
print("installed top-level entries:", tops, f"({len(files)} files)")
assert tops == ["vecz", f"vecz-{importlib.metadata.version('vecz')}.dist-info"], tops
assert any(f.endswith("vecz/sample/base.npy") for f in files), "the sample is not in the wheel"
PY
PATH="$work/venv/bin:$PATH" vecz --version
PATH="$work/venv/bin:$PATH" NUMBA_CACHE_DIR="$work/numba" vecz bench sample --codecs "PQ48x8;RB1" --rerank 0,50
echo "wheel smoke: ok"
