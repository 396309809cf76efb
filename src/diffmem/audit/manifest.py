"""Read the prompts to audit, each paired with the training image it may reproduce.

Three formats, chosen by the file extension:

- ``.json``: a list of entries, or an object ``{"prompts": [entries]}``;
- ``.jsonl`` (or ``.ndjson``): one entry object per line (blank lines are skipped);
- ``.csv``: a header row with the columns ``prompt`` and ``image`` and optionally ``label`` and
  ``key`` (other columns are ignored).

An entry has ``prompt`` (text), ``image`` (a path, relative to the manifest's folder or absolute),
optionally ``label`` ("memorized", "partial", "normal"; empty or null for unknown) and ``key`` (a
name for the prompt in output files; letters, digits, ``_ . -``). Images are read with Pillow
(EXIF orientation applied), converted to RGB and scaled to [0, 1]; an image whose shorter side
exceeds ``max_side`` is downscaled (aspect kept, Lanczos), because the audit resizes to the model's
resolution anyway and full-size training images would fill memory.

Duplicate prompts are refused unless every copy carries its own ``key`` (to audit one prompt
against several images on purpose).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .protocol import LABELS, PromptSpec

__all__ = ["load_image", "read_manifest"]

_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


def load_image(path: str | Path, max_side: int | None = 768, what: str = "image") -> torch.Tensor:
    """An image file as a float32 (3, H, W) tensor in [0, 1] (RGB; shorter side at most ``max_side``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: image file {path} does not exist; "
            "fix the path (relative paths are relative to the manifest's folder)"
        )
    try:
        with Image.open(path) as f:
            f.load()
            im = ImageOps.exif_transpose(f).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{what}: {path} is not a readable image ({e}); replace it with a PNG or JPEG file") from e
    if max_side is not None and min(im.size) > max_side:
        s = max_side / min(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _entries(path: Path) -> list[tuple[str, Any]]:
    """(where, raw entry) pairs, ``where`` naming the entry for error messages."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); save the manifest as UTF-8") from e
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
        if isinstance(data, dict):
            if "prompts" not in data:
                raise ValueError(f'{path}: a JSON manifest is a list of entries or an object with a "prompts" list')
            data = data["prompts"]
        if not isinstance(data, list):
            raise ValueError(f'{path}: the prompts must be a JSON list of {{"prompt", "image", "label"}} objects')
        return [(f"{path.name} entry {i + 1}", e) for i, e in enumerate(data)]
    if suffix in (".jsonl", ".ndjson"):
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"{path.name} line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path.name} line {n} is not valid JSON ({e})") from e
        return out
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "prompt" not in fields or "image" not in fields:
            raise ValueError(
                f"{path}: a CSV manifest needs a header row with the columns prompt,image[,label] "
                f"(found {reader.fieldnames})"
            )
        out = []
        for row in reader:
            entry = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            out.append((f"{path.name} line {reader.line_num}", entry))
        return out
    raise ValueError(f"{path}: unknown manifest type {path.suffix!r}; use .json, .jsonl or .csv")


def _label(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError(f"{where}: label must be one of {', '.join(LABELS)} or empty, got {raw!r}")
    s = raw.strip().lower()
    if s in ("", "none", "null", "unknown"):
        return None
    if s not in LABELS:
        raise ValueError(f"{where}: label must be one of {', '.join(LABELS)} or empty, got {raw!r}")
    return s


def read_manifest(path: str | Path, max_side: int | None = 768) -> list[PromptSpec]:
    """Prompts and training images from a JSON, JSONL or CSV manifest (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no such manifest: {path}; give a .json, .jsonl or .csv file listing prompt, image and label"
        )
    raw = _entries(path)
    if not raw:
        raise ValueError(f"{path} lists no prompts; add entries with a prompt and the path of its training image")
    base = path.parent
    specs: list[PromptSpec] = []
    first_seen: dict[str, tuple[str, bool]] = {}  # prompt -> (where, had a key)
    keys: dict[str, str] = {}
    for where, e in raw:
        if not isinstance(e, dict):
            raise ValueError(f'{where}: an entry must be an object with "prompt" and "image", got {type(e).__name__}')
        prompt = e.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f'{where}: the entry has no prompt text; give a non-empty "prompt"')
        where = f"{where} (prompt {prompt[:60]!r})"
        image = e.get("image")
        if image is None or (isinstance(image, str) and not image.strip()):
            raise ValueError(f"{where}: the prompt has no image; give the path of the training image it may reproduce")
        if not isinstance(image, str):
            raise ValueError(f"{where}: image must be a file path, got {type(image).__name__}")
        label = _label(e.get("label"), where)
        key = e.get("key")
        if key is not None and isinstance(key, str) and not key.strip():
            key = None
        if key is not None:
            if not isinstance(key, str) or not _KEY.match(key):
                raise ValueError(
                    f"{where}: key {key!r} must be letters, digits, '_', '.' or '-' (it names output files)"
                )
            if key in keys:
                raise ValueError(f"{where}: key {key!r} is already used by {keys[key]}; keys must be unique")
            keys[key] = where
        if prompt in first_seen and (key is None or not first_seen[prompt][1]):
            raise ValueError(
                f"{where}: duplicate prompt (also {first_seen[prompt][0]}); remove one, "
                'or give every copy its own "key" to audit the prompt against several images'
            )
        first_seen.setdefault(prompt, (where, key is not None))
        img = load_image(Path(image) if Path(image).is_absolute() else base / image, max_side=max_side, what=where)
        specs.append(PromptSpec(prompt=prompt, image=img, label=label, key=key))
    auto = {s.key for s in specs if s.key is not None and s.key not in keys}
    clash = auto & set(keys)
    if clash:
        raise ValueError(f"{path}: key(s) {sorted(clash)} collide with automatic prompt keys; choose other keys")
    return specs
