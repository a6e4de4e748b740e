"""npmobilenet: MobileNetV1 from scratch in NumPy and Numba, every forward and backward by hand.

The layout tells the architecture:

* :mod:`npmobilenet.ops`: functional forward/backward pairs, ``(out, cache)`` / ``(dout, cache)``.
* :mod:`npmobilenet.kernels`: the ``@njit`` kernels behind them, naive beside fast.
* :mod:`npmobilenet.nn`: modules as thin stateful shells over the ops.
* :mod:`npmobilenet.models`: MobileNetV1, built from the paper's Table 1, and its summary.
* :mod:`npmobilenet.optim`, :mod:`npmobilenet.data`, :mod:`npmobilenet.train`: training.
* :mod:`npmobilenet.io`: safetensors weights; :mod:`npmobilenet.gradcheck`: gradient checks.
* :mod:`npmobilenet.fast`: the fused eval-mode inference engine.

``import npmobilenet`` never imports torch.
"""

__version__ = "0.1.0"

from npmobilenet import (  # noqa: E402,F401
    data,
    fast,
    gradcheck,
    io,
    models,
    nn,
    ops,
    optim,
    threads,
    train,
)
from npmobilenet.models import MobileNetV1  # noqa: E402,F401

__all__ = [
    "MobileNetV1",
    "data",
    "fast",
    "gradcheck",
    "io",
    "models",
    "nn",
    "ops",
    "optim",
    "threads",
    "train",
]
