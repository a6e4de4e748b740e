"""Keras weight files read with h5py: ``.keras`` (a zip), ``.weights.h5`` and legacy ``.h5``.

Layouts:

* Keras 3 (``.weights.h5``, and ``model.weights.h5`` inside a ``.keras`` zip, next to
  ``config.json``): ``layers/<generic name>/vars/<i>``, the layer's variables in creation order
  (a conv: kernel, bias; a batch norm: gamma, beta, moving_mean, moving_variance). The generic
  name is the layer's class in snake case, numbered in the model's layer order (``conv2d``,
  ``conv2d_1`` ..., ``batch_normalization_26``), not the name the model gave it (``conv1``,
  ``conv_pw_1_bn``). The config's layer list (in a ``.keras``) maps one to the other;
  a bare ``.weights.h5`` has no config, so :func:`generic_to_mobilenet` maps by that order.
* Legacy HDF5 (``model.save("x.h5")``): ``model_weights/<layer>/`` with a ``weight_names``
  attribute listing the layer's arrays in order, and the model config as JSON in the root's
  ``model_config`` attribute; ``save_weights("x.h5")`` of old Keras: the same at the root.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "load_keras needs h5py: pip install 'npmobilenet[keras]' (or pip install h5py)"
        ) from None
    return h5py


def read_layers(path: str) -> tuple[dict[str, list[np.ndarray]], dict | None]:
    """``({layer name: [arrays]}, model config or None)`` of a Keras file.

    FileNotFoundError for a missing file; ValueError naming the file when it is truncated,
    corrupt or not a Keras weights file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_keras: no such file: {path}")
    h5py = _h5py()
    config, source = None, path
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if "model.weights.h5" not in names:
                    raise ValueError(f"{path}: a zip without model.weights.h5, not a .keras file")
                if "config.json" in names:
                    config = json.loads(z.read("config.json"))
                source = io.BytesIO(z.read("model.weights.h5"))
        with h5py.File(source, "r") as f:
            if "model_config" in f.attrs:
                config = json.loads(_text(f.attrs["model_config"]))
            layers = _layers(f, path)
            config = _checked_config(path, config)
            if "layers" in f and "layer_names" not in f.attrs:  # Keras 3: generic names
                layers = _rename(layers, config)
            return layers, config
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError) as e:
        raise ValueError(
            f"{path}: not a readable Keras file (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None


def _checked_config(path: str, config):
    """``config`` if it is a Keras model config as the readers walk it (an object whose
    ``config.layers`` is a list of layer objects, each with a ``config`` object), else a
    ValueError naming the file (an edited or foreign config)."""
    if config is None:
        return None
    inner = config.get("config", {}) if isinstance(config, dict) else None
    layers = inner.get("layers", []) if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not all(
        isinstance(layer, dict) and isinstance(layer.get("config", {}), dict) for layer in layers
    ):
        raise ValueError(
            f"load_keras: {path}: its model config is not a Keras model's (an object whose"
            " config.layers is a list of layer objects)"
        )
    return config


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _layers(f, path: str) -> dict[str, list[np.ndarray]]:
    if "layers" in f and "layer_names" not in f.attrs:  # Keras 3
        out = {}
        for name, group in f["layers"].items():
            vars_ = group.get("vars")
            n = 0 if vars_ is None else len(vars_)
            out[name] = [np.array(vars_[str(i)]) for i in range(n)]
        return out
    group = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in group.attrs:
        raise ValueError(f"{path}: an HDF5 file without Keras weights (no layers, no layer_names)")
    out = {}
    for name in map(_text, group.attrs["layer_names"]):
        g = group[name]
        out[name] = [np.array(g[_text(w)]) for w in g.attrs.get("weight_names", [])]
    return out


def snake_case(name: str) -> str:
    """Keras's class name -> generic layer name rule (``DepthwiseConv2D`` -> depthwise_conv2d)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _rename(layers: dict, config) -> dict:
    """Keras 3 generic names -> the model's layer names (via the config, else by order)."""
    if config is None:
        return generic_to_mobilenet(layers)
    counts, names = {}, {}
    for layer in config.get("config", {}).get("layers", []):
        base = snake_case(str(layer.get("class_name")))
        n = counts.get(base, 0)
        counts[base] = n + 1
        name = layer.get("config", {}).get("name")
        names[base if n == 0 else f"{base}_{n}"] = name if isinstance(name, str) else None
    return {names.get(k) or k: v for k, v in layers.items()}


def generic_to_mobilenet(layers: dict) -> dict:
    """Name a bare Keras 3 MobileNet's layers: the i-th conv2d, depthwise_conv2d and
    batch_normalization of ``keras.applications.MobileNet`` in layer order are conv1,
    conv_pw_1..13, conv_preds; conv_dw_1..13; and the batch norms of conv1, dw_1, pw_1, dw_2 ...
    Layers that do not fit that pattern keep their generic names."""

    def family(base: str) -> list[str]:
        found = sorted(
            (int(m[1] or 0), k) for k in layers if (m := re.fullmatch(base + r"(?:_(\d+))?", k))
        )
        return [k for _, k in found] if [i for i, _ in found] == list(range(len(found))) else []

    convs, dws, bns = family("conv2d"), family("depthwise_conv2d"), family("batch_normalization")
    if (len(convs), len(dws), len(bns)) != (15, 13, 27):
        return layers
    names = dict(zip(convs, ["conv1", *(f"conv_pw_{i}" for i in range(1, 14)), "conv_preds"]))
    names.update(zip(dws, (f"conv_dw_{i}" for i in range(1, 14))))
    bn_names = ["conv1_bn"]
    for i in range(1, 14):
        bn_names += [f"conv_dw_{i}_bn", f"conv_pw_{i}_bn"]
    names.update(zip(bns, bn_names))
    return {names.get(k, k): v for k, v in layers.items()}
