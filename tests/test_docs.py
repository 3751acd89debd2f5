"""The docs: recipes that run, links that resolve, a site that builds.

- Every code block of docs/recipes/*.md and docs/index.md whose fence is marked ``runnable`` (```` ```python
  runnable ````, ```` ```bash runnable ````) runs, block after block in page order, in a
  fresh temporary directory per page (Python blocks share one namespace per page, like a
  notebook; bash blocks run with this interpreter's scripts, e.g. ``vecz``, on PATH). A page
  that imports Ray runs in a subprocess (Ray's threads outlive ``ray.shutdown()``). Every
  Python block is marked either ``runnable`` or ``not-runnable`` (those need a package or
  data this machine lacks: sentence-transformers and a model, lance) and every one parses.
- Every link in README.md and docs/**/*.md is relative and names a file of the repository
  (anchors aside): no http(s) links out of the repository, in link syntax or bare.
- ``bash docs/build.sh`` (Sphinx, nitpicky, warnings are errors) succeeds; skipped with the
  reason when the docs extra is not installed (``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "docs" / "recipes"
RECIPE_PAGES = sorted(RECIPES.glob("*.md"))
# pages whose code blocks are marked and run: the recipes and the docs' front page
CODE_PAGES = [REPO / "docs" / "index.md", *RECIPE_PAGES]

# A fence line (CommonMark): up to 3 spaces, 3+ backticks or tildes, an info string without
# backticks. The closing fence uses the same character, at least as many.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marks: list[str]
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        lang = info[0] if info else ""
        blocks.append(Block(page, i + 1, lang, info[1:], "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _prose(text: str) -> str:
    """The text outside fenced blocks and inline code spans (where links are links)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group("fence")
            continue
        if fence is not None:
            if re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
            continue
        out.append(line)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", " ", "\n".join(out))


_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>")
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s)>\]]+|\bwww\.[a-z0-9-]+\.[a-z]{2,}\S*", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def links(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    found = [m.group(1).strip("<>") for m in _INLINE_LINK.finditer(text)]
    found += [m.group(1).strip("<>") for m in _REF_DEF.finditer(text)]
    found += [m.group(1) for m in _AUTOLINK.finditer(text)]
    found += [m.group(0) for m in _BARE_URL.finditer(_AUTOLINK.sub(" ", _INLINE_LINK.sub(" ", text)))]
    return found


MD_PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MD_PAGES = [p for p in MD_PAGES if "_build" not in p.relative_to(REPO).parts]


# --------------------------------------------------------------------------- recipes


def test_recipe_pages_found() -> None:
    names = {p.name for p in RECIPE_PAGES}
    assert {"index.md", "sentence-transformers.md", "parquet-and-lance.md", "choosing-a-codec.md",
            "tuning-rerank-nprobe.md", "small-commits.md"} <= names


@pytest.mark.parametrize("page", CODE_PAGES, ids=lambda p: str(p.relative_to(REPO / "docs")))
def test_recipe_python_blocks_marked_and_parse(page: Path) -> None:
    for block in code_blocks(page):
        if block.lang != "python":
            continue
        marks = set(block.marks) & {"runnable", "not-runnable"}
        assert len(marks) == 1, (f"{block.where}: mark the python block 'runnable' (the test runs it) or "
                                 f"'not-runnable' (it needs what the test machine lacks), found {block.marks}")
        try:
            ast.parse(block.code, filename=block.where)
        except SyntaxError as exc:
            pytest.fail(f"{block.where}: does not parse: {exc}")


def _run_bash(block: Block, cwd: Path) -> None:
    env = dict(os.environ)
    # this interpreter's scripts first (the `vecz` command of the installed package)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"{block.where}: bash block exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                    f"\n--- stderr\n{proc.stderr}")


@pytest.mark.parametrize("page", [p for p in CODE_PAGES if any("runnable" in b.marks for b in code_blocks(p))],
                         ids=lambda p: str(p.relative_to(REPO / "docs")))
def test_recipe_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runnable = [b for b in code_blocks(page) if "runnable" in b.marks]
    if any(re.search(r"^\s*import ray\b", b.code, re.M) for b in runnable if b.lang == "python"):
        # Ray leaves native threads behind in its driver after ray.shutdown(); a process
        # forked from this one later (tests/test_fork.py) must not inherit them, so a page
        # that starts Ray runs its Python blocks, in order, in a process of its own
        assert all(b.lang == "python" for b in runnable), f"{page}: a Ray page runs Python blocks only"
        proc = subprocess.run([sys.executable, "-c", "\n\n".join(b.code for b in runnable)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{page}: exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
        return
    namespace: dict = {"__name__": "__recipe__"}
    for block in code_blocks(page):
        if "runnable" not in block.marks:
            continue
        if block.lang == "python":
            code = compile(block.code, block.where, "exec")
            exec(code, namespace)  # noqa: S102 - the recipe is this repository's own code
        elif block.lang == "bash":
            _run_bash(block, tmp_path)
        else:
            pytest.fail(f"{block.where}: 'runnable' applies to python and bash blocks, found {block.lang!r}")


# --------------------------------------------------------------------------- links


def test_link_pages_found() -> None:
    assert REPO / "README.md" in MD_PAGES and RECIPES / "index.md" in MD_PAGES


@pytest.mark.parametrize("page", MD_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_relative_and_exist(page: Path) -> None:
    bad = []
    for target in links(page):
        if _SCHEME.match(target) or target.startswith(("//", "www.")):
            bad.append(f"{target}: a link out of the repository (cite by name, or link a file in it)")
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue  # an anchor in the same page
        if path.startswith("/"):
            bad.append(f"{target}: absolute; write it relative to {page.relative_to(REPO)}")
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.is_relative_to(REPO):
            bad.append(f"{target}: outside the repository")
        elif not resolved.exists():
            bad.append(f"{target}: no such file in the repository")
    assert not bad, f"{page.relative_to(REPO)}:\n  " + "\n  ".join(bad)


def test_link_checker_sees_links(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("see [a](b.md#x), ![i](img.png), <https://e.org>, https://f.org and [r]\n\n"
                    "[r]: ../c.md\n\n```python\nx = '[no](link.md)'\n```\n`[no](code.md)`\n")
    assert links(page) == ["b.md#x", "img.png", "../c.md", "https://e.org", "https://f.org"]


# --------------------------------------------------------------------------- the site


def test_docs_build(tmp_path: Path) -> None:
    missing = [m for m in ("sphinx", "myst_parser", "sphinxarg") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"docs build not run: {', '.join(missing)} not installed (pip install -e '.[docs]')")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "docs" / "build.sh"), str(tmp_path / "html")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"docs/build.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "api/store.html", "api/codecs.html", "api/errors.html", "api/cli.html",
                 "api/formats.html", "api/kernels.html", "recipes/small-commits.html"):
        assert (tmp_path / "html" / page).is_file(), page
