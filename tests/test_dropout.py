"""Dropout: mask statistics, scaling, backward reuses the mask, seed reproducibility, modes.

PyTorch's random stream differs from NumPy's, so the reference here is the definition itself:
keep with probability 1 - p, scale survivors by 1 / (1 - p).
"""

import numpy as np
import pytest

from npmobilenet.ops import dropout_backward, dropout_forward


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_scaling(dtype, p):
    x = np.random.default_rng(0).uniform(1, 2, (200, 100)).astype(dtype)  # never 0
    out, _ = dropout_forward(x, p, True, np.random.default_rng(1))
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    n = x.size
    # kept count ~ Binomial(n, 1 - p): within 5 standard deviations
    assert abs(kept.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    # no spatial pattern: every row and column keeps some (rows of 100 at p <= 0.8)
    assert kept.any(axis=1).all() and kept.any(axis=0).all()


def test_backward_uses_the_forward_mask():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5, 6))
    dout = rng.standard_normal(x.shape)
    out, cache = dropout_forward(x, 0.3, True, np.random.default_rng(3))
    dx = dropout_backward(dout, cache)
    # out = x * mask elementwise, so dx = dout * mask = dout * out / x
    np.testing.assert_allclose(dx, dout * out / x, rtol=1e-12)
    assert ((dx == 0) == (out == 0)).all()


def test_reproducible_from_seed():
    x = np.ones((10, 10), np.float32)
    a, _ = dropout_forward(x, 0.5, True, np.random.default_rng(7))
    b, _ = dropout_forward(x, 0.5, True, np.random.default_rng(7))
    c, _ = dropout_forward(x, 0.5, True, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_extremes_and_eval_mode():
    x = np.random.default_rng(4).standard_normal((3, 7))
    dout = np.ones_like(x)
    out, cache = dropout_forward(x, 1.0, True, np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.zeros_like(x))
    np.testing.assert_array_equal(dropout_backward(dout, cache), np.zeros_like(x))
    rng = np.random.default_rng(0)
    for p, training in [(0.0, True), (0.5, False), (1.0, False)]:
        out, cache = dropout_forward(x, p, training, rng)
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(dropout_backward(dout, cache), dout)
    # the identity cases drew no random numbers
    assert rng.random() == np.random.default_rng(0).random()
