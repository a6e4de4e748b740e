"""``npmobilenet exercise list | start NAME DIR | check NAME PATH``."""

from __future__ import annotations

import sys


def add_exercise_command(subparsers) -> None:
    p = subparsers.add_parser(
        "exercise",
        help="exercises: write a layer by hand, check it against the library",
        description="Implement a layer's forward or backward pass yourself and let the library "
        "check it on drawn configurations (needs hypothesis).",
    )
    sub = p.add_subparsers(dest="exercise_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the exercises")
    start = sub.add_parser("start", help="copy an exercise's skeleton file into a directory")
    start.add_argument("name")
    start.add_argument("directory")
    check = sub.add_parser("check", help="check your implementation in PATH")
    check.add_argument("name")
    check.add_argument("path")
    check.add_argument("--examples", type=int, default=60,
                       help="how many configurations to draw (60)")  # fmt: skip
    p.set_defaults(func=exercise_command)


def exercise_command(args) -> int:
    try:
        return _run(args)
    except (ValueError, OSError, ImportError, SyntaxError) as e:  # SyntaxError: the learner's file
        print(f"npmobilenet exercise: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from npmobilenet import exercises

    if args.exercise_command == "list":
        for e in exercises.EXERCISES.values():
            print(f"{e.name:20s} {e.function}(): {e.summary}")
        return 0
    if args.exercise_command == "start":
        target = exercises.start(args.name, args.directory)
        print(f"wrote {target}; fill in the TODOs, then run:\n"
              f"  npmobilenet exercise check {args.name} {target}")  # fmt: skip
        return 0
    if not 1 <= args.examples <= 10_000:
        raise ValueError(f"exercise check: --examples must be in 1..10000, got {args.examples}")
    result = exercises.check(args.name, args.path, max_examples=args.examples)
    print(result)
    return 0 if result.passed else 1
