"""ReLU / ReLU6 against torch, including the gradient at the kinks (0 and 6) and NaN."""

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npmobilenet.kernels import activations as K
from npmobilenet.ops import relu6_backward, relu6_forward, relu_backward, relu_forward

OPS = {
    "relu": (relu_forward, relu_backward),
    "relu6": (relu6_forward, relu6_backward),
}


def _torch_op(torch, name, x, dout):
    tx = torch.tensor(x, requires_grad=True)
    out = getattr(torch.nn.functional, name)(tx)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), tx.grad.numpy()


@pytest.mark.kernels
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5), seed=st.integers(0, 2**16))
def test_matches_torch(torch, name, dtype, shape, seed):
    rng = np.random.default_rng(seed)
    # values on a 0.5 grid in [-2, 8] hit 0 and 6 exactly (the kinks) often
    x = np.asarray(rng.integers(-4, 17, shape) * 0.5).astype(dtype)
    dout = np.asarray(rng.standard_normal(shape)).astype(dtype)
    fwd, bwd = OPS[name]
    out, cache = fwd(x)
    dx = bwd(dout, cache)
    t_out, t_dx = _torch_op(torch, name, x, dout)
    assert isinstance(out, np.ndarray) and isinstance(dx, np.ndarray)
    assert out.dtype == dtype and dx.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(out, t_out, **TOL[dtype])
    np.testing.assert_allclose(dx, t_dx, **TOL[dtype])


@pytest.mark.kernels
def test_kink_gradients_are_zero(torch):
    x = np.array([0.0, 6.0, 3.0, -1.0, 7.0])
    g = np.ones(5)
    assert relu_backward(g, relu_forward(x)[1]).tolist() == [0, 1, 1, 0, 1]
    assert relu6_backward(g, relu6_forward(x)[1]).tolist() == [0, 0, 1, 0, 0]
    assert _torch_op(torch, "relu6", x, g)[1].tolist() == [0, 0, 1, 0, 0]


@pytest.mark.kernels
@pytest.mark.parametrize("name", OPS)
def test_nan_propagates_and_passes_its_gradient(torch, name):
    x = np.array([np.nan, 1.0, -1.0, 0.0, 6.0], dtype=np.float32)
    dout = np.arange(1, 6, dtype=np.float32)
    out, cache = OPS[name][0](x)
    t_out, t_dx = _torch_op(torch, name, x, dout)
    np.testing.assert_array_equal(out, t_out)  # NaN == NaN under assert_array_equal
    np.testing.assert_array_equal(OPS[name][1](dout, cache), t_dx)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_match_naive(dtype):
    rng = np.random.default_rng(0)
    x = (rng.integers(-4, 17, 300) * 0.5).astype(dtype)
    x[::37] = np.nan
    dout = rng.standard_normal(300).astype(dtype)
    for fast, naive in [
        (K.relu_backward_input, K.relu_backward_input_naive),
        (K.relu6_backward_input, K.relu6_backward_input_naive),
    ]:
        a, b = np.empty_like(x), np.empty_like(x)
        fast(dout, x, a)
        naive(dout, x, b)
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_input():
    x = np.arange(-6.0, 18.0).reshape(4, 6)[:, ::2]  # a strided view
    out, cache = relu6_forward(x)
    dx = relu6_backward(np.ones((3, 4)).T, cache)  # a transposed (non-contiguous) dout
    np.testing.assert_array_equal(out, np.clip(x, 0, 6))
    np.testing.assert_array_equal(dx, ((x > 0) & (x < 6)).astype(float))


def test_activation_table_is_the_one_every_layer_and_engine_reads():
    """ACTIVATIONS' clamp equals its forward op; the layers and the model use the same names."""
    from npmobilenet.models import mobilenet
    from npmobilenet.nn.layers import ACTIVATION_LAYERS
    from npmobilenet.ops.activations import ACTIVATIONS

    x = np.linspace(-10, 10, 41)
    for name, act in ACTIVATIONS.items():
        lo, hi = act.clamp
        np.testing.assert_array_equal(act.forward(x)[0], np.minimum(np.maximum(x, lo), hi))
        layer = ACTIVATION_LAYERS[name]()
        np.testing.assert_array_equal(layer(x), act.forward(x)[0])
    assert set(ACTIVATION_LAYERS) == set(ACTIVATIONS) == set(mobilenet.ACTIVATIONS)
