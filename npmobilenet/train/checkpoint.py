"""Checkpoints: everything needed to continue a run exactly, in ONE safetensors file.

Layout of ``checkpoint.safetensors`` (a single file, so it is replaced in one atomic step and
can never be half-new, half-old):

* tensors ``model.<key>``: the model's state_dict (weights, batch-norm running statistics and
  ``num_batches_tracked``), named as in PyTorch after the ``model.`` prefix;
* tensors ``optimizer.<path>``: the optimizer's arrays (momentum buffers, moving averages), cut
  out of its state dict by :func:`npmobilenet.optim.split_arrays`;
* header metadata ``npmobilenet.checkpoint`` = a JSON document with everything else: the epoch,
  the run configuration (data, architecture, recipe, class names, normalisation), the model's
  config, the optimizer's hyper-parameters and step counts, the scheduler's state, the loader's
  position (seed, epoch, batch: this fixes both the shuffling and the augmentation draws), the
  dropout generators' bit-generator states and the per-epoch history.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, and ``os.replace`` swaps it in; a process killed at any moment leaves either the old
checkpoint or the new one, never a mixture (a stray ``.tmp-*.partial`` file at worst, removed
by the next successful save into that folder).

Loading validates before anything is touched: a missing, truncated or foreign file raises a
``ValueError`` (or ``FileNotFoundError``) naming the file, and a checkpoint of a different
architecture raises a ``ValueError`` naming every differing setting.
"""

from __future__ import annotations

import json

import numpy as np
import safetensors
import safetensors.numpy

from npmobilenet._checks import describe
from npmobilenet.io.weights import atomic_write_bytes, read_safetensors
from npmobilenet.optim import join_arrays, split_arrays

FORMAT = "npmobilenet.checkpoint"
FORMAT_VERSION = 1
# Architecture settings that must agree between a checkpoint and the model it is loaded into.
ARCHITECTURE_KEYS = (
    "alpha", "num_classes", "in_channels", "conv", "activation", "dtype", "padding", "bn_eps",
)  # fmt: skip


def save_checkpoint(path, model, state: dict, overwrite: bool = False) -> None:
    """Write ``model``'s state_dict plus ``state`` (a JSON-able tree with arrays) to ``path``.

    ``state`` is e.g. ``{"epoch": 3, "config": {...}, "optimizer": opt.state_dict(), ...}``;
    numpy arrays anywhere inside it are stored as tensors and put back by
    :func:`load_checkpoint`. The model's ``config`` is stored as ``state["model_config"]``.
    The file is replaced as :func:`npmobilenet.io.weights.atomic_write_bytes` replaces files
    (mode kept, symlinks followed, a read-only file only with ``overwrite=True``).
    """
    tree, arrays = split_arrays(state, prefix="state")
    for key, value in model.state_dict().items():
        arrays[f"model.{key}"] = np.asarray(value, order="C")  # keeps 0-d buffers 0-d
    config = dict(getattr(model, "config", None) or {})  # a user's module may have none
    header = {"format_version": FORMAT_VERSION, "model_config": config, "state": tree}
    data = safetensors.numpy.save(arrays, metadata={FORMAT: json.dumps(header)})
    atomic_write(path, data, overwrite=overwrite)


def load_checkpoint(path) -> dict:
    """Read a checkpoint: ``{"model": {key: array}, "model_config": {...}, **state}``.

    Raises FileNotFoundError if there is no file, ValueError naming the file if it is truncated,
    corrupt, or not an npmobilenet checkpoint (e.g. a bare weights file).
    """
    op = "load_checkpoint"
    arrays, meta = read_safetensors(op, path, "checkpoint")
    if FORMAT not in meta:
        raise ValueError(
            f"{op}: {path} is a safetensors file but not an npmobilenet checkpoint (no"
            f" {FORMAT!r} header); weights alone load with npmobilenet.io.load_weights"
        )
    try:
        header = json.loads(meta[FORMAT])
        state = join_arrays(header["state"], arrays)
        model_config = header["model_config"]
        for name, part in (("state", state), ("model_config", model_config)):
            if not isinstance(part, dict):
                raise TypeError(f"its {name} must be a JSON object, got {describe(part)}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{op}: {path} has a damaged checkpoint header: {e}") from None
    model = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
    return {**state, "model": model, "model_config": model_config}


def checkpoint_epoch(path):
    """The epoch stored in a checkpoint, read from its header alone (None if unreadable)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, 1 << 26)))
        epoch = json.loads(header["__metadata__"][FORMAT])["state"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def check_architecture(saved: dict, model_config: dict, source: str = "the checkpoint") -> None:
    """Raise a ValueError naming every architecture setting where ``saved`` and the model differ."""
    diffs = [
        f"{k}: {source} has {saved.get(k)!r}, the model has {model_config.get(k)!r}"
        for k in ARCHITECTURE_KEYS
        if k in saved and k in model_config and saved[k] != model_config[k]
    ]
    if diffs:
        raise ValueError(
            f"{source} was saved from a different architecture (" + "; ".join(diffs) + ")"
        )


def atomic_write(path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` atomically (:func:`npmobilenet.io.weights.atomic_write_bytes`): every
    file a run writes (checkpoint, metrics) goes through here."""
    atomic_write_bytes(path, data, overwrite=overwrite)


def generator_states(model) -> dict:
    """``{module name: bit-generator state}`` of every module holding a ``numpy`` Generator
    (the dropout masks' source)."""
    return {
        name: m.rng.bit_generator.state
        for name, m in model.named_modules()
        if isinstance(getattr(m, "rng", None), np.random.Generator)
    }


def check_generator_states(model, states) -> None:
    """Raise a ValueError unless :func:`load_generator_states` would succeed; change nothing."""
    op = "load_generator_states"
    if not isinstance(states, dict):
        raise ValueError(f"{op}: expected a dict of module name -> state, got {describe(states)}")
    modules = dict(model.named_modules())
    for name, state in states.items():
        m = modules.get(name)
        if m is None or not isinstance(getattr(m, "rng", None), np.random.Generator):
            raise ValueError(
                f"{op}: the checkpoint has a generator for {name!r}, which"
                f" the model lacks (got {describe(m)})"
            )
        try:
            type(m.rng.bit_generator)().state = state  # a dry run on a fresh generator
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{op}: the state of generator {name!r} is damaged ({e})") from None


def load_generator_states(model, states: dict) -> None:
    """Restore :func:`generator_states` into ``model`` (names must match); all checked first."""
    check_generator_states(model, states)
    modules = dict(model.named_modules())
    for name, state in states.items():
        modules[name].rng.bit_generator.state = state
