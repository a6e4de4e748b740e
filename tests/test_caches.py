"""Every op's cache is one NamedTuple type, and every backward refuses anything else clearly."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import ops

X4 = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
V3 = np.ones(3)


def _bn(act=None):
    args = (X4, V3, V3 * 0, np.zeros(3), np.ones(3), True)
    if act is None:
        return ops.batch_norm_forward(*args)
    return ops.batch_norm_act_forward(*args, activation=act)


# backward name -> (forward name, () -> (out, cache), backward, a valid dout for that cache)
FORWARDS = {
    "conv2d_backward": (
        "conv2d_forward",
        lambda: ops.conv2d_forward(X4, np.ones((4, 3, 3, 3))),
        ops.conv2d_backward,
    ),
    "batch_norm_backward": ("batch_norm_forward", _bn, ops.batch_norm_backward),
    "batch_norm_act_backward": (
        "batch_norm_act_forward",
        lambda: _bn("relu6"),
        ops.batch_norm_act_backward,
    ),
    "relu_backward": ("relu_forward", lambda: ops.relu_forward(X4), ops.relu_backward),
    "relu6_backward": ("relu6_forward", lambda: ops.relu6_forward(X4), ops.relu6_backward),
    "max_pool2d_backward": (
        "max_pool2d_forward",
        lambda: ops.max_pool2d_forward(X4, 2),
        ops.max_pool2d_backward,
    ),
    "avg_pool2d_backward": (
        "avg_pool2d_forward",
        lambda: ops.avg_pool2d_forward(X4, 2),
        ops.avg_pool2d_backward,
    ),
    "adaptive_avg_pool2d_backward": (
        "adaptive_avg_pool2d_forward",
        lambda: ops.adaptive_avg_pool2d_forward(X4, 2),
        ops.adaptive_avg_pool2d_backward,
    ),
    "linear_backward": (
        "linear_forward",
        lambda: ops.linear_forward(np.ones((2, 3)), np.ones((4, 3))),
        ops.linear_backward,
    ),
    "cross_entropy_backward": (
        "cross_entropy_forward",
        lambda: ops.cross_entropy_forward(np.ones((2, 3)), np.array([0, 2])),
        ops.cross_entropy_backward,
    ),
    "dropout_backward": (
        "dropout_forward",
        lambda: ops.dropout_forward(X4, 0.5, True, np.random.default_rng(0)),
        ops.dropout_backward,
    ),
}


def _dout(out):
    return 1.0 if np.ndim(out) == 0 else np.ones_like(out)


@pytest.mark.parametrize("name", FORWARDS)
def test_forward_returns_its_own_documented_namedtuple(name):
    forward_name, forward, backward = FORWARDS[name]
    out, cache = forward()
    assert isinstance(cache, tuple) and hasattr(cache, "_fields")
    assert type(cache).__doc__ and forward_name in type(cache).__doc__
    backward(_dout(out), cache)  # and its backward accepts it
    others = {type(f[1]()[1]) for n, f in FORWARDS.items() if n != name}
    others.discard(type(cache))  # batch_norm and batch_norm_act may share a type (checked below)
    assert type(cache) not in others


def _foreign_caches(name):
    """None, plain tuples, a dict, and every other op's cache."""
    yield None
    yield (1, 2, 3)
    yield ()
    yield {"x": X4}
    for other, (_, forward, _) in FORWARDS.items():
        if other != name:
            yield forward()[1]


@pytest.mark.parametrize("name", FORWARDS)
def test_backward_refuses_any_other_cache_with_a_clear_message(name):
    forward_name, forward, backward = FORWARDS[name]
    out, _ = forward()
    for bad in _foreign_caches(name):
        with pytest.raises(TypeError) as info:
            backward(_dout(out), bad)
        msg = str(info.value)
        assert msg.startswith(f"{name}: cache must be the cache returned by {forward_name}, got ")
        assert len(msg) < 300, msg
