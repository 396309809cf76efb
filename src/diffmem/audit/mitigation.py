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

Effect measured per label (and per group, e.g. the testbed's ``point_mass`` and
``guidance_cluster`` captions): mean severity and copy rate (severity >= threshold) of the final
samples, and *fidelity*: the fraction of samples that still show what the prompt asks for, when the
model can tell (``model.fidelity(prompt, pixels)``; the testbed's digit classifier).

:func:`mitigation_outcome` applies a criterion fixed in advance: a schedule *mitigates* copying on a
group when it lowers the group's mean severity by at least ``min_drop`` (default 0.1) below constant
guidance; its fidelity cost is the fidelity under constant guidance minus the fidelity under it.
Prompts without a training image have no severity and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SCHEDULES", "guidance_schedule", "mitigation_outcome", "mitigation_table", "transition_steps"]

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


def _has_severity(p: dict, sched: str) -> bool:
    rec = (p.get("mitigation") or {}).get(sched)
    return rec is not None and rec.get("severity") is not None and all(v is not None for v in rec["severity"])


def mitigation_table(prompts: Sequence[dict], threshold: float, by: str = "label") -> dict[str, dict[str, dict]]:
    """Per schedule and label (``by="group"``: per group): prompts, mean severity, copy rate
    (severity >= threshold), mean fidelity; ``"all"`` pools every prompt.

    ``prompts``: per-prompt results with ``label`` (or ``group``) and ``mitigation[schedule] =
    {"severity": [...], "fidelity": [...]}``. Fidelity values that are NaN (caption names no digit) are
    left out, and so are prompts without severity (no training image)."""
    out: dict[str, dict[str, dict]] = {}
    names = sorted({p.get(by) or "unlabelled" for p in prompts})
    for sched in SCHEDULES:
        rows = {}
        for lab in [*names, "all"]:
            ps = [
                p for p in prompts if _has_severity(p, sched) and (lab == "all" or (p.get(by) or "unlabelled") == lab)
            ]
            if not ps:
                continue
            sev = np.concatenate([np.asarray(p["mitigation"][sched]["severity"], dtype=np.float64) for p in ps])
            fid = np.concatenate(
                [
                    np.asarray(
                        [np.nan if v is None else v for v in (p["mitigation"][sched].get("fidelity") or [np.nan])],
                        dtype=np.float64,
                    )
                    for p in ps
                ]
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


def mitigation_outcome(
    table: dict[str, dict[str, dict]], min_drop: float = 0.1, groups: Sequence[str] | None = None
) -> dict[str, object]:
    """Whether each schedule mitigates copying on each group of a :func:`mitigation_table`.

    Per group and schedule (other than ``constant``): ``severity_constant``, ``severity``, ``drop`` =
    constant minus schedule, ``mitigated`` = drop >= ``min_drop``, and ``fidelity_constant``,
    ``fidelity``, ``fidelity_cost`` = constant minus schedule (None where fidelity is unknown)."""
    base = table.get("constant") or {}
    names = list(groups) if groups is not None else [g for g in base if g != "all"]
    res: dict[str, dict[str, dict]] = {}
    for gr in names:
        if gr not in base:
            continue
        b = base[gr]
        res[gr] = {}
        for sched, rows in table.items():
            if sched == "constant" or gr not in rows:
                continue
            r = rows[gr]
            drop = b["severity"] - r["severity"]
            fc, fs = b.get("fidelity"), r.get("fidelity")
            res[gr][sched] = {
                "severity_constant": b["severity"],
                "severity": r["severity"],
                "drop": drop,
                "mitigated": bool(drop >= min_drop),
                "fidelity_constant": fc,
                "fidelity": fs,
                "fidelity_cost": (fc - fs) if fc is not None and fs is not None else None,
            }
    return {"min_severity_drop": float(min_drop), "groups": res}
