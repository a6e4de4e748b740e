"""Softmax, log-softmax and cross-entropy against torch, every reduction x target kind x
smoothing, plus extreme logits."""

import numpy as np
import pytest
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npmobilenet.ops import cross_entropy_backward, cross_entropy_forward, log_softmax, softmax

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), data=st.data())
def test_softmaxes_match_torch(torch, dtype, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(shape) * 5
    x = x.astype(dtype)
    tx = torch.tensor(x)
    np.testing.assert_allclose(softmax(x, axis), torch.softmax(tx, axis).numpy(), **TOL[dtype])
    ref = torch.log_softmax(tx, axis).numpy()
    np.testing.assert_allclose(log_softmax(x, axis), ref, **TOL[dtype])
    assert softmax(x, axis).dtype == log_softmax(x, axis).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits(torch, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4 - 1]], dtype=dtype)
    p, lp = softmax(x), log_softmax(x)
    assert np.isfinite(p).all() and np.isfinite(lp).all()
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(x), -1).numpy(), **TOL[dtype])
    np.testing.assert_allclose(lp, torch.log_softmax(torch.tensor(x), -1).numpy(), **TOL[dtype])
    np.testing.assert_allclose(lp[0], [0.0, -2e4, -1e4], rtol=1e-6)  # exact by hand


def _torch_ce(torch, logits, target, dloss, **kw):
    tl = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(tl, torch.tensor(target), **kw)
    loss.backward(torch.tensor(dloss) if kw["reduction"] == "none" else None)
    return loss.detach().numpy(), tl.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["class", "prob"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@given(N=st.integers(1, 6), C=st.integers(1, 6), seed=st.integers(0, 2**16), batched=st.booleans())
def test_cross_entropy_matches_torch(torch, dtype, reduction, kind, smoothing, N, C, seed, batched):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((N, C)) * 3).astype(dtype)
    if kind == "class":
        target = rng.integers(0, C, N)
        target[rng.random(N) < 0.2] = -100  # some ignored samples (torch's default ignore_index)
    else:
        target = rng.dirichlet(np.ones(C), N).astype(dtype) * rng.uniform(0.5, 1.5)  # sum != 1
    if not batched:
        logits, target = logits[0], target[0]
        if kind == "class" and target == -100:
            target = np.int64(0)
        target = np.asarray(target)
    dloss = np.asarray(rng.standard_normal(logits.shape[:-1])).astype(dtype)
    kw = dict(reduction=reduction, label_smoothing=smoothing)

    loss, cache = cross_entropy_forward(logits, target, **kw)
    dlogits = cross_entropy_backward(dloss if reduction == "none" else 1.0, cache)
    t_loss, t_grad = _torch_ce(torch, logits, target, dloss, **kw)
    tol = TOL[dtype]
    assert np.asarray(loss).dtype == dtype and np.shape(loss) == t_loss.shape
    np.testing.assert_allclose(loss, t_loss, **tol)  # nan == nan (all samples ignored) passes
    np.testing.assert_allclose(dlogits, t_grad, **tol)
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape


def test_cross_entropy_extreme_logits_finite():
    logits = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=np.float32)
    loss, cache = cross_entropy_forward(logits, np.array([1, 1]), reduction="none")
    np.testing.assert_allclose(loss, [2e4, 0.0], rtol=1e-6)
    dl = cross_entropy_backward(np.ones(2, np.float32), cache)
    np.testing.assert_allclose(dl, [[1, -1], [0, 0]], atol=1e-6)


def test_cross_entropy_custom_ignore_index(torch):
    rng = np.random.default_rng(5)
    logits, target = rng.standard_normal((5, 3)), np.array([0, 2, 7, 1, 7])
    loss, cache = cross_entropy_forward(logits, target, ignore_index=7, label_smoothing=0.1)
    dl = cross_entropy_backward(np.float64(2.0), cache)
    tl = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        tl, torch.tensor(target), ignore_index=7, label_smoothing=0.1
    )
    (2 * ref).backward()
    np.testing.assert_allclose(loss, ref.item(), **TOL[np.float64])
    np.testing.assert_allclose(dl, tl.grad.numpy(), **TOL[np.float64])
