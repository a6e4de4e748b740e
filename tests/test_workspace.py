"""The workspace that lets a model reuse its activation and gradient arrays across steps."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops
from npmobilenet.models import MobileNetV1
from npmobilenet.nn import Workspace


def test_an_output_is_its_owner_s_until_released_and_a_gradient_until_freed():
    ws = Workspace()
    a, b = object(), object()  # two owners
    out_a = ws.output(a, (2, 3), np.float32)
    out_b = ws.output(b, (2, 3), np.float32)
    assert not np.shares_memory(out_a, out_b)  # a's output is still a's
    g1 = ws.gradient((2, 3), np.float32)
    assert not np.shares_memory(g1, out_a) and not np.shares_memory(g1, out_b)
    ws.release(a)
    g2 = ws.gradient((3, 2), np.float32)
    assert np.shares_memory(g2, out_a)  # a's backward released it: any shape that fits
    g3 = ws.gradient((2, 3), np.float32)
    assert not any(np.shares_memory(g3, o) for o in (out_b, g1, g2))  # g1, g2 not given back
    ws.free(g1)
    assert np.shares_memory(ws.gradient((6,), np.float32), g1)  # given back, handed out again
    ws.free(out_b)  # an output is not a gradient: free() leaves it alone
    ws.free(np.zeros((2, 3), np.float32))  # and an array of someone else's
    assert not np.shares_memory(ws.gradient((2, 3), np.float32), out_b)
    assert ws.gradient((2, 3), np.float64).dtype == np.float64
    assert ws.owns(out_a[0]) and not ws.owns(np.zeros((2, 3), np.float32))


def test_free_takes_a_gradient_or_a_view_of_its_start_only():
    ws = Workspace()
    g = ws.gradient((4, 6), np.float32)
    ws.free(g[1:])  # starts elsewhere: not the gradient, left taken
    assert not np.shares_memory(ws.gradient((4, 6), np.float32), g)
    ws.free(g.reshape(2, 2, 6))  # the same start (another array object): given back
    assert np.shares_memory(ws.gradient((24,), np.float32), g)


def test_memory_given_back_merges_with_free_neighbours():
    """Two released outputs side by side hold one array of twice their size: the workspace
    grows by the largest set of arrays alive at once, not by the sum of the shapes it saw."""
    ws = Workspace()
    owners = [object() for _ in range(3)]
    outs = [ws.output(o, (16,), np.float32) for o in owners]  # 64 bytes each, side by side
    held = ws.nbytes
    ws.release(owners[0])
    ws.release(owners[1])
    big = ws.gradient((32,), np.float32)
    assert np.shares_memory(big, outs[0]) and np.shares_memory(big, outs[1])
    assert not np.shares_memory(big, outs[2]) and ws.nbytes == held


def test_each_step_puts_each_request_where_the_previous_step_put_it():
    """The same requests in the same order land on the same memory (the same array objects),
    so from the second step on no page is new; all memory is free again at new_step()."""
    ws = Workspace()
    conv, bn = object(), object()

    def step():
        x = ws.output(conv, (4, 8), np.float64)
        y = ws.output(bn, (4, 8), np.float64)
        ws.release(bn)
        dy = ws.gradient((4, 8), np.float64)  # where y was
        ws.release(conv)
        dx = ws.gradient((2, 8), np.float64)
        ws.free(dy)
        return x, y, dy, dx

    first = step()
    held = ws.nbytes
    ws.new_step()
    again = step()
    assert all(a is b for a, b in zip(first, again)) and ws.nbytes == held
    assert np.shares_memory(first[1], first[2])


def test_a_request_unlike_the_previous_step_s_gets_its_own_shape_and_dtype():
    """The n-th request of a step whose shape or dtype differs from the previous step's n-th
    gets an array of its own shape and dtype (in the same place: all is free at new_step)."""
    ws = Workspace()
    first = ws.output(object(), (4, 6), np.float32)
    for shape, dtype in (((6, 4), np.float32), ((6, 4), np.int32), ((6, 4), np.float64),
                         ((6, 4), np.float64)):  # fmt: skip
        ws.new_step()
        a = ws.gradient(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and np.shares_memory(a, first)
    ws.new_step()
    assert ws.gradient([6, 4], "float64") is a  # equal requests spelt otherwise: the same array


def test_new_step_drops_memory_the_last_step_did_not_use():
    ws = Workspace()
    ws.output(object(), (4,), np.float32)
    ws.new_step()
    assert len(ws) == 1 and ws.nbytes == 64  # one cache line
    ws.new_step()  # nothing was asked for during that step
    assert len(ws) == 0 and ws.nbytes == 0


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


def _plain_step(model, x, y):
    """The model's units called one by one as plain ``forward(x)`` / ``backward(dout)``: no
    workspace, every output kept by its reader, nothing computed twice."""
    units = [m for _, m in model.units()]
    for m in units:
        x = m.forward(x)
    loss, cache = ops.cross_entropy_forward(x, y)
    model.zero_grad()
    d = ops.cross_entropy_backward(1.0, cache)
    for m in reversed(units):
        d = m.backward(d)
    return x, d, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "conv, activation, dtype, recompute, copies",
    [("separable", "relu", np.float32, True, 1.1), ("separable", "relu6", np.float64, True, 1.1),
     ("full", "relu", np.float64, True, 1.35), ("separable", "relu", np.float32, False, 1.7),
     ("full", "relu6", np.float32, False, 2.2)],
)  # fmt: skip
@pytest.mark.parametrize("release_all", [True, False])
def test_model_step_letting_outputs_go_equals_plain_calls(
    conv, activation, dtype, recompute, copies, release_all, monkeypatch
):
    """A model step lets batch-norm outputs go once read (inside each block; between blocks
    with ``recompute_block_outputs``) and computes them again for backward: the same numbers,
    bit for bit, as the same layers called plainly, which keep everything. Letting every
    activation go (``release_all``; by default a block keeps one under ``RELEASE_MIN_BYTES``,
    as all are here), its workspace then holds at most ``copies`` copies of the convolution
    outputs (the batch-norm inputs, which backward needs), counted from the architecture
    table: about one with recomputed block outputs."""
    from npmobilenet import threads
    from npmobilenet.memory import layer_sizes
    from npmobilenet.models import mobilenet

    if release_all:
        monkeypatch.setattr(mobilenet, "RELEASE_MIN_BYTES", 0)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 64, 64)).astype(dtype)
    y = np.array([0, 3, 7])
    model, plain = (MobileNetV1(alpha=0.25, num_classes=10, dtype=dtype, seed=0, conv=conv,
                                activation=activation) for _ in range(2))  # fmt: skip
    model.runner = threads.Runner(1)  # the plain calls are serial: the same sums
    model.recompute_block_outputs = recompute
    for _ in range(2):
        logits, dx, grads = _step(model, x, y)
        want = _plain_step(plain, x, y)
        np.testing.assert_array_equal(logits, want[0])
        np.testing.assert_array_equal(dx, want[1])
        for name in grads:
            np.testing.assert_array_equal(grads[name], want[2][name], err_msg=name)
    _, outputs = layer_sizes(0.25, 3, 64, 64, conv)
    copy = sum(outputs) * len(x) * np.dtype(dtype).itemsize
    assert model._workspace.nbytes <= copies * copy or not release_all
