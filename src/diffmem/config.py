"""Typed, frozen configurations with JSON round-trips and the run-folder guard."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import io

if TYPE_CHECKING:
    import torch

C = TypeVar("C")


def from_dict(cls: type[C], d: dict) -> C:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kw)


def to_dict(cfg: Any) -> dict:
    return io.jsonable(asdict(cfg))


def claim_folder(
    folder: Path,
    cfg: Any,
    *,
    name: str = "config.json",
    overwrite: bool = False,
    analysis_only: tuple[str, ...] = (),
    may_grow: tuple[str, ...] = (),
    absent_means: dict[str, Any] | None = None,
) -> None:
    """Write ``cfg`` to ``folder/name``, or check that an existing one matches (so a run resumes).

    A folder that holds another configuration's run is refused, never mixed or overwritten silently.
    Top-level keys named in ``analysis_only`` only change how finished runs are analysed: when they
    alone differ, the saved configuration is updated and the runs are kept (re-analysis). Numeric
    keys named in ``may_grow`` may increase (a training budget that is extended), never decrease.
    ``absent_means`` gives, for settings added after a folder was written, the value that reproduces
    what the older code did (nested dicts for nested sections): a saved file without such a key is
    read as holding that value, so adding a setting does not lock users out of their old runs.
    """
    folder = Path(folder)
    path = folder / name
    want = to_dict(cfg)
    if path.exists() and not overwrite:
        have = _fill_absent(io.read_json(path), absent_means or {})
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            grown = {k for k in diff if k in may_grow and isinstance(have.get(k), int) and want.get(k, 0) > have[k]}
            if diff and set(diff) <= set(analysis_only) | grown:
                io.write_json(path, want)
                return
            raise ValueError(
                f"{folder} already holds a run with another configuration (differs in: {', '.join(diff)}); "
                "use a new --out folder, or the same settings to resume it"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(path, want)


def _fill_absent(have: dict, absent: dict) -> dict:
    out = dict(have)
    for k, v in absent.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _fill_absent(out[k], v)
        elif k not in out:
            out[k] = v
    return out


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on: ``None``/``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``
    (the first GPU if torch sees one, else the CPU). Asking for a device torch cannot use is an error
    that says so, not a silent fall-back to the CPU.

    The device is not part of a run's configuration: a run started on one device resumes on another.
    """
    import torch

    def mps_available() -> bool:
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()

    name = "cpu" if device is None else str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} ({e}); use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                "install a CUDA build of torch, or use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps":
        if not mps_available():
            raise ValueError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return dev


__all__ = ["claim_folder", "from_dict", "resolve_device", "to_dict"]
