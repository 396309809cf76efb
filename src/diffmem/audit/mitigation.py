"""Guidance schedules that the overestimation mechanism suggests (after Jain et al., CVPR 2025).

Memorization starts in the first steps, when guidance multiplies the conditional branch's pull
towards x by g. So withhold guidance early and apply it only after a transition step:

- ``constant``: g at every step (the baseline; its samples are the recorded trajectory's).
- ``conditional_only``: g = 1 at every step (eps_c alone, no classifier-free guidance): the
  reference that tells whether copies come from the conditional model itself or from guidance.
- ``no_early_guidance``: scale ``early_scale`` (default 0 = the *unconditional* prediction eps_u)
  for the first ``transition`` steps, then g.
- ``negative_early_guidance``: a negative scale (default -1: eps_u - (eps_c - eps_u), steering away
  from the prompt) for the first ``transition`` steps, then g.

Effect measured per label: mean severity and copy rate (severity >= threshold) of the final
samples, and *fidelity*: the fraction of samples that still show what the prompt asks for, when the
model can tell (``model.fidelity(prompt, pixels)``; the testbed's digit classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SCHEDULES", "guidance_schedule", "mitigation_table", "transition_steps"]

SCHEDULES = ("constant", "conditional_only", "no_early_guidance", "negative_early_guidance")


def transition_steps(steps: int, fraction: float) -> int:
    """Number of early steps without normal guidance: ``round(fraction * steps)``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the mitigation transition is a fraction of the steps in [0, 1], got {fraction}")
    return round(float(fraction) * steps)


def guidance_schedule(kind: str, g: float, steps: int, transition: int = 0, early_scale: float = 0.0) -> list[float]:
    """Per-step guidance scales: ``early_scale`` for the first ``transition`` steps, ``g`` after."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {kind!r}; choose one of {SCHEDULES}")
    if not 0 <= transition <= steps:
        raise ValueError(f"transition must be in [0, {steps}], got {transition}")
    if kind == "constant":
        return [float(g)] * steps
    if kind == "conditional_only":
        return [1.0] * steps
    return [float(early_scale)] * transition + [float(g)] * (steps - transition)


def mitigation_table(prompts: Sequence[dict], threshold: float) -> dict[str, dict[str, dict]]:
    """Per schedule and label: prompts, mean severity, copy rate (severity >= threshold), mean fidelity.

    ``prompts``: per-prompt results with ``label`` and ``mitigation[schedule] = {"severity": [...],
    "fidelity": [...]}``. Fidelity values that are NaN (caption names no digit) are left out."""
    out: dict[str, dict[str, dict]] = {}
    labels = sorted({p.get("label") or "unlabelled" for p in prompts})
    for sched in SCHEDULES:
        rows = {}
        for lab in [*labels, "all"]:
            ps = [
                p
                for p in prompts
                if sched in (p.get("mitigation") or {}) and (lab == "all" or (p.get("label") or "unlabelled") == lab)
            ]
            if not ps:
                continue
            sev = np.concatenate([np.asarray(p["mitigation"][sched]["severity"], dtype=np.float64) for p in ps])
            fid = np.concatenate(
                [np.asarray(p["mitigation"][sched].get("fidelity") or [np.nan], dtype=np.float64) for p in ps]
            )
            fid = fid[np.isfinite(fid)]
            rows[lab] = {
                "prompts": len(ps),
                "severity": float(sev.mean()),
                "copy_rate": float((sev >= threshold).mean()),
                "fidelity": float(fid.mean()) if len(fid) else None,
            }
        if rows:
            out[sched] = rows
    return out
