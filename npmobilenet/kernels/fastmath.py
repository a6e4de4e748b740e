"""The Numba ``fastmath`` flag sets of every kernel, defined once.

Neither set contains ``nnan``, ``ninf`` or ``nsz``: a NaN or an inf in the input still comes out
as in plain IEEE arithmetic (0 * inf = NaN, NaN + x = NaN).

* ``REASSOC``: reassociation lets LLVM vectorise reductions (sums are added in a different,
  blocked order), and contraction allows fused multiply-add. The training kernels use it.
* ``CONTRACT``: fused multiply-add only; nothing is reassociated. The inference kernels of
  ``npmobilenet.fast`` use it.
"""

from __future__ import annotations

REASSOC = {"reassoc", "contract"}
CONTRACT = {"contract"}
