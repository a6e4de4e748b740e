"""Error messages describe a bad value by type and shape: short whatever the value's size."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet import _checks, ops

BIG_LIST = [[0.5] * 224] * 224  # its repr is ~1 MB
BIG_BATCH = [[BIG_LIST] * 3]  # (1, 3, 224, 224) as nested lists
BIG_STR = "relu" * 100_000
BIG_INT_ARRAY = np.zeros((1, 3, 224, 224), dtype=np.int64)
X4 = np.zeros((2, 3, 8, 8))
W = np.zeros((4, 3, 3, 3))
RNG = np.random.default_rng(0)


def _bn(**kw):
    args = dict(x=X4, weight=np.ones(3), bias=np.zeros(3), running_mean=np.zeros(3),
                running_var=np.ones(3), training=True)  # fmt: skip
    args.update(kw)
    return ops.batch_norm_forward(**args)


CALLS = {
    "conv x list": lambda: ops.conv2d_forward(BIG_LIST, W),
    "conv x nested batch": lambda: ops.conv2d_forward(BIG_BATCH, W),
    "conv weight list": lambda: ops.conv2d_forward(X4, BIG_LIST),
    "conv x int array": lambda: ops.conv2d_forward(BIG_INT_ARRAY, W),
    "conv padding list": lambda: ops.conv2d_forward(X4, W, padding=BIG_LIST),
    "conv padding str": lambda: ops.conv2d_forward(X4, W, padding=BIG_STR),
    "conv method str": lambda: ops.conv2d_forward(X4, W, method=BIG_STR),
    "conv stride list": lambda: ops.conv2d_forward(X4, W, stride=[BIG_LIST, 1]),
    "conv groups huge int": lambda: ops.conv2d_forward(X4, W, groups=-(10**5000)),
    "conv dout list": lambda: ops.conv2d_backward(BIG_LIST, ops.conv2d_forward(X4, W)[1]),
    "conv cache list": lambda: ops.conv2d_backward(X4, BIG_LIST),
    "bn x list": lambda: _bn(x=BIG_BATCH),
    "bn training str": lambda: _bn(training=BIG_STR),
    "bn momentum str": lambda: _bn(momentum=BIG_STR),
    "bn act str": lambda: ops.batch_norm_act_forward(
        X4, None, None, None, None, True, activation=BIG_STR
    ),
    "relu list": lambda: ops.relu_forward(BIG_LIST),
    "relu cache str": lambda: ops.relu_backward(X4, BIG_STR),
    "max pool kernel list": lambda: ops.max_pool2d_forward(X4, BIG_LIST),
    "max pool x list": lambda: ops.max_pool2d_forward(BIG_BATCH, 2),
    "avg pool ceil str": lambda: ops.avg_pool2d_forward(X4, 2, ceil_mode=BIG_STR),
    "adaptive size list": lambda: ops.adaptive_avg_pool2d_forward(X4, BIG_LIST),
    "linear weight list": lambda: ops.linear_forward(np.zeros((2, 3)), BIG_LIST),
    "linear cache tuple": lambda: ops.linear_backward(np.zeros((2, 4)), tuple(BIG_LIST)),
    "softmax axis str": lambda: ops.softmax(X4, axis=BIG_STR),
    "cross entropy target list": lambda: ops.cross_entropy_forward(np.zeros((2, 3)), BIG_LIST),
    "cross entropy reduction": lambda: ops.cross_entropy_forward(
        np.zeros((2, 3)), np.zeros(2, int), reduction=BIG_STR
    ),
    "cross entropy dloss list": lambda: ops.cross_entropy_backward(
        BIG_LIST, ops.cross_entropy_forward(np.zeros((2, 3)), np.zeros(2, int))[1]
    ),
    "dropout p str": lambda: ops.dropout_forward(X4, BIG_STR, True, RNG),
    "dropout rng list": lambda: ops.dropout_forward(X4, 0.5, True, BIG_LIST),
}


def _params():
    from npmobilenet.nn import Parameter

    return [Parameter(np.zeros(3))]


# Outside ops: settings of the optimizers, schedules, trainer, model and data loaders.
API_CALLS = {
    "SGD nesterov": lambda: _optim().SGD(_params(), 0.1, nesterov=BIG_LIST),
    "Adam betas": lambda: _optim().Adam(_params(), betas=BIG_LIST),
    "Adam betas item": lambda: _optim().Adam(_params(), betas=(BIG_STR, 0.9)),
    "Adam amsgrad": lambda: _optim().Adam(_params(), amsgrad=BIG_STR),
    "RMSprop centered": lambda: _optim().RMSprop(_params(), centered=BIG_LIST),
    "OneCycleLR optimizer": lambda: _sched().OneCycleLR(BIG_LIST, 0.1, total_steps=5),
    "OneCycleLR anneal": lambda: _sched().OneCycleLR(
        _optim().SGD(_params(), 0.1), 0.1, total_steps=5, anneal_strategy=BIG_STR
    ),
    "clip_grad_norm_ norm_type": lambda: _train().clip_grad_norm_(_params(), 1.0, BIG_STR),
    "summarize input_size": lambda: _models().summarize(_models().MobileNetV1(), BIG_LIST),
    "MobileNetV1 dtype": lambda: _models().MobileNetV1(dtype=BIG_STR),
    "load_npz layout": lambda: _data().load_npz("x.npz", layout=BIG_STR),
}


def _optim():
    from npmobilenet import optim

    return optim


def _sched():
    from npmobilenet.optim import lr_scheduler

    return lr_scheduler


def _train():
    from npmobilenet.train import trainer

    return trainer


def _models():
    from npmobilenet import models

    return models


def _data():
    from npmobilenet import data

    return data


def _short_error(call):
    """The message of the TypeError/ValueError ``call()`` raises, checked to be short."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    msg = str(info.value)
    assert len(msg) < 300, f"{len(msg)} characters: {msg[:400]}"
    return msg


@pytest.mark.parametrize("name", API_CALLS)
def test_api_error_messages_for_huge_values_stay_short(name):
    _short_error(API_CALLS[name])


@pytest.mark.parametrize("name", CALLS)
def test_error_messages_for_huge_values_stay_short(name):
    msg = _short_error(CALLS[name])
    assert msg.split(":")[0] in set(ops.__all__) | {"conv2d"}, msg  # names the function


@pytest.mark.parametrize(
    "value, want",
    [
        (BIG_LIST, "list of nested lengths (224, 224)"),
        (BIG_BATCH, "list of nested lengths (1, 3, 224, 224)"),
        (BIG_STR, "str of length 400000"),
        (BIG_INT_ARRAY, "array of shape (1, 3, 224, 224) and dtype int64"),
        (10**5000, "int"),
        ({"k": BIG_LIST}, "dict"),
    ],
    ids=["list", "nested list", "str", "int array", "huge int", "dict"],
)
def test_describe_gives_type_and_shape_in_a_line(value, want):
    text = _checks.describe(value)
    assert text.startswith(want) and len(text) < 200, text
