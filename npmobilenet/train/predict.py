"""Classify any number of image files in batches, streaming the results to a CSV or JSON-lines file.

:func:`predict_files` yields one :class:`Prediction` per input file, in input order, holding at
most a few batches in memory: folders are expanded to their image files (recursively, sorted),
images are decoded ahead of the model by worker threads, and each batch goes through the
model's inference path. A file that is missing or not a readable image gets a prediction with
``error`` set instead of ending the run. :func:`write_predictions` writes them as
``.csv`` (``path, class_1, probability_1, ..., error``) or ``.jsonl`` (one object per line:
``{"path", "top": [{"class", "probability"}, ...], "error"}``), into a temporary file renamed
into place at the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import NamedTuple

import numpy as np

from npmobilenet.data import DataLoader, eval_transform, preset_transform
from npmobilenet.data.decode import decode, pil, unreadable
from npmobilenet.data.folder import IMAGE_EXTENSIONS
from npmobilenet.io.weights import atomic_file
from npmobilenet.ops import softmax
from npmobilenet.train.trainer import inference_forward

OP = "predict"


class Prediction(NamedTuple):
    path: str
    top: list  # [(class name, probability), ...], best first; [] if error
    error: str | None


def expand_inputs(inputs) -> list[str]:
    """Files as given; folders replaced by their image files (recursive, sorted)."""
    paths = []
    for item in inputs:
        item = os.fspath(item)
        if not os.path.isdir(item):
            paths.append(item)
            continue
        for folder, dirs, names in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths += [
                os.path.join(folder, n)
                for n in sorted(names)
                if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
            ]
    return paths


class _Files:
    """``files[idx]`` -> ``(decoded image or error message per file, idx)``."""

    def __init__(self, files, channels):
        self.files, self.channels = files, channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, idx):
        out = []
        for i in idx:
            path = self.files[i]
            if not os.path.isfile(path):
                out.append("no such file")
                continue
            try:
                out.append(decode(path, self.channels))
            except unreadable() as err:
                out.append(f"not a readable image ({err})")
        return out, np.asarray(idx)


class _Readable:
    """Transform the decoded images of a batch, passing the error messages through."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, items, rng=None):
        images = [i for i in items if not isinstance(i, str)]
        x = self.transform(images, rng) if images else None  # (B', C, R, R)
        return x, items


def input_transform(config: dict, preset=None):
    """The run's evaluation transform (its resolution and normalisation), or a named preset's
    (``preset``, else the one a converted file records) at the run's resolution."""
    r = config["resolution"]
    preset = preset or config.get("preset")  # a converted file records its source's preset
    if preset is None:
        return eval_transform(r, config["mean"], config["std"])
    if config["channels"] != 3:
        raise ValueError(f"{OP}: preset {preset!r} is for RGB models; this one has 1 channel")
    return preset_transform(preset, r)


def predict_files(model, config: dict, inputs, top_k=5, batch_size=32, preset=None, workers=2,
                  progress=False):  # fmt: skip
    """Yield a :class:`Prediction` for every image file of ``inputs`` (files or folders)."""
    pil(OP)
    files = expand_inputs(inputs)
    if not files:
        raise ValueError(f"{OP}: no image files in {list(map(str, inputs))[:5]}")
    transform = _Readable(input_transform(config, preset))
    loader = DataLoader(_Files(files, config["channels"]), batch_size, transform=transform,
                        workers=workers)  # fmt: skip
    k = min(int(top_k), len(config["classes"]))
    bar = _bar(len(loader)) if progress else None
    forward = inference_forward(model)  # the fused engine, built once for every batch
    for (x, items), idx in loader:
        probs = iter(probabilities(model, x, forward) if x is not None else [])  # (B', K)
        for i, item in zip(idx, items):
            if isinstance(item, str):
                yield Prediction(files[i], [], item)
                continue
            p = next(probs)
            best = np.argsort(-p, kind="stable")[:k]
            yield Prediction(files[i], [(config["classes"][j], float(p[j])) for j in best], None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def probabilities(model, x: np.ndarray, forward=None) -> np.ndarray:
    """``(N, K)`` class probabilities of a normalised batch, by the model's inference path
    (``forward``: what :func:`npmobilenet.train.trainer.inference_forward` returned for it)."""
    if forward is None:
        return model.predict_proba(x.astype(model.dtype, copy=False))
    return softmax(forward(x.astype(model.dtype, copy=False)), axis=1)


def _bar(total: int):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="predicting", unit="batch", leave=False)


def write_predictions(predictions, path, top_k: int) -> tuple[int, int]:
    """Write ``predictions`` to ``path`` (``.csv`` or ``.jsonl``); returns ``(rows, errors)``.

    The file is replaced as :func:`npmobilenet.io.weights.atomic_file` replaces files: whole or
    not at all, keeping the mode of the file it replaces, through a symlink, and never over a
    read-only file."""
    path = os.fspath(path)
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".csv", ".jsonl"):
        raise ValueError(f"{OP}: --out must end in .csv or .jsonl, got {path!r}")
    rows = errors = 0
    with atomic_file(path, "w", op=OP, newline="", encoding="utf-8") as f:
        write_row = _csv_writer(f, top_k) if kind == ".csv" else _jsonl_writer(f)
        for pred in predictions:
            write_row(pred)
            rows, errors = rows + 1, errors + (pred.error is not None)
    return rows, errors


def _csv_writer(f, top_k: int):
    writer = csv.writer(f)
    header = ["path"]
    for i in range(1, top_k + 1):
        header += [f"class_{i}", f"probability_{i}"]
    writer.writerow(header + ["error"])

    def write(pred: Prediction) -> None:
        cells = [pred.path]
        for i in range(top_k):
            cells += [pred.top[i][0], f"{pred.top[i][1]:.6g}"] if i < len(pred.top) else ["", ""]
        writer.writerow(cells + [pred.error or ""])

    return write


def _jsonl_writer(f):
    def write(pred: Prediction) -> None:
        top = [{"class": c, "probability": p} for c, p in pred.top]
        f.write(json.dumps({"path": pred.path, "top": top, "error": pred.error}) + "\n")

    return write
