"""npmobilenet must import and compute without torch: torch is a test-only dependency."""

import subprocess
import sys
import textwrap


def test_import_and_conv_without_torch():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import npmobilenet
        from npmobilenet import ops
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
        w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
        out, cache = ops.conv2d_forward(x, w, stride=2, padding=1, groups=4)
        dx, dw, db = ops.conv2d_backward(np.ones_like(out), cache)
        assert out.shape == (2, 4, 4, 4) and out.dtype == np.float32
        assert dx.shape == x.shape and dw.shape == w.shape and db is None
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")
