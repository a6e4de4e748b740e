"""Loaders for published MobileNetV1 weights: timm, Hugging Face, Keras and TF-Slim files.

Each loader reads its format, maps its names and layouts onto the 27 convolutions and the
classifier of :class:`npmobilenet.MobileNetV1`, and returns a ready model in eval mode with the
source's conventions (activation, padding rule, batch-norm epsilon):

=============================  ==========  ===========  ========  ==========================
source                         activation  padding      bn_eps    weight layout
=============================  ==========  ===========  ========  ==========================
timm ``mobilenetv1_100/125``   relu6       ``torch``    1e-5      (K, C/G, kH, kW)
Hugging Face MobileNetV1       relu6       ``tf_same``  1e-3      (K, C/G, kH, kW)
Keras ``applications``         relu6       ``keras``    1e-3      (kH, kW, C, K)
TF-Slim checkpoints            relu6       ``tf_same``  1e-3      (kH, kW, C, K)
=============================  ==========  ===========  ========  ==========================

All checks run before the model is built: a file of another architecture, an unknown width, a
truncated file or a missing tensor raises a ValueError naming the file, and nothing is loaded.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from npmobilenet._checks import describe
from npmobilenet.interop import labels as imagenet
from npmobilenet.interop._assemble import ConvLayer, assemble
from npmobilenet.interop.tf_checkpoint import read_checkpoint
from npmobilenet.io.weights import load_state_dict_file


class _Tensors:
    """Named arrays from one file; remembers which were used so leftovers can be reported."""

    def __init__(self, arrays: dict, source: str, what: str):
        self.arrays, self.source, self.what, self.used = arrays, source, what, set()

    def __contains__(self, key) -> bool:
        return key in self.arrays

    def get(self, key: str, default=None):
        if key not in self.arrays:
            if default is not None:
                return default
            raise ValueError(
                f"{self.source}: no tensor {key!r}; not a {self.what} MobileNetV1 file"
                " (another architecture, or a truncated file?)"
            )
        self.used.add(key)
        return self.arrays[key]

    def check_all_used(self, ignore=()) -> None:
        left = sorted(k for k in self.arrays if k not in self.used and not k.endswith(ignore))
        if left:
            shown = ", ".join(left[:4]) + (" ..." if len(left) > 4 else "")
            raise ValueError(
                f"{self.source}: {len(left)} tensor(s) a {self.what} MobileNetV1 does not have"
                f" ({shown}): another architecture?"
            )


def _bn(t: _Tensors, prefix: str) -> list[np.ndarray]:
    """A PyTorch-named batch norm's (weight, bias, running_mean, running_var)."""
    return [t.get(prefix + k) for k in ("weight", "bias", "running_mean", "running_var")]


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------


def load_timm(path, dtype=np.float32):
    """timm's ``mobilenetv1_100`` / ``mobilenetv1_125`` safetensors file -> ``MobileNetV1``.

    Width and classes come from the shapes. ``mobilenetv1_100h`` (an extra head conv) and other
    timm models are refused. relu6, PyTorch padding, eps 1e-5.
    """
    path = os.fspath(path)
    t = _Tensors(load_state_dict_file(path), path, "timm")
    if any(".conv_pwl." in k for k in t.arrays):
        raise ValueError(
            f"{path}: a timm model with inverted-residual blocks (conv_pwl: MobileNetV2/V3,"
            " EfficientNet ...), another architecture than MobileNetV1"
        )
    if "conv_head.weight" in t:
        raise ValueError(
            f"{path}: this timm model has a head conv after the blocks (conv_head, as in"
            " mobilenetv1_100h); only mobilenetv1_100 / mobilenetv1_125 are supported"
        )
    convs = [ConvLayer(t.get("conv_stem.weight"), *_bn(t, "bn1."))]
    blocks = sorted(
        (int(m[1]), int(m[2]))
        for k in t.arrays
        if (m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.conv_dw\.weight", k))
    )
    for s, b in blocks:
        p = f"blocks.{s}.{b}."
        convs.append(ConvLayer(t.get(p + "conv_dw.weight"), *_bn(t, p + "bn1.")))
        convs.append(ConvLayer(t.get(p + "conv_pw.weight"), *_bn(t, p + "bn2.")))
    fc_w, fc_b = t.get("classifier.weight"), t.get("classifier.bias")
    t.check_all_used(ignore=("num_batches_tracked",))
    return assemble(path, convs, fc_w, fc_b, activation="relu6", padding="torch", bn_eps=1e-5,
                    labels=imagenet.for_classes(fc_w.shape[0]), dtype=dtype)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------


def load_hf(path_or_dir, dtype=np.float32):
    """A ``transformers`` MobileNetV1ForImageClassification -> ``MobileNetV1``.

    ``path_or_dir``: a ``model.safetensors`` file or the folder ``save_pretrained`` wrote. Its
    ``config.json``, when present beside the weights, gives the activation, epsilon, padding
    rule and the class names (``id2label``; Google's checkpoints have 1001 classes, 0 being
    "background"); without it the transformers defaults apply (relu6, 1e-3, TF padding).
    """
    path = os.fspath(path_or_dir)
    weights = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    config = _hf_config(os.path.join(os.path.dirname(weights), "config.json"))
    if config.get("model_type", "mobilenet_v1") != "mobilenet_v1":
        raise ValueError(
            f"{path}: config.json says model_type={config.get('model_type')!r}, not 'mobilenet_v1'"
        )
    arrays = load_state_dict_file(weights)
    pre = "mobilenet_v1." if any(k.startswith("mobilenet_v1.") for k in arrays) else ""
    t = _Tensors(arrays, weights, "Hugging Face")
    if "classifier.weight" not in t:
        raise ValueError(
            f"{weights}: no classifier.weight: a MobileNetV1Model without its classification"
            " head (save a MobileNetV1ForImageClassification), or another architecture"
        )
    convs = [ConvLayer(t.get(pre + "conv_stem.convolution.weight"),
                       *_bn(t, pre + "conv_stem.normalization."))]  # fmt: skip
    n = len(
        [k for k in arrays if re.fullmatch(re.escape(pre) + r"layer\.\d+\.convolution\.weight", k)]
    )
    for i in range(n):
        p = f"{pre}layer.{i}."
        convs.append(ConvLayer(t.get(p + "convolution.weight"), *_bn(t, p + "normalization.")))
    fc_w, fc_b = t.get("classifier.weight"), t.get("classifier.bias")
    t.check_all_used(ignore=("num_batches_tracked",))
    act = config.get("hidden_act", "relu6")
    if act not in ("relu", "relu6"):
        raise ValueError(f"{path}: hidden_act={act!r} is not supported (relu or relu6)")
    id2label = _hf_setting(path, config, "id2label", dict, "an object", {}) or {}
    labels = [id2label.get(str(i)) for i in range(fc_w.shape[0])]
    if None in labels or all(re.fullmatch(r"LABEL_\d+", str(x)) for x in labels):
        labels = imagenet.for_classes(fc_w.shape[0])
    tf_padding = _hf_setting(path, config, "tf_padding", bool, "true or false", True)
    eps = _hf_setting(path, config, "layer_norm_eps", (int, float), "a number", 1e-3)
    return assemble(weights, convs, fc_w, fc_b, activation=act,
                    padding="tf_same" if tf_padding else "torch", bn_eps=float(eps),
                    labels=labels, dtype=dtype)  # fmt: skip


def _hf_setting(path: str, config: dict, key: str, kind, want: str, default):
    """``config[key]`` (``default`` if absent or null), which must be a ``kind``."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(
            f"load_hf: {path}: config.json's {key} must be {want}, got {describe(value)}"
        )
    return value


def _hf_config(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


# --------------------------------------------------------------------------------------------
# TF-Slim checkpoints
# --------------------------------------------------------------------------------------------


def load_tf_checkpoint(prefix, dtype=np.float32):
    """A TF-Slim ``mobilenet_v1`` checkpoint (``PREFIX.index`` + ``PREFIX.data-*``).

    Variables ``MobilenetV1/Conv2d_0/weights``, ``MobilenetV1/Conv2d_<i>_depthwise/
    depthwise_weights``, ``.../Conv2d_<i>_pointwise/weights``, each with ``BatchNorm/{gamma,
    beta, moving_mean, moving_variance}`` (gamma may be absent: scale off), and
    ``MobilenetV1/Logits/Conv2d_1c_1x1/{weights, biases}``. relu6, TF padding, eps 1e-3.
    Optimizer slots and the global step are ignored. No TensorFlow import.
    """
    prefix = os.fspath(prefix)
    arrays = {
        k: v
        for k, v in read_checkpoint(prefix).items()
        if k.startswith("MobilenetV1/") and not re.search(r"/(Exponential|Momentum|RMS)", k)
    }
    t = _Tensors(arrays, prefix, "TF-Slim")
    convs = [_slim_conv(t, "Conv2d_0", "weights")]
    for j in range(1, 14):
        convs.append(_slim_conv(t, f"Conv2d_{j}_depthwise", "depthwise_weights"))
        convs.append(_slim_conv(t, f"Conv2d_{j}_pointwise", "weights"))
    logits = t.get("MobilenetV1/Logits/Conv2d_1c_1x1/weights")
    if logits.ndim != 4 or logits.shape[:2] != (1, 1):
        raise ValueError(f"{prefix}: the logits conv has shape {logits.shape}, expected 1x1")
    fc_b = t.get("MobilenetV1/Logits/Conv2d_1c_1x1/biases")
    t.check_all_used()
    return assemble(
        prefix,
        convs,
        logits[0, 0].T,
        fc_b,
        activation="relu6",
        padding="tf_same",
        bn_eps=1e-3,
        labels=imagenet.for_classes(logits.shape[3]),
        dtype=dtype,
    )


def _slim_conv(t: _Tensors, scope: str, name: str) -> ConvLayer:
    """One TF-Slim conv: (kH, kW, C, K) weights, or (kH, kW, C, 1) depthwise, + BatchNorm."""
    p = f"MobilenetV1/{scope}/"
    w = t.get(p + name)
    if w.ndim != 4:
        raise ValueError(f"{t.source}: {p + name} has shape {w.shape}, expected 4-D")
    w = w.transpose(2, 3, 0, 1) if name == "depthwise_weights" else w.transpose(3, 2, 0, 1)
    gamma = t.get(p + "BatchNorm/gamma", np.ones(w.shape[0]))
    stats = (t.get(p + f"BatchNorm/{b}") for b in ("beta", "moving_mean", "moving_variance"))
    return ConvLayer(w, gamma, *stats)


# --------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------


def load_keras(path, dtype=np.float32):
    """``keras.applications.MobileNet`` saved as ``.keras``, ``.weights.h5`` or legacy ``.h5``.

    Read with h5py only (``pip install npmobilenet[keras]``); keras and tensorflow are never
    imported. The model must have its top (``include_top=True``: the ``conv_preds`` layer).
    relu6, the Keras padding (TF "SAME" in the stem, an explicit bottom/right zero row and
    column before each stride-2 depthwise conv), batch-norm epsilon from the saved config
    (Keras's default 1e-3 for a bare ``.weights.h5``).
    """
    from npmobilenet.interop import keras_h5

    path = os.fspath(path)
    layers, config = keras_h5.read_layers(path)
    eps, act = _keras_conventions(path, config)

    def weights(name, count):
        if name not in layers:
            raise ValueError(
                f"{path}: no layer {name!r}: not a keras.applications.MobileNet file"
                " (another model?)"
                + (" or saved with include_top=False" if name == "conv_preds" else "")
            )
        got = layers.pop(name)
        if len(got) != count:
            raise ValueError(
                f"{path}: layer {name!r} holds {len(got)} arrays where MobileNet's has {count}:"
                " not a keras.applications.MobileNet file (another model?)"
            )
        return got

    convs = [_keras_conv(weights("conv1", 1)[0], weights("conv1_bn", 4), False)]
    for i in range(1, 14):
        dw = weights(f"conv_dw_{i}", 1)[0]
        convs.append(_keras_conv(dw, weights(f"conv_dw_{i}_bn", 4), True))
        convs.append(
            _keras_conv(weights(f"conv_pw_{i}", 1)[0], weights(f"conv_pw_{i}_bn", 4), False)
        )
    kernel, bias = weights("conv_preds", 2)
    leftover = sorted(k for k, v in layers.items() if v)
    if leftover:
        raise ValueError(
            f"{path}: layers {leftover[:4]} hold weights a keras.applications.MobileNet does"
            " not have: another model?"
        )
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1):
        raise ValueError(f"{path}: conv_preds has kernel shape {kernel.shape}, expected 1x1")
    return assemble(
        path,
        convs,
        kernel[0, 0].T,
        bias,
        activation=act,
        padding="keras",
        bn_eps=eps,
        labels=imagenet.for_classes(kernel.shape[3]),
        dtype=dtype,
    )


def _keras_conv(kernel: np.ndarray, bn: list, depthwise: bool) -> ConvLayer:
    """(kH, kW, C, K) kernel, or (kH, kW, C, 1) depthwise, + [gamma, beta, mean, var]."""
    if kernel.ndim != 4:
        kernel = kernel.reshape(kernel.shape + (1,) * (4 - kernel.ndim))
    w = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
    return ConvLayer(w, *bn)


def _keras_conventions(path: str, config) -> tuple[float, str]:
    """(batch-norm epsilon, activation) from a Keras model config (None: Keras defaults)."""
    if config is None:
        return 1e-3, "relu6"
    layers = {}
    for layer in config.get("config", {}).get("layers", []):  # dicts (keras_h5 checked)
        name = layer.get("config", {}).get("name", layer.get("name"))
        if isinstance(name, str):
            layers[name] = layer
    eps = [v.get("config", {}).get("epsilon", 1e-3) for v in layers.values()
           if v.get("class_name") == "BatchNormalization"]  # fmt: skip
    bad = [e for e in eps if isinstance(e, bool) or not isinstance(e, (int, float))]
    if bad:
        raise ValueError(f"load_keras: {path}: a batch norm's epsilon is {describe(bad[0])}")
    eps = {float(e) for e in eps}
    if len(eps) > 1:
        raise ValueError(f"{path}: batch norms with different epsilons {sorted(eps)}")
    relu = layers.get("conv1_relu", {}).get("config", {})
    act = "relu6" if relu.get("max_value", 6.0) == 6.0 else "relu"
    if relu.get("max_value", 6.0) not in (None, 6.0):
        raise ValueError(f"{path}: conv1_relu max_value={relu.get('max_value')!r} not supported")
    return (eps.pop() if eps else 1e-3), act
