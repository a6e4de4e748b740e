"""The comparison every engine test makes: the engine's logits against a reference's, with a check
that the reference's logits depend on the image.

A model blind to its input (a freshly initialised one: batch-norm statistics 0 and 1) gives
nearly the same logits for every image, so a comparison against it passes when an image, a pixel
or a channel is computed in the wrong place. ``assert_matches`` first asserts that the reference
tells the images apart by far more than the tolerance, then compares.
"""

from __future__ import annotations

import numpy as np
from conftest import TOL


def assert_matches(out, reference, x, dtype):
    """``out`` equals ``reference(x)`` within ``TOL[dtype]`` (the absolute tolerance scaled by the
    largest logit: float32 rounding grows with the sums), and the reference's logits of different
    images (``x``'s, or ``x`` and ``x`` upside down at batch 1) differ by far more than that
    tolerance: a model blind to its input would hide an image or a pixel computed in the wrong
    place. x (N, C, H, W); out and ``reference(x)`` (N, classes) or (N, features)."""
    expected = reference(x)
    other = expected[::-1] if len(x) > 1 else reference(np.ascontiguousarray(x[:, :, ::-1]))
    scale = np.abs(expected).max()
    atol = TOL[dtype]["atol"] * max(1.0, scale)
    spread = np.abs(expected - other).max()
    tol = atol + TOL[dtype]["rtol"] * scale
    assert spread > max(100 * tol, 0.01 * scale), (
        f"the reference's logits barely depend on the image: they differ by {spread:.3g} between "
        f"images, the tolerance is {tol:.3g}, the logits reach {scale:.3g}"
    )
    assert out.shape == expected.shape and out.dtype == np.dtype(dtype), (
        f"engine output {out.shape} {out.dtype}, expected {expected.shape} {np.dtype(dtype)}"
    )
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype]["rtol"], atol=atol)
