"""Linear layer against torch.nn.functional.linear + autograd, any number of leading axes."""

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet.ops import linear_backward, linear_forward


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    n_in=st.integers(1, 8),
    n_out=st.integers(1, 8),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch(torch, dtype, lead, n_in, n_out, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, n_in)).astype(dtype)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    dout = rng.standard_normal((*lead, n_out)).astype(dtype)

    out, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(dout, cache)

    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if with_bias else None
    t_out = torch.nn.functional.linear(tx, tw, tb)
    t_out.backward(torch.tensor(dout))
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (*lead, n_out)
    np.testing.assert_allclose(out, t_out.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), **tol)
    if with_bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), **tol)
    else:
        assert db is None
    assert dx.dtype == dw.dtype == dtype
