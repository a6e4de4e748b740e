"""ImageNet class names and a ``decode_predictions``-style top-k helper.

The 1000 ImageNet-1k classes in their standard index order (sorted WordNet ids, n01440764
"tench" first), each with its WordNet id and lemmas, are package data
(``data/imagenet_classes.tsv``), copied from the files timm ships
(``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``, timm 1.0.29,
Apache-2.0). TensorFlow-trained MobileNets (TF-Slim, Hugging Face's ports of them) have 1001
outputs: index 0 is "background" and class i of the 1000 is output i + 1.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from npmobilenet import _checks

BACKGROUND = "background"


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, str], ...]:
    text = (
        resources.files("npmobilenet.interop")
        .joinpath("data/imagenet_classes.tsv")
        .read_text(encoding="utf-8")
    )
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)
    assert len(rows) == 1000, "the packaged ImageNet class table must have 1000 rows"
    return rows


def imagenet_labels(num_classes: int = 1000) -> list[str]:
    """The ImageNet class names: 1000, or 1001 with "background" first (the TF variant)."""
    _checks.choice("imagenet_labels", "num_classes", num_classes, (1000, 1001))
    names = [lemmas for _, lemmas in _table()]
    return names if num_classes == 1000 else [BACKGROUND, *names]


def imagenet_wnids(num_classes: int = 1000) -> list[str]:
    """The WordNet ids of the classes, in index order ("" for the TF variant's background)."""
    _checks.choice("imagenet_wnids", "num_classes", num_classes, (1000, 1001))
    ids = [wnid for wnid, _ in _table()]
    return ids if num_classes == 1000 else ["", *ids]


def for_classes(num_classes: int) -> list[str] | None:
    """ImageNet's names for a classifier of 1000 or 1001 outputs, None for any other size."""
    return imagenet_labels(num_classes) if num_classes in (1000, 1001) else None


def decode_predictions(scores, labels=None, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """The ``top`` best classes of each row: ``[[(index, name, score), ...], ...]``.

    scores: (N, classes) probabilities or logits (the order is the same). labels: the class
    names (a model's ``labels``); None uses ImageNet's for 1000 or 1001 classes and the index
    as text otherwise. Rows are sorted best first; ties keep the lower index first.
    """
    op = "decode_predictions"
    scores = _checks.float_array(op, "scores", scores, ndim=(1, 2))
    scores = scores[None] if scores.ndim == 1 else scores
    k = scores.shape[1]
    top = _checks.integer(op, "top", top, 1)
    if labels is None:
        labels = for_classes(k) or [str(i) for i in range(k)]
    if len(labels) != k:
        raise ValueError(f"{op}: {len(labels)} labels for scores with {k} classes")
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(top, k)]
    return [
        [(int(i), str(labels[i]), float(row[i])) for i in idx] for row, idx in zip(scores, order)
    ]
