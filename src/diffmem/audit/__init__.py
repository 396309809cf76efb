"""Guided-sampling audit (SCIENCE.md section 4): why and how a conditional diffusion model reproduces
training images under classifier-free guidance.

Main entry points (imported lazily): :func:`run_audit` with :class:`AuditConfig`,
:func:`build_testbed` (the built-in digits testbed), :func:`record` / :class:`Trajectory`
(trajectory recording), :mod:`~diffmem.audit.analysis` (statistics), :mod:`~diffmem.audit.detectors`,
:mod:`~diffmem.audit.mitigation`, :class:`PixelCosine` (default severity). A local Stable Diffusion
folder is loaded with ``diffmem.audit.diffusers_adapter.load_pipeline_model``.
"""

from __future__ import annotations

import importlib

from .protocol import GuidedModel, PromptSpec, Severity

_LAZY = {
    "AuditConfig": "run",
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
