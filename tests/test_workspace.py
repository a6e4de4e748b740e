"""The workspace that lets a model reuse its activation and gradient arrays across steps."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import Workspace


def test_an_output_is_its_owner_s_until_released_and_gradients_never_repeat_in_a_step():
    ws = Workspace()
    a, b = object(), object()  # two owners
    out_a = ws.output(a, (2, 3), np.float32)
    out_b = ws.output(b, (2, 3), np.float32)
    assert out_a is not out_b  # a's output is still a's
    g1 = ws.gradient((2, 3), np.float32)
    assert g1 is not out_a and g1 is not out_b  # nothing free yet: a new array
    ws.release(a)
    g2 = ws.gradient((2, 3), np.float32)
    assert g2 is out_a  # a's backward released it
    assert ws.gradient((2, 3), np.float32) is not g1  # gradients are not handed out twice
    assert ws.gradient((2, 3), np.float64).dtype == np.float64  # dtype is part of the key
    assert ws.owns(out_a[0]) and not ws.owns(np.zeros((2, 3), np.float32))


def test_new_step_frees_everything_keeps_owners_arrays_and_drops_unused_ones():
    ws = Workspace()
    owner = object()
    first = ws.output(owner, (4,), np.float32)
    ws.gradient((5,), np.float32)
    ws.new_step()
    assert len(ws) == 2
    assert ws.output(owner, (4,), np.float32) is first  # the same owner gets its array back
    ws.new_step()  # (5,) was not asked for during that step
    assert len(ws) == 1 and ws.nbytes == 16


def test_a_layer_never_overwrites_a_gradient_it_was_given():
    """BatchNorm2d.backward computes dx over dout only when the caller passes consume=True;
    a caller's dout stays intact otherwise, with or without a workspace."""
    from npmobilenet.nn import BatchNorm2d

    rng = np.random.default_rng(0)
    bn = BatchNorm2d(3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    dout = rng.standard_normal(x.shape)
    saved = dout.copy()
    for ws in (None, Workspace()):
        bn.forward(x, workspace=ws)
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
    """Steps 2 and 3 of a model (arrays reused from its workspace) give exactly what a fresh model
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


def test_model_workspace_holds_one_step_of_arrays():
    """After a change of batch size the arrays of the old size are let go (one step late)."""
    rng = np.random.default_rng(2)
    model = MobileNetV1(alpha=0.25, num_classes=10, seed=0).train()
    y = np.array([1, 2, 3, 4])
    _step(model, rng.standard_normal((4, 3, 32, 32)).astype(np.float32), y, input_grad=False)
    _step(model, rng.standard_normal((4, 3, 32, 32)).astype(np.float32), y, input_grad=False)
    steady = model._workspace.nbytes
    for _ in range(2):
        _step(model, rng.standard_normal((2, 3, 32, 32)).astype(np.float32), y[:2], False)
    assert model._workspace.nbytes < 0.75 * steady
