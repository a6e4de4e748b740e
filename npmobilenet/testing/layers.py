"""Hypothesis strategies for batch norm, linear, softmax, cross-entropy and dropout.

Each ``*_configs`` strategy draws a dict describing one valid call (shapes, settings, dtype and
the output shape); ``make_*_inputs(config, seed)`` makes seeded arrays for it and
``*_kwargs(config)`` picks the settings, named as :mod:`npmobilenet.ops` names them (and
``torch.nn.functional`` too, except dropout's generator ``rng``). Example::

    from hypothesis import given
    from npmobilenet.testing import batch_norm_configs, batch_norm_kwargs, make_batch_norm_inputs

    @given(batch_norm_configs())
    def test_my_batch_norm(cfg):
        arrays = make_batch_norm_inputs(cfg)  # x, weight, bias, running_mean, running_var
        out = my_batch_norm(**arrays, **batch_norm_kwargs(cfg))  # training, momentum, eps
        assert out.shape == cfg["out_shape"]

Every drawn configuration is valid for the op of the same name in :mod:`npmobilenet.ops` and
for its ``torch.nn.functional`` counterpart.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

_DTYPES = (np.float32, np.float64)


def _shape(draw, min_dims, max_dims, max_side, min_side=1):
    ndim = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(ndim))


# --------------------------------------------------------------------------------------------
# batch norm


@st.composite
def batch_norm_configs(draw, max_batch=3, max_channels=4, max_size=4, dtypes=_DTYPES):
    """Draw one batch-norm call as a dict.

    Keys: ``x_shape`` (N, C), (N, C, L) or (N, C, H, W); ``training`` (bool); ``momentum`` in
    [0, 1]; ``eps`` in [1e-6, 0.1]; ``affine`` (bool: False passes weight and bias as None);
    ``dtype``; ``out_shape`` (x's shape). Training configurations have more than one value per
    channel (N * L or N * H * W > 1), which batch statistics need.
    """
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    spatial = _shape(draw, 0, 2, max_size)
    training = draw(st.booleans())
    if training and n * int(np.prod(spatial)) == 1:
        n = 2
    shape = (n, c, *spatial)
    return {
        "x_shape": shape,
        "training": training,
        "momentum": draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0))),
        "eps": draw(st.one_of(st.just(1e-5), st.floats(1e-6, 0.1))),
        "affine": draw(st.booleans()),
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": shape,
    }


def batch_norm_kwargs(config):
    """``training``, ``momentum`` and ``eps`` of a config."""
    return {k: config[k] for k in ("training", "momentum", "eps")}


def make_batch_norm_inputs(config, seed=0):
    """Seeded arrays: ``x``, ``weight``, ``bias`` (None when not affine), ``running_mean`` and
    a positive ``running_var``, all of the config's dtype."""
    rng = np.random.default_rng(seed)
    dt, c = config["dtype"], config["x_shape"][1]
    affine = config["affine"]
    return {
        "x": (rng.standard_normal(config["x_shape"]) * 2 + 0.5).astype(dt),
        "weight": rng.uniform(0.5, 1.5, c).astype(dt) if affine else None,
        "bias": rng.standard_normal(c).astype(dt) if affine else None,
        "running_mean": rng.standard_normal(c).astype(dt),
        "running_var": rng.uniform(0.5, 2.0, c).astype(dt),
    }


# --------------------------------------------------------------------------------------------
# linear


@st.composite
def linear_configs(draw, max_features=6, max_lead_dims=2, max_batch=3, dtypes=_DTYPES):
    """Draw one linear call: ``x_shape`` (..., in) with 0 to ``max_lead_dims`` leading axes,
    ``weight_shape`` (out, in), ``bias`` (bool), ``dtype`` and ``out_shape`` (..., out)."""
    fin, fout = draw(st.integers(1, max_features)), draw(st.integers(1, max_features))
    lead = _shape(draw, 0, max_lead_dims, max_batch)
    return {
        "x_shape": (*lead, fin),
        "weight_shape": (fout, fin),
        "bias": draw(st.booleans()),
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": (*lead, fout),
    }


def make_linear_inputs(config, seed=0):
    """Seeded ``x``, ``weight`` (scaled by 1/sqrt(in)) and ``bias`` (None when not drawn)."""
    rng = np.random.default_rng(seed)
    dt = config["dtype"]
    fout, fin = config["weight_shape"]
    return {
        "x": rng.standard_normal(config["x_shape"]).astype(dt),
        "weight": (rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(dt),
        "bias": rng.standard_normal(fout).astype(dt) if config["bias"] else None,
    }


# --------------------------------------------------------------------------------------------
# softmax, log_softmax and cross-entropy


@st.composite
def softmax_configs(draw, max_dims=4, max_side=5, dtypes=_DTYPES):
    """Draw one softmax / log_softmax call: ``x_shape`` (1 to ``max_dims`` axes), ``axis`` (in
    [-ndim, ndim)), ``scale`` (1 or 100: logits of order 100 test the overflow handling),
    ``dtype`` and ``out_shape`` (x's shape)."""
    shape = _shape(draw, 1, max_dims, max_side)
    return {
        "x_shape": shape,
        "axis": draw(st.integers(-len(shape), len(shape) - 1)),
        "scale": draw(st.sampled_from([1.0, 100.0])),
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": shape,
    }


@st.composite
def cross_entropy_configs(draw, max_batch=4, max_classes=6, dtypes=_DTYPES):
    """Draw one cross-entropy call as a dict.

    Keys: ``logits_shape`` (N, C) or unbatched (C,); ``target`` ``"class"`` (integer indices)
    or ``"probability"`` (a distribution per sample); ``label_smoothing`` in [0, 1];
    ``reduction`` ("mean", "sum", "none"); ``ignored`` (class targets only: how many samples
    carry ``ignore_index`` = -100, never all of them); ``dtype``; ``out_shape`` (the loss's
    shape: () unless reduction is "none").
    """
    c = draw(st.integers(1, max_classes))
    batched = draw(st.booleans()) or draw(st.booleans())  # ~3 in 4
    n = draw(st.integers(1, max_batch)) if batched else 1
    target = draw(st.sampled_from(["class", "probability"]))
    ignored = draw(st.integers(0, n - 1)) if target == "class" and batched else 0
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return {
        "logits_shape": (n, c) if batched else (c,),
        "target": target,
        "label_smoothing": draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0, 1))),
        "reduction": reduction,
        "ignored": ignored,
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": ((n,) if batched else ()) if reduction == "none" else (),
    }


def cross_entropy_kwargs(config):
    """``reduction`` and ``label_smoothing`` of a config."""
    return {k: config[k] for k in ("reduction", "label_smoothing")}


def make_cross_entropy_inputs(config, seed=0):
    """Seeded ``logits`` and ``target``: int64 class indices ((N,), or () unbatched; the first
    ``ignored`` samples hold -100) or probabilities of the logits' shape and dtype."""
    rng = np.random.default_rng(seed)
    shape, dt = config["logits_shape"], config["dtype"]
    logits = (rng.standard_normal(shape) * 2).astype(dt)
    n, c = (shape[0] if len(shape) == 2 else 1), shape[-1]
    if config["target"] == "probability":
        target = rng.dirichlet(np.ones(c), n).reshape(shape).astype(dt)
    else:
        target = rng.integers(0, c, n)
        target[: config["ignored"]] = -100
        target = target.reshape(shape[:-1])
    return {"logits": logits, "target": target}


# --------------------------------------------------------------------------------------------
# dropout


@st.composite
def dropout_configs(draw, max_dims=4, max_side=5, dtypes=_DTYPES):
    """Draw one dropout call: ``x_shape`` (1 to ``max_dims`` axes), ``p`` in [0, 1] (0 and 1
    included), ``training`` (bool), ``seed`` (for the generator), ``dtype``, ``out_shape``."""
    shape = _shape(draw, 1, max_dims, max_side)
    return {
        "x_shape": shape,
        "p": draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))),
        "training": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "dtype": np.dtype(draw(st.sampled_from(dtypes))),
        "out_shape": shape,
    }


def dropout_kwargs(config):
    """``p``, ``training`` and ``rng`` (a fresh generator seeded with the config's seed)."""
    return {"p": config["p"], "training": config["training"],
            "rng": np.random.default_rng(config["seed"])}  # fmt: skip
