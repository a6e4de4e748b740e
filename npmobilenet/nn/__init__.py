"""Modules: thin, stateful shells over :mod:`npmobilenet.ops` with PyTorch-style state_dicts."""

from npmobilenet.nn.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    ReLU6,
)
from npmobilenet.nn.module import IncompatibleKeys, Module, ModuleList, Sequential
from npmobilenet.nn.parameter import Parameter
from npmobilenet.nn.workspace import Workspace

__all__ = [
    "Module",
    "Sequential",
    "ModuleList",
    "Parameter",
    "IncompatibleKeys",
    "Conv2d",
    "BatchNorm2d",
    "ReLU",
    "ReLU6",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Identity",
    "Workspace",
    "Linear",
    "Dropout",
    "Flatten",
]
