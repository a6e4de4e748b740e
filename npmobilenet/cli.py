"""The ``npmobilenet`` command line.

Each subcommand is a pair of functions: ``add_<name>_command(subparsers)`` declares its parser
and sets ``func`` to ``<name>_command(args) -> exit code``. To add a command, write the pair and
append the ``add_`` function to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _resolution(text: str) -> tuple[int, int]:
    """``224`` or ``224x160`` (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected R or HxW, got {text!r}")
    sizes = tuple(_positive_int(p) for p in parts)
    return (sizes[0], sizes[-1])


# --------------------------------------------------------------------------- summary
def add_summary_command(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="print MobileNetV1's layers, parameters and mult-adds",
        description="Print a torchinfo-style table of MobileNetV1: output shape, parameters and"
        " mult-adds of every layer, totals, and the paper's Table 2 grouping by layer type."
        " Counting: conv + linear weight multiply-accumulates (no bias, batch norm, activation).",
    )
    p.add_argument("--alpha", type=_positive_float, default=1.0, help="width multiplier (1.0)")
    p.add_argument(
        "--resolution", type=_resolution, default=(224, 224), help="input size R or HxW (224)"
    )
    p.add_argument("--classes", type=_positive_int, default=1000, help="number of classes (1000)")
    p.add_argument("--in-channels", type=_positive_int, default=3, help="input channels (3)")
    p.add_argument(
        "--conv",
        choices=("separable", "full"),
        default="separable",
        help="depthwise-separable blocks, or the paper's full-conv baseline (Table 4)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="also run one eval-mode forward of a zero image, printing each stage's shape",
    )
    p.set_defaults(func=summary_command)


def summary_command(args) -> int:
    import numpy as np

    from npmobilenet.models import MobileNetV1

    try:
        model = MobileNetV1(
            alpha=args.alpha, num_classes=args.classes, in_channels=args.in_channels,
            conv=args.conv, seed=0,
        )  # fmt: skip
        h, w = args.resolution
        print(model.summary(input_size=(args.in_channels, h, w)))
    except ValueError as e:
        print(f"npmobilenet summary: error: {e}", file=sys.stderr)
        return 2
    if args.trace:
        print()
        model.eval().trace(np.zeros((1, args.in_channels, h, w), model.dtype))
    return 0


COMMANDS = [add_summary_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npmobilenet",
        description="MobileNetV1 from scratch in NumPy and Numba.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        from npmobilenet import __version__

        print(f"npmobilenet {__version__}")
        if args.command is None and not args.version:
            parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
