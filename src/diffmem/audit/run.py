"""The audit: record every prompt, analyse, compare detectors, try mitigations, write the results.

Folder layout (``out``):

- ``audit_config.json``: the :class:`AuditConfig`, the model's description and the severity's name
  (claimed with :func:`diffmem.config.claim_folder`: another configuration in the folder is refused);
- ``prompts/<key>.json``: one finished prompt (statistics, curves, severity per seed, mitigation);
  written atomically when the prompt is done, so a re-run skips it (resume per prompt);
- ``trajectories/<key>.safetensors``: the recorded trajectory (``save_trajectories``);
- ``audit.json``, ``figures/*.png``, ``report.html``: the aggregate, rewritten at the end
  (``audit.json`` is :meth:`AuditResult.to_dict`).

A prompt without a training image (``PromptSpec.image is None``) is audited with the statistics that
need none: its latents are decomposed against each seed's own final sample, and it has no severity.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import io
from ..config import claim_folder, to_dict
from ..validation import Integer, Interval, OneOf, Optional, check
from . import analysis
from .detectors import DETECTORS, detector_costs, roc_table
from .mitigation import guidance_schedule, mitigation_outcome, mitigation_table, transition_steps
from .protocol import LABELS, GuidedModel, PromptSpec, Severity
from .recorder import Trajectory, model_timesteps, prompt_seeds, record, sample_final
from .severity import PixelCosine

__all__ = ["STATISTICS", "AuditConfig", "AuditResult", "load_trajectory", "run_audit"]

#: per-prompt statistics correlated with severity (the first nine are the original set)
STATISTICS = (
    "overestimation_a",
    "D1",
    "D2",
    "convergence",
    "seed_collapse",
    "wen_first",
    "wen_mean",
    "loss_ratio_first",
    "cos_guidance_x_first",
    "overestimation_a_early",
    "D1_early",
    "D2_early",
    "D1_final",
    "D2_final",
    "D1_final_early",
    "D2_final_early",
    "convergence_early",
    "seed_collapse_early",
    "wen_early",
    "loss_ratio_early",
    "cos_guidance_x_early",
    "a_parallel",
    "a_parallel_early",
    "off_target",
    "q",
    "q_early",
    "r_perp",
    "E_rel",
    "E_rel_early",
    "eps_w0_ratio_first",
    "eps_w0_ratio_early",
)

#: per-label and per-group means in the summary
SUMMARY = (
    "overestimation_a",
    "overestimation_a_early",
    "seed_collapse",
    "convergence",
    "D1",
    "D2",
    "D1_early",
    "D2_early",
    "D1_final",
    "D2_final",
    "D1_final_early",
    "D2_final_early",
    "a_parallel",
    "off_target",
    "q",
    "r_perp",
    "E_rel",
    "eps_w0_ratio_first",
    "wen_first",
    "wen_mean",
    "wen_early",
    "loss_guided_mean",
    "loss_cond_mean",
    "final_distance",
    "severity",
    "copy_rate",
    "fidelity",
)


@dataclass(frozen=True)
class AuditConfig:
    """One audit: how every prompt is sampled, analysed and re-sampled under the mitigation schedules.

    Saved in ``audit_config.json``; a folder that holds another configuration is refused.
    """

    guidance: float = 7.5
    """Classifier-free guidance scale g: eps_g = eps_u + g (eps_c - eps_u); Stable Diffusion's default is 7.5."""
    steps: int = 50
    """DDIM sampling steps."""
    seeds: int = 8
    """Noise seeds per prompt (every prompt starts from the same x_T of each seed)."""
    seed: int = 0
    """Base of the noise seeds (seed j of a prompt is seed * 100003 + j) and of the bootstrap."""
    first_steps: int = 1
    """Sampling steps that enter the overestimation coefficient a."""
    converge_step: int | None = None
    """Where seed convergence is read: i in 1..steps-1 is the latent after i sampling steps (the model
    sees latents 0..steps-1, 0 = x_T); steps, or None, is the final sample."""
    spacing: Literal["leading", "trailing", "linspace"] = "leading"
    """Timestep spacing for models without their own timesteps() (a diffusers pipeline uses its scheduler's)."""
    n_boot: int = 1000
    """Bootstrap resamples of the prompts for the 95% intervals of the correlations with severity."""
    mitigation: bool = True
    """Run the guidance-schedule study (three more samplings per prompt)."""
    mitigation_transition: float = 0.3
    """Fraction of the steps that the mitigation schedules sample without normal guidance."""
    mitigation_early_scale: float = 0.0
    """Guidance scale before the transition for 'no early guidance' (0 = the unconditional prediction eps_u)."""
    mitigation_negative_scale: float = -1.0
    """Guidance scale before the transition for 'negative early guidance' (below 0 steers away from the prompt)."""
    save_trajectories: bool = True
    """Keep each prompt's recorded trajectory on disk (trajectories/<key>.safetensors)."""
    early_fraction: float = 0.2
    """Share of the sampling steps, in (0, 1], over which every trajectory statistic is also reported
    ('_early': the first ceil(fraction * steps) steps, before the final sample has formed)."""
    decompose_against: Literal["training", "final"] | None = None
    """Reference of the decomposition x_k = w0 r + wT x_T behind D1 and D2: 'training' (the prompt's
    training image, the paper's definition), 'final' (each seed's own final sample, the authors' code;
    needs no image), or none given: training where the prompt has its image, final otherwise. Both are
    always reported as D1_training and D1_final."""
    reference_curves: Literal["sqrt_ab", "ddim_exact"] = "sqrt_ab"
    """Theoretical curves D1 and D2 are measured from: 'sqrt_ab' (the forward process sqrt(alpha_bar),
    sqrt(1 - alpha_bar)) or 'ddim_exact' (what DDIM gives exactly when its x0-prediction is the reference
    at every step); both are in audit.json under 'deviations'."""
    mitigation_min_drop: float = 0.1
    """Drop of a group's mean severity below constant guidance that counts as mitigation (fixed before measuring)."""

    def validate(self) -> None:
        check(
            self,
            {
                "guidance": Interval(0, 50, "both", hint="Stable Diffusion's default is 7.5"),
                "steps": Integer(1, 1000),
                "seeds": Integer(min=2, hint="seed distances need pairs"),
                "first_steps": Integer(1, int(self.steps), text=f"be in [1, steps={self.steps}]"),
                "converge_step": Optional(
                    Integer(1, int(self.steps), text=f"be in [1, steps={self.steps}]", hint="steps = the final sample")
                ),
                "n_boot": Integer(min=0),
                "spacing": OneOf("leading", "trailing", "linspace"),
                "early_fraction": Interval(
                    0, 1, "right", hint="the share of the steps that count as early; 0.2 = the first fifth"
                ),
                "decompose_against": OneOf(
                    "training", "final", None, hint="None: the training image where the prompt has one"
                ),
                "reference_curves": OneOf("sqrt_ab", "ddim_exact"),
                "mitigation_min_drop": Interval(0, 2, "right", what="a drop of mean severity"),
                "mitigation_early_scale": Interval(-50, 50, "both"),
                "mitigation_negative_scale": Interval(-50, 50, "both"),
            },
        )
        transition_steps(self.steps, self.mitigation_transition)

    @property
    def resolved_converge_step(self) -> int:
        return self.steps if self.converge_step is None else int(self.converge_step)

    @property
    def resolved_early_steps(self) -> int:
        """The number of early steps, ceil(early_fraction * steps)."""
        return analysis.early_steps(self.steps, self.early_fraction)


@dataclass(frozen=True)
class AuditResult:
    """What :func:`run_audit` returns: the aggregate of an audit, written to ``audit.json``.

    Every field holds plain JSON values (numbers that are not finite as :func:`diffmem.io.jsonable`
    writes them: NaN as ``None``). :meth:`to_dict` is exactly the content of ``audit.json``.
    """

    config: dict[str, Any]
    """The :class:`AuditConfig` as a dictionary."""
    model: dict[str, Any]
    """The model's description (its ``to_dict()``), ``latent_shape`` and the schedule's ``T``."""
    severity_metric: dict[str, Any]
    """``name`` and copy ``threshold`` of the severity."""
    timesteps: list[int]
    """The DDIM step indices, in sampling order (descending)."""
    seeds: list[int]
    """The noise seeds of every prompt."""
    summary: dict[str, dict[str, Any]]
    """Per label: the number of prompts and the mean of each statistic."""
    detectors: dict[str, dict[str, Any]]
    """Per detector: AUROC, TPR at 1% FPR, ROC curve and cost; memorized vs normal prompts."""
    detectors_with_partial: dict[str, dict[str, Any]]
    """The same with partial prompts counted as positives."""
    correlations: dict[str, dict[str, Any]]
    """Per statistic: Pearson and Spearman correlation with severity across prompts, bootstrap intervals."""
    mitigation: dict[str, dict[str, dict[str, Any]]]
    """Per guidance schedule and label: severity, copy rate and fidelity (empty without mitigation)."""
    mean_curves: dict[str, dict[str, list[Any]]]
    """Per label: the per-step curves averaged over its prompts."""
    prompts: list[dict[str, Any]]
    """Per prompt: every statistic, severity per seed and mitigation results (without the curves)."""
    timings: dict[str, float]
    """Prompts computed and reused, and seconds spent per stage."""
    summary_by_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per group (e.g. the testbed's point_mass, cluster_4, guidance_cluster): prompts and means."""
    detectors_partial_vs_normal: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The detector table for partial (positive) vs normal (negative) prompts."""
    detectors_memorized_vs_partial: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The detector table for memorized (positive) vs partial (negative) prompts."""
    correlations_within_label: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per label: the correlations of every statistic with severity among that label's prompts."""
    mitigation_by_group: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per guidance schedule and group: severity, copy rate and fidelity."""
    mitigation_outcome: dict[str, Any] = field(default_factory=dict)
    """Per group and schedule: the drop of mean severity below constant guidance, whether it reaches
    ``mitigation_min_drop``, and the fidelity cost."""
    decomposition: dict[str, Any] = field(default_factory=dict)
    """How D1/D2 were made: the reference curves, the early steps, the reference per prompt and the
    prompts that had no training image."""
    reference_curves: dict[str, Any] = field(default_factory=dict)
    """Both theoretical curves at the audit's step indices and their largest differences."""

    def to_dict(self) -> dict[str, Any]:
        """The content of ``audit.json`` (a fresh copy: changing it leaves the result as it is)."""
        return copy.deepcopy({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditResult:
        """Read back what :meth:`to_dict` gave (e.g. ``io.read_json(out / "audit.json")``)."""
        from dataclasses import MISSING

        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"not an audit result: missing {missing}; read an audit.json written by run_audit")
        return cls(**copy.deepcopy({f.name: d[f.name] for f in fields(cls) if f.name in d}))


@dataclass(frozen=True)
class _Claim:
    """What a folder's results depend on (saved as ``audit_config.json``)."""

    audit: dict
    model: dict
    severity: dict


def _check_specs(specs: Sequence[PromptSpec], cfg: AuditConfig | None = None) -> None:
    if not specs:
        raise ValueError("no prompts to audit: give at least one PromptSpec (a manifest with one line per prompt)")
    keys = [s.key for s in specs]
    dup = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"prompt keys must be unique, repeated: {dup[:5]}; give each prompt its own key")
    for s in specs:
        if not isinstance(s, PromptSpec):
            raise ValueError(f"expected PromptSpec objects, got {type(s).__name__}")
    if cfg is not None and cfg.decompose_against == "training":
        blind = [str(s.key) for s in specs if s.image is None]
        if blind:
            raise ValueError(
                f"decompose_against='training' (--decompose-against training) needs every prompt's training image; "
                f"{len(blind)} prompt(s) have none (e.g. {blind[:3]}): give their images in the manifest, or use "
                "--decompose-against final (each seed's own final sample), or leave it unset"
            )


def _model_info(model: GuidedModel) -> dict:
    describe = getattr(model, "to_dict", None)
    info = describe() if callable(describe) else {"kind": type(model).__name__}
    return {**info, "latent_shape": list(model.latent_shape), "T": model.schedule.T}


def _audit_prompt(
    model: GuidedModel,
    spec: PromptSpec,
    cfg: AuditConfig,
    ks: list[int],
    seeds: list[int],
    severity: Severity,
    out: Path,
) -> dict:
    t0 = time.time()
    has_image = spec.image is not None
    x = model.encode(spec.image[None].float())[0].double() if spec.image is not None else None
    path = out / "trajectories" / f"{spec.key}.safetensors" if cfg.save_trajectories else None
    traj = record(model, spec.prompt, seeds, ks, cfg.guidance, path)
    t_rec = time.time() - t0
    stats = analysis.analyze(
        traj,
        x,
        cfg.first_steps,
        cfg.resolved_converge_step,
        early_fraction=cfg.early_fraction,
        reference_curves=cfg.reference_curves,
        decompose_against=cfg.decompose_against,
    )
    pixels = model.decode(traj.x_final.float())
    fid_fn = getattr(model, "fidelity", None)

    def score(px: Any) -> tuple[list | None, list]:
        sv = np.asarray(severity(px, spec.image), dtype=np.float64).tolist() if spec.image is not None else None
        fd = np.asarray(fid_fn(spec.prompt, px), dtype=np.float64) if callable(fid_fn) else np.full(len(seeds), np.nan)
        return sv, fd.tolist()

    sev, fid = score(pixels)
    t_an = time.time() - t0 - t_rec
    mit: dict[str, dict[str, Any]] = {"constant": {"severity": sev, "fidelity": fid}}
    if cfg.mitigation and has_image:  # without a training image there is no severity to lower
        tr = transition_steps(cfg.steps, cfg.mitigation_transition)
        for sched, early in (
            ("conditional_only", 1.0),
            ("no_early_guidance", cfg.mitigation_early_scale),
            ("negative_early_guidance", cfg.mitigation_negative_scale),
        ):
            scales = guidance_schedule(sched, cfg.guidance, cfg.steps, tr, early)
            px = model.decode(sample_final(model, spec.prompt, seeds, ks, scales).float())
            sv, fd = score(px)
            mit[sched] = {"severity": sv, "fidelity": fd}
    t_mit = time.time() - t0 - t_rec - t_an
    curves = stats.pop("curves")
    fid_arr = np.asarray(fid, dtype=np.float64)
    return {
        "key": spec.key,
        "prompt": spec.prompt,
        "label": spec.label,
        "group": spec.group,
        "has_image": has_image,
        "severity": float(np.mean(sev)) if sev is not None else None,
        "severity_per_seed": sev,
        "copy_rate": float((np.asarray(sev) >= severity.threshold).mean()) if sev is not None else None,
        "fidelity": float(np.nanmean(fid_arr)) if np.isfinite(fid_arr).any() else None,
        **stats,
        "curves": curves,
        "mitigation": mit,
        "seconds": {"record": t_rec, "analysis": t_an, "mitigation": t_mit},
    }


def _value(p: dict, name: str) -> float:
    v = p.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _summary(prompts: list[dict], by: str = "label") -> dict[str, dict]:
    out = {}
    names = [lab for lab in (*LABELS, None) if any(p["label"] == lab for p in prompts)]
    if by != "label":
        names = list(dict.fromkeys(p.get(by) for p in prompts))
    for lab in names:
        ps = [p for p in prompts if p.get(by) == lab]
        row: dict[str, Any] = {"prompts": len(ps)}
        for name in SUMMARY:
            vals = np.array([_value(p, name) for p in ps], dtype=np.float64)
            row[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        out[lab or ("unlabelled" if by == "label" else "ungrouped")] = row
    return out


def _label_summary(prompts: list[dict]) -> dict[str, dict]:
    return _summary(prompts, "label")


def _mean_curves(prompts: list[dict]) -> dict[str, dict[str, list]]:
    out = {}
    for lab in (*LABELS, None):
        ps = [p for p in prompts if p["label"] == lab]
        if not ps:
            continue
        row: dict[str, list] = {}
        for k in dict.fromkeys(k for p in ps for k in p["curves"]):
            if k == "k":
                continue
            have = [p["curves"][k] for p in ps if p["curves"].get(k) is not None]
            if have:
                arr = np.asarray([[np.nan if v is None else v for v in c] for c in have], dtype=np.float64)
                row[k] = [None if not np.isfinite(v) else float(v) for v in np.nanmean(arr, axis=0)]
        row["k"] = ps[0]["curves"]["k"]
        out[lab or "unlabelled"] = row
    return out


def _reference_curves_info(ks: list[int], model: GuidedModel) -> dict[str, Any]:
    ab = model.schedule.alphas_cumprod[ks].double().numpy()
    info: dict[str, Any] = {"k": list(ks), "alpha_bar": ab.tolist()}
    for kind in analysis.REFERENCE_CURVES:
        w0, wT = analysis.reference_curves(ab, kind)
        info[kind] = {"w0": w0.tolist(), "wT": wT.tolist()}
    s0, sT = analysis.reference_curves(ab, "sqrt_ab")
    e0, eT = analysis.reference_curves(ab, "ddim_exact")
    info["max_difference"] = {"w0": float(np.abs(s0 - e0).max()), "wT": float(np.abs(sT - eT).max())}
    return info


def run_audit(
    model: GuidedModel,
    specs: Sequence[PromptSpec],
    cfg: AuditConfig,
    out: str | Path,
    severity: Severity | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit every prompt of ``specs`` on ``model`` and write the results into the folder ``out``.

    Per prompt: record ``cfg.seeds`` guided DDIM trajectories (``cfg.steps`` steps, guidance
    ``cfg.guidance``), compute the statistics of :func:`~diffmem.audit.analysis.analyze`, score the
    final samples with ``severity`` and, with ``cfg.mitigation``, sample again under the guidance
    schedules of :mod:`~diffmem.audit.mitigation`. Across prompts: the detector table, the
    correlations with severity and the mitigation table. A prompt's result is written to
    ``out/prompts/<key>.json`` as soon as it is finished; a re-run with the same configuration reuses
    those files (a killed audit resumes with the prompt it was on) and gives the same result.

    Parameters
    ----------
    model : GuidedModel
        Conditional eps-prediction model: ``latent_shape`` (e.g. ``(1, 8, 8)``), ``schedule`` (a
        :class:`~diffmem.schedule.Schedule`), ``predict(x, t, prompt) -> (eps_c, eps_u)`` with ``x`` of
        shape ``(S, *latent_shape)`` and ``t`` of shape ``(S,)``, ``encode(pixels (N, C, H, W)) -> (N,
        *latent_shape)`` and ``decode`` back to pixels in [0, 1]. Optional: ``timesteps(steps)``,
        ``fidelity(prompt, pixels) -> (N,)`` and ``to_dict()``.
    specs : sequence of PromptSpec
        The prompts, each with its training image, shape ``(C, H, W)`` with values in [0, 1], its label
        (``"memorized"``, ``"partial"``, ``"normal"`` or None) and a unique ``key``.
    cfg : AuditConfig
        The audit's settings (validated here).
    out : str or Path
        Output folder: ``audit_config.json``, ``prompts/``, ``trajectories/``, ``audit.json``,
        ``figures/`` and ``report.html``. A folder holding another configuration is refused.
    severity : Severity, optional
        ``severity(pixels (N, C, H, W), image (C, H, W)) -> (N,)`` scores, a ``name`` and a copy
        ``threshold``. Default: :class:`~diffmem.audit.severity.PixelCosine` (cosine of mean-centred
        pixels, threshold 0.9).
    progress : bool
        Show a progress bar over the prompts.

    Returns
    -------
    AuditResult
        The aggregate; ``result.to_dict()`` is what ``out/audit.json`` holds.

    Raises
    ------
    ValueError
        An invalid configuration, no prompts or repeated keys, ``out`` holding another configuration,
        or a key whose saved prompt is another prompt.

    Examples
    --------
    >>> from diffmem.audit import AuditConfig, build_testbed, run_audit
    >>> model, specs = build_testbed("runs/audit/testbed")  # doctest: +SKIP
    >>> res = run_audit(model, specs, AuditConfig(seeds=4), "runs/audit")  # doctest: +SKIP
    >>> res.summary["memorized"]["overestimation_a"] > res.summary["normal"]["overestimation_a"]  # doctest: +SKIP
    True
    """
    from tqdm.auto import tqdm

    t_start = time.time()
    if not isinstance(cfg, AuditConfig):
        raise ValueError(f"cfg must be an AuditConfig, got {type(cfg).__name__}")
    cfg.validate()
    _check_specs(specs, cfg)
    severity = severity if severity is not None else PixelCosine()
    if not isinstance(severity, Severity):
        raise ValueError("severity must implement diffmem.audit.protocol.Severity (name, threshold, __call__)")
    out = Path(out)
    ks = model_timesteps(model, cfg.steps, cfg.spacing)
    seeds = prompt_seeds(cfg.seed, cfg.seeds)
    claim_folder(
        out,
        _Claim(to_dict(cfg), _model_info(model), {"name": severity.name, "threshold": float(severity.threshold)}),
        name="audit_config.json",
    )
    (out / "prompts").mkdir(parents=True, exist_ok=True)
    prompts: list[dict] = []
    computed = 0
    for spec in tqdm(specs, desc="audit", disable=not progress):
        path = out / "prompts" / f"{spec.key}.json"
        if path.exists():
            rec = io.read_json(path)
            if rec.get("prompt") != spec.prompt or rec.get("label") != spec.label:
                raise ValueError(
                    f"{path} holds prompt {rec.get('prompt')!r} (label {rec.get('label')!r}) but key {spec.key!r} "
                    f"now names {spec.prompt!r} (label {spec.label!r}); "
                    "give prompts stable unique keys or use a new --out folder"
                )
        else:
            rec = io.jsonable(_audit_prompt(model, spec, cfg, ks, seeds, severity, out))  # as read back on resume
            io.write_json(path, rec)
            computed += 1
        prompts.append(rec)
    return _aggregate(prompts, cfg, out, model, severity, ks, computed, t_start)


def _aggregate(
    prompts: list[dict],
    cfg: AuditConfig,
    out: Path,
    model: GuidedModel,
    severity: Severity,
    ks: list[int],
    computed: int,
    t_start: float,
) -> AuditResult:
    from .report import audit_figures, write_audit_html

    labels = [p["label"] for p in prompts]
    refs = [p.get("decomposition_reference") or "training" for p in prompts]
    final_only = all(r == "final" for r in refs)
    costs = detector_costs(
        cfg.steps, cfg.seeds, cfg.first_steps, cfg.resolved_converge_step, cfg.resolved_early_steps, final_only
    )
    scores = {name: [_value(p, name) for p in prompts] for name in DETECTORS}
    needs = {name: not final_only for name in ("D1", "D2", "D1_early", "D2_early")}
    sev = [p["severity"] for p in prompts]
    stats = {name: [_value(p, name) for p in prompts] for name in STATISTICS}
    t_an = time.time()

    def table(pos: tuple[str, ...], neg: tuple[str, ...]) -> dict:
        return roc_table(scores, labels, pos, neg, costs, n_boot=cfg.n_boot, seed=cfg.seed, needs_image=needs)

    mit = mitigation_table(prompts, severity.threshold) if cfg.mitigation else {}
    mit_groups = mitigation_table(prompts, severity.threshold, by="group") if cfg.mitigation else {}
    blind = [p["key"] for p in prompts if not p.get("has_image", True)]
    res = {
        "config": to_dict(cfg),
        "model": _model_info(model),
        "severity_metric": {"name": severity.name, "threshold": severity.threshold},
        "timesteps": ks,
        "seeds": prompt_seeds(cfg.seed, cfg.seeds),
        "summary": _label_summary(prompts),
        "detectors": table(("memorized",), ("normal",)),
        "detectors_with_partial": table(("memorized", "partial"), ("normal",)),
        "correlations": analysis.correlations(stats, sev, cfg.n_boot, cfg.seed),
        "mitigation": mit,
        "mean_curves": _mean_curves(prompts),
        "prompts": [{k: v for k, v in p.items() if k != "curves"} for p in prompts],
    }
    extra = {
        "summary_by_group": _summary(prompts, "group") if any(p.get("group") for p in prompts) else {},
        "detectors_partial_vs_normal": table(("partial",), ("normal",)),
        "detectors_memorized_vs_partial": table(("memorized",), ("partial",)),
        "correlations_within_label": analysis.correlations_by_group(stats, sev, labels, cfg.n_boot, cfg.seed),
        "mitigation_by_group": mit_groups,
        "mitigation_outcome": mitigation_outcome(mit_groups, cfg.mitigation_min_drop) if mit_groups else {},
        "decomposition": {
            "decompose_against": cfg.decompose_against,
            "reference_curves": cfg.reference_curves,
            "early_fraction": cfg.early_fraction,
            "early_steps": cfg.resolved_early_steps,
            "prompts_by_reference": {r: refs.count(r) for r in ("training", "final")},
            "prompts_without_image": blind,
            "note": (
                f"{len(blind)} prompt(s) had no training image: their D1/D2 are made against each seed's own "
                "final sample, and they have no severity"
                if blind
                else "every prompt had its training image"
            ),
        },
        "reference_curves": _reference_curves_info(ks, model),
    }
    res_all = {**res, **extra}
    t_fig = time.time()
    figs = audit_figures(res_all, prompts, out / "figures")
    write_audit_html(res_all, figs, out / "report.html")
    now = time.time()
    timings = {
        "prompts_computed": computed,
        "prompts_reused": len(prompts) - computed,
        "record_s": sum(p["seconds"]["record"] for p in prompts),
        "analysis_s": sum(p["seconds"]["analysis"] for p in prompts),
        "mitigation_s": sum(p["seconds"]["mitigation"] for p in prompts),
        "aggregate_s": t_fig - t_an,
        "figures_s": now - t_fig,
        "wall_s": now - t_start,
    }
    result = AuditResult(**io.jsonable({**res, "timings": timings, **extra}))
    io.write_json(out / "audit.json", result)
    return result


def load_trajectory(out: str | Path, key: str) -> Trajectory:
    """The recorded trajectory of prompt ``key`` in an audit folder."""
    return Trajectory.load(Path(out) / "trajectories" / f"{key}.safetensors")
