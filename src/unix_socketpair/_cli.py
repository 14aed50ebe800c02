"""The ``unix-socketpair`` command: an argparse front end over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

PROG = "unix-socketpair"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The real POSIX socketpair() for Python, from the shell.",
        epilog="examples:\n  unix-socketpair demo\n  python -m unix_socketpair --version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="a guided, self-checking tour",
        description="A guided, self-checking tour of unix-socketpair.",
        epilog="example:\n  unix-socketpair demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status
