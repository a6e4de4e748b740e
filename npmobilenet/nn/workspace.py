"""A workspace: the arrays a model reuses from step to step, owned and passed explicitly.

Why: a batch-16, 224x224 MobileNetV1 step writes ~1 GB of activations and as many gradients.
Arrays that large come from the operating system as fresh pages, and the first write to each
4 KB page costs a page fault (the kernel zeroes it first), about an eighth of a step. Writing
into arrays that were already used costs nothing extra. And an array that nobody reads any
more can hold the next array of the step: the step's peak memory is what is alive at once,
not everything it ever wrote.

Who decides: whoever creates a :class:`Workspace` owns its arrays and passes it to the modules
it runs (``forward(x, workspace=ws)``). ``MobileNetV1`` owns one for the arrays handed between
its layers. A module called without one (``layer(x)``) allocates fresh outputs, so a caller
who keeps ``a = layer(x1)`` and then calls ``b = layer(x2)`` still has ``a`` intact.

The life of an array, as a library layer uses it:

* ``output(owner, shape, dtype)``: the forward's output, drawn by the layer ``owner``. It stays
  the owner's until
* ``release(owner)``: the layer's backward calls it when done. Every reader of a layer's output
  runs its backward before the layer's own backward, so nothing reads the array again in this
  step. (A container may also have a layer let its output go earlier, when the reader keeps no
  reference to it and the layer can compute it again: see ``BatchNorm2d.release_output``.)
* ``gradient(shape, dtype)``: a backward's dx. It is the receiver's: the module whose backward
  gets it as ``dout`` with ``consume=True`` owns it, and when that backward is done with it,
* ``free(array)`` gives it back. A gradient nobody gives back stays taken until the next step.
* ``new_step()``: the owner calls it before each forward: every array is free again, and arrays
  not drawn during the last step (after a change of batch size, say) are dropped.

A free array serves any request that fits in its bytes (a view of its start, shaped as asked),
so a gradient can live where an activation of another shape was. The n-th request of a step
first tries the array the n-th request of the previous step got: a training loop repeats the
same requests in the same order, so from the second step on nothing new is allocated.

So an array from the workspace is valid until it is released or freed, at the latest until
the owner's next ``new_step()``: a module run inside a model must copy an input or gradient it
wants to keep beyond that. ``runner`` is the :class:`npmobilenet.threads.Runner` the layers
split their batch with (the owner sets it).
"""

from __future__ import annotations

import numpy as np

from npmobilenet.threads import SERIAL

# A free array serves a request of at least this share of its bytes (a larger array would sit
# mostly unused while a later request of its size had to allocate another).
_MIN_FILL = 0.75


class _Slot:
    """One buffer of the workspace: whether it is taken, and whether it was this step."""

    __slots__ = ("buffer", "busy", "used", "views")

    def __init__(self, nbytes: int) -> None:
        self.buffer = np.empty(nbytes, np.uint8)
        self.busy, self.used = False, False
        self.views: dict[tuple, np.ndarray] = {}  # (shape, dtype) -> the view handed out

    def view(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """The buffer's start as a C-contiguous ``shape`` array (the same object each time)."""
        key = (shape, dtype)
        if key not in self.views:
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.views[key] = self.buffer[:n].view(dtype).reshape(shape)
        return self.views[key]


def _fits(slot: _Slot, nbytes: int) -> bool:
    """Whether the free ``slot`` may serve a request of ``nbytes``."""
    return not slot.busy and _MIN_FILL * slot.buffer.nbytes <= nbytes <= slot.buffer.nbytes


class Workspace:
    """Buffers that library layers write their outputs and gradients into, for the owner who
    passes it (see the module docstring for the rules)."""

    def __init__(self, runner=SERIAL) -> None:
        self.runner = runner
        self._slots: list[_Slot] = []
        self._held: dict[object, _Slot] = {}  # owner -> the slot of its current output
        self._given: dict[int, _Slot] = {}  # data address of a gradient -> its slot
        self._order: list[_Slot] = []  # the slot of each request of this step, in order
        self._last: list[_Slot] = []  # the same for the previous step

    def _take(self, shape, dtype) -> np.ndarray:
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        n = len(self._order)
        slot = self._last[n] if n < len(self._last) else None
        if slot is None or not _fits(slot, nbytes):
            fits = [s for s in self._slots if _fits(s, nbytes)]
            slot = min(fits, key=lambda s: s.buffer.nbytes, default=None)  # the best fit
        if slot is None:
            slot = _Slot(nbytes)
            self._slots.append(slot)
        slot.busy = slot.used = True
        self._order.append(slot)
        return slot.view(shape, dtype)

    def output(self, owner, shape: tuple, dtype) -> np.ndarray:
        """An array (stale contents) for ``owner``'s forward output, the owner's until
        :meth:`release`. A second output of the same owner in one step (a layer run twice)
        takes another array; the first stays taken until the next step."""
        array = self._take(shape, dtype)
        self._held[owner] = self._order[-1]
        return array

    def release(self, owner) -> None:
        """``owner``'s output is read no more in this step: its array is free for others."""
        slot = self._held.pop(owner, None)
        if slot is not None:
            slot.busy = False

    def gradient(self, shape: tuple, dtype) -> np.ndarray:
        """A free array (stale contents) for a backward's dx, taken until :meth:`free`."""
        array = self._take(shape, dtype)
        self._given[array.ctypes.data] = self._order[-1]
        return array

    def free(self, array) -> None:
        """Give back a gradient (an array from :meth:`gradient`, or a view of its start) that
        is read no more in this step. Any other array is left alone."""
        if not isinstance(array, np.ndarray) or array.size == 0:
            return
        slot = self._given.pop(array.ctypes.data, None)
        if slot is not None:
            slot.busy = False

    def owns(self, array) -> bool:
        """Whether ``array`` may share memory with one of the workspace's arrays (a view of
        one included)."""
        return isinstance(array, np.ndarray) and any(
            np.may_share_memory(array, s.buffer) for s in self._slots
        )

    def new_step(self) -> None:
        """Free every array; drop those not drawn since the last call."""
        self._slots = [s for s in self._slots if s.used]
        for s in self._slots:
            s.busy = s.used = False
        self._held, self._given = {}, {}
        self._last, self._order = self._order, []

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays the workspace holds."""
        return sum(s.buffer.nbytes for s in self._slots)

    def __len__(self) -> int:
        return len(self._slots)
