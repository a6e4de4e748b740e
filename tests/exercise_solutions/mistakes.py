"""Wrong learner answers made from a right one by a single edit: the mistakes learners make.

``MISTAKES[name] = (right answer, text it changes, what the learner wrote instead, why wrong)``;
:func:`write_wrong` writes ``wrong_<name>.py`` for the checker to judge.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

MISTAKES = {
    "depthwise_forward_flipped": (
        "right_depthwise_forward.py",
        "(win * w[c, 0]).sum()",
        "(win * w[c, 0, ::-1, ::-1]).sum()",
        "a true convolution (flipped kernel) instead of PyTorch's cross-correlation",
    ),
    "depthwise_forward_stride": (
        "right_depthwise_forward.py",
        "xp[n, c, i * stride : i * stride + kH, j * stride : j * stride + kW]",
        "xp[n, c, i : i + kH, j : j + kW]",
        "the window moves one cell per output pixel whatever the stride",
    ),
    "depthwise_backward_overwrite": (
        "right_depthwise_backward.py",
        "j * s : j * s + kW] += g * w[c, 0]",
        "j * s : j * s + kW] = g * w[c, 0]",
        "dx windows are assigned (=) instead of accumulated (+=); overlaps lose terms",
    ),
    "depthwise_backward_dw_per_image": (
        "right_depthwise_backward.py",
        "    dw = np.zeros_like(w)\n    for n in range(N):\n",
        "    for n in range(N):\n        dw = np.zeros_like(w)\n",
        "dw keeps only the last image's contribution (reset inside the batch loop)",
    ),
    "im2col_grouped_channel": (
        "right_im2col_grouped.py",
        "xp[n, g * Cg + c, h, w]",
        "xp[n, c, h, w]",
        "every group reads the first group's channels (forgets the g * Cg offset)",
    ),
    "fold_bn_mean_sign": (
        "right_fold_bn.py",
        "beta - mean * scale",
        "beta + mean * scale",
        "scales the bias by the mean but adds it to beta instead of subtracting it",
    ),
    "fold_bn_no_eps": (
        "right_fold_bn.py",
        "np.sqrt(var + eps)",
        "np.sqrt(var)",
        "forgets eps under the square root",
    ),
}


def write_wrong(name: str, directory: Path) -> Path:
    """Write the answer with mistake ``name`` to ``directory/wrong_<name>.py``; its path."""
    right, old, new, why = MISTAKES[name]
    text = (HERE / right).read_text()
    assert text.count(old) == 1, f"{name}: {old!r} must occur once in {right}"
    path = Path(directory) / f"wrong_{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Mistake: {why}.\n" + text.replace(old, new))
    return path
