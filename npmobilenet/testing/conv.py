"""Hypothesis strategies for conv2d configurations (stub: being written)."""


def conv2d_configs(*args, **kwargs):
    raise NotImplementedError
