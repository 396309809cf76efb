"""The ``diffmem`` command: parse, build a configuration, call the library.

``diffmem --help`` lists the commands; each part of diffmem registers its own:
:mod:`diffmem.dynamics.cli` (``dynamics``, ``train``, ``sample``), :mod:`diffmem.dynamics.predict`
(``predict``), :mod:`diffmem.theory.cli` (``theory``) and :mod:`diffmem.audit.cli` (``audit``).
``measure`` spans two parts: on a run folder it is the dynamics' evaluation, with ``--model PATH`` it
measures a model diffmem did not train (:mod:`diffmem.external.cli`). It is registered here, above
both, so that neither part imports the other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

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
    _register_measure(sub)
    predict_cli.register(sub)
    theory_cli.register(sub)
    audit_cli.register(sub)
    return parser


def _register_measure(sub: Any) -> None:
    """``diffmem measure``: a run folder (the ``--eval-*`` flags) or any model (``--model PATH`` and its flags)."""
    from .dynamics.cli import add_measure_flags
    from .external.cli import add_model_flags

    p = sub.add_parser(
        "measure",
        help="evaluate every checkpoint of a run folder (--out) into metrics.jsonl, or any model with --model PATH",
    )
    add_measure_flags(p)
    add_model_flags(p)
    p.set_defaults(func=_cmd_measure)


def _cmd_measure(args: argparse.Namespace) -> int:
    from .external.cli import cmd_measure_model, model_flags_given

    if model_flags_given(args):  # --model PATH: a model diffmem did not train (docs/measure.md)
        return cmd_measure_model(args)
    from .dynamics.cli import cmd_measure

    return cmd_measure(args)


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
