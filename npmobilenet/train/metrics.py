"""Metrics: the confusion matrix, its text table, and the run's ``metrics.json`` / ``metrics.csv``.

``metrics.json`` holds the final numbers at the top level (``test_accuracy``, ``test_loss``,
``epochs``, ``seconds``), the per-epoch ``history`` as lists (one entry per epoch), the test
confusion matrix and the run configuration. ``metrics.csv`` is the history as a table, one row
per epoch. Both are written atomically.

Times (``seconds``, ``epoch_seconds``, ``images_per_second``) are the only entries that differ
between two runs with the same seed: :data:`TIMING_KEYS` lists them.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from npmobilenet.train.checkpoint import atomic_write

# Per-epoch history columns, in CSV order.
HISTORY_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "epoch_seconds",
    "images_per_second",
)
# Entries that measure time (everything else is reproducible from the seed).
TIMING_KEYS = ("seconds", "epoch_seconds", "images_per_second")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def format_confusion(cm: np.ndarray, classes) -> str:
    """The confusion matrix as a text table (rows: true class, columns: predicted)."""
    names = [str(c) for c in classes]
    width = max(5, *(len(n) for n in names), len(str(int(cm.max(initial=0)))) + 1)
    head = " " * width + " | " + " ".join(f"{n[:width]:>{width}}" for n in names)
    lines = ["confusion matrix (rows: true class, columns: predicted)", head, "-" * len(head)]
    for name, row in zip(names, cm):
        lines.append(f"{name[:width]:>{width}} | " + " ".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def write_metrics(out_dir, metrics: dict) -> None:
    """Write ``<out_dir>/metrics.json`` (everything) and ``<out_dir>/metrics.csv`` (history).

    ``metrics.json`` is strict JSON: a nan or infinite number is written as ``null``.
    """
    text = json.dumps(json_safe(metrics), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(os.path.join(out_dir, "metrics.json"), text.encode())
    history = metrics.get("history", {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = [k for k in HISTORY_KEYS if k in history]
    writer.writerow(keys)
    for row in zip(*(history[k] for k in keys)):
        writer.writerow(row)
    atomic_write(os.path.join(out_dir, "metrics.csv"), buf.getvalue().encode())


def json_safe(tree):
    """``tree`` with every non-finite float replaced by None (JSON has no nan or inf) and numpy
    scalars made Python numbers."""
    if isinstance(tree, np.generic):
        tree = tree.item()
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


def without_timings(metrics: dict) -> dict:
    """``metrics`` with every time measurement removed (for comparing two runs)."""
    out = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    if "history" in out:
        out["history"] = {k: v for k, v in out["history"].items() if k not in TIMING_KEYS}
    return out
