"""dropout ops (stub: being written)."""


def dropout_forward(x, p, training, rng):  # noqa: D103
    raise NotImplementedError


def dropout_backward(dout, cache):  # noqa: D103
    raise NotImplementedError
