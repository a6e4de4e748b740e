"""activations ops (stub: being written)."""


def relu_forward(x):  # noqa: D103
    raise NotImplementedError


def relu_backward(dout, cache):  # noqa: D103
    raise NotImplementedError


def relu6_forward(x):  # noqa: D103
    raise NotImplementedError


def relu6_backward(dout, cache):  # noqa: D103
    raise NotImplementedError
