"""The public API and the shape of the package: lazy imports, docstrings, no private imports across
packages, the shared command-line helper, doctests of the documented examples."""

import argparse
import ast
import dataclasses
import doctest
import importlib
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import diffmem
from diffmem.cliutils import add_config_flags, config_from_flags, field_docs

SRC = Path(diffmem.__file__).parent


def test_import_diffmem_loads_neither_torch_nor_numpy():
    code = "import sys, diffmem; print(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", diffmem.__all__)
def test_public_names_resolve_and_are_documented(name):
    obj = getattr(diffmem, name)
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 40, f"diffmem.{name} needs a docstring"
    if inspect.isfunction(obj):
        assert "Parameters\n----------" in doc and "Returns\n-------" in doc, f"diffmem.{name}: numpydoc sections"


def _config_classes():
    from diffmem.audit.run import AuditConfig
    from diffmem.audit.testbed import TestbedConfig
    from diffmem.dynamics.evaluate import EvalConfig
    from diffmem.dynamics.predict import Prediction
    from diffmem.dynamics.study import StudyConfig
    from diffmem.dynamics.timescales import TimeRules
    from diffmem.dynamics.training import TrainConfig
    from diffmem.external import MeasureConfig
    from diffmem.monitor import MonitorConfig
    from diffmem.theory.run import DynamicsConfig, PhaseConfig, SpectrumConfig

    return [TrainConfig, EvalConfig, StudyConfig, TimeRules, AuditConfig, TestbedConfig] + [
        MeasureConfig,
        MonitorConfig,
        Prediction,
        SpectrumConfig,
        DynamicsConfig,
        PhaseConfig,
    ]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_a_docstring(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert missing == [], f"{cls.__name__} fields without a docstring: {missing}"


def _package_of(module: str) -> str:
    """The package a module belongs to: ``diffmem.audit.run`` -> ``diffmem.audit``."""
    path = SRC.parent / Path(*module.split("."))
    return module if (path / "__init__.py").exists() else module.rsplit(".", 1)[0]


def test_no_module_imports_a_private_name_from_outside_its_package():
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        pkg = _package_of(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:  # resolve a relative import against this module's package
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base + "." + a.name for a in node.names]
            for target, alias in zip(targets, node.names):
                private = alias.name.startswith("_") or any(p.startswith("_") for p in base.split(".")[1:])
                if private and _package_of(base) != pkg and not target.startswith(pkg + "."):
                    offences.append(f"{module}: from {base} import {alias.name}")
    assert offences == []


@dataclasses.dataclass(frozen=True)
class _Demo:
    rate: float = 0.5
    """How fast."""
    sizes: tuple[int, ...] = (1, 2)
    """Which sizes."""
    kind: typing.Literal["a", "b"] = "a"
    """Which kind."""
    fast: bool = True
    """Go fast."""
    label: str | None = None
    """An optional label."""


def test_config_flags_round_trip_types_choices_and_defaults():
    p = argparse.ArgumentParser()
    add_config_flags(p, _Demo, rename={"label": "name"})
    assert config_from_flags(_Demo, p.parse_args([])) == _Demo()
    args = p.parse_args(["--rate", "2", "--sizes", "3", "4", "5", "--kind", "b", "--no-fast", "--name", "x"])
    assert config_from_flags(_Demo, args) == _Demo(rate=2.0, sizes=(3, 4, 5), kind="b", fast=False, label="x")
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "c"])  # not one of the Literal's choices
    helps = {a.dest: a.help for a in p._actions}
    assert helps["rate"] == "How fast. (default: 0.5)" and helps["sizes"] == "Which sizes. (default: 1 2)"


@pytest.mark.parametrize(
    "module",
    [
        "diffmem",
        "diffmem.schedule",
        "diffmem.sampling",
        "diffmem.metrics.memorization",
        "diffmem.metrics.frechet",
        "diffmem.dynamics.timescales",
        "diffmem.dynamics.study",
        "diffmem.cliutils",
    ],
)
def test_documented_examples_run(module):
    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0
