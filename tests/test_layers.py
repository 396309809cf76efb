"""The layering of diffmem.layers holds: no module imports a higher layer or a sibling part.

Every module's imports are read with ast (imports inside functions too, the lazy-export tables, and
``importlib.import_module`` of a constant name) and checked against ``diffmem.layers.LAYERS``; the
walker itself is checked on planted upward imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import diffmem
from diffmem.layers import LAYERS, SIDEWAYS

ROOT = Path(diffmem.__file__).parent


def layer_of(module: str) -> tuple[str, int]:
    """``(part, layer)`` of a module such as ``"diffmem.dynamics.cli"``; a part not in LAYERS is an error."""
    names = module.split(".")
    part = names[1] if len(names) > 1 else "diffmem"
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return part, i
    raise ValueError(f"{module} belongs to no layer; add its part {part!r} to diffmem.layers.LAYERS")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").is_file() or (ROOT.parent / rel / "__init__.py").is_file()


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every diffmem import in ``source``, the source of ``module``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for a in node.names:  # `from pkg import sub` imports the submodule pkg.sub where there is one
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets):
            if isinstance(node.value, ast.Dict):  # the lazy-export table: {module: [names]}
                for key in node.value.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        dots = len(key.value) - len(key.value.lstrip("."))
                        found.append((key.lineno, _resolve(module, is_package, dots, key.value.lstrip(".") or None)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    keep = {(line, name) for line, name in found if name == "diffmem" or name.startswith("diffmem.")}
    return sorted(keep)


def violations(module: str, source: str, is_package: bool = False, where: str = "") -> list[str]:
    """Every import of ``module`` that goes to a higher layer or to another part of its own layer."""
    part, layer = layer_of(module)
    out = []
    for line, target in imports_of(module, source, is_package):
        if target == "diffmem":  # the root package runs before any submodule: importing it adds nothing
            continue
        tpart, tlayer = layer_of(target)
        if tpart == part or tlayer < layer or target in SIDEWAYS.get(part, ()):
            continue
        how = "up" if tlayer > layer else "sideways"
        out.append(
            f"{where or module}:{line} imports {target} ({how}: {part} is in layer {layer}, {tpart} in layer {tlayer})"
        )
    return out


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_imports_upward_or_sideways():
    found = []
    for path in _sources():
        module = _module_name(path)
        found += violations(module, path.read_text(), path.name == "__init__.py", str(path.relative_to(ROOT.parent)))
    assert not found, "imports against diffmem.layers.LAYERS:\n" + "\n".join(found)


def test_every_module_belongs_to_a_layer_and_each_part_to_one():
    parts = [p for layer in LAYERS for p in layer]
    assert len(parts) == len(set(parts))
    for path in _sources():
        layer_of(_module_name(path))  # raises for a part not in LAYERS
    with pytest.raises(ValueError, match="add its part 'newpart'"):
        layer_of("diffmem.newpart.x")


@pytest.mark.parametrize(
    "module, source, is_package, bad",
    [
        # the imports between parts the layering forbids, as they could be written
        ("diffmem.external.measure", "def f():\n    from ..dynamics.report import sample_grid\n", False, "sideways"),
        ("diffmem.dynamics.cli", "def f():\n    from ..external.cli import add_model_flags\n", False, "sideways"),
        ("diffmem.external.models", "from diffmem.audit import diffusers_adapter\n", False, "sideways"),
        ("diffmem.audit.run", "from ..external import measure_model\n", False, "sideways"),
        ("diffmem.external.measure", "from ..audit.sscd import SSCDSeverity\n", False, None),  # SIDEWAYS
        ("diffmem.metrics.kid", "import diffmem.dynamics.study\n", False, "up"),
        ("diffmem.monitor", "_WHERE = {'diffmem.dynamics.study': ['StudyConfig']}\n", True, "sideways"),
        ("diffmem.theory.run", "from .. import audit\n", False, "sideways"),
        ("diffmem.io", "import importlib\nimportlib.import_module('diffmem.config')\n", False, "up"),
        ("diffmem.metrics.memorization", "from ..schedule import linear\nfrom . import kid\n", False, None),
        ("diffmem.cli", "from . import __version__\nfrom .external import cli\n", False, None),
    ],
)
def test_the_walker_finds_planted_upward_imports(module, source, is_package, bad):
    found = violations(module, source, is_package)
    if bad is None:
        assert found == []
    else:
        assert len(found) == 1 and f"({bad}:" in found[0], found
