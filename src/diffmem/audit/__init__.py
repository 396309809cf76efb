"""Guided-sampling audit: why and how a conditional diffusion model reproduces training images under
classifier-free guidance (the guided prediction ``eps_u + g (eps_c - eps_u)`` overestimates a memorized
training image in the first sampling steps; see ``docs/audit.md``).

Main entry points (imported lazily): :func:`run_audit` with :class:`AuditConfig`, returning an
:class:`AuditResult`; :func:`build_testbed` (the built-in digits testbed); :func:`record` /
:class:`Trajectory` (trajectory recording); :mod:`~diffmem.audit.analysis` (statistics),
:mod:`~diffmem.audit.detectors`, :mod:`~diffmem.audit.mitigation`; :class:`PixelCosine` (the default
severity). A local Stable Diffusion folder is loaded with
``diffmem.audit.diffusers_adapter.load_pipeline_model``.
"""

from __future__ import annotations

import importlib

from .protocol import GuidedModel, PromptSpec, Severity

_LAZY = {
    "AuditConfig": "run",
    "AuditResult": "run",
    "run_audit": "run",
    "build_testbed": "testbed",
    "TestbedModel": "testbed",
    "TestbedConfig": "testbed",
    "record": "recorder",
    "Trajectory": "recorder",
    "PixelCosine": "severity",
}

__all__ = ["GuidedModel", "PromptSpec", "Severity", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
