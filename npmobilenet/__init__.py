"""npmobilenet: MobileNetV1 from scratch in NumPy and Numba, every forward and backward by hand.

``import npmobilenet`` never imports torch.
"""

__version__ = "0.1.0"

from npmobilenet import ops  # noqa: E402,F401
