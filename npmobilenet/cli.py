"""The ``npmobilenet`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npmobilenet",
        description="MobileNetV1 from scratch in NumPy and Numba.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_subparsers(dest="command", metavar="COMMAND")
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
