"""Command-line plumbing shared by every part of diffmem (dynamics, theory, audit).

A command's options are the fields of its frozen configuration dataclass: :func:`add_config_flags`
adds one ``--flag`` per field (type, choices and help text taken from the field's annotation,
default and docstring) and :func:`config_from_flags` builds the configuration back from the parsed
arguments. Flags the user did not give keep the configuration's defaults, so ``--dry-run`` always
prints the configuration that would run.

Module-level imports are light (argparse, ast, dataclasses, json): building the parser of
``diffmem --help`` loads neither torch nor numpy.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "add_common",
    "add_config_flags",
    "config_from_flags",
    "field_docs",
    "print_json",
    "table",
]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: the string literal written under each field
    (read from the class's source; classes without source give ``{}``).

    >>> from diffmem.dynamics.timescales import TimeRules
    >>> field_docs(TimeRules)["persist"]
    'tau_mem: the crossing must hold for this many further checkpoints (where they exist).'
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # source not available (e.g. defined in a REPL)
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                out[node.target.id] = inspect.cleandoc(nxt.value.value)
    return out


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, True)`` for ``X | None`` / ``Optional[X]``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(map(_show, v)) if v else "(none)"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    skip: Sequence[str] = (),
    title: str | None = None,
    rename: Mapping[str, str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` to ``parser``.

    Parameters
    ----------
    parser : argparse parser (a new argument group titled ``title`` is made on it when given)
    cls : a dataclass; nested dataclass fields are skipped (add them with their own prefix)
    prefix : prepended to every destination and flag (``eval_`` gives ``--eval-samples``)
    skip : field names that get no flag
    rename : field name -> flag name (without dashes) where the command line keeps an older name
    helps : field name -> help text, where the field's docstring does not suit the command line

    The flag's type follows the annotation: ``int``/``float``/``str``; ``bool`` gives
    ``--flag/--no-flag``; ``tuple[X, ...]`` takes one or more values; ``Literal[...]`` gives choices.
    Every flag defaults to ``None`` ("not given") so that :func:`config_from_flags` keeps the
    configuration's own default.
    """
    group: Any = parser.add_argument_group(title) if title and isinstance(parser, argparse.ArgumentParser) else parser
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rename = rename or {}
    helps = helps or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        tp, _ = _strip_optional(hints[f.name])
        default = _default(f)
        dest = prefix + f.name
        flag = "--" + (prefix + rename.get(f.name, f.name)).replace("_", "-")
        text = helps.get(f.name, docs.get(f.name, ""))
        text = f"{text} (default: {_show(default)})" if text else f"default: {_show(default)}"
        text = text.replace("%", "%%")
        kw: dict[str, Any] = {"dest": dest, "default": None, "help": text}
        origin = typing.get_origin(tp)
        if origin is tuple:
            inner, _ = _strip_optional(typing.get_args(tp)[0])
            group.add_argument(flag, type=inner if inner in (int, float, str) else str, nargs="+", **kw)
        elif tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            group.add_argument(flag, type=type(choices[0]), choices=choices, **kw)
        else:
            group.add_argument(flag, type=tp if tp in (int, float, str) else str, **kw)


def config_from_flags(cls: type, args: argparse.Namespace, *, prefix: str = "", base: Any = None, **fixed: Any) -> Any:
    """Build ``cls`` from parsed flags: the flags that were given override ``base`` (or the
    defaults), then ``fixed`` overrides both. Nested dataclass fields are left as in ``base``."""
    obj = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    changes.update(fixed)
    return dataclasses.replace(obj, **changes)


def add_common(
    p: argparse.ArgumentParser,
    out_default: str,
    *,
    seed_help: str = "random seed",
    device: bool = False,
    quiet: bool = True,
) -> None:
    """``--out``, ``--seed``, ``--dry-run`` (every command), ``--quiet`` and optionally ``--device``."""
    p.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    p.add_argument("--seed", type=int, default=None, help=seed_help)
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    if device:
        p.add_argument(
            "--device",
            default="cpu",
            help="where models train and sample: cpu (default), cuda, cuda:N, mps, or auto (a GPU if torch sees one)",
        )


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON (tensors, numpy values and configurations converted)."""
    from .io import jsonable

    print(json.dumps(jsonable(obj), indent=2))


def table(rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned text table; the first row is the header, underlined with dashes."""
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)
