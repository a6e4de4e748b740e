"""Fast eval-mode inference: BN folded, conv + bias + activation fused, channels-last inside.

``FusedMobileNetV1.from_state_dict(state)`` (or ``.from_model(model)``) builds the engine;
calling it on an NCHW batch returns logits. The readable reference ops (``npmobilenet.ops``) and
the model stay the teaching code; this package is the fast path beside them, tested against
them and against PyTorch.
"""

from npmobilenet.fast.engine import FusedMobileNetV1
from npmobilenet.fast.folding import fold_batch_norm

__all__ = ["FusedMobileNetV1", "fold_batch_norm"]
