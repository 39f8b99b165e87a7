"""The `timecycle` command line: thin parsers over library functions.

    timecycle propagate davis --root R --protocol crw --encoder resnet18 --out DIR
    timecycle evaluate davis --root R --results DIR
    timecycle train --data DIR --out RUN --preset small
    timecycle demo

A user's mistake (`UserError`) is reported on one line with exit status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from timecycle import __version__
from timecycle.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from timecycle.cli import demo, evaluate, propagate, report, train, visualize

    parser = argparse.ArgumentParser(
        prog="timecycle",
        description="Learn correspondence from the cycle-consistency of time; propagate labels through video.",
    )
    parser.add_argument("--version", action="version", version=f"timecycle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (propagate, evaluate, train, demo, report, visualize):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"timecycle: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("timecycle: interrupted", file=sys.stderr)
        return 130
