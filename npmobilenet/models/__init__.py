"""Models built from :mod:`npmobilenet.nn`: MobileNetV1 and its summary."""

from npmobilenet.models.mobilenet import (
    TABLE_1,
    ConvBlock,
    DepthwiseSeparableConv,
    MobileNetV1,
)
from npmobilenet.models.summary import LayerRow, ModelSummary, TypeRow, summarize

__all__ = [
    "MobileNetV1",
    "ConvBlock",
    "DepthwiseSeparableConv",
    "TABLE_1",
    "ModelSummary",
    "LayerRow",
    "TypeRow",
    "summarize",
]
