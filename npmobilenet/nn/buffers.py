"""Reusing the big arrays of a training step: activations and their gradients.

Why: a batch-16, 224x224 MobileNetV1 step writes ~1 GB of activations and as many gradients.
Arrays that large come from the operating system as fresh pages, and the first write to each
4 KB page costs a page fault (the kernel zeroes it first): measured here, ~100 ms of a ~790 ms
step. Writing into arrays that were already used costs nothing extra.

How: a :class:`BufferPool` hands out arrays by shape and dtype and takes them back as soon as
nothing else refers to them (Python's reference count: the pool's own reference, and nothing
else; a view counts, as it refers to its base), so

* the forward's outputs are taken from the pool; the layers' caches keep them alive until the
  backward has used them;
* each backward's ``dx`` is taken from the pool too, usually an activation of the same shape that
  the backward has just finished with, so the backward adds little memory on top of the forward;
* the next step finds every array it needs already in the pool.

An array the caller still holds (the logits, a ``dx`` kept in a list) is never handed out again.
Arrays not asked for during a whole step (after a change of batch size, say) are dropped at the
start of the next one, so the pool holds one step's worth of arrays.

A model makes its pool the active one while its forward and backward run (:func:`active`,
per thread); :func:`scratch` is what the layers call. With no active pool, a layer reuses the one
array it returned last time (``scratch``'s fallback), as a layer used on its own does.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

import numpy as np

_FREE_REFS = 3  # the pool's list entry, the loop's name, getrefcount's own argument


class BufferPool:
    """Arrays by ``(shape, dtype)``, handed out again once nothing else refers to them."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._used: set[int] = set()  # id() of the arrays handed out since the last new_step()

    def take(self, shape: tuple, dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` that no one else holds; its contents are stale."""
        key = (tuple(shape), np.dtype(dtype))
        arrays = self._arrays.setdefault(key, [])
        for buf in arrays:
            if sys.getrefcount(buf) == _FREE_REFS:
                self._used.add(id(buf))
                return buf
        buf = np.empty(key[0], key[1])
        arrays.append(buf)
        self._used.add(id(buf))
        return buf

    def owns(self, array) -> bool:
        """Whether ``array`` is one of this pool's arrays (itself, not a view of one)."""
        key = (getattr(array, "shape", None), getattr(array, "dtype", None))
        return any(a is array for a in self._arrays.get(key, ()))

    def new_step(self) -> None:
        """Drop the arrays not handed out since the last call (a step's worth is kept)."""
        for key in list(self._arrays):
            kept = [a for a in self._arrays[key] if id(a) in self._used]
            if kept:
                self._arrays[key] = kept
            else:
                del self._arrays[key]
        self._used = set()

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays the pool refers to."""
        return sum(a.nbytes for arrays in self._arrays.values() for a in arrays)

    def __len__(self) -> int:
        return sum(len(arrays) for arrays in self._arrays.values())


_local = threading.local()


@contextmanager
def active(pool: BufferPool):
    """Make ``pool`` the one :func:`scratch` draws from in this thread, for the ``with`` body."""
    previous = getattr(_local, "pool", None)
    _local.pool = pool
    try:
        yield pool
    finally:
        _local.pool = previous


def scratch(module, name: str, shape: tuple, dtype) -> np.ndarray:
    """An array ``module`` may overwrite (stale contents): from the active pool if there is one,
    else the array it stored under ``name`` last time, if nothing else holds it by now.

    The fallback keeps one array per (module, name): reference count 3 means only the module's
    attribute, the local name and getrefcount's argument refer to it; an output the caller
    kept is never overwritten.
    """
    pool = getattr(_local, "pool", None)
    if pool is not None:
        return pool.take(shape, dtype)
    buf = module.__dict__.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or sys.getrefcount(buf) > 3:
        buf = np.empty(shape, dtype)
        object.__setattr__(module, name, buf)
    return buf


def from_pool(shape: tuple, dtype) -> np.ndarray | None:
    """An array from the active pool (stale contents), or None when no pool is active.

    For a backward's ``dx``: without a pool it is left to the op to allocate (a per-layer
    fallback array would keep one gradient per layer alive, doubling a step's memory).
    """
    pool = getattr(_local, "pool", None)
    return None if pool is None else pool.take(shape, dtype)


def overwritable(dout) -> bool:
    """Whether a backward may write its ``dx`` over ``dout``, its incoming gradient.

    True while a model's backward runs (a pool is active) and ``dout`` is an array of that
    pool: then it is a gradient one layer handed the next inside the model's backward, which
    no one reads again. A gradient passed in from outside (``dlogits``) never is. Saves an
    activation-sized array per batch norm, and lets an elementwise backward run in place.
    """
    pool = getattr(_local, "pool", None)
    return pool is not None and pool.owns(dout)
