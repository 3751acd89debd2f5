#!/usr/bin/env bash
# Build the vecz docs (API reference from the docstrings, the CLI, the on-disk format, the
# recipes) with Sphinx, nitpicky (-n) and with every warning an error (-W, reported all at
# once with --keep-going): a broken reference, a page outside the toctree or bad docstring
# markup exits non-zero.
#
#   bash docs/build.sh [OUTDIR]      # default docs/_build/html
#
# Needs the docs extra: pip install -e '.[docs]'. PYTHON selects the interpreter (default:
# the python on PATH, e.g. an activated virtualenv's).
set -euo pipefail

docs="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$docs/_build/html}"
python="${PYTHON:-python}"

if ! "$python" -c "import sphinx, myst_parser, sphinxarg" 2>/dev/null; then
    echo "docs/build.sh: Sphinx, myst-parser or sphinx-argparse missing for $python: pip install -e '.[docs]'" >&2
    exit 2
fi

doctrees="$(mktemp -d)"
trap 'rm -rf "$doctrees"' EXIT

start=$SECONDS
"$python" -m sphinx -b html -W --keep-going -n -q -d "$doctrees" "$docs" "$out"
echo "docs built in $out ($((SECONDS - start)) s)"
