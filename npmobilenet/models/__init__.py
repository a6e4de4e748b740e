"""Models built from :mod:`npmobilenet.nn`: MobileNetV1 and its summary."""

from npmobilenet.models.mobilenet import (
    FIRST_CONV,
    TABLE_1,
    ConvBlock,
    DepthwiseSeparableConv,
    MobileNetV1,
    Stage,
    stages,
)
from npmobilenet.models.summary import LayerRow, ModelSummary, TypeRow, summarize

__all__ = [
    "MobileNetV1",
    "ConvBlock",
    "DepthwiseSeparableConv",
    "TABLE_1",
    "FIRST_CONV",
    "Stage",
    "stages",
    "ModelSummary",
    "LayerRow",
    "TypeRow",
    "summarize",
]
