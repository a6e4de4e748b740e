"""Input validation shared by every public op.

Every public function validates its arguments here *before* any Numba kernel sees them, so a
user gets a ``TypeError`` or ``ValueError`` that names the function, the argument, what was
expected and what was received, never a Numba typing trace or a silently wrong number.

Messages follow one pattern: ``"<op>: <argument> <what was expected>, got <what was received>"``.
"""

from __future__ import annotations

import numbers
import os
import reprlib

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# How to get the optional dependencies of the demos (scikit-learn, Pillow, matplotlib): the
# "demo" extra, installed from the npmobilenet source folder.
INSTALL_HINT = 'pip install ".[demo]" (in the npmobilenet source folder)'


# Limits for the reprs inside error messages: a value of any size is described in a line.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def short_repr(x) -> str:
    """``repr(x)`` clipped to a few dozen characters (nested containers and strings elided)."""
    try:
        return _REPR.repr(x)
    except ValueError:  # an int too long to convert to text
        return f"<{type(x).__name__} too large to print>"


def describe(x) -> str:
    """A short description of a value for an error message: its type, and its shape or a
    clipped repr. At most ~150 characters whatever the size of ``x``."""
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    kind = type(x).__name__
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple, e.g. another op's cache
        return f"{kind} (fields {', '.join(x._fields)})"
    if isinstance(x, (list, tuple)):
        shape = _nested_lengths(x)
        size = f"of length {len(x)}" if len(shape) == 1 else f"of nested lengths {shape}"
        return f"{kind} {size}: {short_repr(x)}"
    if isinstance(x, (str, bytes)) and len(x) > _REPR.maxstring:
        return f"{kind} of length {len(x)}: {short_repr(x)}"
    return f"{kind} {short_repr(x)}"


def _nested_lengths(x, depth=6) -> tuple[int, ...]:
    """Lengths of ``x``, its first item, that item's first item... while they are lists/tuples."""
    lengths = []
    while isinstance(x, (list, tuple)) and len(lengths) < depth:
        lengths.append(len(x))
        if not x:
            break
        x = x[0]
    return tuple(lengths)


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
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {short_repr(v)}")
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
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {short_repr(v)}")
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
        got = short_repr(v) if isinstance(v, str) else describe(v)
        raise ValueError(f"{op}: {name} must be one of {sorted(options)!r}, got {got}")
    return v


def cache_of(op: str, cache, cache_type: type, forward: str):
    """Check that ``cache`` is the ``cache_type`` NamedTuple that ``forward`` returns."""
    if not isinstance(cache, cache_type):
        raise TypeError(
            f"{op}: cache must be the cache returned by {forward}, got {describe(cache)}"
        )
    return cache


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


def out_array(op: str, name: str, out, shape, dtype, *inputs) -> np.ndarray | None:
    """Check an array a caller passes to be written (``out=``, ``dx=``): None, or a writeable
    C-contiguous array of exactly ``shape`` and ``dtype`` that overlaps none of ``inputs``."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy array or None, got {describe(out)}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{op}: {name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}, got"
            f" {describe(out)}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{op}: {name} must be C-contiguous and writeable")
    if any(a is not None and np.may_share_memory(out, a) for a in inputs):
        raise ValueError(f"{op}: {name} must not share memory with the op's inputs")
    return out


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
