"""Splitting a state dict into JSON and named arrays (for a safetensors + JSON checkpoint).

Optimizer, scheduler and loader state dicts are nested dicts/lists whose leaves are numpy
arrays or plain Python values. :func:`split_arrays` replaces each array with the string
``"@array:<name>"`` and collects the arrays under those names; :func:`join_arrays` undoes it::

    tree, arrays = split_arrays(optimizer.state_dict(), prefix="optimizer")
    json.dump(tree, f); safetensors.numpy.save_file(arrays, path)
    optimizer.load_state_dict(join_arrays(json.load(f), safetensors.numpy.load_file(path)))
"""

from __future__ import annotations

import numpy as np

MARK = "@array:"


def split_arrays(tree, prefix: str = ""):
    """``(json_tree, {name: array})``; names are the dotted key paths, e.g. ``state.0.exp_avg``."""
    arrays: dict[str, np.ndarray] = {}

    def walk(node, path):
        if isinstance(node, np.ndarray):
            arrays[path] = np.ascontiguousarray(node)
            return MARK + path
        if isinstance(node, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        return node

    return walk(tree, prefix), arrays


def join_arrays(tree, arrays: dict):
    """Put the arrays back where :func:`split_arrays` left ``"@array:<name>"`` markers."""
    if isinstance(tree, str) and tree.startswith(MARK):
        name = tree[len(MARK) :]
        if name not in arrays:
            raise KeyError(f"join_arrays: the state refers to array {name!r}, which is missing")
        return arrays[name]
    if isinstance(tree, dict):
        return {k: join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_arrays(v, arrays) for v in tree]
    return tree
