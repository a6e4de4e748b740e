"""Every example in the documentation runs here, so the docs cannot drift from the code.

Conventions (summarised for readers on ``docs/index.md``):

* Each page under ``docs/`` is one test. Its fenced blocks run **in document order**, in a fresh
  temporary working directory, sharing one namespace per page (later blocks see earlier names).
  Blocks inside Material content tabs (indented fences) count too.
* ````python`` blocks are executed. If a block prints anything, it must end with a line
  ``# Output:`` followed by the expected output, one ``# ``-prefixed comment line per output
  line (a bare ``#`` for an empty line). The captured stdout must equal that text, line by line,
  ignoring trailing whitespace; ``...`` in the expected text matches any run of characters
  (doctest's ELLIPSIS), so a line holding only ``...`` elides any number of lines. It is used
  only for timings, for digits that depend on floating-point rounding or BLAS, and to elide the
  middle of long tables. A block without ``# Output:`` must print nothing.
* ````python title="some_file.py"`` blocks are not executed in-process: they are written to that
  file in the page's directory, and a later ````console`` block on the same page must run it.
* ````console`` blocks are executed: each ``$ command`` line runs (``npmobilenet ...`` and
  ``python ...`` with this interpreter), must exit 0 (or N when the line ends with
  ``# exits N``, e.g. a pytest run that shows a failure), and its stdout must match the lines
  that follow it up to the next ``$`` line, with the same ``...`` rule.
* ````bash`` blocks are the only ones not executed, and ``test_bash_blocks_are_setup_only``
  restricts them to set-up commands (``pip install``, ``git clone``, ``cd``, ``mkdocs``, the
  figure script, which CI runs before ``mkdocs build --strict``) and to two long runs that would
  blow this file's time budget: the full default ``npmobilenet train`` (about 8 s, 16 s with a
  cold kernel cache; the trainer's own tests cover it) and the benchmark scripts
  (``python benchmarks/...``, minutes each). ````text`` blocks hold non-code such as directory
  layouts; any other fence language is an error.

A page whose examples ``import torch`` (moving weights to PyTorch) requests the ``torch`` fixture
of ``tests/conftest.py``: it is skipped with a reason where torch is absent, and fails under
``CI=true``.

Lines of the form ``{{ source("pkg.module.func") }}`` are replaced at build time by the real
source (see ``docs/hooks.py``); they are definitions, not examples, and are not run here.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "assets" not in p.parts)

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
TITLE = re.compile(r'title="([^"]+)"')
BASH_ALLOWED = re.compile(
    r"^(pip install |git clone |cd |mkdocs |python docs/figures/make_figures.py$"
    r"|python benchmarks/|npmobilenet train$|#|$)"
)
EXECUTED = {"python", "console"}
NOT_EXECUTED = {"bash", "text"}


def blocks(page: Path):
    """Yield ``(language, title, body)`` for each fenced block of a page, in order."""
    for m in FENCE.finditer(page.read_text()):
        info = m["info"].strip()
        lang = info.split()[0] if info else ""
        title = TITLE.search(info)
        body = textwrap.dedent(
            "\n".join(line[len(m["indent"]) :] for line in m["body"].split("\n"))
        )
        yield lang, title[1] if title else None, body


def split_output(code: str) -> tuple[str, str | None]:
    """Split a python block into (code, expected output or None) at ``# Output:``."""
    lines = code.rstrip("\n").split("\n")
    if "# Output:" not in lines:
        return code, None
    i = lines.index("# Output:")
    expected = []
    for line in lines[i + 1 :]:
        if not (line == "#" or line.startswith("# ")):
            raise AssertionError(f"line after '# Output:' is not a '# ' comment: {line!r}")
        expected.append(line[2:])
    return "\n".join(lines[:i]), "\n".join(expected)


def matches(expected: str, actual: str) -> bool:
    """Line-wise comparison ignoring trailing whitespace, with ``...`` as a wildcard."""

    def norm(s: str) -> str:
        return "\n".join(line.rstrip() for line in s.strip("\n").split("\n"))

    pattern = ".*?".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), re.S) is not None


def run_console(body: str, cwd: Path, written: set[str]) -> None:
    """Run each ``$ command`` of a console block and compare its stdout."""
    commands: list[tuple[str, list[str]]] = []
    for line in body.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"console block must start with '$ ': {line!r}"
            commands[-1][1].append(line)
    for command, expected in commands:
        exits = re.fullmatch(r"(.*?)\s+# exits (\d+)", command)
        code = int(exits[2]) if exits else 0
        argv = shlex.split(exits[1] if exits else command)
        if argv[0] == "npmobilenet":
            argv = [sys.executable, "-m", "npmobilenet", *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        else:
            raise AssertionError(f"console commands start with npmobilenet or python: {command}")
        written.difference_update(a for a in argv if a in written)
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT), COLUMNS="100")
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, (
            f"$ {command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        want = "\n".join(expected)
        got = proc.stdout
        assert matches(want, got), f"$ {command}\n--- expected\n{want}\n--- got\n{got}"


def run_page(page: Path, cwd: Path) -> None:
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    written: set[str] = set()
    for n, (lang, title, body) in enumerate(blocks(page), 1):
        where = f"{page.name} block {n} ({lang})"
        if lang == "python" and title and title.endswith(".py"):
            (cwd / title).write_text(body)
            written.add(title)
        elif lang == "python":
            code, expected = split_output(body)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, where, "exec"), namespace)
            got = buf.getvalue()
            if expected is None:
                assert got == "", f"{where} printed output but has no '# Output:' section:\n{got}"
            else:
                assert matches(expected, got), f"{where}\n--- expected\n{expected}\n--- got\n{got}"
        elif lang == "console":
            run_console(body, cwd, written)
        else:
            assert lang in NOT_EXECUTED, f"{where}: fence language {lang!r} is not allowed"
    assert not written, f"{page.name}: files written but never run by a console block: {written}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run_and_print_what_they_show(page, tmp_path, monkeypatch, request):
    if "import torch" in page.read_text():
        request.getfixturevalue("torch")  # skips locally without torch; fails under CI=true
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_page(page, tmp_path)


def test_bash_blocks_are_setup_only():
    for page in PAGES:
        for lang, _, body in blocks(page):
            if lang == "bash":
                for line in body.strip().split("\n"):
                    assert BASH_ALLOWED.match(line), f"{page.name}: untested bash line: {line}"


def test_every_page_has_examples_or_is_reference():
    """Teaching pages carry executed examples; only API reference pages may have none."""
    for page in PAGES:
        langs = [lang for lang, _, _ in blocks(page)]
        if "reference" not in page.parts and page.name not in ("index.md", "performance.md"):
            assert EXECUTED & set(langs), f"{page.name} has no executed example"


def test_harness_compares_output_and_catches_drift():
    """The checker itself: a wrong output, or an unshown print, fails."""
    code, expected = split_output("print(1200)\n# Output:\n# 1200\n")
    assert (code, expected) == ("print(1200)", "1200")
    assert matches("took ... s", "took 3.2 s")
    assert not matches("1200", "1216")
    assert not matches("a\nb", "a")
    with pytest.raises(AssertionError):
        split_output("print(1)\n# Output:\n1\n")


def test_every_page_is_in_the_nav():
    """A page missing from mkdocs.yml's nav would be built but unreachable."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        rel = page.relative_to(DOCS).as_posix()
        assert re.search(rf":\s*{re.escape(rel)}\s*$|-\s*{re.escape(rel)}\s*$", nav, re.M), rel


@pytest.mark.parametrize(
    "package",
    "ops nn models io data optim train gradcheck fast threads interop exercises".split(),
)
def test_reference_pages_cover_every_public_name(package):
    """Each name in a subpackage's __all__ has an entry on its API reference page."""
    import importlib

    module = importlib.import_module(f"npmobilenet.{package}")
    page = (DOCS / "reference" / f"{package}.md").read_text()
    missing = [n for n in module.__all__ if f"npmobilenet.{package}.{n}" not in page]
    assert not missing, f"docs/reference/{package}.md lacks {missing}"
