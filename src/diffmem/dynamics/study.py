"""The dynamics study behind ``diffmem dynamics``: train over a range of n, evaluate every checkpoint,
extract tau_gen and tau_mem, fit the scaling, write ``results.json``, figures and ``report.html``.

Output folder::

    DIR/config.json          the resolved StudyConfig
    DIR/runs/n_00064/        one run folder per size (config.json, checkpoints/, metrics.jsonl, samples/)
    DIR/results.json         per-run curves and times, the fit, the collapse (see docs/dynamics.md)
    DIR/figures/*.png        quality_fmem, collapse, losses, timescales, samples
    DIR/report.html          everything above in one self-contained file

Rerunning the same command resumes: finished training and evaluated checkpoints are skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import io
from ..config import claim_folder, resolve_device, to_dict
from ..figures import sample_grid
from ..validation import Each, Integer, Interval, Optional, check
from . import report
from .evaluate import EvalConfig
from .executor import Job, run_jobs
from .timescales import (
    Analysis,
    Collapse,
    CollapseFit,
    RunSamples,
    RunTimes,
    ScalingFit,
    TimeRules,
    analyze,
    collapse_fit,
    fit_scaling,
    tau_mem,
)
from .training import ADDED_SETTINGS, TrainConfig, load_split

__all__ = ["PRESETS", "ByK", "StudyConfig", "StudyResult", "check_sizes", "run_study", "study_jobs", "write_outputs"]


QUICK_DRAWS = 16
"""Noise draws per example per step of the studies' default training (full batches of n examples, each
drawn 16 times: 256 to 2048 rows per step at n = 16 to 128)."""


@dataclass(frozen=True)
class StudyConfig:
    """The whole study: one training run per size, all evaluated and analysed alike."""

    sizes: tuple[int, ...] = (16, 32, 64, 128)
    """Training-set sizes n."""
    steps_per_n: float = 40.0
    """Each run trains for max(min_steps, steps_per_n * n) steps."""
    min_steps: int = 2000
    """The least number of steps of any run."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(draws=QUICK_DRAWS))
    """Training settings shared by every size (n and steps are set per run); the study's default takes
    every example 16 times per step (``draws``, docs/dynamics.md "What sets the two clocks")."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How each checkpoint is evaluated."""
    rules: TimeRules = field(default_factory=TimeRules)
    """How tau_gen and tau_mem are read off the curves."""
    subsets: int = 1
    """Disjoint training subsets per size, each its own run (trained together as one vectorized ensemble
    unless the ensemble is turned off)."""
    ensemble: bool = True
    """Train the subsets of a size as one vectorized ensemble (one job per size); False: one job per run,
    which keeps every worker busy when the largest size dominates the time (the runs are the same)."""
    ks: tuple[float, ...] = (0.25, 1 / 3, 0.5)
    """Ratio thresholds k at which tau_mem and its exponent are also reported (from the same samples)."""
    collapse_levels: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    """f_mem levels whose crossing times give the collapse exponent alpha (those every run reaches)."""
    max_steps_per_n: float | None = 160.0
    """Runs not yet memorizing are extended (budget doubled) up to max(min_steps, this * n) (never if <= steps_per_n)"""
    until_f_mem: float = 0.0
    """Besides reaching tau_mem, a run is extended until f_mem at its last checkpoint reaches this level."""

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting the study cannot use (the training, evaluation and rules included)."""
        check(
            self,
            {
                "sizes": Each(Integer(min=2), text="be integers >= 2"),
                "steps_per_n": Interval(0),
                "min_steps": Integer(min=1),
                "subsets": Integer(min=1),
                "ks": Each(Interval(0, 1), each="k"),
                "collapse_levels": Each(Interval(0, 1), each="collapse level"),
                "max_steps_per_n": Optional(Interval(0, hint="set it to steps_per_n to never extend")),
                "until_f_mem": Interval(0, 1, closed="left"),
            },
        )
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must be distinct, got {self.sizes}")
        self.eval.validate()
        self.rules.validate()

    def steps_for(self, n: int) -> int:
        return int(max(self.min_steps, round(self.steps_per_n * n)))

    def max_steps_for(self, n: int) -> int:
        """The largest budget a run of size n may be extended to."""
        if self.max_steps_per_n is None:
            return self.steps_for(n)
        return int(max(self.steps_for(n), round(self.max_steps_per_n * n)))

    def run_config(self, n: int, subset: int = 0) -> TrainConfig:
        """The resolved configuration of the run of size ``n`` on training subset ``subset`` (its first
        budget; an extended run's ``config.json`` holds a larger ``steps``)."""
        steps = self.steps_for(n)
        return replace(self.train, n=int(n), steps=steps, budget_base=steps, subset_index=int(subset)).resolved()

    def run_dir(self, n: int, subset: int = 0) -> str:
        """The run's folder relative to the study folder: ``runs/n_00064`` (``runs/n_00064_s1`` with subsets)."""
        return f"runs/n_{n:05d}" if self.subsets == 1 else f"runs/n_{n:05d}_s{subset}"

    @classmethod
    def from_dict(cls, d: dict) -> StudyConfig:
        from ..config import from_dict

        nested = {"train": TrainConfig, "eval": EvalConfig, "rules": TimeRules}
        return from_dict(cls, {k: from_dict(nested[k], v) if k in nested else v for k, v in d.items()})


PRESETS: dict[str, StudyConfig] = {
    # the quick default: 4 sizes spanning 8x, one subset each, full batches with every example drawn
    # 16 times per step, 40 n steps (about 10 minutes on 2 cores; docs/dynamics.md)
    "quick": StudyConfig(),
    # into the memorization regime: the same training, 2 disjoint subsets per size, model space
    # 4 (pixels - mean), 100 n steps and 40 checkpoints; a run short of f_mem = 0.5 is extended to 160 n;
    # one job per run (the two n = 128 runs take most of the time: one per core)
    "full": StudyConfig(
        subsets=2,
        ensemble=False,
        steps_per_n=100.0,
        max_steps_per_n=160.0,
        until_f_mem=0.5,
        train=TrainConfig(scale=4.0, checkpoints=40, draws=QUICK_DRAWS),
    ),
}
"""Named studies for ``diffmem dynamics --preset NAME``; flags given on the command line override them."""


ANALYSIS_ONLY = ("rules", "ks", "collapse_levels")
"""StudyConfig fields that only change the analysis: a folder may be re-analysed with other values."""


def study_jobs(cfg: StudyConfig, out: Path, device: str = "cpu") -> list[Job]:
    """One job per size, largest first (the longest runs start first, which balances the workers);
    the subsets of a size are trained together as one vectorized ensemble, or with ``ensemble=False``
    each as a job of its own (largest size first, then subset)."""
    sizes = sorted(cfg.sizes, reverse=True)
    if cfg.ensemble or cfg.subsets == 1:
        groups = [(f"n={n}", n, tuple(range(cfg.subsets))) for n in sizes]
    else:
        groups = [(f"n={n} s{s}", n, (s,)) for n in sizes for s in range(cfg.subsets)]
    return [
        Job(
            name,
            tuple(cfg.run_config(n, s) for s in subsets),
            cfg.eval,
            tuple(str(out / cfg.run_dir(n, s)) for s in subsets),
            device,
            group_dir=str(out / "runs" / f"n_{n:05d}_ensemble") if len(subsets) > 1 else None,
            max_steps=cfg.max_steps_for(n),
            until_f_mem=cfg.until_f_mem,
            rules=cfg.rules,
        )
        for name, n, subsets in groups
    ]


def check_sizes(cfg: StudyConfig) -> None:
    """Fail before any work when a size or the number of subsets asks for more data than there is."""
    from .. import data

    for n in cfg.sizes:
        load_split(cfg.run_config(n))  # n itself against the data (its own message)
    rc = cfg.run_config(max(cfg.sizes))
    n_images = len(data.load(rc.data, key=rc.data_key, size=rc.image_size))
    pool = n_images - (rc.n_test if rc.n_test is not None else data.default_n_test(n_images))
    need = cfg.subsets * max(cfg.sizes)
    if need > pool:
        raise ValueError(
            f"--subsets {cfg.subsets} needs {need} training examples at n = {max(cfg.sizes)}, but the data hold "
            f"{pool} outside the held-out set; use --subsets {max(1, pool // max(cfg.sizes))} or smaller --sizes"
        )


@dataclass(frozen=True)
class ByK:
    """tau_mem of every run and its scaling at one ratio threshold k, from the same samples."""

    k: float
    tau_mem: tuple[float | None, ...]
    """Per run, in the order of ``StudyResult.runs``."""
    fit: ScalingFit

    def to_dict(self) -> dict:
        return {"k": self.k, "tau_mem": list(self.tau_mem), **self.fit.to_dict()}


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` found; ``to_dict()`` is the content of ``results.json``."""

    config: StudyConfig
    """The resolved configuration of the study."""
    analysis: Analysis
    """Per-run times, the fits and the normalised-curve spreads."""
    collapse_fit: CollapseFit | None = None
    """The exponent alpha for which the f_mem curves coincide against tau / n^alpha."""
    by_k: tuple[ByK, ...] = ()
    """tau_mem and its exponent at each ratio threshold k of the configuration."""
    elapsed_seconds: float | None = None
    """Wall time of the call that finished the study."""
    collapse_excess: CollapseFit | None = None
    """The same collapse against (tau - tau_gen) / n^alpha, each run's tau_gen subtracted."""

    @property
    def runs(self) -> tuple[RunTimes, ...]:
        return self.analysis.runs

    @property
    def fit(self) -> ScalingFit:
        return self.analysis.fit

    @property
    def tau_gen_fit(self) -> ScalingFit:
        return self.analysis.tau_gen_fit

    @property
    def tau_gen_spread(self) -> float | None:
        return self.analysis.tau_gen_spread

    @property
    def collapse(self) -> Collapse:
        return self.analysis.collapse

    def to_dict(self) -> dict:
        out = {"config": to_dict(self.config), **self.analysis.to_dict()}
        if self.collapse_fit is not None:
            out["collapse"] = {**out["collapse"], **self.collapse_fit.to_dict()}
        if self.collapse_excess is not None:
            out["collapse"]["excess"] = self.collapse_excess.to_dict()
        if self.by_k:
            out["by_k"] = {f"{b.k:.4g}": b.to_dict() for b in self.by_k}
        if self.elapsed_seconds is not None:
            out["elapsed_seconds"] = self.elapsed_seconds
        return out


def _run_samples(cfg: StudyConfig, out: Path, run: RunTimes) -> RunSamples:
    """Every sample's distance ratio at every checkpoint of one run, from its ``samples/*.npz``."""
    steps, ratios = [], []
    for c in run.curve:
        with np.load(
            out / cfg.run_dir(run.n, run.subset) / "samples" / f"step_{c['step']:07d}.npz", allow_pickle=False
        ) as f:
            ratios.append(f["ratios"])
        steps.append(c["step"])
    return RunSamples(run.n, run.subset, np.asarray(steps, dtype=np.float64), np.stack(ratios))


def _by_k(cfg: StudyConfig, samples: list[RunSamples]) -> tuple[ByK, ...]:
    from ..metrics.memorization import bootstrap_mean_ci

    out = []
    for k in cfg.ks:
        taus = []
        for rs in samples:
            mem = (rs.ratios < k).astype(np.float64)
            lo = [bootstrap_mean_ci(m, cfg.eval.n_boot, seed=cfg.eval.seed)[0] for m in mem]
            taus.append(tau_mem(rs.steps.tolist(), lo, cfg.rules))
        out.append(ByK(float(k), tuple(taus), fit_scaling([rs.n for rs in samples], taus)))
    return tuple(out)


def annotate_runs(cfg: StudyConfig, out: Path, runs: Sequence[RunTimes]) -> list[RunTimes]:
    """Each run with its folder, the budget it used, and a statement of what happened: which times
    were reached, and for a run without tau_mem the steps it would need and what to change."""
    reached = [r for r in runs if r.tau_mem is not None]
    est = fit_scaling([r.n for r in reached], [r.tau_mem for r in reached], min_sizes=2)
    out_runs = []
    for r in runs:
        folder = cfg.run_dir(r.n, r.subset)
        cfg_path = out / folder / "config.json"
        steps = int(io.read_json(cfg_path)["steps"]) if cfg_path.exists() else cfg.steps_for(r.n)
        max_steps = cfg.max_steps_for(r.n)
        extended = f" (extended from {cfg.steps_for(r.n)})" if steps > cfg.steps_for(r.n) else ""
        needed: float | None = None
        parts = []
        if r.tau_mem is not None:
            parts.append(f"tau_mem reached at {r.tau_mem:.4g} of {steps} steps{extended}")
        else:
            lo = r.curve[-1]["f_mem_ci"][0] if r.curve else float("nan")
            last = "its largest budget" if steps >= max_steps else f"{steps} of at most {max_steps} steps"
            parts.append(
                f"tau_mem NOT reached within {steps} steps = {steps / r.n:.0f} n ({last}{extended}; "
                f"lower bound of f_mem at the end {lo:.3f} < {cfg.rules.mem_threshold})"
            )
            if est.exponent is not None and est.prefactor is not None:
                needed = est.prefactor * r.n**est.exponent
                how = f"tau_mem ~ {est.prefactor:.3g} n^{est.exponent:.2f} from the sizes that memorized"
            elif est.tau_mem_over_n is not None:
                needed = est.tau_mem_over_n * r.n
                how = f"tau_mem/n = {est.tau_mem_over_n:.3g} at the one size that memorized, taken as constant"
            if needed is not None and needed > steps:
                parts.append(
                    f"about {needed:.3g} steps would be needed ({how}): "
                    f"use --max-steps-per-n {math.ceil(1.5 * needed / r.n)}"
                )
            elif needed is not None:
                parts.append(
                    f"the sizes that memorized predict {needed:.3g} steps ({how}), fewer than this run trained: "
                    "it memorizes later than they predict; give at least "
                    f"--max-steps-per-n {math.ceil(2 * steps / r.n)}"
                )
                needed = None
            else:
                parts.append(
                    "no size memorized, so no estimate: give a larger --max-steps-per-n, or make memorization "
                    "faster with a larger --scale, a wider model (--width) or smaller --sizes"
                )
        if r.tau_gen is None:
            parts.append("tau_gen NOT reached: the quality did not settle within the budget")
        out_runs.append(
            replace(r, run_dir=folder, steps=steps, max_steps=max_steps, status="; ".join(parts), steps_needed=needed)
        )
    return out_runs


def write_outputs(
    cfg: StudyConfig,
    out: Path,
    records: dict[tuple[int, int], list[dict]],
    elapsed: float | None = None,
) -> StudyResult:
    """Analyse the evaluated runs (records keyed by (n, subset)) and write results.json, the figures
    and report.html."""
    keep = ("step", "f_mem", "f_mem_ci", "quality", "quality_metric", "loss_train", "loss_test")
    keys = list(records)
    runs = [(n, [{k: r[k] for k in keep if k in r} for r in records[(n, s)]]) for n, s in keys]
    analysis = analyze(runs, cfg.rules, subsets=[s for _, s in keys])
    analysis = analysis.with_runs(annotate_runs(cfg, out, analysis.runs))
    samples = [_run_samples(cfg, out, r) for r in analysis.runs]
    col, col_excess = (
        collapse_fit(
            samples,
            cfg.eval.k,
            cfg.collapse_levels,
            persist=cfg.rules.persist,
            n_boot=cfg.eval.n_boot,
            seed=cfg.eval.seed,
            offsets=offsets,
        )
        for offsets in (None, [r.tau_gen for r in analysis.runs])
    )
    result = StudyResult(cfg, analysis, col, _by_k(cfg, samples), elapsed, col_excess)
    results = result.to_dict()
    figs = report.dynamics_figures(results, out / "figures")
    figs["samples"] = _samples_figure(cfg, out, results)
    io.write_json(out / "results.json", results)
    report.write_html(results, figs, out / "report.html")
    return result


def _samples_figure(cfg: StudyConfig, out: Path, results: dict, per_row: int = 10) -> Path:
    import torch

    rows = []
    for r in results["runs"]:
        if r["subset"] != 0:  # one row per size
            continue
        rc = cfg.run_config(r["n"], r["subset"])
        sp = load_split(rc)
        step = r["curve"][-1]["step"]
        with np.load(out / r["run_dir"] / "samples" / f"step_{step:07d}.npz", allow_pickle=False) as f:
            x, near = f["samples"][:per_row], f["nearest"][:per_row]
        pix = sp.to_pixels(torch.from_numpy(x)).numpy()
        nearest = sp.to_pixels(sp.train[torch.from_numpy(near).long()]).numpy()
        rows.append((f"n={r['n']}\nstep {step}", pix, nearest))
    return sample_grid(
        rows, out / "figures" / "samples.png", "Late samples (top) and their nearest training images (bottom)"
    )


def run_study(
    cfg: StudyConfig | None = None,
    out: str | Path = "runs/dynamics",
    *,
    workers: int | None = None,
    show_progress: bool = True,
    device: str = "cpu",
) -> StudyResult:
    """Run (or resume) the training-dynamics study in ``out``: train one denoiser per size, evaluate
    every checkpoint, read tau_gen and tau_mem off the curves and fit their scaling with n.

    Parameters
    ----------
    cfg : StudyConfig, optional
        The study (default: ``StudyConfig()``, the quick study on the embedded digits).
    out : str or Path
        Output folder. It gets ``config.json``, ``runs/n_XXXXX/`` (one run folder per size),
        ``results.json``, ``figures/*.png`` and ``report.html``. A folder that already holds the
        same study is resumed; one that holds another configuration is refused, except when only the
        analysis settings differ (``rules``, ``ks``, ``collapse_levels``): then the finished runs are
        kept and analysed again with the new ones.
    workers : int, optional
        Parallel processes (default: one per core, at most one per size).
    show_progress : bool
        One progress bar per run.
    device : str
        Where every run trains and samples: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
        ``"auto"`` (checked before any work).

    Returns
    -------
    StudyResult
        Frozen; ``result.runs[i].tau_mem``, ``result.fit.exponent``...; ``to_dict()`` is ``results.json``.

    Examples
    --------
    >>> from diffmem.dynamics import StudyConfig, run_study
    >>> cfg = StudyConfig(sizes=(32, 64), steps_per_n=20, min_steps=500)
    >>> res = run_study(cfg, "runs/small")  # doctest: +SKIP
    >>> res.fit.exponent  # doctest: +SKIP
    """
    cfg = cfg if cfg is not None else StudyConfig()
    cfg.validate()
    device = str(resolve_device(device))
    out = Path(out)
    check_sizes(cfg)  # fail fast on impossible sizes, before any work
    claim_folder(out, cfg, analysis_only=ANALYSIS_ONLY, absent_means={"ensemble": True, "train": ADDED_SETTINGS})
    t0 = time.time()
    jobs = study_jobs(cfg, out, device)
    res = run_jobs(jobs, workers=workers, show_progress=show_progress)
    records = {(c.n, c.subset_index): recs for j in jobs for c, recs in zip(j.train, res[j.name]["records"])}
    return write_outputs(cfg, out, records, time.time() - t0)
