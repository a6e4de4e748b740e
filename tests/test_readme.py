"""The README's Python tour runs as written (so the front page cannot drift from the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README should show the API in at least one python block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out, dx, dw = namespace["out"], namespace["dx"], namespace["dw"]
    x, w = namespace["x"], namespace["w"]
    # Stride 2, padding 1 on 16x16 gives 8x8; gradients have their inputs' shapes and dtype.
    assert out.shape == (2, 8, 8, 8) and out.dtype == x.dtype
    assert dx.shape == x.shape and dw.shape == w.shape and namespace["db"] is None


def test_readme_images_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text()):
        assert (README.parent / path).is_file(), path
