"""The site's browser check (``.ci/check_site.py``) really fails a broken page.

A page with raw TeX, a console error, a missing image, a broken link and an element wider than
the column must be reported on each count; a clean page must pass. Needs Playwright and Debian's
Chromium: locally their absence skips, under ``CI=true`` (which installs both) it fails.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLEAN = """<html><head><link rel="icon" href="data:,"></head><body>
<p>Fine: <code>\\(x\\)</code> is code.</p>
<a href='bad.html'>next</a></body></html>"""
BROKEN = """<html><body>
<p>Raw maths: \\[ y = \\sum_i x_i \\]</p>
<p>See :func:<code>conv2d_forward</code>.</p>
<img src="missing.png" alt="gone">
<a href="nowhere.html">dead link</a>
<div style="width: 3000px">too wide</div>
<script>console.error("boom")</script>
</body></html>"""


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("the browser check needs chromium and playwright under CI=true")
        pytest.skip("needs Debian's chromium and the playwright package")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


def load_checker():
    spec = importlib.util.spec_from_file_location("check_site", ROOT / ".ci" / "check_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_browser_check_reports_every_fault_and_passes_a_clean_page(browser, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "good.html").write_text(CLEAN)
    (site / "bad.html").write_text(BROKEN)
    check = load_checker()
    port = check.free_port()
    server = check.serve(site, port)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        results = {}
        for name in ("good", "bad"):
            page = context.new_page()
            url = f"http://127.0.0.1:{port}/{name}.html"
            results[name] = check.check_page(page, url, tmp_path / f"{name}.png", {},
                                             context.request)  # fmt: skip
            page.close()
    finally:
        server.shutdown()
    assert results["good"] == []
    bad = "\n".join(results["bad"])
    for expected in ("raw TeX '\\\\sum'", "raw TeX '\\\\['", "console: boom", "missing.png",
                     "broken link", "nowhere.html", "wider than the column",
                     "raw docstring role ':func:'"):  # fmt: skip
        assert expected in bad, bad
    assert (tmp_path / "bad.png").stat().st_size > 0  # the screenshot was taken
