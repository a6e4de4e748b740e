"""The ``npmobilenet gradcheck`` subcommand: gradient-check every op and print a table.

Follows the pattern of :mod:`npmobilenet.cli`: ``add_gradcheck_command(subparsers)`` declares the
parser, ``gradcheck_command(args)`` runs it and returns the exit code (0 when every check passes,
1 otherwise).
"""

from __future__ import annotations


def add_gradcheck_command(subparsers) -> None:
    p = subparsers.add_parser(
        "gradcheck",
        help="gradient-check every op against central differences and print a table",
        description="Check the hand-written backward pass of every op in npmobilenet.ops against"
        " float64 central differences on small seeded inputs (one row per op and configuration;"
        " err/tol <= 1 passes). Exit code 1 if any check fails.",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="random directional derivatives instead of every element (fewer evaluations)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the inputs and directions (0)")
    p.set_defaults(func=gradcheck_command)


def gradcheck_command(args) -> int:
    from npmobilenet.gradcheck.suite import check_every_op, format_results

    results = check_every_op(fast=args.fast, seed=args.seed)
    print(format_results(results))
    return 0 if all(r.passed for _, r in results) else 1
