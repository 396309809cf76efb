"""The ``diffmem`` command: parse, build a configuration, call the library.

``diffmem --help`` lists the commands; each part of diffmem registers its own:
:mod:`diffmem.dynamics.cli` (``dynamics``, ``train``, ``measure``, ``sample``),
:mod:`diffmem.theory.cli` (``theory``) and :mod:`diffmem.audit.cli` (``audit``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffmem`` with every command registered."""
    from . import __version__
    from .audit import cli as audit_cli
    from .dynamics import cli as dynamics_cli
    from .dynamics import predict as predict_cli
    from .theory import cli as theory_cli

    parser = argparse.ArgumentParser(
        prog="diffmem", description="Measure, explain and predict memorization in diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    dynamics_cli.register(sub)
    predict_cli.register(sub)
    theory_cli.register(sub)
    audit_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``diffmem`` with ``argv`` (default: the process's arguments); returns the exit status.

    Bad input (``ValueError``, ``FileNotFoundError``) and a diverged run print one line
    ``diffmem COMMAND: error: ...`` and return 2; an interruption returns 130 (rerun to resume).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None and argv is not None and len(argv) else 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"diffmem {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndiffmem {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
