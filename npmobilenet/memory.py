"""Rough memory needs of MobileNetV1 from its architecture table, to refuse impossible runs early.

A width multiplier of 1e6 or an input of 100000x100000 pixels would otherwise fail deep inside
NumPy (an ``OverflowError``, or a ``MemoryError`` for tens of terabytes) after minutes of work.
:func:`check_fits` compares an estimate with the machine's RAM and raises a ``ValueError`` that
states the estimate. The estimate counts what dominates (weights, their gradients and optimizer
buffers; the stored activations of one batch and their gradients); it is meant to be right
within a small factor, which is all a refusal at 10x or 1000x the RAM needs.
"""

from __future__ import annotations

import math

from npmobilenet._checks import machine_ram
from npmobilenet.models.mobilenet import FIRST_CONV, TABLE_1

# Arrays per layer output during a training step: the convolution's output (batch norm's
# input, kept for backward; the activation after it is computed again when backward needs it)
# and room for the gradients and outputs in flight (a model's workspace holds about 1.1 of
# these copies, a module run without one more).
TRAIN_COPIES = 2
# A forward pass without gradients holds about two consecutive outputs at a time.
EVAL_COPIES = 2
# Per weight during training: the weight, its gradient, a momentum buffer, one scratch array.
WEIGHT_COPIES = 4


def _width(op: str, c: int, alpha: float) -> int:
    scaled = c * alpha
    if not math.isfinite(scaled):
        raise ValueError(f"{op}: alpha {alpha:g} makes the layer widths infinite")
    return int(scaled)


def layer_sizes(alpha, in_channels, height, width, conv="separable", op="MobileNetV1"):
    """``(weights, outputs)``: the weight count and the per-image output elements of every
    convolution (first_conv, then each block's depthwise and pointwise parts), from TABLE_1."""
    h, w = -(-height // 2), -(-width // 2)  # first_conv has stride 2
    c = _width(op, FIRST_CONV.out_channels, alpha)
    weights, outputs = in_channels * c * 9 + 4 * c, [c * h * w]
    for _, c_in, c_out, stride, repeats in TABLE_1:
        for i in range(repeats):
            a, b = _width(op, c_in if i == 0 else c_out, alpha), _width(op, c_out, alpha)
            if i == 0 and stride == 2:
                h, w = -(-h // 2), -(-w // 2)
            if conv == "full":
                weights += a * b * 9 + 4 * b
                outputs.append(b * h * w)
            else:
                weights += a * 9 + 4 * a + a * b + 4 * b
                outputs += [a * h * w, b * h * w]
    return weights, outputs


def estimate_bytes(
    alpha, num_classes, in_channels, height, width, batch_size=1, itemsize=4,
    conv="separable", training=True, op="MobileNetV1",
) -> int:  # fmt: skip
    """Bytes a model needs: weights (with gradients and optimizer buffers when ``training``)
    plus the activations of a ``batch_size`` batch."""
    weights, outputs = layer_sizes(alpha, in_channels, height, width, conv, op)
    weights += _width(op, 1024, alpha) * num_classes + num_classes  # fc
    copies = (WEIGHT_COPIES, TRAIN_COPIES) if training else (1, EVAL_COPIES)
    return itemsize * (copies[0] * weights + copies[1] * batch_size * sum(outputs))


def human(n: int) -> str:
    """``1.5 GiB``-style sizes (a power of ten past what a float can hold)."""
    n = int(n)
    if n >= 1024**5 * 10**15:
        return f"10^{len(str(n)) - 1} bytes"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while i < len(units) - 1 and n >= 1024 ** (i + 1):
        i += 1
    return f"{n} B" if i == 0 else f"{n / 1024**i:.3g} {units[i]}"


def check_fits(op: str, needed: int, what: str, ram=None) -> None:
    """Raise a ValueError if ``needed`` bytes exceed the machine's RAM (``ram``, detected by
    default); ``what`` says what needs them (e.g. "alpha 1e+06 at 224x224")."""
    ram = machine_ram() if ram is None else ram
    if ram is not None and needed > ram:
        raise ValueError(
            f"{op}: {what} needs about {human(needed)} of memory, more than this machine's"
            f" {human(ram)} of RAM; choose a smaller size"
        )
