"""The dynamics study behind ``diffmem dynamics``: train over a range of n, evaluate every checkpoint,
extract tau_gen and tau_mem, fit the scaling, write ``results.json``, figures and ``report.html``.

Output folder::

    DIR/config.json          the resolved StudyConfig
    DIR/runs/n_00064/        one run folder per size (config.json, checkpoints/, metrics.jsonl, samples/)
    DIR/results.json         per-run curves and times, the fit, the collapse (DESIGN.md contract)
    DIR/figures/*.png        quality_fmem, collapse, losses, timescales, samples
    DIR/report.html          everything above in one self-contained file

Rerunning the same command resumes: finished training and evaluated checkpoints are skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import io, report
from .config import claim_folder, resolve_device, to_dict
from .dynamics import TimeRules, analyze
from .measure import EvalConfig
from .sweep import Job, run_jobs
from .training import TrainConfig, load_split

__all__ = ["StudyConfig", "run_study", "study_jobs", "write_outputs"]


@dataclass(frozen=True)
class StudyConfig:
    sizes: tuple[int, ...] = (32, 64, 128, 256)
    steps_per_n: float = 120.0  # each run trains for max(min_steps, steps_per_n * n) steps
    min_steps: int = 4000
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rules: TimeRules = field(default_factory=TimeRules)

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
        from .config import from_dict

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


def write_outputs(cfg: StudyConfig, out: Path, records: dict[int, list[dict]], elapsed: float | None = None) -> dict:
    """Analyse the evaluated runs and write results.json, the figures and report.html."""
    keep = ("step", "f_mem", "f_mem_ci", "quality", "quality_metric", "loss_train", "loss_test")
    runs = [(n, [{k: r[k] for k in keep if k in r} for r in recs]) for n, recs in records.items()]
    results = {"config": to_dict(cfg), **analyze(runs, cfg.rules)}
    for r in results["runs"]:
        r["run_dir"] = f"runs/n_{r['n']:05d}"
        r["steps"] = cfg.steps_for(r["n"])
    if elapsed is not None:
        results["elapsed_seconds"] = elapsed
    figs = report.dynamics_figures(results, out / "figures")
    figs["samples"] = _samples_figure(cfg, out, results)
    io.write_json(out / "results.json", results)
    report.write_html(results, figs, out / "report.html")
    return results


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
    cfg: StudyConfig, out: str | Path, *, workers: int | None = None, show_progress: bool = True, device: str = "cpu"
) -> dict:
    """Run (or resume) the whole study in ``out``; returns the results dictionary.

    ``device`` is where every run trains and samples (``"cuda"``, ``"auto"``...; checked before any work)."""
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
