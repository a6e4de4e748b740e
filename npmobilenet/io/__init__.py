"""Weights on disk: safetensors files, interchangeable with PyTorch's state_dict."""

from npmobilenet.io.weights import (
    load_model,
    load_state_dict_file,
    load_weights,
    read_safetensors_header,
    save_state_dict,
    save_weights,
    saved_config,
    saved_labels,
)

__all__ = [
    "save_weights",
    "load_weights",
    "load_model",
    "saved_config",
    "saved_labels",
    "save_state_dict",
    "load_state_dict_file",
    "read_safetensors_header",
]
