"""Typed, frozen configurations with JSON round-trips and the run-folder guard."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, TypeVar

from . import _io

C = TypeVar("C")


def from_dict(cls: type[C], d: dict) -> C:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kw)


def to_dict(cfg: Any) -> dict:
    return _io.jsonable(asdict(cfg))


def claim_folder(folder: Path, cfg: Any, *, name: str = "config.json", overwrite: bool = False) -> None:
    """Write ``cfg`` to ``folder/name``, or check that an existing one matches (so a run resumes).

    A folder that holds another configuration's run is refused, never mixed or overwritten silently.
    """
    folder = Path(folder)
    path = folder / name
    want = to_dict(cfg)
    if path.exists() and not overwrite:
        have = _io.read_json(path)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ValueError(
                f"{folder} already holds a run with another configuration (differs in: {', '.join(diff)}); "
                "use a new --out folder, or the same settings to resume it"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _io.write_json(path, want)


def replace(cfg: C, **changes: Any) -> C:
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


__all__ = ["from_dict", "to_dict", "claim_folder", "replace", "dataclass", "Optional"]
