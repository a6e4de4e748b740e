# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exercises: depthwise convolution, im2col, batch norm
#
# Write each function below, run its check cell, and read the report: the library runs your
# function on configurations drawn by Hypothesis, compares it with its own ops (and, for
# gradients, with the numerical gradient checker), and shows the smallest failing case with a
# hint. `jupytext --to notebook exercises.py` turns this file into a notebook; the same checks
# run from a shell with `npmobilenet exercise check NAME FILE`.
#
# Set `NPMOBILENET_EXERCISE_REFERENCE=1` to plug the library's own implementations in instead of
# yours (the tests run the notebook that way, so it always runs end to end).

# %%
import os

from npmobilenet import exercises

USE_REFERENCE = os.environ.get("NPMOBILENET_EXERCISE_REFERENCE") == "1"


def check(name, fn):
    """Check ``fn`` for exercise ``name`` (or the library's reference when plugged in)."""
    fn = exercises.reference(name) if USE_REFERENCE else fn
    print(exercises.check_function(name, fn, max_examples=30))


# %% [markdown]
# ## 1. Depthwise convolution, forward
#
# `x` is `(N, C, H, W)`, `w` is `(C, 1, kH, kW)`: channel `c` is filtered by `w[c, 0]` alone.
# Output `(N, C, OH, OW)` with `OH = (H + 2 * padding - kH) // stride + 1`.

# %%
def depthwise_conv_forward(x, w, stride=1, padding=0):
    N, C, H, W = x.shape
    _, _, kH, kW = w.shape
    # TODO: zero-pad x, loop over n, c and the output pixels, sum window * kernel.
    raise NotImplementedError("depthwise_conv_forward: TODO")


check("depthwise_forward", depthwise_conv_forward)

# %% [markdown]
# ## 2. Depthwise convolution, backward
#
# Given `dout` `(N, C, OH, OW)`, return `dx` `(N, C, H, W)` and `dw` `(C, 1, kH, kW)`.
# `dw` correlates the padded input with `dout`; `dx` spreads `dout * w` back over each window.

# %%
def depthwise_conv_backward(dout, x, w, stride=1, padding=0):
    # TODO: accumulate dw and a padded dx window by window, then crop the padding off dx.
    raise NotImplementedError("depthwise_conv_backward: TODO")


check("depthwise_backward", depthwise_conv_backward)

# %% [markdown]
# ## 3. im2col for a grouped convolution
#
# Return `cols` `(G, C/G * kH * kW, N * OH * OW)` with row `(c * kH + u) * kW + v` holding
# channel `g * C/G + c` at window offset `(u, v)`, and column `(n * OH + i) * OW + j`.

# %%
def im2col_grouped(x, kH, kW, stride=1, padding=0, groups=1):
    # TODO: zero-pad, then fill the rows (c, u, v) and columns (n, i, j) of each group.
    raise NotImplementedError("im2col_grouped: TODO")


check("im2col_grouped", im2col_grouped)

# %% [markdown]
# ## 4. Batch norm, backward (training mode)
#
# Per channel over `(N, H, W)`: `xhat = (x - mean) / sqrt(var + eps)` (biased variance),
# `out = gamma * xhat + beta`. Return `dx`, `dgamma`, `dbeta`.

# %%
def batchnorm_backward(dout, x, gamma, eps=1e-5):
    # TODO: remember that mean and var depend on x.
    raise NotImplementedError("batchnorm_backward: TODO")


check("batchnorm_backward", batchnorm_backward)

# %% [markdown]
# ## 5. Fold batch norm into the convolution before it
#
# Return `w_folded` `(K, Cg, kH, kW)` and `b_folded` `(K,)` with
# `conv(x, w_folded) + b_folded == bn_eval(conv(x, w))`.

# %%
def fold_bn(w, gamma, beta, mean, var, eps=1e-5):
    # TODO: batch norm in eval mode is a scale and a shift per output channel.
    raise NotImplementedError("fold_bn: TODO")


check("fold_bn", fold_bn)

# %% [markdown]
# Once all five pass, read how the library does the same work fast: `npmobilenet/kernels/`
# (the Numba kernels) and `npmobilenet/ops/` (the forward/backward pairs).
