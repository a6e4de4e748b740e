"""A spinning barrier for the threads of one fused forward (``npmobilenet.fast.bands``).

Threads that take one image through the network in bands of rows meet after every block: the
next block's depthwise conv reads rows the other threads wrote. A lock or condition variable
puts a waiting thread to sleep, and waking it costs tens of microseconds (more under a
hypervisor), as much as a small block's work. So the threads here wait by spinning, with the
GIL released (``nogil``), on a shared int64 array ``flags`` (one slot per thread): thread ``t``
stores the block's number ``step`` in ``flags[t]`` and waits until every slot holds at least
``step``. The store is an atomic release and the loads are atomic acquires, so everything a
thread wrote before its store (its rows, by Numba or by BLAS) is visible to a thread that has
seen the store.

A thread that fails stores a number larger than any step (:data:`FAILED`), so that the others
do not wait for it. The spin gives up after ``spins`` rounds and returns False; the caller
then yields its core (the thread it waits for may need it) and spins again.
"""

from __future__ import annotations

from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

FAILED = 2**62  # a step number no forward reaches: stored by a thread that raised


@intrinsic
def _load_acquire(typingctx, flags, index):
    """``flags[index]`` read with an atomic acquire load (int64 C-contiguous 1-d array)."""
    sig = types.int64(flags, index)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], array, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _store_release(typingctx, flags, index, value):
    """``flags[index] = value`` with an atomic release store."""
    sig = types.void(flags, index, value)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], array, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def arrive(flags, thread, step):
    """Thread ``thread`` has finished step ``step``: ``flags[thread] = step`` (release)."""
    _store_release(flags, thread, step)


@njit(cache=True, nogil=True)
def wait_all(flags, step, spins):
    """Spin until every ``flags[j] >= step`` (acquire loads); False after ``spins`` rounds
    without that."""
    for _ in range(spins):
        done = True
        for j in range(flags.shape[0]):
            if _load_acquire(flags, j) < step:
                done = False
        if done:
            return True
    return False
