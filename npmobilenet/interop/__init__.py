"""Published MobileNetV1 weights in, ONNX out.

Loaders (each returns a ready :class:`npmobilenet.MobileNetV1` in eval mode, with the source's
padding rule, activation, batch-norm epsilon and, when known, class names in ``model.labels``):

* :func:`load_timm`: timm ``mobilenetv1_100`` / ``_125`` safetensors;
* :func:`load_keras`: ``keras.applications.MobileNet`` (``.keras``, ``.weights.h5``, ``.h5``;
  needs h5py: ``pip install 'npmobilenet[keras]'``);
* :func:`load_hf`: Hugging Face ``transformers`` MobileNetV1 (a folder or its safetensors);
* :func:`load_tf_checkpoint`: TF-Slim checkpoints (``.index`` + ``.data-*``), pure Python;
* :func:`load_onnx`: ONNX graphs (ours and ``torch.onnx.export``'s; needs onnx);
* :func:`load`: any of them, the format guessed from the path and the tensor names.

:func:`export_onnx` writes a model as ONNX (``pip install 'npmobilenet[onnx]'``).
:func:`decode_predictions` and :func:`imagenet_labels` name ImageNet's classes.
"""

from __future__ import annotations

import os

from npmobilenet.interop.labels import decode_predictions, imagenet_labels, imagenet_wnids
from npmobilenet.interop.loaders import load_hf, load_keras, load_tf_checkpoint, load_timm
from npmobilenet.interop.onnx_export import export_onnx
from npmobilenet.interop.onnx_import import load_onnx

SOURCES = ("auto", "timm", "keras", "hf", "tf", "onnx")
_LOADERS = {"timm": load_timm, "keras": load_keras, "hf": load_hf, "tf": load_tf_checkpoint,
            "onnx": load_onnx}  # fmt: skip


def detect_source(path) -> str:
    """Which loader reads ``path``: "timm", "keras", "hf", "tf" or "onnx" (ValueError if none).

    A folder is a Hugging Face ``save_pretrained`` folder (or timm's, by the tensor names of
    its ``model.safetensors``); ``.index`` (or a prefix beside one) is a TF checkpoint;
    ``.onnx``, ``.keras`` and ``.h5`` go by their suffix; a ``.safetensors`` file by its
    tensor names (timm's ``conv_stem.weight``, Hugging Face's ``conv_stem.convolution.weight``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):  # save_pretrained's folder; timm's on the Hugging Face Hub is alike
        weights = os.path.join(path, "model.safetensors")
        timm = os.path.isfile(weights) and safetensors_source(weights) == "timm"
        return "timm" if timm else "hf"
    if path.endswith(".index") or os.path.isfile(path + ".index"):
        return "tf"
    for suffix, source in ((".onnx", "onnx"), (".keras", "keras"), (".h5", "keras")):
        if path.endswith(suffix):
            return source
    if not os.path.isfile(path):
        raise FileNotFoundError(f"convert: no such file or folder: {path}")
    source = safetensors_source(path)
    if source is not None:
        return source
    raise ValueError(
        f"convert: cannot tell which library wrote {path} (no timm or Hugging Face MobileNetV1"
        " tensor names); pass the source explicitly (--from timm|keras|hf|tf|onnx)"
    )


def safetensors_source(path: str):
    """"hf" or "timm" by a safetensors file's tensor names; None for neither."""
    from npmobilenet.io.weights import read_safetensors_header

    keys = read_safetensors_header(path)
    if any(k.endswith("conv_stem.convolution.weight") for k in keys):
        return "hf"
    return "timm" if "conv_stem.weight" in keys else None


def load(path, source: str = "auto"):
    """Load MobileNetV1 weights written by another library (see :data:`SOURCES`)."""
    if source not in SOURCES:
        raise ValueError(f"load: source must be one of {list(SOURCES)}, got {source!r}")
    if source == "auto":
        source = detect_source(path)
    return _LOADERS[source](path)


from npmobilenet.interop.convert import convert  # noqa: E402 (uses load)

__all__ = [
    "SOURCES",
    "convert",
    "decode_predictions",
    "detect_source",
    "export_onnx",
    "imagenet_labels",
    "imagenet_wnids",
    "load",
    "load_hf",
    "load_keras",
    "load_onnx",
    "load_tf_checkpoint",
    "load_timm",
]
