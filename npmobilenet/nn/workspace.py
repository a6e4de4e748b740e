"""A workspace: the arrays a model reuses from step to step, owned and passed explicitly.

Why: a batch-16, 224x224 MobileNetV1 step writes ~1 GB of activations and as many gradients.
Arrays that large come from the operating system as fresh pages, and the first write to each
4 KB page costs a page fault (the kernel zeroes it first), about an eighth of a step. Writing
into arrays that were already used costs nothing extra.

Who decides: whoever creates a :class:`Workspace` owns its arrays and passes it to the modules
it runs (``forward(x, workspace=ws)``). ``MobileNetV1`` owns one for the arrays handed between
its layers. A module called without one (``layer(x)``) allocates fresh outputs, so a caller
who keeps ``a = layer(x1)`` and then calls ``b = layer(x2)`` still has ``a`` intact.

The life of an array, as a library layer uses it:

* ``output(owner, shape, dtype)``: the forward's output, drawn by the layer ``owner`` (a free
  array of that shape; the one the same owner had last step when it is free). It stays the
  owner's until
* ``release(owner)``: the layer's backward calls it when done. Every reader of a layer's output
  runs its backward before the layer's own backward, so nothing reads the array again in this
  step; it goes back to the free arrays, where
* ``gradient(shape, dtype)``: a backward's dx is drawn from (a free array of that shape, or a
  new one). Gradients are not handed out again in the same step.
* ``new_step()``: the owner calls it before each forward: every array is free again, and arrays
  not drawn during the last step (after a change of batch size, say) are dropped.

So an array from the workspace is valid until the owner's next ``new_step()``: a module run
inside a model must copy an input or gradient it wants to keep beyond that. ``runner`` is the
:class:`npmobilenet.threads.Runner` the layers split their batch with (the owner sets it).
"""

from __future__ import annotations

import numpy as np

from npmobilenet.threads import SERIAL


class _Slot:
    """One array of the workspace: whether it is handed out, and whether it was this step."""

    __slots__ = ("array", "busy", "used")

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.busy, self.used = array, True, True


class Workspace:
    """Arrays by ``(shape, dtype)`` that library layers write their outputs and gradients
    into, for the owner who passes it (see the module docstring for the rules)."""

    def __init__(self, runner=SERIAL) -> None:
        self.runner = runner
        self._slots: dict[tuple, list[_Slot]] = {}
        self._home: dict[object, _Slot] = {}  # owner -> the slot it drew its output from

    def _take(self, shape, dtype, preferred: _Slot | None = None) -> _Slot:
        key = (tuple(shape), np.dtype(dtype))
        slots = self._slots.setdefault(key, [])
        if preferred is not None and not preferred.busy and preferred.array.shape == key[0] \
                and preferred.array.dtype == key[1]:  # fmt: skip
            slot = preferred
        else:
            slot = next((s for s in slots if not s.busy), None)
        if slot is None:
            slot = _Slot(np.empty(key[0], key[1]))
            slots.append(slot)
        slot.busy = slot.used = True
        return slot

    def output(self, owner, shape: tuple, dtype) -> np.ndarray:
        """An array (stale contents) for ``owner``'s forward output, the owner's until
        :meth:`release`."""
        slot = self._take(shape, dtype, self._home.get(owner))
        self._home[owner] = slot
        return slot.array

    def release(self, owner) -> None:
        """``owner``'s output is read no more in this step: its array is free for gradients."""
        slot = self._home.get(owner)
        if slot is not None:
            slot.busy = False

    def gradient(self, shape: tuple, dtype) -> np.ndarray:
        """A free array (stale contents) for a backward's dx, not handed out again this step."""
        return self._take(shape, dtype).array

    def owns(self, array) -> bool:
        """Whether ``array`` may share memory with one of the workspace's arrays (a view of
        one included)."""
        return isinstance(array, np.ndarray) and any(
            np.may_share_memory(array, s.array) for slots in self._slots.values() for s in slots
        )

    def new_step(self) -> None:
        """Free every array; drop those not drawn since the last call."""
        self._home = {owner: s for owner, s in self._home.items() if s.used}
        for key in list(self._slots):
            kept = [s for s in self._slots[key] if s.used]
            for s in kept:
                s.busy = s.used = False
            if kept:
                self._slots[key] = kept
            else:
                del self._slots[key]

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays the workspace holds."""
        return sum(s.array.nbytes for slots in self._slots.values() for s in slots)

    def __len__(self) -> int:
        return sum(len(slots) for slots in self._slots.values())
