"""Fast eval-mode inference: BN folded, conv + bias + activation fused, channels-last inside.

``model.fuse()`` (``FusedMobileNetV1(model)``) walks the model's modules and builds the engine
for its current weights; calling it on an NCHW batch returns what ``model.eval(); model(x)``
returns. The readable reference ops (``npmobilenet.ops``) and the model stay the teaching code;
this package is the fast path beside them, tested against them and against PyTorch.
"""

from npmobilenet.fast.engine import FusedMobileNetV1
from npmobilenet.fast.folding import fold_batch_norm
from npmobilenet.fast.walk import UnsupportedModuleError

__all__ = ["FusedMobileNetV1", "UnsupportedModuleError", "fold_batch_norm"]
