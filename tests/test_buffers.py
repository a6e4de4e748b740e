"""The buffer pool that lets a model reuse its activation and gradient arrays across steps."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import BatchNorm2d, buffers


def test_pool_hands_out_an_array_again_only_when_no_one_holds_it():
    pool = buffers.BufferPool()
    a = pool.take((2, 3), np.float32)
    b = pool.take((2, 3), np.float32)
    assert a is not b  # a is still held here
    view = b[0]
    del b
    c = pool.take((2, 3), np.float32)
    assert c is not view.base  # a view keeps its base busy
    del view
    assert pool.take((2, 3), np.float32) is not a  # a still held
    assert len(pool) == 3
    del a
    d = pool.take((2, 3), np.float32)
    assert d.shape == (2, 3) and d.dtype == np.float32 and len(pool) == 3
    assert pool.take((2, 3), np.float64).dtype == np.float64  # dtype is part of the key


def test_new_step_keeps_exactly_what_the_last_step_used():
    pool = buffers.BufferPool()
    pool.take((4,), np.float32)
    pool.take((5,), np.float32)
    pool.new_step()
    assert len(pool) == 2
    pool.take((4,), np.float32)
    pool.new_step()  # (5,) was not asked for during that step
    assert len(pool) == 1 and pool.nbytes == 16


def test_scratch_without_an_active_pool_is_the_module_fallback():
    class Holder:
        pass

    h = Holder()
    a = buffers.scratch(h, "_out", (3,), np.float64)
    a_id = id(a)
    del a
    assert id(buffers.scratch(h, "_out", (3,), np.float64)) == a_id  # reused
    kept = buffers.scratch(h, "_out", (3,), np.float64)
    assert buffers.scratch(h, "_out", (3,), np.float64) is not kept  # held: a new one
    assert buffers.from_pool((3,), np.float64) is None
    assert not buffers.overwritable(kept)


def test_a_layer_never_overwrites_a_gradient_it_was_given():
    """BatchNorm2d.backward may compute dx over dout only inside a model's backward, on the
    model's own intermediate gradient; a caller's dout stays intact (with or without a pool)."""
    rng = np.random.default_rng(0)
    bn = BatchNorm2d(3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    dout = rng.standard_normal(x.shape)
    saved = dout.copy()
    bn.forward(x)
    bn.backward(dout)
    np.testing.assert_array_equal(dout, saved)
    with buffers.active(buffers.BufferPool()):
        bn.forward(x)
        bn.backward(dout)
    np.testing.assert_array_equal(dout, saved)


def _step(model, x, y, input_grad=True):
    logits = model.forward(x)
    loss, cache = ops.cross_entropy_forward(logits, y)
    model.zero_grad()
    dlogits = ops.cross_entropy_backward(1.0, cache)
    saved = dlogits.copy()
    dx = model.backward(dlogits, input_grad=input_grad)
    np.testing.assert_array_equal(dlogits, saved)  # the caller's gradient is left alone
    return logits, dx, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_model_steps_with_reused_buffers_equal_fresh_models_and_keep_held_outputs():
    """Steps 2 and 3 of a model (arrays reused from the pool) give exactly what a fresh model
    gives on the same weights; logits and dx the caller kept from step 1 are not overwritten."""
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((3, 3, 32, 32)) for _ in range(2))
    y = np.array([0, 3, 7])
    model = MobileNetV1(alpha=0.25, num_classes=10, dtype=np.float64, seed=0).train()
    logits1, dx1, _ = _step(model, x1, y)
    kept = logits1.copy(), dx1.copy()
    state = {k: v.copy() for k, v in model.state_dict().items()}
    for x in (x2, x1):
        logits, dx, grads = _step(model, x, y)
        fresh = MobileNetV1(alpha=0.25, num_classes=10, dtype=np.float64, seed=5).train()
        fresh.load_state_dict(state)
        f_logits, f_dx, f_grads = _step(fresh, x, y)
        np.testing.assert_array_equal(logits, f_logits)
        np.testing.assert_array_equal(dx, f_dx)
        for name in grads:
            np.testing.assert_array_equal(grads[name], f_grads[name], err_msg=name)
        state = {k: v.copy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(logits1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])


def test_model_pool_holds_one_step_of_arrays():
    """After a change of batch size the arrays of the old size are let go (one step late)."""
    rng = np.random.default_rng(2)
    model = MobileNetV1(alpha=0.25, num_classes=10, seed=0).train()
    y = np.array([1, 2, 3, 4])
    _step(model, rng.standard_normal((4, 3, 32, 32)).astype(np.float32), y, input_grad=False)
    _step(model, rng.standard_normal((4, 3, 32, 32)).astype(np.float32), y, input_grad=False)
    steady = model._buffers_pool.nbytes
    for _ in range(2):
        _step(model, rng.standard_normal((2, 3, 32, 32)).astype(np.float32), y[:2], False)
    assert model._buffers_pool.nbytes < 0.75 * steady
