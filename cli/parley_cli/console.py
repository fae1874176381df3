"""The ``parley`` console script: the chat commands on a parser of their own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from parley_cli.commands import register_commands

__all__ = ["PROG", "build_parser", "main", "run"]

PROG = "parley"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Parley: chat from the command line.")
    register_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the command it names; the exit code."""
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
