"""Garbage in: every public op and layer, fed Hypothesis-drawn wrong types, shapes, dtypes,
non-finite values and empty arrays, either returns a correct result or raises a TypeError /
ValueError whose message names the function. Any other exception class is a bug.

Each call starts from valid arguments and replaces some of them with garbage, so the checks of
every argument are reached with the others valid. A result is checked against a plain NumPy
formula where one exists, and for its dtype and finiteness everywhere.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npmobilenet import nn, ops

DTYPES = [np.float16, np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64]


def _arrays():
    return hnp.arrays(
        st.sampled_from(DTYPES),
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
        elements=st.just(1) | st.just(0),
    )


def _mutations(good):
    """Near misses of a valid array: another dtype, a missing or extra axis, an empty axis,
    a nan or inf, a non-contiguous copy, a Python list."""
    if not isinstance(good, np.ndarray):
        return st.nothing()
    out = [st.sampled_from(DTYPES).map(lambda d: good.astype(d)),
           st.just(good[..., None]), st.just(good.tolist())]  # fmt: skip
    if good.ndim:
        out += [st.just(good[0]), st.just(good[:0]), st.just(np.asfortranarray(good.T))]
    if good.dtype.kind == "f" and good.size:
        out.append(st.sampled_from([np.nan, np.inf, -np.inf]).map(lambda v: _poison(good, v)))
    return st.one_of(out)


def _poison(a, v):
    a = a.copy()
    a.reshape(-1)[0] = v
    return a


SCALARS = st.one_of(
    # integers: small ones, and ones far past any memory (refused before anything is allocated)
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([-(2**70), 2**62, 2**70]),
    st.floats(),
    st.text(max_size=3), st.lists(st.integers(-2, 4), max_size=3),
    st.tuples(st.integers(-1, 3), st.integers(-1, 3)), st.just(object()),
)  # fmt: skip


def _garbage(good):
    return st.one_of(SCALARS, _arrays(), _mutations(good))


def _f(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def _good_args(name, rng, dtype):
    """Valid keyword arguments of each forward op (small shapes)."""
    x4 = _f(rng, 2, 3, 5, 5, dtype=dtype)
    c = lambda: _f(rng, 3, dtype=dtype)  # noqa: E731
    bn = dict(x=x4, weight=c(), bias=c(), running_mean=c(), running_var=np.abs(c()) + 1,
              training=True, momentum=0.1, eps=1e-5)  # fmt: skip
    w4 = _f(rng, 4, 3, 3, 3, dtype=dtype)
    return {
        "conv2d_forward": dict(x=x4, weight=w4, bias=_f(rng, 4, dtype=dtype), stride=1,
                               padding=1, dilation=1, groups=1, method="auto"),
        "batch_norm_forward": bn,
        "batch_norm_act_forward": {**bn, "activation": "relu"},
        "relu_forward": dict(x=x4), "relu6_forward": dict(x=x4),
        "max_pool2d_forward": dict(x=x4, kernel_size=2, stride=2, padding=0, dilation=1,
                                   ceil_mode=False),
        "avg_pool2d_forward": dict(x=x4, kernel_size=2, stride=2, padding=0, ceil_mode=False,
                                   count_include_pad=True),
        "adaptive_avg_pool2d_forward": dict(x=x4, output_size=1),
        "linear_forward": dict(x=_f(rng, 2, 6, dtype=dtype), weight=_f(rng, 4, 6, dtype=dtype),
                               bias=_f(rng, 4, dtype=dtype)),
        "softmax": dict(x=_f(rng, 2, 5, dtype=dtype), axis=-1),
        "log_softmax": dict(x=_f(rng, 2, 5, dtype=dtype), axis=-1),
        "cross_entropy_forward": dict(logits=_f(rng, 3, 5, dtype=dtype), target=np.array([0, 4, 2]),
                                      reduction="mean", label_smoothing=0.0, ignore_index=-100),
        "dropout_forward": dict(x=x4, p=0.5, training=True, rng=np.random.default_rng(0)),
    }[name]  # fmt: skip


FORWARDS = ["conv2d_forward", "batch_norm_forward", "batch_norm_act_forward", "relu_forward",
            "relu6_forward", "max_pool2d_forward", "avg_pool2d_forward",
            "adaptive_avg_pool2d_forward", "linear_forward", "softmax", "log_softmax",
            "cross_entropy_forward", "dropout_forward"]  # fmt: skip
BACKWARDS = {"conv2d_forward": "conv2d_backward", "batch_norm_forward": "batch_norm_backward",
             "batch_norm_act_forward": "batch_norm_act_backward", "relu_forward": "relu_backward",
             "relu6_forward": "relu6_backward", "max_pool2d_forward": "max_pool2d_backward",
             "avg_pool2d_forward": "avg_pool2d_backward",
             "adaptive_avg_pool2d_forward": "adaptive_avg_pool2d_backward",
             "linear_forward": "linear_backward", "cross_entropy_forward": "cross_entropy_backward",
             "dropout_forward": "dropout_backward"}  # fmt: skip


def _reference(name, kw):
    """A plain NumPy result for the ops that have a one-line formula (None otherwise)."""
    x = kw.get("x")
    if name == "relu_forward":
        return np.maximum(x, 0)
    if name == "relu6_forward":
        return np.clip(x, 0, 6)
    if name == "linear_forward":
        b = 0 if kw["bias"] is None else kw["bias"]
        return x.astype(np.float64) @ kw["weight"].astype(np.float64).T + b
    if name in ("softmax", "log_softmax"):
        z = x.astype(np.float64) - x.max(axis=kw["axis"], keepdims=True)
        lse = np.log(np.exp(z).sum(axis=kw["axis"], keepdims=True))
        return np.exp(z - lse) if name == "softmax" else z - lse
    return None


# Names a message may use for the function: the op (or its stem, e.g. "conv2d" for
# conv2d_forward); a layer's class name or the op it wraps.
ALIASES = {"BatchNorm2d": ("batch_norm",), "ReLU": ("relu",), "ReLU6": ("relu6",),
           "MaxPool2d": ("max_pool2d",), "AvgPool2d": ("avg_pool2d",),
           "AdaptiveAvgPool2d": ("adaptive_avg_pool2d",), "Linear": ("linear",),
           "Dropout": ("dropout",), "Conv2d": ("conv2d",)}  # fmt: skip


def _assert_named(name, err):
    assert isinstance(err, (TypeError, ValueError)), f"{name} raised {type(err).__name__}: {err}"
    message = str(err).lower()
    stem = name.removesuffix("_forward").removesuffix("_backward")
    names = (name, stem, *ALIASES.get(name, ()))
    assert any(n.lower() in message for n in names), (
        f"{name}'s {type(err).__name__} does not name it: {message[:300]}"
    )


def _check_result(name, kw, result):
    out = result[0] if isinstance(result, tuple) else result
    assert isinstance(out, (np.ndarray, np.floating, float)), f"{name} returned {type(out)}"
    x = kw.get("x", kw.get("logits"))
    if isinstance(x, np.ndarray) and isinstance(out, np.ndarray) and out.size:
        assert out.dtype == x.dtype, f"{name}: output dtype {out.dtype} for input {x.dtype}"
    ref = _reference(name, kw)
    if ref is not None:
        finite = np.isfinite(ref)
        np.testing.assert_allclose(np.asarray(out)[finite], ref[finite], rtol=1e-3, atol=1e-3)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_forward_ops_take_garbage(data):
    name = data.draw(st.sampled_from(FORWARDS), label="op")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    kw = _good_args(name, np.random.default_rng(0), dtype)
    for arg in list(kw):
        if data.draw(st.integers(0, 3), label=f"garble {arg}?") == 0:
            kw[arg] = data.draw(_garbage(kw[arg]), label=arg)
    try:
        result = getattr(ops, name)(**kw)
    except Exception as err:  # noqa: BLE001 - the class is what is being tested
        _assert_named(name, err)
        return
    _check_result(name, kw, result)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_backward_ops_take_garbage_gradients(data):
    forward = data.draw(st.sampled_from(sorted(BACKWARDS)), label="op")
    name = BACKWARDS[forward]
    kw = _good_args(forward, np.random.default_rng(0), np.float64)
    out, cache = getattr(ops, forward)(**kw)
    dout = np.ones_like(out)
    dout = data.draw(_garbage(dout), label="dout")
    try:
        result = getattr(ops, name)(dout, cache)
    except Exception as err:  # noqa: BLE001
        _assert_named(name, err)
        return
    grads = result if isinstance(result, tuple) else (result,)
    for g in grads:
        assert g is None or isinstance(g, np.ndarray), f"{name} returned {type(g)}"


def _layers():
    return {
        "Conv2d": (lambda a: nn.Conv2d(*a), [3, 4, 3], dict(x=(2, 3, 6, 6))),
        "BatchNorm2d": (lambda a: nn.BatchNorm2d(*a), [3], dict(x=(2, 3, 4, 4))),
        "ReLU": (lambda a: nn.ReLU(), [], dict(x=(2, 3))),
        "ReLU6": (lambda a: nn.ReLU6(), [], dict(x=(2, 3))),
        "MaxPool2d": (lambda a: nn.MaxPool2d(*a), [2], dict(x=(1, 2, 4, 4))),
        "AvgPool2d": (lambda a: nn.AvgPool2d(*a), [2], dict(x=(1, 2, 4, 4))),
        "AdaptiveAvgPool2d": (lambda a: nn.AdaptiveAvgPool2d(*a), [1], dict(x=(1, 2, 4, 4))),
        "Linear": (lambda a: nn.Linear(*a), [6, 4], dict(x=(2, 6))),
        "Dropout": (lambda a: nn.Dropout(*a), [0.5], dict(x=(2, 3))),
        "Flatten": (lambda a: nn.Flatten(*a), [1], dict(x=(2, 3, 2))),
    }


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_layers_take_garbage(data):
    layers = _layers()
    name = data.draw(st.sampled_from(sorted(layers)), label="layer")
    make, args, shapes = layers[name]
    args = [data.draw(_garbage(a), label=f"arg{i}") if data.draw(st.booleans()) else a
            for i, a in enumerate(args)]  # fmt: skip
    x = np.random.default_rng(0).standard_normal(shapes["x"]).astype(np.float32)
    if data.draw(st.booleans(), label="garble x?"):
        x = data.draw(_garbage(x), label="x")
    try:
        layer = make(args)
        out = layer.forward(x)
        assert isinstance(out, np.ndarray) and out.dtype == x.dtype
        layer.backward(np.ones_like(out))
    except Exception as err:  # noqa: BLE001
        _assert_named(name, err)
