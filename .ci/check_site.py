"""Build the docs site strictly, serve it on 127.0.0.1 and read every page in headless Chromium.

    python .ci/check_site.py [--chromium /usr/bin/chromium] [--shots DIR]

For each HTML page of the built site it asserts:

* the maths is rendered: no KaTeX error, and no raw TeX (``\\sum``, ``\\[``, ``\\(``, ``\\frac``)
  in the visible text outside code blocks; nor a raw Sphinx role (``:func:``) from a docstring;
* no console error and no uncaught page error;
* no request that failed or answered >= 400, no image that did not decode, and no same-site link
  (``href``) that answers >= 400;
* nothing sticks out of the content column unless a scrolling block contains it (wide equations,
  code and tables scroll inside their block).

A screenshot of every page goes to the shots directory (a new temporary one by default), whose
path is printed. The browser is the system's Chromium (Debian's ``chromium`` package), driven by
Playwright over the DevTools protocol: no browser is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
RAW_TEX = ("\\sum", "\\[", "\\(", "\\frac", "\\begin{")
RAW_ROLES = (":func:", ":class:", ":mod:", ":meth:", ":attr:", ":data:")  # unrendered Sphinx roles
WIDTH_SLACK = 2  # pixels of rounding allowed at the column's right edge

# Runs in the page: visible text outside code, and elements that stick out of the column
# without a scrolling (or clipping) ancestor inside the column.
PAGE_PROBE = """() => {
  const main = document.querySelector("article.md-content__inner") || document.body;
  const copy = main.cloneNode(true);
  copy.querySelectorAll("pre, code, .katex, script, style").forEach(e => e.remove());
  // The column: Material's content area, whose margins tables and admonitions may use.
  const col = (main.closest(".md-content") || main).getBoundingClientRect();
  const wide = [];
  for (const el of main.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= col.right + SLACK) continue;
    let clipped = false;
    for (let a = el.parentElement; a && a !== main; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox !== "visible" && a.getBoundingClientRect().right <= col.right + SLACK) {
        clipped = true;
        break;
      }
    }
    if (!clipped) {
      wide.push(el.tagName.toLowerCase() + "." + el.className + " right=" + Math.round(r.right)
        + " > column " + Math.round(col.right));
    }
  }
  const badImages = [...document.images]
    .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  return {
    text: copy.innerText,
    katexErrors: document.querySelectorAll(".katex-error").length,
    rawMath: document.querySelectorAll(".arithmatex:not(:has(.katex))").length,
    wide: wide.slice(0, 5),
    badImages,
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  };
}""".replace("SLACK", str(WIDTH_SLACK))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(site: Path, port: int) -> None:
    env = dict(os.environ, SITE_URL=f"http://127.0.0.1:{port}/", NO_MKDOCS_2_WARNING="1")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def serve(site: Path, port: int) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_page(page, url: str, shot: Path, link_status: dict, request) -> list[str]:
    """Load one page; return its problems (empty when it passes)."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(150)  # KaTeX renders on Material's document$ event
    probe = page.evaluate(PAGE_PROBE)
    problems += [f"raw TeX {t!r} in the text" for t in RAW_TEX if t in probe["text"]]
    problems += [f"raw docstring role {r!r} in the text" for r in RAW_ROLES if r in probe["text"]]
    if probe["katexErrors"] or probe["rawMath"]:
        problems.append(f"{probe['katexErrors']} KaTeX errors, {probe['rawMath']} unrendered")
    problems += [f"image did not load: {src}" for src in probe["badImages"]]
    problems += [f"wider than the column: {w}" for w in probe["wide"]]
    for link in probe["links"]:
        target = link.split("#")[0]
        if urlsplit(target).netloc != urlsplit(url).netloc:
            continue  # other sites: not reachable offline, not this site's fault
        if target not in link_status:
            link_status[target] = request.get(target).status
        if link_status[target] >= 400:
            problems.append(f"broken link {link} ({link_status[target]})")
    page.screenshot(path=str(shot), full_page=True)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--shots", type=Path, default=None)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    shots = args.shots or Path(tempfile.mkdtemp(prefix="npmobilenet-site-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="npmobilenet-site-"))
    port = free_port()
    start = time.perf_counter()
    build(site, port)
    server = serve(site, port)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    failures, link_status = {}, {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for rel in pages:
            page = context.new_page()
            url = urljoin(f"http://127.0.0.1:{port}/", rel)
            shot = shots / (rel.replace("/", "__")[:-5] + ".png")
            problems = check_page(page, url, shot, link_status, context.request)
            page.close()
            print(f"{'ok  ' if not problems else 'FAIL'} {rel}")
            if problems:
                failures[rel] = problems
        browser.close()
    server.shutdown()
    print(f"screenshots of {len(pages)} pages: {shots}")
    for rel, problems in failures.items():
        print(f"\n{rel}:\n  " + "\n  ".join(dict.fromkeys(problems)))
    print(f"check_site: {len(pages)} pages, {len(failures)} failing, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
