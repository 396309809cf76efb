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

from ..lazy import lazy_exports
from .protocol import GuidedModel, PromptSpec, Severity

_WHERE = {
    ".run": ["AuditConfig", "AuditResult", "run_audit"],
    ".testbed": ["TestbedConfig", "TestbedModel", "build_testbed"],
    ".recorder": ["Trajectory", "record"],
    ".severity": ["PixelCosine"],
}
_lazy, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
__all__ = ["GuidedModel", "PromptSpec", "Severity", *_lazy]
