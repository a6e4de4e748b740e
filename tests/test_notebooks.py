"""The exercise notebook (a jupytext percent file) runs end to end in a real Jupyter kernel.

With ``NPMOBILENET_EXERCISE_REFERENCE=1`` the library's own implementations are plugged in, so
every check must pass; without it the untouched TODOs must each be reported, not crash the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "notebooks" / "exercises.py"


def run_notebook(tmp_path) -> str:
    import jupytext  # the test extra: a missing one fails here, never skips
    import nbclient

    nb = jupytext.read(NOTEBOOK)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


@pytest.mark.slow
def test_notebook_runs_with_the_reference_plugged_in(tmp_path, monkeypatch):
    monkeypatch.setenv("NPMOBILENET_EXERCISE_REFERENCE", "1")
    text = run_notebook(tmp_path)
    assert text.count("passed on 30 drawn configurations") == 5, text


@pytest.mark.slow
def test_notebook_reports_each_todo(tmp_path, monkeypatch):
    monkeypatch.delenv("NPMOBILENET_EXERCISE_REFERENCE", raising=False)
    text = run_notebook(tmp_path)
    assert text.count("FAILED") == 5 and text.count("the TODO is still to do") == 5, text
