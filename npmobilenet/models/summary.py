"""Model summary: parameters and mult-adds per layer, in total and by layer type.

Computed from layer configurations and shape arithmetic (``Module.output_shape``), so no op runs
and a 224x224 summary of the full-convolution baseline is instant.

Counting convention (the paper's): **mult-adds are the multiply-accumulates of the convolution
and fully connected weights**, i.e. per output element ``(C / G) * kH * kW`` for a convolution
and ``in_features`` for the linear layer. Biases, batch norm, activations and pooling are not
counted. With it, MobileNetV1 at alpha 1 and 224x224 gives 568.74 M (paper: 569 M) and the
full-convolution baseline 4867.29 M (paper: 4866 M). Parameter totals count every trainable
array, batch norm's weight and bias included, as torchinfo and PyTorch do (4,231,976 at alpha 1
with 1000 classes); buffers such as running statistics are not parameters.

The by-type grouping reproduces the paper's Table 2, whose percentages are over the
convolution and fully connected layers (batch norm is listed apart, outside the percentages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from npmobilenet import _checks as chk
from npmobilenet.nn import BatchNorm2d, Conv2d, Linear, Module


@dataclass(frozen=True)
class LayerRow:
    """One module in the summary. ``params``/``mult_adds`` include everything below it."""

    name: str  # dotted path, "" for the model itself
    type: str  # class name
    depth: int  # 0 for the model, 1 for its children ...
    output_shape: tuple
    params: int
    mult_adds: int
    is_leaf: bool


@dataclass(frozen=True)
class TypeRow:
    """One line of the grouping by layer type (the paper's Table 2)."""

    type: str  # "Conv 1x1", "Conv DW 3x3", "Conv 3x3", "Fully Connected", "BatchNorm"
    layers: int
    params: int
    mult_adds: int
    params_pct: float | None  # % of conv + fully connected params; None for BatchNorm
    mult_adds_pct: float | None


@dataclass
class ModelSummary:
    """What :func:`summarize` returns; ``str()`` gives a torchinfo-style table."""

    model_name: str
    input_shape: tuple  # (N, C, H, W)
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    mult_adds: int
    dtype: np.dtype
    by_type: list[TypeRow] = field(default_factory=list)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        return format_summary(self)


def layer_type(m: Module) -> str | None:
    """The paper's Table 2 label of a counted layer, "BatchNorm", or None (not grouped)."""
    if isinstance(m, Conv2d):
        kh, kw = m.kernel_size
        if m.groups == 1:
            return f"Conv {kh}x{kw}"
        if m.groups == m.in_channels:
            return f"Conv DW {kh}x{kw}"
        return f"Conv grouped {kh}x{kw}"
    if isinstance(m, Linear):
        return "Fully Connected"
    if isinstance(m, BatchNorm2d):
        return "BatchNorm"
    return None


def layer_mult_adds(m: Module, out_shape: tuple) -> int:
    """Weight multiply-accumulates of one layer producing ``out_shape`` (0 if not counted)."""
    if isinstance(m, Conv2d):
        kh, kw = m.kernel_size
        return math.prod(out_shape) * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, Linear):
        return math.prod(out_shape) * m.in_features
    return 0


def _walk(m: Module, name: str, depth: int, in_shape: tuple, rows: list) -> tuple:
    """Append rows for ``m`` and everything below it (pre-order); return m's output shape.

    Children are walked in registration order, which is the order forward runs them for every
    composite module in this package.
    """
    index = len(rows)
    rows.append(None)  # placeholder: a container's totals are known after its children
    own_params = sum(p.data.size for p in m._parameters.values())
    if m._modules:
        shape, params, madds = in_shape, own_params, 0
        for child_name, child in m._modules.items():
            shape = _walk(child, f"{name}.{child_name}" if name else child_name, depth + 1,
                          shape, rows)  # fmt: skip
        for row in rows[index + 1 :]:
            if row.depth == depth + 1:
                params, madds = params + row.params, madds + row.mult_adds
        out_shape = shape
    else:
        out_shape = m.output_shape(in_shape)
        params, madds = own_params, layer_mult_adds(m, out_shape)
    rows[index] = LayerRow(
        name, type(m).__name__, depth, tuple(out_shape), params, madds, not m._modules
    )
    return out_shape


def _group_by_type(model: Module, rows: list[LayerRow]) -> list[TypeRow]:
    modules = dict(model.named_modules(remove_duplicate=False))  # a row per path
    groups: dict[str, list] = {}
    for row in rows:
        if row.is_leaf and (label := layer_type(modules[row.name])) is not None:
            g = groups.setdefault(label, [0, 0, 0])
            g[0], g[1], g[2] = g[0] + 1, g[1] + row.params, g[2] + row.mult_adds
    counted = {k: v for k, v in groups.items() if k != "BatchNorm"}
    total_p = sum(v[1] for v in counted.values()) or 1
    total_m = sum(v[2] for v in counted.values()) or 1
    out = [
        TypeRow(k, n, p, ma, 100.0 * p / total_p, 100.0 * ma / total_m)
        for k, (n, p, ma) in sorted(counted.items(), key=lambda kv: -kv[1][2])
    ]
    if "BatchNorm" in groups:
        n, p, ma = groups["BatchNorm"]
        out.append(TypeRow("BatchNorm", n, p, ma, None, None))
    return out


def summarize(model: Module, input_size=(3, 224, 224), batch_size: int = 1) -> ModelSummary:
    """Summarise ``model`` for inputs of shape ``(batch_size, *input_size)`` (``(C, H, W)``)."""
    op = "summary"
    if not isinstance(input_size, (tuple, list)) or len(input_size) != 3:
        raise ValueError(f"{op}: input_size must be (C, H, W), got {chk.short_repr(input_size)}")
    c, h, w = (chk.integer(op, f"input_size[{i}]", v, 1) for i, v in enumerate(input_size))
    n = chk.integer(op, "batch_size", batch_size, 1)
    expected = getattr(model, "config", {}).get("in_channels", c)
    if c != expected:
        raise ValueError(
            f"{op}: input_size has {c} channels but the model was built with in_channels={expected}"
        )
    rows: list[LayerRow] = []
    _walk(model, "", 0, (n, c, h, w), rows)
    params = list(model.parameters())
    dtype = params[0].dtype if params else np.dtype(np.float32)
    return ModelSummary(
        model_name=type(model).__name__,
        input_shape=(n, c, h, w),
        rows=rows,
        total_params=sum(p.data.size for p in params),
        trainable_params=sum(p.data.size for p in params if p.requires_grad),
        mult_adds=rows[0].mult_adds,
        dtype=dtype,
        by_type=_group_by_type(model, rows),
    )


def _shape(s: tuple) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def format_summary(s: ModelSummary, width: int = 100) -> str:
    """A torchinfo-like table: the layer tree, the totals, then the grouping by layer type."""
    bar, thin = "=" * width, "-" * width
    head = f"{'Layer (type: name)':<50}{'Output Shape':<20}{'Param #':>13}{'Mult-Adds':>17}"
    lines = [bar, head, bar]
    for r in s.rows:
        if r.depth == 0:
            label = r.type
        else:
            tree = "│    " * (r.depth - 1) + ("└─" if r.depth > 1 else "├─")
            label = f"{tree}{r.type}: {r.name.rsplit('.', 1)[-1]}"
        params = f"{r.params:,}" if r.is_leaf and r.params else "--"
        madds = f"{r.mult_adds:,}" if r.is_leaf and r.mult_adds else "--"
        lines.append(f"{label:<50}{_shape(r.output_shape):<20}{params:>13}{madds:>17}")
    itemsize = s.dtype.itemsize
    lines += [
        bar,
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable params: {s.non_trainable_params:,}",
        f"Total mult-adds (M): {s.mult_adds / 1e6:.2f}"
        "   (conv + linear weight multiply-accumulates; no bias, BN or activation)",
        thin,
        f"Input size (MB): {math.prod(s.input_shape) * itemsize / 1e6:.2f}",
        f"Params size (MB): {s.total_params * itemsize / 1e6:.2f}",
        bar,
        "By layer type (paper Table 2; % of conv + fully connected)",
        f"{'Type':<20}{'Layers':>8}{'Mult-Adds':>18}{'%':>9}{'Params':>14}{'%':>9}",
        thin,
    ]
    for t in s.by_type:
        pct_m = "--" if t.mult_adds_pct is None else f"{t.mult_adds_pct:.2f}%"
        pct_p = "--" if t.params_pct is None else f"{t.params_pct:.2f}%"
        madds = f"{t.mult_adds:,}" if t.mult_adds else "--"
        lines.append(f"{t.type:<20}{t.layers:>8}{madds:>18}{pct_m:>9}{t.params:>14,}{pct_p:>9}")
    lines.append(bar)
    return "\n".join(lines)
