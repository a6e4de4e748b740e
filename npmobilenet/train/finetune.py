"""Starting a run from saved weights (``npmobilenet train --init``) and freezing the features.

* :func:`read_weights` reads model weights from a run folder, its ``model.safetensors`` or
  ``checkpoint.safetensors``, or any safetensors weights file with the model's key names (as
  converted from PyTorch).
* :func:`load_init_weights` copies them into a new model. Every layer must have the same shape,
  except the classifier: weights trained on another number of classes (1000 ImageNet classes
  onto a 10-class folder) load everything but ``fc``, which keeps its fresh initialisation,
  and the run says so. Any other difference is an error naming the first layers that differ.
* :func:`freeze_features` sets ``requires_grad = False`` on every parameter outside the
  classifier: the optimizer skips them, so they end the run bit for bit as loaded. Batch-norm
  running statistics still follow the new data in training mode, as in PyTorch.
"""

from __future__ import annotations

import os

from npmobilenet.io.weights import file_metadata, header_json, load_state_dict_file
from npmobilenet.train.checkpoint import FORMAT, load_checkpoint

RUN_FILES = ("model.safetensors", "checkpoint.safetensors")
MODEL_CONFIG_KEY = "npmobilenet.model_config"
CLASSIFIER = "fc."


def read_weights(path) -> tuple[dict, dict | None]:
    """``(state, model_config or None)`` from a run folder or a safetensors file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in RUN_FILES if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise FileNotFoundError(f"--init: {path} holds neither {' nor '.join(RUN_FILES)}")
        path = found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init: no weights file at {path}")
    meta = file_metadata(path)
    if FORMAT in meta:
        ckpt = load_checkpoint(path)
        return ckpt["model"], ckpt["model_config"]
    return load_state_dict_file(path), header_json("--init", path, meta, MODEL_CONFIG_KEY)


def weights_alpha(state: dict, config: dict | None) -> float | None:
    """The width multiplier the weights were made with: from their config, else from the first
    conv's 32 * alpha output channels; None if neither says."""
    if config and "alpha" in config:
        return float(config["alpha"])
    w = state.get("first_conv.conv.weight")
    return None if w is None or w.ndim != 4 else w.shape[0] / 32


def load_init_weights(model, state: dict, source, log=print) -> list[str]:
    """Copy ``state`` into ``model``; returns the keys left at their initialisation (the
    classifier's when its shape differs, else none). All checks run before anything is copied."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"--init {source}: not weights of this MobileNetV1: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    differ = [k for k in own if getattr(state[k], "shape", None) != own[k].shape]
    body = [k for k in differ if not k.startswith(CLASSIFIER)]
    if body:
        k = body[0]
        raise ValueError(
            f"--init {source}: {len(body)} layer(s) differ in shape from this model, first"
            f" {k}: {getattr(state[k], 'shape', None)} in the file, {own[k].shape} here (alpha"
            f" {model.config['alpha']}, in_channels {model.config['in_channels']}); give the"
            " --alpha the weights were trained with, and data with as many channels"
        )
    head = [k for k in own if k.startswith(CLASSIFIER)] if differ else []
    model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=not head)
    if head:
        log(
            f"--init: the classifier in {source} has {state['fc.weight'].shape[0]} classes and"
            f" this data {own['fc.weight'].shape[0]}: fc is re-initialised, every other layer"
            " loaded"
        )
    return head


def freeze_features(model) -> list[str]:
    """``requires_grad = False`` for every parameter outside the classifier; returns the names
    of the parameters left trainable."""
    model.freeze()
    return model.unfreeze(CLASSIFIER.rstrip("."))
