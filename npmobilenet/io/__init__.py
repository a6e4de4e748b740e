"""Weights on disk: safetensors files, interchangeable with PyTorch's state_dict."""

from npmobilenet.io.weights import (
    load_state_dict_file,
    load_weights,
    save_state_dict,
    save_weights,
)

__all__ = ["save_weights", "load_weights", "save_state_dict", "load_state_dict_file"]
