"""Output sizes of convolutions and pooling windows: the one place this arithmetic lives.

Along one axis, a window of ``kernel`` taps spaced ``dilation`` apart spans
``dilation*(kernel - 1) + 1`` input positions; it starts at every ``stride``-th position of the
padded input (``before`` + size + ``after``) and must fit inside it::

    out = floor((size + before + after - dilation*(kernel - 1) - 1) / stride) + 1

With ``ceil_mode`` (pooling only) the division rounds up, except that the last window must
start inside the input or the left padding, as in PyTorch.
"""

from __future__ import annotations


def window_span(kernel: int, dilation: int = 1) -> int:
    """Input positions covered by one window: ``dilation*(kernel - 1) + 1``."""
    return dilation * (kernel - 1) + 1


def output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length along one axis (see the module docstring); may be < 1, callers decide.

    padding: the same on both sides (int), or ``(before, after)``.
    """
    before, after = (padding, padding) if isinstance(padding, int) else padding
    room = size + before + after - window_span(kernel, dilation)
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:  # the last window starts in padding
        out -= 1
    return out
