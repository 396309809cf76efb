"""Atomic, pickle-free file I/O shared by every stage.

Every write goes to a temporary file in the destination folder and is moved into place with
``os.replace`` (atomic on POSIX), so a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "append_jsonl",
    "atomic_write_bytes",
    "jsonable",
    "load_tensors",
    "read_json",
    "read_jsonl",
    "save_npz",
    "save_tensors",
    "write_json",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new temporary file beside the target, created with mode 0666 so the kernel applies the umask
    # as for any open() (tempfile.mkstemp would make it 0600, readable by its owner only)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def jsonable(obj: Any) -> Any:
    """Plain JSON types for tensors, numpy values, tuples, paths and dataclasses with ``to_dict()``.

    One convention for non-finite numbers everywhere in diffmem's files: ``+inf`` is written as the
    string ``"inf"``, ``-inf`` as ``"-inf"`` (an infinite training time is a value, not a gap) and
    NaN as ``null`` (a quantity that was not measured).
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    torch_ = sys.modules.get("torch")  # a tensor can only exist if torch is loaded: never import it here
    if torch_ is not None and isinstance(obj, torch_.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isfinite(v):
            return v
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or restore it from a backup") from e


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON object as a line and fsync it (an interrupted write leaves at most a torn last line)."""
    line = json.dumps(jsonable(obj)) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read the complete lines of a JSONL file; a torn last line (from a killed writer) is dropped
    and the file truncated to its complete lines so later appends stay valid."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    out, good = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            out.append(json.loads(line))
            good += len(line)
        except ValueError:
            break
    if good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return out


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomic safetensors write (contiguous CPU copies)."""
    from safetensors.torch import save

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=dict(metadata) if metadata else None))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; a missing or corrupt file raises with a clear message."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())  # safe_open has keys() but no __iter__
            return {k: f.get_tensor(k) for k in names}, meta
    except Exception as e:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); delete it to resume from an earlier one"
        ) from e


def save_npz(path: str | Path, **arrays: Any) -> None:
    """Atomic .npz write (numeric arrays only, readable with allow_pickle=False)."""
    import io

    buf = io.BytesIO()
    plain: dict[str, Any] = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in arrays.items()}
    np.savez_compressed(buf, **plain)
    atomic_write_bytes(path, buf.getvalue())
