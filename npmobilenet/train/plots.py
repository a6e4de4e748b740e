"""PNG pictures of a run: loss and accuracy curves, and the test confusion matrix.

matplotlib is optional (the ``demo`` extra). Each function returns the path it wrote, or None
when matplotlib is missing; :func:`save_plots` then returns a one-line note saying so.
"""

from __future__ import annotations

import os

import numpy as np

from npmobilenet._checks import INSTALL_HINT as HINT
from npmobilenet.io.weights import atomic_file


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path) -> None:
    """Write ``fig`` as a PNG to ``path`` as every run file is written (atomically, keeping an
    existing file's mode; :func:`npmobilenet.io.weights.atomic_file`), and close it."""
    try:
        with atomic_file(path, op="save_plots") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def plot_curves(history: dict, path) -> str | None:
    """Loss (left) and accuracy (right) per epoch, train and test, to ``path`` (PNG)."""
    plt = _pyplot()
    if plt is None:
        return None
    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split, style in (("train", "-"), ("test", "--")):
        if history.get(f"{split}_loss"):
            ax_loss.plot(epochs, history[f"{split}_loss"], style, label=split)
            acc = 100 * np.asarray(history[f"{split}_accuracy"])
            ax_acc.plot(epochs, acc, style, label=split)
    # Log scale: early test losses can be huge (batch norm's running statistics lag behind
    # weights that move fast at the peak learning rate) and would flatten everything else.
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(plt, fig, path)
    return os.fspath(path)


def plot_confusion(cm: np.ndarray, classes, path) -> str | None:
    """The confusion matrix as a heat map with counts, to ``path`` (PNG)."""
    plt = _pyplot()
    if plt is None:
        return None
    k = len(classes)
    size = max(4.0, 0.45 * k + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title="test confusion matrix")  # fmt: skip
    ax.set_xticklabels([str(c) for c in classes], rotation=90 if k > 10 else 0)
    ax.set_yticklabels([str(c) for c in classes])
    if k <= 30:
        threshold = cm.max(initial=0) / 2
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > threshold else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)
    return os.fspath(path)


def save_plots(out_dir, history: dict, cm: np.ndarray, classes) -> str:
    """Write ``curves.png`` and ``confusion.png`` into ``out_dir``; returns a one-line note."""
    curves = plot_curves(history, os.path.join(out_dir, "curves.png"))
    if curves is None:
        return f"plots skipped: matplotlib is not installed ({HINT})"
    confusion = plot_confusion(cm, classes, os.path.join(out_dir, "confusion.png"))
    return f"plots: {curves}, {confusion}"
