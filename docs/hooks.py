"""MkDocs hook: quote the library's real source code into a page.

A line of the form

    {{ source("npmobilenet.kernels.im2col.im2col") }}

is replaced by a Python code block holding the current source of that function or class, titled
with its file and line numbers. The docs therefore quote the code that runs, never a copy that can
drift. Numba dispatchers are unwrapped to the Python function they compile. An unknown name fails
the build.

Docstrings in the package use Sphinx roles (``:func:`name```), which Markdown renders as the
role's text before a code span; ``on_page_content`` drops the role and keeps the code span.

The quoted blocks are not executed by ``tests/test_docs.py`` (they are definitions, not examples):
the test reads the raw Markdown, where only the directive appears.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

DIRECTIVE = re.compile(
    r'^(?P<indent>[ \t]*)\{\{\s*source\("(?P<name>[\w.]+)"\)\s*\}\}[ \t]*$', re.M
)
# A Sphinx role as Markdown renders it: ":func:" then the code span (Sphinx's "~" shortens it).
ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):(<code>)~?\.?")
ROOT = Path(__file__).resolve().parent.parent


def resolve(name: str):
    """Import ``pkg.module.attr[.attr...]`` and return the object."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the checkout being documented, installed or not
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if not (module == err.name or module.startswith(f"{err.name}.")):
                raise  # a real import error inside the package: show it
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return getattr(obj, "py_func", obj)
    raise ImportError(f"docs/hooks.py: cannot import any prefix of {name!r}")


def quote(name: str, indent: str) -> str:
    obj = resolve(name)
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
    end = start + len(lines) - 1
    body = textwrap.dedent("".join(lines)).rstrip("\n")
    block = f'```python title="{path}, lines {start}-{end}"\n{body}\n```'
    return textwrap.indent(block, indent, lambda line: True)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return DIRECTIVE.sub(lambda m: quote(m["name"], m["indent"]), markdown)


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(r"\1", html)
