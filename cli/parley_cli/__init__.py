"""Parley's command-line chat client, built on the public API of :mod:`parley_sdk`.

``parley signup``, ``send``, ``chat``, ``follow``... Each profile keeps one
device's credentials and its end-to-end encryption store under
``$PARLEY_HOME`` (default ``~/.parley-cli``).
"""

from parley_cli.commands import register_commands
from parley_cli.console import PROG, build_parser, main, run

__all__ = ["PROG", "build_parser", "main", "register_commands", "run"]
