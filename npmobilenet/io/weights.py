"""Weights on disk in the safetensors format (no pickle anywhere).

A file holds the state_dict: one tensor per key, named exactly as in PyTorch, so a file written
here loads into the reference PyTorch model with ``safetensors.torch.load_file`` and a file
written from PyTorch with ``safetensors.torch.save_file(model.state_dict(), path)`` loads here.

Writes are atomic: the bytes go to a temporary file in the destination's directory, are flushed
and fsync'ed, then ``os.replace`` puts them in place, so a crash or an error never leaves a
half-written file and never clobbers the old one. A replaced file keeps its permissions, a
symlink is written through to its target, and a read-only file is only replaced when asked
(``overwrite=True``). Loads validate everything before changing the
model (see :meth:`npmobilenet.nn.Module.load_state_dict`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.numpy

from npmobilenet._checks import describe

try:
    import fcntl
except ImportError:  # Windows: stale temporary files are recognised by age alone
    fcntl = None

# dtypes a safetensors file can hold that numpy represents exactly.
_SAVABLE_KINDS = "fiub"


def save_state_dict(
    state: Mapping[str, np.ndarray], path, metadata=None, overwrite: bool = False
) -> None:
    """Write ``{name: array}`` to ``path`` as safetensors, atomically.

    Arrays are written C-contiguous (a strided view is copied first); ``metadata`` is an
    optional ``{str: str}`` stored in the header. Replacing a file keeps its mode, a symlink is
    written through, and a read-only file is refused unless ``overwrite`` (see
    :func:`atomic_write_bytes`).
    """
    op = "save_state_dict"
    if not isinstance(state, Mapping):
        raise TypeError(f"{op}: state must be a mapping of name -> array, got {describe(state)}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"{op}: every key must be a str, got {describe(key)}")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in _SAVABLE_KINDS:
            raise TypeError(f"{op}: {key} must be a numeric numpy array, got {describe(value)}")
        arrays[key] = np.asarray(value, order="C")  # raw memory, no strides; keeps 0-d shape
    if metadata is not None and not (
        isinstance(metadata, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise TypeError(f"{op}: metadata must be a dict of str -> str, got {describe(metadata)}")
    data = safetensors.numpy.save(arrays, metadata=dict(metadata) if metadata else None)
    atomic_write_bytes(path, data, overwrite=overwrite)


def atomic_write_bytes(path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one
    (:func:`atomic_file`, whose rules for modes, symlinks and read-only files apply)."""
    with atomic_file(path, overwrite=overwrite, op="atomic_write_bytes") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", overwrite: bool = False, op: str = "atomic_file", **kw):
    """A file object to write ``path`` through, so that a crash leaves the old file or the new.

    ``mode`` is ``"wb"`` or ``"w"`` (``kw`` such as ``encoding`` and ``newline`` go to
    :func:`open`). The writes go to a temporary file ``.tmp-XXXXXXXX.partial`` in the same
    folder (created if missing); when the ``with`` block ends normally it is flushed, fsynced
    and renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows); when the block
    raises, it is removed and ``path`` is untouched. What the user owns is respected:

    * a new file gets the permissions an ordinary ``open(path, "wb")`` would give; a replaced
      file keeps its mode (a 0600 file stays 0600);
    * a symlink is written through: its target gets the new bytes, the link stays a link;
    * a file the user could not open for writing (no write permission, or no write bit at all,
      as ``chmod 444`` leaves it) is refused with a ``PermissionError`` unless ``overwrite``;
    * temporary files left by a save that was killed (our ``.tmp-*.partial`` pattern only, and
      only those no live writer holds) are removed after the next successful save there.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"{op}: overwrite must be a bool, got {describe(overwrite)}")
    if mode not in ("wb", "w"):
        raise ValueError(f"{op}: mode must be 'wb' or 'w', got {describe(mode)}")
    path = os.path.realpath(os.fspath(path))  # through symlinks, to the file they name
    directory = os.path.dirname(path)
    existing = _existing_mode(path, overwrite, op)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=directory)
    try:
        _lock(fd)  # tells a later save's clean-up that this temporary file is in use
        os.chmod(tmp, 0o666 & ~_umask() if existing is None else existing)  # mkstemp makes 0600
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # unlocked a moment earlier, but too young to count as stale
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    remove_stale_partials(directory)


_TMP_PREFIX, _TMP_SUFFIX = ".tmp-", ".partial"
# mkstemp's names: the prefix, 8 random characters from [a-z0-9_], the suffix.
_TMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}\.partial")
# A temporary file younger than this is left alone even when unlocked (it may have been created
# a moment ago and not be locked yet); without file locks (not POSIX) the age alone decides.
_STALE_SECONDS = 2.0 if fcntl is not None else 24 * 3600.0


def _existing_mode(path: str, overwrite: bool, op: str):
    """The permission bits of the file at ``path`` (None if there is none); refuses to replace
    a read-only file unless ``overwrite``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not overwrite and (not mode & 0o222 or not os.access(path, os.W_OK)):
        raise PermissionError(
            f"{op}: refusing to replace {path}: it is read-only (mode"
            f" {mode:04o}); make it writable first, or pass overwrite=True"
        )
    return mode


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_partials(directory) -> list[str]:
    """Delete the ``.tmp-XXXXXXXX.partial`` files in ``directory`` that a killed save left.

    Only names of exactly that pattern are considered, and only files older than a couple of
    seconds that no process holds locked (a save in progress holds its lock until the rename).
    Returns the removed paths.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not _TMP_NAME.fullmatch(name):
            continue
        p = os.path.join(directory, name)
        try:
            if now - os.lstat(p).st_mtime < _STALE_SECONDS or not _unlocked(p):
                continue
            os.unlink(p)
        except OSError:
            continue  # vanished, or not ours to remove: leave it
        removed.append(p)
    return removed


def _unlocked(path: str) -> bool:
    """True if no process holds a lock on ``path`` (always True without POSIX file locks)."""
    if fcntl is None:
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state_dict_file(path) -> dict[str, np.ndarray]:
    """Read a safetensors file into ``{name: array}`` (arrays are owned copies).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything
    that is not a complete safetensors file (truncated, foreign format, unsupported dtype).
    """
    return read_safetensors("load_state_dict_file", path, "safetensors file")[0]


def read_safetensors(op: str, path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read and validate a whole safetensors file: ``({name: array}, metadata)``.

    The arrays are owned copies; ``metadata`` is the header's ``__metadata__`` (``{}`` if none).
    ``kind`` names what the file should be in messages ("safetensors file", "checkpoint"):
    FileNotFoundError if ``path`` is not a file, ValueError naming it if it is not a complete
    safetensors file (truncated, corrupt, another format, a dtype numpy lacks).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{op}: no {kind} at {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        arrays = safetensors.numpy.load(data)  # validates the whole file
        metadata = safetensors_metadata(data)
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError, OverflowError) as e:
        raise ValueError(
            f"{op}: {path} is not a readable {kind} (truncated or corrupt, another format, or a"
            f" dtype numpy lacks such as bfloat16?): {str(e)[:200]}"
        ) from None
    return {k: np.array(v, copy=True) for k, v in arrays.items()}, metadata


def safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of safetensors bytes: an 8-byte little-endian header size, then
    the JSON header. Raises ValueError (or UnicodeDecodeError) for bytes that are not one."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def read_safetensors_header(path) -> dict:
    """The JSON header of a safetensors file: ``{name: {dtype, shape, data_offsets}}`` and
    ``"__metadata__"`` (absent if the file has none). Reads only the header's bytes."""
    op = "read_safetensors_header"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{op}: no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= _MAX_HEADER:
            raise ValueError(f"{op}: {path} is not a safetensors file (bad header length)")
        text = f.read(size)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or len(text) != size:
        raise ValueError(f"{op}: {path} is not a safetensors file (truncated or corrupt header)")
    return header


def file_metadata(path) -> dict:
    """The ``__metadata__`` of a safetensors file's header; ``{}`` when the file has none or
    is not a readable safetensors file (its loader then says what is wrong with it)."""
    try:
        return read_safetensors_header(path).get("__metadata__") or {}
    except (OSError, ValueError):
        return {}


_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
# The header entry holding ``model.config`` (JSON), as in a training run's model.safetensors,
# and the MobileNetV1 arguments load_model rebuilds from it.
MODEL_CONFIG = "npmobilenet.model_config"
MODEL_CONFIG_KEYS = (
    "alpha", "num_classes", "in_channels", "dropout", "activation", "dtype", "conv", "padding",
    "bn_eps", "global_pool",
)  # fmt: skip


def save_weights(model, path, overwrite: bool = False) -> None:
    """Save ``model.state_dict()`` to ``path`` (safetensors, atomic; a read-only file is
    replaced only with ``overwrite=True``, see :func:`atomic_write_bytes`).

    The header metadata records the model: ``npmobilenet.model_config`` is ``model.config`` as
    JSON (alpha,
    classes, in_channels, activation, padding, bn_eps ...), each entry is also stored as text
    under its own name, and ``labels`` holds ``model.labels`` (class names) as a JSON list when
    the model has them. :func:`load_model` rebuilds the model from the file alone.
    """
    from npmobilenet import __version__

    config = dict(getattr(model, "config", {}))
    metadata = {"producer": f"npmobilenet {__version__}", MODEL_CONFIG: json.dumps(config)}
    for k, v in config.items():
        metadata[str(k)] = str(v)
    labels = getattr(model, "labels", None)
    if labels is not None:
        metadata["labels"] = json.dumps([str(x) for x in labels])
    save_state_dict(model.state_dict(), path, metadata, overwrite=overwrite)


def load_weights(model, path, strict: bool = True):
    """Load weights saved by :func:`save_weights` (or by PyTorch via safetensors) into ``model``.

    All checks run before anything is copied: on any error the model is unchanged. Returns
    ``model.load_state_dict``'s result (missing and unexpected keys when ``strict=False``).
    Class names recorded in the file become ``model.labels``.
    """
    result = model.load_state_dict(load_state_dict_file(path), strict=strict)
    _take_labels(model, path)
    return result


def _take_labels(model, path) -> None:
    """Class names recorded in the file become ``model.labels`` when their count fits."""
    labels = saved_labels(path)
    if labels is not None and len(labels) == getattr(model, "config", {}).get("num_classes"):
        model.labels = labels


def header_json(op: str, path, meta: dict, key: str, kind: type = dict):
    """The JSON value a file's header metadata ``meta`` holds under ``key`` (None if absent).

    A ValueError naming ``op``, the file and the entry when it is not JSON, or not a ``kind``
    (an edited or damaged header): never a bare JSONDecodeError or a TypeError further on."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except ValueError as e:
        raise ValueError(f"{op}: {path}: the header entry {key!r} is not JSON ({e})") from None
    if not isinstance(value, kind):
        raise ValueError(
            f"{op}: {path}: the header entry {key!r} must be a JSON {_JSON_NAMES[kind]}, got"
            f" {describe(value)}"
        )
    return value


_JSON_NAMES = {dict: "object", list: "array"}


def saved_config(path, op: str = "saved_config") -> dict | None:
    """The model config a weights file records (None for a file without one); a ValueError
    naming ``op`` and the file when the recorded config is damaged."""
    config = header_json(op, path, file_metadata(path), MODEL_CONFIG)
    if config is None:
        return None
    return {k: config[k] for k in MODEL_CONFIG_KEYS if k in config}


def saved_labels(path) -> list[str] | None:
    """The class names a weights file records (None if it has none)."""
    meta = file_metadata(path)
    try:
        labels = json.loads(meta["labels"]) if "labels" in meta else None
    except ValueError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def load_model(path, **config):
    """A ``MobileNetV1`` rebuilt from a weights file: its recorded config, then its weights.

    ``config`` (MobileNetV1 keyword arguments) overrides what the file records; a file without
    a recorded config (written by PyTorch, or by an older npmobilenet) needs at least the
    arguments that differ from MobileNetV1's defaults (alpha, num_classes ...). Returns the
    model in eval mode; nothing is half-loaded (a mismatch raises and no model is returned).
    """
    from npmobilenet.models import MobileNetV1

    saved = saved_config(path, op="load_model")
    state = load_state_dict_file(path)  # an unreadable file is reported as such, first
    kwargs = {**(saved or {}), **{k: v for k, v in config.items() if v is not None}}
    model = MobileNetV1(**kwargs)
    try:
        model.load_state_dict(state)
    except ValueError as e:
        if saved is not None:
            raise
        raise ValueError(
            f"load_model: {path} records no model config, and MobileNetV1({kwargs}) does not"
            f" fit its weights: pass the arguments it was made with. {str(e)[:300]}"
        ) from None
    _take_labels(model, path)
    return model.eval()
