"""Bad input to the non-convolution ops: a TypeError/ValueError naming the function and the
argument, raised before any Numba kernel runs (never a Numba TypingError or a wrong number)."""

import numpy as np
import pytest

from npmobilenet import ops

f64, f32 = np.float64, np.float32
X4 = np.zeros((2, 3, 6, 6))
V3 = np.zeros(3)


def _cache(forward, *args, **kw):
    return forward(*args, **kw)[1]


def bn(x=X4, w=V3, b=V3, rm=None, rv=None, training=True, **kw):
    rm = np.zeros(3) if rm is None else rm
    rv = np.ones(3) if rv is None else rv
    return ops.batch_norm_forward(x, w, b, rm, rv, training, **kw)


CASES = {
    # ---- batch norm
    "bn 1-D x": (lambda: bn(x=np.zeros(3)), ValueError, r"batch_norm_forward: x must be \(N, C\)"),
    "bn no channels": (
        lambda: bn(x=np.zeros((2, 0, 3)), w=None, b=None, rm=np.zeros(0), rv=np.zeros(0)),
        ValueError,
        "x must have at least one channel",
    ),
    "bn int x": (lambda: bn(x=X4.astype(int)), TypeError, "batch_norm_forward: x must have dtype"),
    "bn bool x": (lambda: bn(x=X4 > 0), TypeError, "x must have dtype float32 or float64"),
    "bn complex x": (lambda: bn(x=X4 + 0j), TypeError, "got dtype complex128"),
    "bn list x": (lambda: bn(x=[[1.0, 2.0]]), TypeError, "x must be a numpy array"),
    "bn weight dtype": (lambda: bn(w=V3.astype(f32)), TypeError, "weight has dtype float32"),
    "bn weight shape": (lambda: bn(w=np.zeros(4)), ValueError, r"weight must have shape \(3,\)"),
    "bn running_mean shape": (
        lambda: bn(rm=np.zeros(2)),
        ValueError,
        r"running_mean must have shape \(3,\).*got shape \(2,\)",
    ),
    "bn running_var 2-D": (lambda: bn(rv=np.ones((3, 1))), ValueError, "running_var must be 1-D"),
    "bn running_var dtype": (lambda: bn(rv=np.ones(3, f32)), TypeError, "running_var has dtype"),
    "bn eval without stats": (
        lambda: ops.batch_norm_forward(X4, None, None, None, None, False),
        TypeError,
        "running_mean must be an array",
    ),
    "bn one stat only": (
        lambda: ops.batch_norm_forward(X4, None, None, np.zeros(3), None, True),
        ValueError,
        "both be arrays or both None",
    ),
    "bn read-only stats": (
        lambda: bn(rm=np.broadcast_to(np.zeros(1), (3,))),
        ValueError,
        "running_mean must be writeable",
    ),
    "bn training not bool": (lambda: bn(training="yes"), TypeError, "training must be a bool"),
    "bn momentum > 1": (lambda: bn(momentum=1.5), ValueError, "momentum must be <= 1.0, got 1.5"),
    "bn eps 0": (lambda: bn(eps=0.0), ValueError, "eps must be > 0.0"),
    "bn one value per channel": (
        lambda: bn(x=np.zeros((1, 3))),
        ValueError,
        "more than 1 value per channel when training",
    ),
    "bn dout shape": (
        lambda: ops.batch_norm_backward(np.zeros((2, 3, 6, 5)), _cache(bn)),
        ValueError,
        r"batch_norm_backward: dout has shape \(2, 3, 6, 5\) but the forward output had shape",
    ),
    "bn dout dtype": (
        lambda: ops.batch_norm_backward(X4.astype(f32), _cache(bn)),
        TypeError,
        "dout has dtype float32 but the forward ran in float64",
    ),
    # ---- activations
    "relu int": (lambda: ops.relu_forward(np.arange(3)), TypeError, "relu_forward: x must have"),
    "relu6 list": (lambda: ops.relu6_forward([1.0]), TypeError, "relu6_forward: x must be"),
    "relu dout shape": (
        lambda: ops.relu_backward(np.zeros(4), _cache(ops.relu_forward, np.zeros(3))),
        ValueError,
        "relu_backward: dout has shape",
    ),
    "relu6 dout dtype": (
        lambda: ops.relu6_backward(np.zeros(3, f32), _cache(ops.relu6_forward, np.zeros(3))),
        TypeError,
        "relu6_backward: dout has dtype float32",
    ),
    # ---- pooling
    "maxpool 2-D x": (
        lambda: ops.max_pool2d_forward(np.zeros((6, 6)), 2),
        ValueError,
        "max_pool2d_forward: x must be 3-D or 4-D, got 2-D",
    ),
    "avgpool 5-D x": (
        lambda: ops.avg_pool2d_forward(np.zeros((1, 1, 1, 6, 6)), 2),
        ValueError,
        "avg_pool2d_forward: x must be 3-D or 4-D",
    ),
    "maxpool int x": (
        lambda: ops.max_pool2d_forward(X4.astype(np.int32), 2),
        TypeError,
        "max_pool2d_forward: x must have dtype",
    ),
    "maxpool kernel too big": (
        lambda: ops.max_pool2d_forward(X4, 9, padding=1),
        ValueError,
        "kernel .* is larger than the padded input",
    ),
    "maxpool dilated kernel too big": (
        lambda: ops.max_pool2d_forward(X4, 3, dilation=3),
        ValueError,
        "larger than the padded input",
    ),
    "avgpool padding > kernel/2": (
        lambda: ops.avg_pool2d_forward(X4, 3, padding=2),
        ValueError,
        r"padding must be at most half the kernel size.*padding=\(2, 2\)",
    ),
    "maxpool padding > kernel/2": (
        lambda: ops.max_pool2d_forward(X4, (2, 4), padding=(1, 3)),
        ValueError,
        "padding must be at most half",
    ),
    "maxpool stride 0": (
        lambda: ops.max_pool2d_forward(X4, 2, stride=0),
        ValueError,
        "stride must be >= 1, got 0",
    ),
    "avgpool negative stride": (
        lambda: ops.avg_pool2d_forward(X4, 2, stride=(1, -1)),
        ValueError,
        r"stride\[1\] must be >= 1",
    ),
    "avgpool negative padding": (
        lambda: ops.avg_pool2d_forward(X4, 2, padding=-1),
        ValueError,
        "padding must be >= 0",
    ),
    "maxpool kernel 0": (
        lambda: ops.max_pool2d_forward(X4, 0),
        ValueError,
        "kernel_size must be >= 1",
    ),
    "maxpool float kernel": (
        lambda: ops.max_pool2d_forward(X4, 2.0),
        TypeError,
        "kernel_size must be an int",
    ),
    "maxpool kernel triple": (
        lambda: ops.max_pool2d_forward(X4, (2, 2, 2)),
        ValueError,
        "kernel_size must be an int or a pair",
    ),
    "avgpool ceil_mode not bool": (
        lambda: ops.avg_pool2d_forward(X4, 2, ceil_mode=1),
        TypeError,
        "ceil_mode must be a bool",
    ),
    "avgpool count_include_pad not bool": (
        lambda: ops.avg_pool2d_forward(X4, 2, count_include_pad="no"),
        TypeError,
        "count_include_pad must be a bool",
    ),
    "pool zero-sized x": (
        lambda: ops.avg_pool2d_forward(np.zeros((1, 3, 0, 4)), 1),
        ValueError,
        "non-zero C, H and W",
    ),
    "maxpool dout shape": (
        lambda: ops.max_pool2d_backward(
            np.zeros((2, 3, 3, 4)), _cache(ops.max_pool2d_forward, X4, 2)
        ),
        ValueError,
        r"max_pool2d_backward: dout has shape \(2, 3, 3, 4\) but the forward output had shape",
    ),
    "avgpool dout dtype": (
        lambda: ops.avg_pool2d_backward(
            np.zeros((2, 3, 3, 3), f32), _cache(ops.avg_pool2d_forward, X4, 2)
        ),
        TypeError,
        "avg_pool2d_backward: dout has dtype float32",
    ),
    "adaptive output 0": (
        lambda: ops.adaptive_avg_pool2d_forward(X4, (0, 2)),
        ValueError,
        r"adaptive_avg_pool2d_forward: output_size\[0\] must be >= 1",
    ),
    "adaptive output str": (
        lambda: ops.adaptive_avg_pool2d_forward(X4, "7"),
        TypeError,
        "output_size must be an int",
    ),
    "adaptive dout shape": (
        lambda: ops.adaptive_avg_pool2d_backward(
            np.zeros((2, 3, 2, 2)), _cache(ops.adaptive_avg_pool2d_forward, X4, 1)
        ),
        ValueError,
        "adaptive_avg_pool2d_backward: dout has shape",
    ),
    # ---- linear
    "linear weight 1-D": (
        lambda: ops.linear_forward(np.zeros((2, 3)), np.zeros(3)),
        ValueError,
        "linear_forward: weight must be 2-D",
    ),
    "linear features": (
        lambda: ops.linear_forward(np.zeros((2, 3)), np.zeros((4, 5))),
        ValueError,
        "x has 3 input features .* expects 5",
    ),
    "linear bias shape": (
        lambda: ops.linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)),
        ValueError,
        r"bias must have shape \(4,\)",
    ),
    "linear dtypes": (
        lambda: ops.linear_forward(np.zeros((2, 3)), np.zeros((4, 3), f32)),
        TypeError,
        "weight has dtype float32 but x has dtype float64",
    ),
    "linear 0-D x": (
        lambda: ops.linear_forward(np.zeros(()), np.zeros((4, 3))),
        ValueError,
        "x must be at least 1-D",
    ),
    "linear dout shape": (
        lambda: ops.linear_backward(
            np.zeros((2, 3)), _cache(ops.linear_forward, np.zeros((2, 3)), np.zeros((4, 3)))
        ),
        ValueError,
        r"linear_backward: dout has shape \(2, 3\) but the forward output had shape \(2, 4\)",
    ),
    # ---- softmax / cross-entropy
    "softmax axis": (lambda: ops.softmax(np.zeros((2, 3)), axis=2), ValueError, "softmax: axis"),
    "log_softmax int": (
        lambda: ops.log_softmax(np.arange(3)),
        TypeError,
        "log_softmax: x must have dtype",
    ),
    "ce bad reduction": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1]), reduction="avg"),
        ValueError,
        r"cross_entropy_forward: reduction must be one of .*got 'avg'",
    ),
    "ce target shape": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1, 2])),
        ValueError,
        r"class target must have shape \(2,\).*got shape \(3,\)",
    ),
    "ce target out of range": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3])),
        ValueError,
        "target value 3 is out of range for 3 classes",
    ),
    "ce negative target": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.array([-1, 0])),
        ValueError,
        "target value -1 is out of range",
    ),
    "ce bool target": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.array([True, False])),
        TypeError,
        "target must have an integer dtype .* got dtype bool",
    ),
    "ce list target": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), [0, 1]),
        TypeError,
        "target must be an integer array",
    ),
    "ce prob target shape": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.zeros((2, 4))),
        ValueError,
        r"probability target must have the shape of logits \(2, 3\)",
    ),
    "ce prob target dtype": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.zeros((2, 3), f32)),
        TypeError,
        "target has dtype float32 but logits has dtype float64",
    ),
    "ce 3-D logits": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3, 4)), np.zeros(2, int)),
        ValueError,
        "logits must be 1-D or 2-D",
    ),
    "ce int logits": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3), int), np.zeros(2, int)),
        TypeError,
        "logits must have dtype",
    ),
    "ce smoothing": (
        lambda: ops.cross_entropy_forward(np.zeros((2, 3)), np.zeros(2, int), label_smoothing=-0.1),
        ValueError,
        "label_smoothing must be >= 0.0",
    ),
    "ce dloss shape (none)": (
        lambda: ops.cross_entropy_backward(
            np.zeros(3),
            _cache(ops.cross_entropy_forward, np.zeros((2, 3)), np.zeros(2, int), "none"),
        ),
        ValueError,
        r"cross_entropy_backward: dout has shape \(3,\) but the forward output had shape \(2,\)",
    ),
    "ce dloss not scalar (mean)": (
        lambda: ops.cross_entropy_backward(
            np.ones(2), _cache(ops.cross_entropy_forward, np.zeros((2, 3)), np.zeros(2, int))
        ),
        ValueError,
        "dloss must be a scalar for reduction='mean'",
    ),
    # ---- dropout
    "dropout p > 1": (
        lambda: ops.dropout_forward(X4, 1.5, True, np.random.default_rng(0)),
        ValueError,
        "dropout_forward: p must be <= 1.0, got 1.5",
    ),
    "dropout p < 0": (
        lambda: ops.dropout_forward(X4, -0.1, True, np.random.default_rng(0)),
        ValueError,
        "p must be >= 0.0",
    ),
    "dropout rng seed": (
        lambda: ops.dropout_forward(X4, 0.5, True, 0),
        TypeError,
        "rng must be a numpy.random.Generator .* got int 0",
    ),
    "dropout legacy RandomState": (
        lambda: ops.dropout_forward(X4, 0.5, True, np.random.RandomState(0)),
        TypeError,
        "rng must be a numpy.random.Generator",
    ),
    "dropout int x": (
        lambda: ops.dropout_forward(np.ones(3, int), 0.5, True, np.random.default_rng(0)),
        TypeError,
        "dropout_forward: x must have dtype",
    ),
    "dropout dout shape": (
        lambda: ops.dropout_backward(
            np.zeros(2),
            _cache(ops.dropout_forward, np.zeros(3), 0.5, True, np.random.default_rng()),
        ),
        ValueError,
        "dropout_backward: dout has shape",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_rejected_with_a_clear_message(name):
    call, exc, match = CASES[name]
    with pytest.raises(exc, match=match):
        call()
