"""Sphinx configuration of the vecz docs: the API reference (autodoc + napoleon over the
numpydoc docstrings), the CLI (sphinx-argparse), the on-disk format (formats/FORMAT.md
included with myst-parser) and the recipes (docs/recipes/*.md).

Build with ``bash docs/build.sh``: nitpicky (``-n``) and warnings are errors (``-W``), so a
broken reference, a missing page or bad docstring markup fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

import vecz

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "vecz"
author = "the vecz authors"
copyright = "the vecz authors, Apache-2.0"
release = vecz.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.autosummary",  # for the `autolink` default role only (no generated stubs)
    "sphinxarg.ext",
    "myst_parser",
    "vecz_docs",  # docs/_ext/vecz_docs.py: CLI parser, re-exported names, links, docstring forms
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# docs/ also holds the benchmark outputs (linked from README and the recipes, not part of
# the site), this build's output and the local extension.
exclude_patterns = ["_build", "_ext", "results"]

# Single backticks in docstrings (numpydoc style) link when the name imports (a class,
# method, module), are set in italics when it is a name that does not (a parameter), and
# as code otherwise (a spec pattern, an expression): docs/_ext/vecz_docs.py.
default_role = "vecz-default"
autosummary_generate = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Store's constructor is private (Store.create / Store.open make stores).
vecz_hide_signature = {"vecz.engine.store.Store"}
autodoc_preserve_defaults = True
add_module_names = False
python_use_unqualified_type_names = True

napoleon_google_docstring = False
napoleon_numpy_docstring = True
# Parameters as one list with their types in parentheses (a :type: field would turn
# each word of a prose type into a class reference).
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_use_ivar = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# No network at build time, so no intersphinx: references to types of numpy, pyarrow, the
# standard library and typing cannot resolve and are ignored by pattern here. Everything
# in vecz's own namespace must resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|numpy\.typing|npt)\..*"),
    (r"py:.*", r"(pyarrow|pa)\..*"),
    (r"py:.*", rf"({'|'.join(sorted(sys.stdlib_module_names))})(\..*)?"),
    (r"py:.*", r"(Path|PathLike|NamedTuple|Callable|Iterator|Iterable|Sequence|Mapping)"),
]

html_theme = "alabaster"
html_title = f"vecz {release}"
html_theme_options = {
    "description": "compressed vector storage: compact codes in RAM, exact vectors on disk",
    "fixed_sidebar": True,
    "page_width": "1200px",  # the recipes' code lines are up to ~110 characters
    "sidebar_width": "230px",
}
# Option names and spec strings are code: no "--" to en dash, no curly quotes.
smartquotes = False
html_static_path: list[str] = []
html_show_sourcelink = False

# Repository files that a page includes whole: a Markdown link to the file (written
# relative, so it also works on the .md read on its own) leads to that page in the site.
vecz_include_pages = {"formats/FORMAT.md": "api/formats"}
