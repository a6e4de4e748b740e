"""Input validation shared by every public op.

Every public function validates its arguments here *before* any Numba kernel sees them, so a
user gets a ``TypeError`` or ``ValueError`` that names the function, the argument, what was
expected and what was received, never a Numba typing trace or a silently wrong number.

Messages follow one pattern: ``"<op>: <argument> <what was expected>, got <what was received>"``.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(x) -> str:
    """A short description of a value for an error message."""
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def float_array(op: str, name: str, x, ndim=None) -> np.ndarray:
    """Check that ``x`` is a float32/float64 ndarray (with ``ndim`` in the allowed set).

    ``ndim`` may be an int, a tuple of allowed ints, or None for any.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{op}: {name} must be a numpy array of float32 or float64, got {describe(x)}"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must have dtype float32 or float64, got dtype {x.dtype}"
            " (convert with x.astype(np.float32))"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{op}: {name} must be {want}, got {x.ndim}-D shape {x.shape}")
    return x


def same_dtype(op: str, ref_name: str, ref: np.ndarray, **others) -> None:
    """Check that every array in ``others`` (None allowed) has the dtype of ``ref``."""
    for name, arr in others.items():
        if arr is not None and arr.dtype != ref.dtype:
            raise TypeError(
                f"{op}: {name} has dtype {arr.dtype} but {ref_name} has dtype {ref.dtype};"
                " they must match (no silent casting)"
            )


def integer(op: str, name: str, v, minimum=None) -> int:
    """Check that ``v`` is an int (not bool) and at least ``minimum``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {describe(v)}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    return v


def flag(op: str, name: str, v) -> bool:
    """Check that ``v`` is a bool (numpy's included)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {describe(v)}")
    return bool(v)


def pair(op: str, name: str, v, minimum=None) -> tuple[int, int]:
    """Turn an int or a pair of ints into a ``(h, w)`` tuple, each at least ``minimum``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        return (integer(op, f"{name}[0]", v[0], minimum), integer(op, f"{name}[1]", v[1], minimum))
    v = integer(op, name, v, minimum)
    return (v, v)


def number(op: str, name: str, v, low=None, high=None, low_open=False, high_open=False) -> float:
    """Check that ``v`` is a real number inside the given (closed unless *_open) bounds."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {describe(v)}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{op}: {name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{op}: {name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def choice(op: str, name: str, v, options) -> str:
    """Check that ``v`` is one of ``options`` (compared as plain values: an array is not one)."""
    if not any(type(v) is type(o) and v == o for o in options):
        got = repr(v) if isinstance(v, str) else describe(v)
        raise ValueError(f"{op}: {name} must be one of {sorted(options)!r}, got {got}")
    return v


def dout_like(op: str, dout, shape, dtype) -> np.ndarray:
    """Check an upstream gradient against the shape and dtype the forward produced."""
    dout = float_array(op, "dout", dout)
    if dout.shape != tuple(shape):
        raise ValueError(
            f"{op}: dout has shape {dout.shape} but the forward output had shape {tuple(shape)}"
        )
    if dout.dtype != dtype:
        raise TypeError(f"{op}: dout has dtype {dout.dtype} but the forward ran in {dtype}")
    return dout


def machine_ram():
    """Physical RAM in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def output_fits(op: str, shape, dtype, what: str = "output") -> None:
    """Refuse an array of ``shape`` (Python ints) that could not fit in this machine's RAM."""
    n = 1
    for s in shape:
        n *= int(s)
    ram = machine_ram()
    if ram is not None and n * np.dtype(dtype).itemsize > ram:
        raise ValueError(
            f"{op}: the {what} would have shape {tuple(shape)} ({n:.3g} elements), more than"
            f" this machine's memory holds"
        )
