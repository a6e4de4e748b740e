"""Concept pictures for the teaching pages: filter blocks, windows, data flow, shapes.

Each function draws one PNG into ``docs/assets/`` and is registered in ``make_figures.FIGURES``.
Shapes come from the library's layers (``nn.Conv2d`` weights, ``MobileNetV1.summary()``) and the
numbers shown in grids come from its ops (``ops.conv2d_forward`` / ``ops.conv2d_backward``), so a
picture cannot disagree with the code. The drawing itself is plain matplotlib: boxes are oblique
projections (the channel axis goes up and to the right).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, Polygon, Rectangle

CHANNEL_COLOURS = plt.get_cmap("tab10").colors
SKEW = (0.45, 0.35)  # screen offset of one unit along the channel axis


def cuboid(ax, x, y, w, h, depth, colours, label=None, alpha=0.9):
    """Draw a box of ``len(colours)`` channel slabs, ``depth`` deep in total, front face at x, y.

    The front face is w wide and h high (the spatial W and H); slab c is drawn in colours[c].
    """
    n = len(colours)
    dx, dy = SKEW[0] * depth / n, SKEW[1] * depth / n
    for c in reversed(range(n)):  # back slab first
        ox, oy = x + c * dx, y + c * dy
        face = colours[c]
        top = [(ox, oy + h), (ox + dx, oy + h + dy), (ox + w + dx, oy + h + dy), (ox + w, oy + h)]
        side = [(ox + w, oy), (ox + w + dx, oy + dy), (ox + w + dx, oy + h + dy), (ox + w, oy + h)]
        for poly in (top, side):
            ax.add_patch(Polygon(poly, closed=True, fc=face, ec="black", lw=0.6, alpha=alpha))
        ax.add_patch(Rectangle((ox, oy), w, h, fc=face, ec="black", lw=0.6, alpha=alpha))
    if label:
        ax.text(x + w / 2, y - 0.35, label, ha="center", va="top", fontsize=8)


def arrow(ax, start, end, text=None, **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1, **kw))
    if text:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.25)
        ax.text(*mid, text, ha="center", va="bottom", fontsize=8)


def blank(ax, xlim, ylim):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")


def grid_values(ax, values, x0, y0, size=0.5, cmap="Blues", fmt="{:g}", title=None, hi=None,
                vmax=None, window=None):  # fmt: skip
    """Draw a 2-D array as a grid of numbered cells with its top-left corner at x0, y0.

    NaN cells are drawn empty; ``hi`` is a set of (i, j) cells to outline in red; ``window`` an
    (i, j, rows, cols) block to outline as one red rectangle.
    """
    values = np.asarray(values, dtype=float)
    top = np.nanmax(np.abs(values)) if vmax is None and np.isfinite(values).any() else vmax or 1
    colour_map = plt.get_cmap(cmap)
    for (i, j), v in np.ndenumerate(values):
        x, y = x0 + j * size, y0 - (i + 1) * size
        fc = "white" if np.isnan(v) else colour_map(0.15 + 0.5 * abs(v) / (top or 1))
        ax.add_patch(Rectangle((x, y), size, size, fc=fc, ec="0.4", lw=0.5))
        if not np.isnan(v):
            ax.text(x + size / 2, y + size / 2, fmt.format(v), ha="center", va="center",
                    fontsize=7)  # fmt: skip
    for i, j in hi or ():
        ax.add_patch(Rectangle((x0 + j * size, y0 - (i + 1) * size), size, size, fc="none",
                               ec="red", lw=1.6))  # fmt: skip
    if window:
        i, j, rows, cols = window
        ax.add_patch(Rectangle((x0 + j * size, y0 - (i + rows) * size), cols * size, rows * size,
                               fc="none", ec="red", lw=2))  # fmt: skip
    if title:
        ax.text(x0 + values.shape[1] * size / 2, y0 + 0.15, title, ha="center", va="bottom",
                fontsize=8)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Standard, depthwise and pointwise filters over one input (depthwise-separable.md)
# ---------------------------------------------------------------------------------------------


def conv_kinds(save) -> None:
    """Three panels: the filters of a standard, a depthwise and a pointwise convolution."""
    from npmobilenet import nn

    C, K = 4, 3
    layers = {
        "standard 3x3": nn.Conv2d(C, K, 3, padding=1, bias=False),
        "depthwise 3x3": nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False),
        "pointwise 1x1": nn.Conv2d(C, K, 1, bias=False),
    }
    cols = list(CHANNEL_COLOURS[:C])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (name, layer) in zip(axes, layers.items()):
        k_out, c_in, kh, kw = layer.weight.shape
        blank(ax, (-0.5, 11), (-2.2, 6.5))
        cuboid(ax, 0, 0, 4, 4, 2.4, cols, label=f"input  ({C}, H, W)")
        for f in range(k_out):
            y = 4.6 - f * (5.6 / k_out)
            if c_in == 1:  # one channel: the filter takes that channel's colour
                fcols = [cols[f]]
            else:
                fcols = [(0.82, 0.82, 0.82)] * (c_in - 1) + ["0.55"]
            cuboid(ax, 6.2, y, 0.3 * kw, 0.3 * kh, 0.6 * c_in, fcols)
            arrow(ax, (6.0, y + 0.2), (3.4 + (f % C) * 0.3, 1.8 + (f % C) * 0.3),
                  color=fcols[-1] if c_in == 1 else "0.4")  # fmt: skip
        out_cols = cols[:k_out] if name.startswith("depthwise") else ["0.55"] * k_out
        cuboid(ax, 8.3, 0, 2.2, 2.2, 0.6 * k_out, out_cols, label=f"output  ({k_out}, H, W)")
        ax.set_title(
            f"{name}: weight {tuple(layer.weight.shape)}\n"
            f"{k_out} filters, each {c_in}x{kh}x{kw}", fontsize=9)  # fmt: skip
    fig.suptitle("Each filter block makes one output channel. The standard filter spans all input "
                 "channels and 3x3 pixels;\nthe depthwise filter spans one channel (its colour) "
                 "and 3x3 pixels; the pointwise filter all channels and one pixel",
                 fontsize=10)  # fmt: skip
    save(fig, "conv_kinds.png")


# ---------------------------------------------------------------------------------------------
# Grouped convolution's channel split (depthwise-separable.md)
# ---------------------------------------------------------------------------------------------


def grouped_split(save) -> None:
    """Input channels, filters and output channels of a grouped conv, coloured by group."""
    from npmobilenet import nn

    C, K = 8, 4
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, groups in zip(axes, (1, 2, 4)):
        layer = nn.Conv2d(C, K, 3, padding=1, groups=groups, bias=False)
        k_out, c_in = layer.weight.shape[:2]
        blank(ax, (-0.6, 8.2), (-1.2, 8.9))
        per_group = C // groups
        group_colour = [CHANNEL_COLOURS[g] for g in range(groups)]
        for c in range(C):  # input channels as a column of slabs
            g = c // per_group
            ax.add_patch(Rectangle((0, 7.4 - c * 0.95), 1.2, 0.8, fc=group_colour[g], ec="k",
                                   lw=0.5, alpha=0.8))  # fmt: skip
            ax.text(-0.2, 7.8 - c * 0.95, f"c{c}", ha="right", va="center", fontsize=7)
        for k in range(k_out):
            g = k // (k_out // groups)
            yk = 6.9 - k * 1.9
            first = g * per_group  # the filter reads channels first .. first + c_in - 1
            for c in range(first, first + c_in):
                ax.plot([1.2, 3.4], [7.8 - c * 0.95, yk + 0.4], color=group_colour[g], lw=0.7)
            ax.add_patch(Rectangle((3.4, yk), 1.4, 0.8, fc=group_colour[g], ec="k", lw=0.5))
            ax.text(4.1, yk + 0.4, f"{c_in}x3x3", ha="center", va="center", fontsize=7)
            arrow(ax, (4.9, yk + 0.4), (6.2, yk + 0.4), color=group_colour[g])
            ax.add_patch(Rectangle((6.3, yk), 1.2, 0.8, fc=group_colour[g], ec="k", lw=0.5,
                                   alpha=0.8))  # fmt: skip
            ax.text(7.6, yk + 0.4, f"out {k}", ha="left", va="center", fontsize=7)
        ax.text(0.6, -0.6, "input channels", ha="center", fontsize=8)
        ax.text(4.1, -0.6, "filters", ha="center", fontsize=8)
        ax.set_title(f"groups={groups}: weight {tuple(layer.weight.shape)}", fontsize=9)
    fig.suptitle(f"Grouped convolution, {C} channels in, {K} out: a filter sees only its own "
                 "group's channels (same colour);\ndoubling the groups halves the connections "
                 "and the weights", fontsize=10)  # fmt: skip
    save(fig, "grouped_split.png")


# ---------------------------------------------------------------------------------------------
# The depthwise window sliding, stride 1 and 2 (depthwise-separable.md)
# ---------------------------------------------------------------------------------------------

# The worked example of depthwise-separable.md, channel 0: input and kernel.
WORKED_X0 = np.array([[1, 2, 0, 1], [0, 1, 3, 1], [2, 1, 0, 2], [1, 0, 1, 1]], dtype=float)
WORKED_W0 = np.array([[1, 0, -1], [2, 1, 0], [0, 1, 1]], dtype=float)


def depthwise_sliding(save) -> None:
    """Frames of one channel's 3x3 window at stride 1 (no padding) and stride 2 (padding 1)."""
    from npmobilenet import ops

    x = WORKED_X0[None, None]
    w = WORKED_W0[None, None]
    cases = ((1, 0), (2, 1))
    fig, axes = plt.subplots(2, 5, figsize=(13, 5.6))
    for row, (stride, pad) in enumerate(cases):
        out = ops.conv2d_forward(x, w, stride=stride, padding=pad, groups=1)[0][0, 0]
        xp = np.pad(WORKED_X0, pad)
        oh, ow = out.shape
        ax = axes[row, 0]
        blank(ax, (-0.2, 2.2), (-2.0, 0.6))
        grid_values(ax, WORKED_W0, 0.25, 0.0, title="kernel (3x3)", cmap="Oranges")
        ax.text(1.0, -1.9, f"stride {stride}, padding {pad}", ha="center", fontsize=9)
        for f in range(oh * ow):
            i, j = divmod(f, ow)
            ax = axes[row, f + 1]
            blank(ax, (-0.2, 5.2), (-3.4, 0.6))
            shown = xp.copy()
            if pad:
                shown[0, :] = shown[-1, :] = shown[:, 0] = shown[:, -1] = np.nan
            title = "input (padding blank)" if pad else "input"
            grid_values(ax, shown, 0, 0, size=0.45, window=(stride * i, stride * j, 3, 3),
                        title=title)  # fmt: skip
            partial = np.full_like(out, np.nan)
            partial.flat[: f + 1] = out.flat[: f + 1]
            grid_values(ax, partial, 3.3, -0.6, size=0.6, cmap="Greens", hi={(i, j)},
                        title="output")  # fmt: skip
            ax.text(3.9, -2.3, f"y[{i},{j}] = {out[i, j]:g}", ha="center", fontsize=8)
    fig.suptitle("The depthwise window on one channel: each output cell is the sum of the 3x3 "
                 "window (red) times the kernel, cell by cell;\nstride 2 moves the window two "
                 "cells, so the same input gives a 2x2 output only with padding", fontsize=10)
    save(fig, "depthwise_sliding.png")


# ---------------------------------------------------------------------------------------------
# The 1x1 convolution as a matrix multiply (depthwise-separable.md)
# ---------------------------------------------------------------------------------------------


def pointwise_matmul(save) -> None:
    """One pixel's channel vector times the K x C weight matrix gives that pixel's output."""
    from npmobilenet import ops

    C, K, H, W = 4, 3, 3, 3
    x = (np.arange(C * H * W, dtype=float).reshape(1, C, H, W) % 5) - 1
    w = np.array([[1, 0, -1, 2], [0, 1, 1, 0], [2, -1, 0, 1]], dtype=float)[:, :, None, None]
    out = ops.conv2d_forward(x, w, stride=1, padding=0)[0]
    i, j = 1, 2
    vec = x[0, :, i, j]
    assert np.allclose(out[0, :, i, j], w[:, :, 0, 0] @ vec)
    fig, ax = plt.subplots(figsize=(11, 3.8))
    blank(ax, (-0.5, 16), (-2.6, 4.2))
    cuboid(ax, 0, 0, 3, 3, 2.4, list(CHANNEL_COLOURS[:C]), label=f"x  ({C}, {H}, {W})",
           alpha=0.35)  # fmt: skip
    for c in range(C):  # the chosen pixel, through all channels
        ox, oy = c * SKEW[0] * 2.4 / C + j, c * SKEW[1] * 2.4 / C + (H - 1 - i)
        ax.add_patch(Rectangle((ox, oy), 1, 1, fc="none", ec="red", lw=1.5))
    arrow(ax, (4.4, 1.5), (6.6, 1.5), text=f"pixel ({i}, {j})")
    grid_values(ax, w[:, :, 0, 0], 7.0, 2.4, size=0.55, title=f"W  ({K}, {C})", cmap="Oranges")
    ax.text(9.4, 1.5, "x", fontsize=12, va="center")
    grid_values(ax, vec[:, None], 10.0, 2.6, size=0.55, title=f"x[:, {i}, {j}]")
    ax.text(10.9, 1.5, "=", fontsize=14, va="center")
    grid_values(ax, out[0, :, i, j][:, None], 11.5, 2.4, size=0.55, cmap="Greens",
                title=f"y[:, {i}, {j}]")  # fmt: skip
    cuboid(ax, 13.2, 0.3, 2.2, 2.2, 1.6, ["0.6"] * K, label=f"y  ({K}, {H}, {W})", alpha=0.4)
    ax.set_title("A 1x1 convolution multiplies every pixel's channel vector (red) by the same "
                 "K x C matrix W;\nover all pixels at once it is one (K x C) @ (C x HW) matrix "
                 "multiply", fontsize=10)
    save(fig, "pointwise_matmul.png")


# ---------------------------------------------------------------------------------------------
# The depthwise backward pass as data flow (backward.md)
# ---------------------------------------------------------------------------------------------


def depthwise_backward_flow(save) -> None:
    """dW = x correlated with dout; dx = zero-padded dout convolved with the flipped kernel."""
    from npmobilenet import ops

    x = WORKED_X0[None, None]
    w = WORKED_W0[None, None]
    out, cache = ops.conv2d_forward(x, w, stride=1, padding=0)
    dout = np.array([[1.0, -1.0], [2.0, 0.0]])[None, None]
    dx, dw, _ = ops.conv2d_backward(dout, cache)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.2))
    ax = axes[0]
    blank(ax, (-0.3, 12), (-2.6, 0.8))
    grid_values(ax, WORKED_X0, 0, 0, title="x (4x4)", window=(0, 0, 2, 2))
    ax.text(2.9, -1.0, "with", ha="center", fontsize=8)
    grid_values(ax, dout[0, 0], 3.4, -0.5, cmap="Purples", title="dout (2x2)")
    arrow(ax, (4.6, -1.0), (6.0, -1.0))
    grid_values(ax, dw[0, 0], 6.3, -0.25, cmap="Oranges", title="dW (3x3)", hi={(0, 0)})
    terms = " + ".join(f"({a:g})({b:g})" for a, b in zip(dout.flat, WORKED_X0[:2, :2].flat))
    ax.text(8.2, -1.0, "correlation: dW[u,v] = sum over i,j of\ndout[i,j] x[i+u, j+v]\n"
            f"dW[0,0] = {terms}\n= {dw[0, 0, 0, 0]:g}  (red window)", fontsize=8,
            va="center")  # fmt: skip
    ax = axes[1]
    blank(ax, (-0.3, 12), (-3.4, 0.6))
    padded = np.pad(dout[0, 0], 2)
    grid_values(ax, padded, 0, 0, size=0.45, cmap="Purples", title="dout padded by 2 (6x6)",
                window=(0, 0, 3, 3))  # fmt: skip
    ax.text(3.5, -1.35, "with", ha="center", fontsize=8)
    grid_values(ax, WORKED_W0[::-1, ::-1], 3.95, -0.6, size=0.45, cmap="Oranges",
                title="kernel flipped")  # fmt: skip
    arrow(ax, (5.5, -1.35), (6.6, -1.35))
    grid_values(ax, dx[0, 0], 6.9, -0.2, size=0.5, cmap="Blues", title="dx (4x4)", hi={(0, 0)})
    ax.text(9.2, -1.35, "every input pixel gathers the\noutput gradients whose window "
            "covered it:\na full convolution; red window\ngives dx[0,0] = "
            f"{dx[0, 0, 0, 0]:g}", fontsize=8, va="center")  # fmt: skip
    fig.suptitle("Depthwise backward on one channel, numbers from ops.conv2d_backward: the weight "
                 "gradient slides dout over x (top);\nthe input gradient slides the flipped "
                 "kernel over the zero-padded dout, a full convolution (bottom)",
                 fontsize=10)  # fmt: skip
    save(fig, "depthwise_backward.png")


# ---------------------------------------------------------------------------------------------
# MobileNetV1's shapes (architecture.md)
# ---------------------------------------------------------------------------------------------


def mobilenet_shapes(save) -> None:
    """The feature map after each block as a box: height ~ resolution, depth ~ channels."""
    from npmobilenet.models import MobileNetV1
    from npmobilenet.models.summary import layer_type

    model = MobileNetV1()
    modules = dict(model.named_modules())
    summary = model.summary()
    shapes = [summary.input_shape[1:]]
    names = ["input"]
    for r in summary.rows:
        kind = layer_type(modules[r.name]) if r.name else None
        if kind in ("Conv 3x3", "Conv 1x1") and r.output_shape[1:] != shapes[-1]:
            shapes.append(r.output_shape[1:])
            names.append("conv 3x3 s2" if kind == "Conv 3x3" else "")
        elif kind == "Conv DW 3x3" and r.output_shape[2] != shapes[-1][1]:
            shapes.append(r.output_shape[1:])
            names.append("dw s2")
    fig, ax = plt.subplots(figsize=(13, 4.4))
    x = 0.0
    for (c, h, _), name in zip(shapes, names):
        side = 0.6 + 3.4 * np.log2(h) / np.log2(224)
        depth = 0.3 + 0.6 * np.log2(max(c, 3)) / np.log2(1024) * 3
        colour = "0.85" if c == 3 else plt.get_cmap("Blues")(0.3 + 0.6 * np.log2(c) / 10)
        cuboid(ax, x, 0, side * 0.35, side, depth, [colour])
        ax.text(x + side * 0.17, -0.3, f"{c}\n{h}x{h}", ha="center", va="top", fontsize=7)
        if name:
            ax.text(x + side * 0.17, side + depth * SKEW[1] + 0.2, name, ha="center",
                    fontsize=6, rotation=90, va="bottom")  # fmt: skip
        x += side * 0.35 + depth * SKEW[0] + 0.35
    blank(ax, (-0.3, x + 0.2), (-1.4, 6.5))
    ax.set_title("MobileNetV1 (alpha 1, 224x224): the feature map each time its shape changes "
                 "(channels, height x width; from summary()).\nThe resolution halves five times, "
                 f"224 -> {shapes[-1][1]}, while the channels grow 32 -> {shapes[-1][0]}",
                 fontsize=10)  # fmt: skip
    save(fig, "mobilenet_shapes.png")


# ---------------------------------------------------------------------------------------------
# One sum, two ways: the direct loop and im2col + GEMM (kernels.md)
# ---------------------------------------------------------------------------------------------


def conv_two_ways(save) -> None:
    """The same 2x2 output from a sliding window and from a (1 x 9) @ (9 x 4) matrix product."""
    from npmobilenet import ops
    from npmobilenet.kernels.im2col import im2col

    x, w = WORKED_X0, WORKED_W0
    out = ops.conv2d_forward(x[None, None], w[None, None])[0][0, 0]
    cols = np.empty((9, 4))
    im2col(x[None], 3, 3, 1, 1, 0, 0, 1, 1, 2, 2, cols)
    assert np.allclose(w.reshape(1, 9) @ cols, out.reshape(1, 4))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9), gridspec_kw={"width_ratios": [1, 1.5]})
    ax = axes[0]
    blank(ax, (-0.2, 6.6), (-3.0, 0.7))
    grid_values(ax, x, 0, 0, title="input", window=(0, 1, 3, 3))
    ax.text(2.35, -1.0, "x", fontsize=12, ha="center", va="center")
    grid_values(ax, w, 2.7, -0.25, title="kernel", cmap="Oranges")
    arrow(ax, (4.35, -1.0), (5.2, -1.0))
    grid_values(ax, out, 5.4, -0.5, cmap="Greens", title="output", hi={(0, 1)})
    ax.set_title("direct: slide the window, multiply, add (one output cell at a time)", fontsize=9)
    ax = axes[1]
    blank(ax, (-0.3, 10.2), (-5.0, 0.8))
    grid_values(ax, w.reshape(1, 9), 0, -1.8, size=0.45, cmap="Oranges",
                title="kernel as a row (1 x 9)")  # fmt: skip
    ax.text(4.3, -2.05, "@", fontsize=12, ha="center", va="center")
    grid_values(ax, cols, 4.8, 0.1, size=0.5, title="im2col: one window per column (9 x 4)",
                window=(0, 1, 9, 1))  # fmt: skip
    ax.text(7.15, -2.05, "=", fontsize=12, ha="center", va="center")
    grid_values(ax, out.reshape(1, 4), 7.6, -1.8, size=0.5, cmap="Greens",
                title="output (1 x 4)", hi={(0, 1)})  # fmt: skip
    ax.set_title("im2col + GEMM: copy every window into a column, then one matrix multiply",
                 fontsize=9)  # fmt: skip
    fig.suptitle("The same sum two ways (numbers from the library's im2col kernel and "
                 "conv2d_forward): the red window is the red column", fontsize=10)  # fmt: skip
    save(fig, "conv_two_ways.png")


# ---------------------------------------------------------------------------------------------
# What a gradient check compares (gradcheck.md)
# ---------------------------------------------------------------------------------------------


def gradcheck_secant(save) -> None:
    """A loss along one weight: the numeric secant, the right tangent and a wrong one."""
    from npmobilenet import ops

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 4, 4))
    w = rng.standard_normal((1, 1, 3, 3))
    g = rng.standard_normal((1, 1, 2, 2))

    def loss(t):
        wt = w.copy()
        wt[0, 0, 0, 0] += t
        return float((ops.conv2d_forward(x, wt)[0] * g).sum() ** 2)

    out, cache = ops.conv2d_forward(x, w)
    dw = ops.conv2d_backward(2 * (out * g).sum() * g, cache)[1]  # d(s^2) = 2 s ds
    right = dw[0, 0, 0, 0]
    wrong = 2 * (out * g).sum() * (g[0, 0, ::-1, ::-1] * x[0, 0, :2, :2]).sum()  # flipped dout
    eps = 0.4  # drawn large so the secant is visible; the checker uses 1e-6
    ts = np.linspace(-1.2, 1.2, 121)
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    ax.plot(ts, [loss(t) for t in ts], color="black", lw=1.5, label="loss along w[0,0,0,0]")
    f0 = loss(0.0)
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    for slope, colour, text in ((numeric, "tab:blue", f"numeric secant, slope {numeric:.3f}"),
                                (right, "tab:green", f"analytic (right), slope {right:.3f}"),
                                (wrong, "tab:red", f"analytic (wrong), slope {wrong:.3f}")):
        ax.plot(ts, f0 + slope * ts, color=colour, lw=1, ls="--" if colour == "tab:blue" else "-",
                label=text)  # fmt: skip
    ax.plot([-eps, eps], [loss(-eps), loss(eps)], "o", color="tab:blue")
    ax.set_ylim(min(loss(t) for t in ts) - 0.5, max(loss(t) for t in ts) + 0.5)
    ax.set_xlabel("change of one weight")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("A gradient check compares slopes: the secant through x - eps and x + eps "
                 "(blue dots)\nagrees with the right gradient's tangent, not with a wrong one",
                 fontsize=9)  # fmt: skip
    save(fig, "gradcheck_secant.png")


DIAGRAMS = {
    "conv_kinds": conv_kinds,
    "grouped_split": grouped_split,
    "depthwise_sliding": depthwise_sliding,
    "pointwise_matmul": pointwise_matmul,
    "depthwise_backward": depthwise_backward_flow,
    "mobilenet_shapes": mobilenet_shapes,
    "conv_two_ways": conv_two_ways,
    "gradcheck_secant": gradcheck_secant,
}
