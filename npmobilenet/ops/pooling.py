"""pooling ops (stub: being written)."""


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):  # noqa: D103
    raise NotImplementedError


def max_pool2d_backward(dout, cache):  # noqa: D103
    raise NotImplementedError


def avg_pool2d_forward(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
):  # noqa: D103
    raise NotImplementedError


def avg_pool2d_backward(dout, cache):  # noqa: D103
    raise NotImplementedError


def adaptive_avg_pool2d_forward(x, output_size):  # noqa: D103
    raise NotImplementedError


def adaptive_avg_pool2d_backward(dout, cache):  # noqa: D103
    raise NotImplementedError
