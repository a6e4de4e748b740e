"""``convert``: a published MobileNetV1 file -> an npmobilenet weights file ready to use.

The output is an ordinary safetensors weights file (PyTorch key names) whose header records
everything needed to use it alone:

* ``npmobilenet.model_config``: the model's config (alpha, classes, activation, padding,
  batch-norm epsilon ...), so :func:`npmobilenet.io.load_model` rebuilds the model;
* ``labels``: the class names, when known;
* ``npmobilenet.config``: a run configuration (classes, resolution 224, the source's
  normalisation preset), so ``npmobilenet predict`` and ``evaluate`` take the file as a run,
  and ``train --init`` starts from it with its conventions.
"""

from __future__ import annotations

import glob
import json
import os

from npmobilenet.interop import load

# The preprocessing each source's published weights were trained with (npmobilenet.data).
SOURCE_PRESETS = {"timm": "timm", "keras": "keras", "hf": "tf", "tf": "tf", "onnx": "torchvision"}


def run_config(model, preset: str, resolution: int = 224) -> dict:
    """The run configuration that lets ``predict`` / ``evaluate`` / ``--init`` use ``model``."""
    from npmobilenet.data.presets import PRESETS
    from npmobilenet.train.run import CONVENTION_KEYS, DEFAULTS

    cfg = model.config
    labels = model.labels or [str(i) for i in range(cfg["num_classes"])]
    p = PRESETS[preset]
    return {
        **DEFAULTS, "alpha": cfg["alpha"], "channels": cfg["in_channels"], "resolution": resolution,
        "classes": list(labels), "mean": list(p.mean), "std": list(p.std), "preset": preset,
        **{k: cfg[k] for k in CONVENTION_KEYS}, "data": None,
    }  # fmt: skip


def save_converted(model, path, preset: str, overwrite: bool = False) -> None:
    """Write ``model`` to ``path`` with its model config, labels and a run configuration."""
    from npmobilenet import __version__
    from npmobilenet.io.weights import MODEL_CONFIG, save_state_dict
    from npmobilenet.train.run import CONFIG_KEY

    metadata = {
        "producer": f"npmobilenet {__version__}",
        MODEL_CONFIG: json.dumps(model.config),
        CONFIG_KEY: json.dumps(run_config(model, preset)),
    }
    if model.labels is not None:
        metadata["labels"] = json.dumps(list(model.labels))
    save_state_dict(model.state_dict(), path, metadata, overwrite=overwrite)


def convert(src, out, source: str = "auto", overwrite: bool = False):
    """Load ``src`` (see :func:`npmobilenet.interop.load`) and save it to ``out``; returns the
    model. ``out`` is written atomically; an existing read-only file needs ``overwrite``."""
    from npmobilenet.interop import detect_source

    source = detect_source(src) if source == "auto" else source
    refuse_overwriting_input("convert", out, source_files(src))
    model = load(src, source)
    save_converted(model, os.fspath(out), SOURCE_PRESETS[source], overwrite=overwrite)
    return model


def source_files(src) -> list[str]:
    """The files a load of ``src`` reads: the file, the files of a folder, or a TF checkpoint's
    ``PREFIX.index`` and ``PREFIX.data-*``."""
    src = os.fspath(src)
    if os.path.isdir(src):
        return [os.path.join(src, name) for name in os.listdir(src)]
    prefix = src[: -len(".index")] if src.endswith(".index") else src
    return [src, prefix + ".index", *glob.glob(glob.escape(prefix) + ".data-*")]


def refuse_overwriting_input(op: str, out, inputs) -> None:
    """A ValueError if ``out`` is (a link to) one of the files ``inputs``: writing it would
    replace the file being converted."""
    out = os.fspath(out)
    if not os.path.exists(out):
        return
    for path in inputs:
        if os.path.isfile(path) and os.path.samefile(out, path):
            raise ValueError(
                f"{op}: the output {out} is the input file {path}; writing it would replace"
                " what is being read: choose another output path"
            )
