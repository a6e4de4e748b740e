"""Hypothesis strategies for pooling configurations (stub: being written)."""


def pool2d_configs(*args, **kwargs):
    raise NotImplementedError
