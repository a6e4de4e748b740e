"""A workspace: the memory a model reuses from step to step, owned and passed explicitly.

Why: a batch-16, 224x224 MobileNetV1 step writes ~1 GB of activations and as many gradients.
Memory that large comes from the operating system as fresh pages, and the first write to each
4 KB page costs a page fault (the kernel zeroes it first), about an eighth of a step. Writing
into memory that was already used costs nothing extra. And memory that nobody reads any more
can hold the next array of the step: the step's peak is what is alive at once, not everything
it ever wrote.

Who decides: whoever creates a :class:`Workspace` owns its memory and passes it to the modules
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
* ``new_step()``: the owner calls it before each forward: all the memory is free again.

How memory is handed out: arrays are views of a few large byte buffers ("chunks"). A request
takes the smallest free stretch of a chunk that holds it (the best fit), and a stretch given
back merges with its free neighbours, so two freed activations can hold one larger gradient.
A chunk is reserved large but costs only the pages written: the operating system maps a page
on its first write. The n-th request of a step first tries the place the n-th request of the
previous step got: a training loop repeats the same requests in the same order, so from the
second step on every array lands where it was (no page is new). A chunk whose stretch in use
during a step was under 3/4 of what it held before (after a change of batch size, say), or
that was not used at all, is dropped at the next ``new_step()``.

So an array from the workspace is valid until it is released or freed, at the latest until
the owner's next ``new_step()``: a module run inside a model must copy an input or gradient it
wants to keep beyond that. ``runner`` is the :class:`npmobilenet.threads.Runner` the layers
split their batch with (the owner sets it).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from npmobilenet.threads import SERIAL

_ALIGN = 64  # every array starts on a cache line
_CHUNK = 2**30  # bytes reserved per chunk (at least the request); only written pages count
_MAX_VIEWS = 4096  # views a chunk remembers (the same array object for the same place)


class _Chunk:
    """One byte buffer: its free stretches and how much of it has been written."""

    __slots__ = ("buffer", "free", "top", "step_top", "views")

    def __init__(self, nbytes: int) -> None:
        self.buffer = np.empty(nbytes, np.uint8)
        self.free: list[tuple[int, int]] = [(0, nbytes)]  # sorted free (start, end) stretches
        self.top = 0  # end of the furthest stretch ever handed out: the memory it holds
        self.step_top = 0  # the same, this step
        self.views: dict[tuple, np.ndarray] = {}  # (start, shape, dtype) -> the view handed out

    def take(self, start: int, nbytes: int) -> bool:
        """Hand out ``[start, start + nbytes)`` if it is free."""
        i = bisect.bisect_right(self.free, (start, np.inf)) - 1
        if i < 0 or self.free[i][1] < start + nbytes:
            return False
        lo, hi = self.free.pop(i)
        self.free[i:i] = [s for s in ((lo, start), (start + nbytes, hi)) if s[0] < s[1]]
        self.step_top = max(self.step_top, start + nbytes)
        self.top = max(self.top, self.step_top)
        return True

    def best(self, nbytes: int):
        """``(size, start)`` of the smallest free stretch that holds ``nbytes``, or None."""
        return min(((hi - lo, lo) for lo, hi in self.free if hi - lo >= nbytes), default=None)

    def give_back(self, start: int, nbytes: int) -> None:
        """Return a stretch, merged with the free stretches it touches."""
        lo, hi = start, start + nbytes
        i = bisect.bisect_left(self.free, (lo, lo))
        if i < len(self.free) and self.free[i][0] == hi:  # the next stretch
            hi = self.free.pop(i)[1]
        if i > 0 and self.free[i - 1][1] == lo:  # the previous one
            lo = self.free.pop(i - 1)[0]
            i -= 1
        self.free.insert(i, (lo, hi))

    def view(self, start: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """``shape`` array at byte ``start`` (the same object for the same place and shape)."""
        key = (start, shape, dtype)
        array = self.views.get(key)
        if array is None:
            n = math.prod(shape) * dtype.itemsize
            array = self.views[key] = self.buffer[start : start + n].view(dtype).reshape(shape)
        return array


def _address(array: np.ndarray) -> int:
    """The address of ``array``'s first element (``array.ctypes.data``, without building the
    ctypes object: half the cost, a few microseconds a call inside a training step)."""
    return array.__array_interface__["data"][0]


def _new_chunk(nbytes: int) -> _Chunk:
    """A chunk for a request of ``nbytes``: :data:`_CHUNK` reserved, or just the request where
    the system refuses to reserve that much."""
    try:
        return _Chunk(max(nbytes, _CHUNK))
    except MemoryError:
        return _Chunk(nbytes)


class Workspace:
    """Memory that library layers write their outputs and gradients into, for the owner who
    passes it (see the module docstring for the rules)."""

    def __init__(self, runner=SERIAL) -> None:
        self.runner = runner
        self._chunks: list[_Chunk] = []
        self._held: dict[object, tuple] = {}  # owner -> (chunk, start, nbytes) of its output
        self._given: dict[int, tuple] = {}  # data address of a gradient -> its place
        self._order: list[tuple] = []  # the place of each request of this step, in order
        self._last: list[tuple] = []  # the same for the previous step

    def _take(self, shape, dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype``; its place ``(chunk, start, nbytes, array)`` is
        the step's next entry in ``_order``."""
        n = len(self._order)
        place = self._last[n] if n < len(self._last) else None
        if place is not None and place[3].shape == shape and place[3].dtype == dtype \
                and place[0].take(place[1], place[2]):  # fmt: skip
            self._order.append(place)  # the same request as the previous step's n-th
            return place[3]
        shape, dtype = tuple(map(int, shape)), np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        nbytes = max(-(-size // _ALIGN) * _ALIGN, _ALIGN)
        if place is None or place[2] != nbytes or not place[0].take(place[1], nbytes):
            place = self._best(nbytes)
        array = place[0].view(place[1], shape, dtype)
        self._order.append((*place[:3], array))
        return array

    def _best(self, nbytes: int) -> tuple:
        """Take the best-fitting free stretch of any chunk (a new chunk if none holds it)."""
        fits = [(fit, i) for i, c in enumerate(self._chunks) if (fit := c.best(nbytes))]
        if fits:
            (_, start), i = min(fits)
            chunk = self._chunks[i]
        else:
            chunk, start = _new_chunk(nbytes), 0
            self._chunks.append(chunk)
        chunk.take(start, nbytes)
        return chunk, start, nbytes

    def output(self, owner, shape: tuple, dtype) -> np.ndarray:
        """An array (stale contents) for ``owner``'s forward output, the owner's until
        :meth:`release`. A second output of the same owner in one step (a layer run twice)
        takes other memory; the first stays taken until the next step."""
        array = self._take(shape, dtype)
        self._held[owner] = self._order[-1]
        return array

    def release(self, owner) -> None:
        """``owner``'s output is read no more in this step: its memory is free for others."""
        place = self._held.pop(owner, None)
        if place is not None:
            place[0].give_back(place[1], place[2])

    def gradient(self, shape: tuple, dtype) -> np.ndarray:
        """A free array (stale contents) for a backward's dx, taken until :meth:`free`."""
        array = self._take(shape, dtype)
        self._given[_address(array)] = self._order[-1]
        return array

    def free(self, array) -> None:
        """Give back a gradient (an array from :meth:`gradient`, or a view of its start) that
        is read no more in this step. Any other array is left alone."""
        if not isinstance(array, np.ndarray) or array.size == 0:
            return
        place = self._given.pop(_address(array), None)
        if place is not None:
            place[0].give_back(place[1], place[2])

    def owns(self, array) -> bool:
        """Whether ``array`` may share memory with the workspace's (a view of it included)."""
        return isinstance(array, np.ndarray) and any(
            np.may_share_memory(array, c.buffer) for c in self._chunks
        )

    def new_step(self) -> None:
        """Free all the memory; drop the chunks the last step used little or not at all."""
        kept = [c for c in self._chunks if c.step_top > 0 and 4 * c.step_top >= 3 * c.top]
        self._last = self._order if len(kept) == len(self._chunks) else []
        self._chunks, self._order, self._held, self._given = kept, [], {}, {}
        for c in kept:
            c.free, c.step_top = [(0, c.buffer.nbytes)], 0
            if len(c.views) > _MAX_VIEWS:  # places that changed (another batch size, say)
                c.views.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of memory the workspace holds (what its arrays have covered so far)."""
        return sum(c.top for c in self._chunks)

    def __len__(self) -> int:
        """The number of chunks."""
        return len(self._chunks)
