"""A gradient check of every op in :mod:`npmobilenet.ops`, printed as one table.

``check_every_op()`` runs :func:`check_op` (or :func:`check_grad` for softmax and log_softmax,
which have no backward of their own) on one small float64 case per op and configuration, and
``format_results`` prints one row per case. It is the library's self-test in a few seconds, meant
for a demo command; the thorough checks live in the test suite.
"""

from __future__ import annotations

import numpy as np

from npmobilenet import ops
from npmobilenet.gradcheck.core import GradcheckError, GradcheckReport, check_grad, check_op

__all__ = ["check_every_op", "format_results"]


def _away_from_kinks(rng, shape, kinks, low, high, gap=0.1):
    """Uniform values in [low, high], pushed at least ``gap`` away from every kink."""
    x = rng.uniform(low, high, size=shape)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] < k, -gap, gap)
    return x


def _weighted(fn, W, axis):
    return lambda x: float(np.sum(W * fn(x, axis=axis)))


def _bn_act_written(x, weight, bias, running_mean, running_var, training, activation):
    """``batch_norm_act_coefficients``, its output then written by ``channel_affine``."""
    affine, cache = ops.batch_norm_act_coefficients(
        x, weight, bias, running_mean, running_var, training, activation=activation
    )
    return ops.channel_affine(x, affine), cache


def _bn_act_read_by_depthwise(x, weight, bias, dw_weight, running_mean, running_var, training):
    """A batch norm + ReLU whose output a 3x3 depthwise conv (padding 1) reads through
    ``input_affine``, never written; the backward differentiates both."""
    affine, bn_cache = ops.batch_norm_act_coefficients(
        x, weight, bias, running_mean, running_var, training
    )
    out, conv_cache = ops.conv2d_forward(
        x, dw_weight, padding=1, groups=x.shape[1], input_affine=affine
    )
    return out, (bn_cache, conv_cache)


def _bn_act_read_by_depthwise_backward(dout, cache):
    bn_cache, conv_cache = cache
    dz, d_dw_weight, _ = ops.conv2d_backward(dout, conv_cache)
    return (*ops.batch_norm_act_backward(dz, bn_cache), d_dw_weight)


def _cases(rng):
    """(label, kind, args) per case; kind "op" -> check_op(*args), "grad" -> check_grad(*args)."""
    n = rng.standard_normal
    conv = (ops.conv2d_forward, ops.conv2d_backward)
    x = n((2, 3, 5, 5))
    s = np.exp(x - x.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)  # softmax over channels: d sum(W*s) = s (W - sum(W s))
    W = n(x.shape)
    return [
        ("conv2d direct, 3x3, groups=1", "op",
         (*conv, {"x": n((2, 3, 5, 5)), "weight": n((4, 3, 3, 3)), "bias": n(4)},
          {"padding": 1, "method": "direct"})),
        ("conv2d im2col, 3x3, groups=2, dilation 2", "op",
         (*conv, {"x": n((1, 4, 6, 6)), "weight": n((4, 2, 3, 3)), "bias": n(4)},
          {"padding": 2, "dilation": 2, "groups": 2, "method": "im2col"})),
        ("conv2d depthwise, stride 2", "op",
         (*conv, {"x": n((2, 3, 6, 6)), "weight": n((6, 1, 3, 3))},
          {"stride": 2, "padding": 1, "groups": 3})),
        ("conv2d 1x1 pointwise", "op",
         (*conv, {"x": n((2, 4, 3, 3)), "weight": n((5, 4, 1, 1)), "bias": n(5)}, {})),
        ("conv2d padding='same', 2x4 kernel", "op",
         (*conv, {"x": n((1, 2, 4, 5)), "weight": n((3, 2, 2, 4))}, {"padding": "same"})),
        ("batch_norm training, (N, C, H, W)", "op",
         (ops.batch_norm_forward, ops.batch_norm_backward,
          {"x": n((2, 3, 3, 3)), "weight": n(3), "bias": n(3)},
          {"running_mean": n(3), "running_var": rng.uniform(0.5, 2, 3), "training": True})),
        ("batch_norm eval, (N, C)", "op",
         (ops.batch_norm_forward, ops.batch_norm_backward,
          {"x": n((4, 3)), "weight": n(3), "bias": n(3)},
          {"running_mean": n(3), "running_var": rng.uniform(0.5, 2, 3), "training": False})),
        ("batch_norm_act training + relu (fused)", "op",
         (ops.batch_norm_act_forward, ops.batch_norm_act_backward,
          {"x": n((2, 3, 3, 3)), "weight": n(3), "bias": n(3)},
          {"running_mean": n(3), "running_var": rng.uniform(0.5, 2, 3), "training": True,
           "activation": "relu"})),
        ("batch_norm_act_coefficients, channel_affine", "op",
         (_bn_act_written, ops.batch_norm_act_backward,
          {"x": n((2, 3, 3, 3)), "weight": n(3), "bias": n(3)},
          {"running_mean": n(3), "running_var": rng.uniform(0.5, 2, 3), "training": True,
           "activation": "relu6"})),
        ("batch norm read by depthwise (input_affine)", "op",
         (_bn_act_read_by_depthwise, _bn_act_read_by_depthwise_backward,
          {"x": n((2, 3, 6, 6)), "weight": n(3), "bias": n(3), "dw_weight": n((3, 1, 3, 3))},
          {"running_mean": n(3), "running_var": rng.uniform(0.5, 2, 3), "training": True})),
        ("relu", "op",
         (ops.relu_forward, ops.relu_backward,
          {"x": _away_from_kinks(rng, (2, 3, 4), [0.0], -2, 2)}, {})),
        ("relu6", "op",
         (ops.relu6_forward, ops.relu6_backward,
          {"x": _away_from_kinks(rng, (2, 3, 4), [0.0, 6.0], -2, 8)}, {})),
        ("max_pool2d 3x3, stride 2, padding 1", "op",
         (ops.max_pool2d_forward, ops.max_pool2d_backward,
          {"x": rng.permutation(50).reshape(1, 2, 5, 5) * 0.01}, {"kernel_size": 3, "stride": 2,
                                                                  "padding": 1})),
        ("avg_pool2d 3x3, stride 2, ceil_mode", "op",
         (ops.avg_pool2d_forward, ops.avg_pool2d_backward, {"x": n((1, 2, 6, 6))},
          {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True})),
        ("adaptive_avg_pool2d to 2x3", "op",
         (ops.adaptive_avg_pool2d_forward, ops.adaptive_avg_pool2d_backward,
          {"x": n((2, 2, 5, 7))}, {"output_size": (2, 3)})),
        ("linear, (N, L, in) input", "op",
         (ops.linear_forward, ops.linear_backward,
          {"x": n((2, 3, 4)), "weight": n((5, 4)), "bias": n(5)}, {})),
        ("cross_entropy, class targets, smoothing", "op",
         (ops.cross_entropy_forward, ops.cross_entropy_backward,
          {"logits": n((4, 5))}, {"target": rng.integers(0, 5, 4), "label_smoothing": 0.1})),
        ("cross_entropy, probability targets, sum", "op",
         (ops.cross_entropy_forward, ops.cross_entropy_backward,
          {"logits": n((4, 5))}, {"target": rng.dirichlet(np.ones(5), 4), "reduction": "sum"})),
        ("softmax (weighted sum)", "grad",
         (_weighted(ops.softmax, W, 1), {"x": x},
          {"x": s * (W - np.sum(W * s, axis=1, keepdims=True))})),
        ("log_softmax (weighted sum)", "grad",
         (_weighted(ops.log_softmax, W, 1), {"x": x},
          {"x": W - s * np.sum(W, axis=1, keepdims=True)})),
        ("dropout p=0.3, training", "op",
         (ops.dropout_forward, ops.dropout_backward, {"x": n((2, 3, 4))},
          {"p": 0.3, "training": True, "rng": np.random.default_rng(1)})),
    ]  # fmt: skip


def check_every_op(*, fast: bool = False, seed: int = 0) -> list[tuple[str, GradcheckReport]]:
    """Gradient-check every op on small float64 inputs; never raises on a failed check.

    Returns ``(label, report)`` pairs; a failing case still has its report (``report.passed``
    is False). ``fast`` selects check_grad's fast mode for every case.
    """
    results = []
    for label, kind, args in _cases(np.random.default_rng(seed)):
        try:
            if kind == "op":
                forward, backward, inputs, config = args
                report = check_op(forward, backward, inputs, config=config, fast=fast, seed=seed)
            else:
                report = check_grad(*args, fast=fast, seed=seed)
        except GradcheckError as err:
            if err.report is None:
                raise
            report = err.report
        results.append((label, report))
    return results


def format_results(results) -> str:
    """One row per case: inputs checked, evaluations, worst error / tolerance, pass or FAIL."""
    lines = [f"{'op':<44} {'checked':<22} {'evals':>6} {'err/tol':>9}  result"]
    for label, r in results:
        names = ",".join(i.name for i in r.inputs if i.name != "(joint)")
        worst = max(i.worst_ratio for i in r.inputs)
        lines.append(
            f"{label:<44} {names:<22} {r.evaluations:>6} {worst:>9.1e}  "
            f"{'pass' if r.passed else 'FAIL'}"
        )
    failed = sum(not r.passed for _, r in results)
    lines.append(f"{len(results) - failed} of {len(results)} gradient checks passed "
                 "(err/tol <= 1 passes; float64, central differences)")  # fmt: skip
    return "\n".join(lines)
