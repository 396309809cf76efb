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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import io
from ..config import claim_folder, resolve_device, to_dict
from . import report
from .evaluate import EvalConfig
from .executor import Job, run_jobs
from .timescales import Analysis, Collapse, RunTimes, ScalingFit, TimeRules, analyze
from .training import TrainConfig, load_split

__all__ = ["StudyConfig", "StudyResult", "run_study", "study_jobs", "write_outputs"]


@dataclass(frozen=True)
class StudyConfig:
    """The whole study: one training run per size, all evaluated and analysed alike."""

    sizes: tuple[int, ...] = (32, 64, 128, 256)
    """Training-set sizes n."""
    steps_per_n: float = 120.0
    """Each run trains for max(min_steps, steps_per_n * n) steps."""
    min_steps: int = 4000
    """The least number of steps of any run."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings shared by every size (n and steps are set per run)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How each checkpoint is evaluated."""
    rules: TimeRules = field(default_factory=TimeRules)
    """How tau_gen and tau_mem are read off the curves."""

    def validate(self) -> None:
        if len(self.sizes) < 1 or any(int(n) != n or n < 2 for n in self.sizes):
            raise ValueError(f"sizes must be integers >= 2, got {self.sizes}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must be distinct, got {self.sizes}")
        if not self.steps_per_n > 0:
            raise ValueError(f"steps_per_n must be positive, got {self.steps_per_n}")
        self.eval.validate()
        self.rules.validate()

    def steps_for(self, n: int) -> int:
        return int(max(self.min_steps, round(self.steps_per_n * n)))

    def run_config(self, n: int) -> TrainConfig:
        return replace(self.train, n=int(n), steps=self.steps_for(n)).resolved()

    @classmethod
    def from_dict(cls, d: dict) -> StudyConfig:
        from ..config import from_dict

        return cls(
            sizes=tuple(d["sizes"]),
            steps_per_n=d["steps_per_n"],
            min_steps=d["min_steps"],
            train=from_dict(TrainConfig, d["train"]),
            eval=from_dict(EvalConfig, d["eval"]),
            rules=from_dict(TimeRules, d["rules"]),
        )


def study_jobs(cfg: StudyConfig, out: Path, device: str = "cpu") -> list[Job]:
    """One job per size, largest first (the longest runs start first, which balances the workers)."""
    jobs = []
    for n in sorted(cfg.sizes, reverse=True):
        jobs.append(Job(f"n={n}", cfg.run_config(n), cfg.eval, str(out / "runs" / f"n_{n:05d}"), device))
    return jobs


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` found; ``to_dict()`` is the content of ``results.json``."""

    config: StudyConfig
    """The resolved configuration of the study."""
    analysis: Analysis
    """Per-run times, the fits and the collapse."""
    elapsed_seconds: float | None = None
    """Wall time of the call that finished the study."""

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
        if self.elapsed_seconds is not None:
            out["elapsed_seconds"] = self.elapsed_seconds
        return out


def write_outputs(
    cfg: StudyConfig, out: Path, records: dict[int, list[dict]], elapsed: float | None = None
) -> StudyResult:
    """Analyse the evaluated runs and write results.json, the figures and report.html."""
    keep = ("step", "f_mem", "f_mem_ci", "quality", "quality_metric", "loss_train", "loss_test")
    runs = [(n, [{k: r[k] for k in keep if k in r} for r in recs]) for n, recs in records.items()]
    analysis = analyze(runs, cfg.rules)
    analysis = analysis.with_runs(
        [replace(r, run_dir=f"runs/n_{r.n:05d}", steps=cfg.steps_for(r.n)) for r in analysis.runs]
    )
    result = StudyResult(cfg, analysis, elapsed)
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
        rc = cfg.run_config(r["n"])
        sp = load_split(rc)
        step = r["curve"][-1]["step"]
        with np.load(out / r["run_dir"] / "samples" / f"step_{step:07d}.npz", allow_pickle=False) as f:
            x, near = f["samples"][:per_row], f["nearest"][:per_row]
        pix = sp.to_pixels(torch.from_numpy(x)).numpy()
        nearest = sp.to_pixels(sp.train[torch.from_numpy(near).long()]).numpy()
        rows.append((f"n={r['n']}\nstep {step}", pix, nearest))
    return report.sample_grid(
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
        same study is resumed; one that holds another configuration is refused.
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
    for n in cfg.sizes:  # fail fast on impossible sizes, before any work
        load_split(cfg.run_config(n))
    claim_folder(out, cfg)
    t0 = time.time()
    jobs = study_jobs(cfg, out, device)
    res = run_jobs(jobs, workers=workers, show_progress=show_progress)
    records = {j.train.n: res[j.name]["records"] for j in jobs}
    return write_outputs(cfg, out, records, time.time() - t0)
