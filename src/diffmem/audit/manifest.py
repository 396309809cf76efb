"""Read the prompts to audit, each paired (when known) with the training image it may reproduce.

Three formats, chosen by the file extension:

- ``.json``: a list of entries, or an object ``{"prompts": [entries]}``;
- ``.jsonl`` (or ``.ndjson``): one entry object per line (blank lines are skipped), e.g. the public
  memorized-prompt lists with ``caption``, ``index`` and ``url``;
- ``.csv``: a header row naming the columns, e.g. ``prompt`` and a label column.

Fields of an entry (every other field is refused, naming it, so that a misspelt column is not
silently ignored):

- ``prompt`` (or ``caption``, the name the public lists use): the text;
- ``image``: the path of the training image, relative to the manifest's folder or absolute;
- ``index``: the training image's index in its dataset (e.g. LAION); with ``images=FOLDER`` the
  image is ``FOLDER/<index>.png`` (or .jpg, .jpeg, .webp, .bmp), and the index is the default key;
- ``url``: where the image came from; recorded in the docs of the list, never fetched;
- ``label``: ``memorized``, ``partial``, ``normal`` (case-insensitive), empty or null for unknown;
  the memorization types of the public lists are accepted too: ``MV`` (matching verbatim) and
  ``RV`` (retrieval verbatim) read as memorized, ``TV`` (template verbatim) as partial, ``N`` as
  normal; a column ``overfit_type`` holds the same codes, a column ``memorized`` true/false;
- ``key``: a name for the prompt in output files (letters, digits, ``_ . -``);
- ``group``: a finer grouping than the label (results are also reported per group).

Images are read with Pillow (EXIF orientation applied), converted to RGB and scaled to [0, 1]; an
image whose shorter side exceeds ``max_side`` is downscaled (aspect kept, Lanczos), because the audit
resizes to the model's resolution anyway and full-size training images would fill memory.

A manifest gives a training image for every prompt or for none: one that names images (an ``image``
column or field, or an ``images`` folder) and lacks one for some prompt is refused. Without images
the prompts are audited with the statistics that need none (the decomposition against each seed's
final sample, Wen's norms, seed collapse, convergence), and have no severity.

Duplicate prompts are refused unless every copy carries its own ``key`` (or ``index``), to audit one
prompt against several images on purpose; duplicate keys are refused.
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

__all__ = ["FIELDS", "load_image", "read_manifest"]

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
        if "prompt" not in fields and "caption" not in fields:
            raise ValueError(
                f"{path}: a CSV manifest needs a header row with a prompt (or caption) column, e.g. "
                f"prompt,image,label or prompt,label (found {reader.fieldnames})"
            )
        out = []
        for row in reader:
            entry = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            out.append((f"{path.name} line {reader.line_num}", entry))
        return out
    raise ValueError(f"{path}: unknown manifest type {path.suffix!r}; use .json, .jsonl or .csv")


#: the fields an entry may have; anything else is refused
FIELDS = ("prompt", "caption", "image", "index", "url", "label", "overfit_type", "memorized", "key", "group")
_LABEL_FIELDS = ("label", "overfit_type", "memorized")
_CODES = {"mv": "memorized", "rv": "memorized", "tv": "partial", "n": "normal"}
_TRUE = ("true", "yes", "1", "y")
_FALSE = ("false", "no", "0", "n")
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _label(raw: Any, where: str, column: str = "label") -> str | None:
    if raw is None:
        return None
    if column == "memorized":
        if isinstance(raw, bool):
            return "memorized" if raw else "normal"
        t = str(raw).strip().lower()
        if t == "":
            return None
        if t in _TRUE or t in _FALSE:
            return "memorized" if t in _TRUE else "normal"
        raise ValueError(f"{where}: memorized must be true or false (or empty for unknown), got {raw!r}")
    if not isinstance(raw, str):
        raise ValueError(
            f"{where}: {column} must be one of {', '.join(LABELS)} (or MV, RV, TV, N) or empty, got {raw!r}"
        )
    s = raw.strip().lower()
    if s in ("", "none", "null", "unknown"):
        return None
    if s in _CODES:
        return _CODES[s]
    if s not in LABELS:
        raise ValueError(
            f"{where}: {column} must be one of {', '.join(LABELS)} (or MV, RV, TV, N) or empty, got {raw!r}"
        )
    return s


def _bad_label(where: str, column: str, raw: Any) -> str:
    return f"{where}: {column} must be one of {', '.join(LABELS)} (or MV, RV, TV, N) or empty, got {raw!r}"


def _entry_label(e: dict, where: str) -> str | None:
    found = {c: _label(e[c], where, c) for c in _LABEL_FIELDS if c in e}
    given = {c: v for c, v in found.items() if v is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"{where}: the label columns disagree ({given}); keep one label column")
    return next(iter(given.values()), None)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _index_image(folder: Path, index: Any, where: str) -> Path:
    name = str(index).strip()
    if isinstance(index, float) and index.is_integer():
        name = str(int(index))
    for ext in _EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{where}: no image for index {name!r} in {folder} (looked for {name}{{{','.join(_EXTENSIONS)}}}); "
        "put the training image there, or give its path in an 'image' column"
    )


def read_manifest(path: str | Path, max_side: int | None = 768, images: str | Path | None = None) -> list[PromptSpec]:
    """Prompts, labels and training images (when known) from a JSON, JSONL or CSV manifest (see the
    module docstring). ``images``: the folder holding the images named by the entries' ``index``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no such manifest: {path}; give a .json, .jsonl or .csv file listing prompt, image and label"
        )
    folder = Path(images) if images is not None else None
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}; give the folder that holds the images by index")
    raw = _entries(path)
    if not raw:
        raise ValueError(f"{path} lists no prompts; add entries with a prompt and the path of its training image")
    base = path.parent
    entries = []
    for where, e in raw:
        if not isinstance(e, dict):
            raise ValueError(f'{where}: an entry must be an object with "prompt" and "image", got {type(e).__name__}')
        unknown = sorted(str(k) for k in e if k not in FIELDS)
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {unknown}; a manifest entry has only {', '.join(FIELDS)} "
                "(rename or remove the others)"
            )
        entries.append((where, e))
    wants_image = folder is not None or any("image" in e for _, e in entries)
    specs: list[PromptSpec] = []
    first_seen: dict[str, tuple[str, bool]] = {}  # prompt -> (where, had a key)
    keys: dict[str, str] = {}
    for where, e in entries:
        prompt, caption = e.get("prompt"), e.get("caption")
        if not _blank(prompt) and not _blank(caption) and prompt != caption:
            raise ValueError(f"{where}: prompt and caption differ; give one of them")
        prompt = caption if _blank(prompt) else prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f'{where}: the entry has no prompt text; give a non-empty "prompt" (or "caption")')
        where = f"{where} (prompt {prompt[:60]!r})"
        image, index = e.get("image"), e.get("index")
        img_path: Path | None = None
        if not _blank(image):
            if not isinstance(image, str):
                raise ValueError(f"{where}: image must be a file path, got {type(image).__name__}")
            img_path = Path(image) if Path(image).is_absolute() else base / image
        elif folder is not None and not _blank(index):
            img_path = _index_image(folder, index, where)
        elif wants_image:
            raise ValueError(
                f"{where}: the prompt has no image while the manifest gives images; give the path of the training "
                "image it may reproduce (or its index with --images), or list no images at all"
            )
        label = _entry_label(e, where)
        key = e.get("key")
        if _blank(key):
            key = None
            if not _blank(index):
                key = str(int(index)) if isinstance(index, float) and index.is_integer() else str(index).strip()
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
        group = e.get("group")
        group = None if _blank(group) else str(group).strip()
        img = load_image(img_path, max_side=max_side, what=where) if img_path is not None else None
        specs.append(PromptSpec(prompt=prompt, image=img, label=label, key=key, group=group))
    auto = {s.key for s in specs if s.key is not None and s.key not in keys}
    clash = auto & set(keys)
    if clash:
        raise ValueError(f"{path}: key(s) {sorted(clash)} collide with automatic prompt keys; choose other keys")
    return specs
