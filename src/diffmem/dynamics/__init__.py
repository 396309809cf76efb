"""The training-dynamics study (Bonnaire et al. 2025): train denoisers on n examples, follow quality,
memorization fraction and losses over training time, read off tau_gen and tau_mem, fit their scaling.

Modules, in the order data flows through them:

* :mod:`~diffmem.dynamics.training` — one training run: :class:`TrainConfig`, :func:`train` (log-spaced
  checkpoints, exact resume);
* :mod:`~diffmem.dynamics.evaluate` — every checkpoint of a run: :class:`EvalConfig`, :func:`measure`
  (samples, f_mem with its bootstrap interval, quality, losses at fixed t into ``metrics.jsonl``);
* :mod:`~diffmem.dynamics.timescales` — curves to times: :class:`TimeRules`, :func:`analyze`,
  :func:`fit_scaling`;
* :mod:`~diffmem.dynamics.executor` — many runs on local worker processes;
* :mod:`~diffmem.dynamics.study` — the whole study: :class:`StudyConfig`, :func:`run_study`;
* :mod:`~diffmem.dynamics.report` — figures and ``report.html``;
* :mod:`~diffmem.dynamics.cli` — ``diffmem dynamics | train | sample`` and ``diffmem measure`` on a run folder.

Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_WHERE = {
    ".training": [
        "TrainConfig",
        "build_model",
        "checkpoint_steps",
        "list_checkpoints",
        "load_checkpoint",
        "load_split",
        "train",
    ],
    ".evaluate": ["EvalConfig", "measure", "sample_checkpoint"],
    ".timescales": [
        "Analysis",
        "Collapse",
        "RunTimes",
        "ScalingFit",
        "TimeRules",
        "analyze",
        "analyze_run",
        "collapse",
        "fit_scaling",
        "tau_gen",
        "tau_mem",
        "tau_test_min",
    ],
    ".executor": ["Job", "run_jobs"],
    ".study": ["StudyConfig", "StudyResult", "run_study"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
