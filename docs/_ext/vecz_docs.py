"""Local Sphinx helpers for the vecz docs (docs/conf.py loads this file as an extension).

- ``cli_parser()``: the `vecz` command's real argparse parser, for sphinx-argparse. The
  parser is built inside ``vecz.engine.cli.main``; we run ``main`` with ``parse_args``
  patched to hand the parser back, so the docs show exactly what the command parses without
  the CLI module having to export a parser factory.
- Re-exported names resolve to where they are documented. Docstrings say `VeczError` or
  `SearchResult` inside modules that import them (vecz.engine.store imports SearchResult
  from vecz.engine.codecs; the errors are defined in vecz.formats.errors / vecz.engine.errors
  and documented under vecz.errors). When a Python cross-reference finds no target under the
  name written, this handler imports the name the way Python would from that module and, if
  the object it finds is documented under another name, links there. A name that imports to
  nothing documented still fails the nitpicky build. An object of a module documented at
  module level only (the kernels, the format modules) links to that module's page.
- Docstrings rendered as numpydoc although some use a looser form (see
  ``_numpydoc_fields``): ``name : what it is`` on one line, and a closing paragraph after
  a Parameters section. The files are left as they are; only the rendering is adapted.
- Markdown links to repository files outside the site (README.md, formats/FORMAT.md, the
  benchmark reports under docs/results/) are written as relative paths, so they work when
  the .md file is read on its own; in the site they become a link to the page that
  includes the file (``vecz_include_pages`` in conf.py) or a download of the file. A link
  to a file that does not exist still fails the build.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.transforms import Transform
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.ext.autosummary import AutoLink, ImportExceptionGroup, import_by_name


class _GotParser(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def cli_parser() -> argparse.ArgumentParser:
    """The parser that ``vecz.engine.cli.main`` builds (captured at ``parse_args``)."""
    from vecz.engine import cli

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _GotParser(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        cli.main(["--help"])
    except _GotParser as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError("vecz.engine.cli.main returned without calling ArgumentParser.parse_args")


def _documented(env: Any) -> dict[int, str]:
    """id(object) -> the full name it is documented under (classes, functions, modules)."""
    cache = getattr(env, "_vecz_documented", None)
    if cache is not None and cache[0] == len(env.domains["py"].objects):
        return cache[1]
    table: dict[int, str] = {}
    for fullname, entry in env.domains["py"].objects.items():
        if entry.objtype not in ("class", "exception", "function", "module"):
            continue
        try:
            _, obj, _, _ = import_by_name(fullname)
        except ImportExceptionGroup:
            continue
        table.setdefault(id(obj), fullname)
    env._vecz_documented = (len(env.domains["py"].objects), table)
    return table


def _canonical(env: Any, node: Any) -> str | None:
    target = node["reftarget"].lstrip(".~")
    modname, clsname = node.get("py:module"), node.get("py:class")
    prefixes: list[str | None] = []
    if modname and clsname:
        prefixes.append(f"{modname}.{clsname}")
    if modname:
        prefixes.append(modname)
    prefixes.append(None)
    # a prefix the target already starts with would make autosummary warn of a cycle
    prefixes = [p for p in prefixes if p is None or not (target == p or target.startswith(p + "."))]
    try:
        _, obj, parent, _ = import_by_name(target, prefixes)
    except ImportExceptionGroup:
        return None
    table = _documented(env)
    if id(obj) in table:
        return table[id(obj)]
    # a member (method, property, attribute) of a class documented under another name
    attr = target.rsplit(".", 1)[-1]
    if inspect.isclass(parent) and id(parent) in table:
        return f"{table[id(parent)]}.{attr}"
    # a function, class or constant of a module documented at module level only
    if inspect.ismodule(parent) and id(parent) in table:
        return table[id(parent)]
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is not None and id(module) in table and (inspect.isfunction(obj) or inspect.isclass(obj)
                                                       or hasattr(obj, "py_func")):  # numba dispatchers
        return table[id(module)]
    return None


def _resolve_reexport(app: Sphinx, env: Any, node: Any, contnode: nodes.Element) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    canonical = _canonical(env, node)
    if canonical is None or canonical == node["reftarget"]:
        return None
    domain = env.domains["py"]
    retry = node.deepcopy()
    retry["reftarget"] = canonical
    retry["refspecific"] = False
    reftype = node["reftype"]
    target = domain.objects.get(canonical)
    if target is None:
        return None  # not documented under its canonical name either: Sphinx reports it
    if target.objtype == "module" and reftype != "mod":
        reftype = "mod"  # a kernel named by `kmeans_fit` links to its module's entry
    return domain.resolve_xref(env, node["refdoc"], app.builder, reftype, canonical, retry, contnode)


_PY_NAME = re.compile(r"~?\.?[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\(\))?")


class DefaultRole(AutoLink):
    """The default role (single backticks): a Python name links like autosummary's
    ``autolink`` (italics when it imports to nothing); any other text, e.g. a spec
    pattern such as `PQ<M>x<b>` or an expression `x[:d]`, is set as code. Plain autolink
    would read ``PQ<M>x<b>`` as "title <target>" and drop the text."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        if _PY_NAME.fullmatch(self.text):
            return super().run()
        return [nodes.literal(self.rawtext, self.text)], []


_FIELD_SECTIONS = {"parameters", "other parameters", "attributes", "keyword arguments"}
_ANY_SECTION = _FIELD_SECTIONS | {"returns", "yields", "raises", "warns", "see also", "notes", "examples",
                                  "references", "methods", "warnings", "receives"}


def _looks_like_type(text: str) -> bool:
    """``int``, ``np.ndarray``, ``{"itq", "random"}``, ``dict[str, int] | None``, ``int, optional``."""
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "T", text.strip())
    text = re.sub(r",\s*optional$", "", text)
    parts = re.split(r"\s*(?:\||,|\bor\b)\s*", text)
    return all(re.fullmatch(r"[\w.]+", part) for part in parts)


def _numpydoc_fields(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Adapt two loose forms to numpydoc before napoleon reads the docstring.

    In a Parameters (or Attributes) section, ``dim : width of the vectors`` puts prose
    where numpydoc expects a type: it becomes ``dim`` with the prose as its description.
    An unindented line that is no field (``name`` or ``name : type``) starts prose after
    the section, which napoleon would read as more parameter names: a Notes heading is
    put before it.
    """
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip().lower() in _ANY_SECTION and re.fullmatch(r"\s*-{3,}\s*", nxt):
            section = line.strip().lower()
            out += [line, nxt]
            i += 2
            continue
        if section in _FIELD_SECTIONS and line and not line[0].isspace():
            field = re.fullmatch(r"(\*{0,2}[\w]+(?:\s*,\s*\*{0,2}[\w]+)*)\s+:\s+(.*)", line)
            if field and not _looks_like_type(field.group(2)):
                out += [field.group(1), "    " + field.group(2)]
                i += 1
                continue
            if not field and not re.fullmatch(r"\*{0,2}[\w]+(\s*,\s*\*{0,2}[\w]+)*", line.strip()):
                out += ["Notes", "-----"]
                section = "notes"
        out.append(line)
        i += 1
    lines[:] = out


def _hide_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
                    return_annotation: str | None) -> tuple[str, str | None] | None:
    """Classes built by factory methods only (``Store.create``/``Store.open``) show no
    constructor signature (``vecz_hide_signature`` in conf.py)."""
    if what == "class" and name in app.config.vecz_hide_signature:
        return "", None
    return None


class RepositoryLinks(Transform):
    """Markdown links to files outside the site: to the page including them, or a download."""

    default_priority = 500

    def apply(self, **kwargs: Any) -> None:
        env = self.document.settings.env
        srcdir = Path(env.srcdir).resolve()
        repo = srcdir.parent
        pages: dict[str, str] = env.config.vecz_include_pages
        doc_dir = Path(env.doc2path(env.docname)).parent
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
                continue
            docname = node["reftarget"]
            if docname in env.found_docs:
                continue
            base = Path(docname) if os.path.isabs(docname) else srcdir / docname
            found = [base.with_name(base.name + s) for s in env.config.source_suffix if
                     base.with_name(base.name + s).is_file()]
            if not found:
                continue  # myst reports the missing document
            path = found[0].resolve()
            rel_repo = path.relative_to(repo).as_posix() if path.is_relative_to(repo) else None
            if rel_repo in pages:
                node["reftarget"] = pages[rel_repo]
                continue
            download = addnodes.download_reference(
                refdomain=None, reftype="myst", refdoc=env.docname, refexplicit=True,
                reftarget=os.path.relpath(path, doc_dir), classes=["xref", "download", "myst"],
            )
            download += node.children
            node.replace_self(download)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("vecz_include_pages", {}, "env")
    app.add_config_value("vecz_hide_signature", set(), "env")
    app.add_role("vecz-default", DefaultRole())
    app.connect("missing-reference", _resolve_reexport)
    app.connect("autodoc-process-docstring", _numpydoc_fields, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-signature", _hide_signature)
    app.add_transform(RepositoryLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
