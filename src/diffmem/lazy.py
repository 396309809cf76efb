"""Lazy exports for package ``__init__`` files (PEP 562): names load from their module on first use,
so importing a package stays cheap (``import diffmem`` loads neither torch nor numpy)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], where: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose names live in the modules of ``where``.

    ``where`` maps a module (relative to ``package`` when it starts with a dot, else absolute) to the
    names it provides. A name is imported on first access and then cached in ``namespace`` (the
    package's ``globals()``).
    """
    table = {name: module for module, names in where.items() for name in names}

    def getattr_(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package if module.startswith(".") else None), name)
        namespace[name] = value
        return value

    names = sorted(table)

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(names))

    return names, getattr_, dir_
