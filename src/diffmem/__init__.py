"""diffmem: measure, explain and predict memorization in diffusion models.

The functions a user reaches for first are importable from here (they load lazily: ``import
diffmem`` imports neither torch nor numpy):

Noise schedules and samplers
    :func:`linear`, :func:`scaled_linear` (float64 ``alphas_cumprod``), :func:`ddim`, :func:`ddpm`
    (pure functions of a denoiser ``(x, t) -> eps``), :func:`guided` and :func:`cfg_mix`
    (classifier-free guidance ``eps_u + g (eps_c - eps_u)``).
Metrics
    :func:`memorization_fraction` (the nearest / second-nearest ratio test with a bootstrap
    interval), :func:`frechet` (Fréchet distance in a stated feature space).
Training dynamics (Bonnaire et al. 2025)
    :func:`run_study` with :class:`StudyConfig` (train over a range of n, read off tau_gen and
    tau_mem, fit their scaling), :func:`analyze` (the same on curves you measured).
Random-features theory
    :func:`spectral_density` (eigenvalue density of U, Theorem 3.1), :func:`rf_constants`.
Guided-sampling audit (Kim et al. 2025)
    :func:`run_audit` with :class:`AuditConfig`, :func:`build_testbed`.
Stop in time
    :class:`MemorizationMonitor` with :class:`MonitorConfig` (watch any training loop, warn,
    keep the last checkpoint before the onset of memorization, or stop).

Example
-------
>>> import diffmem
>>> s = diffmem.linear(1000, 1e-4, 2e-2)
>>> s.T
1000

The command line is ``diffmem`` (``diffmem --help``); the submodules :mod:`diffmem.dynamics`,
:mod:`diffmem.theory` and :mod:`diffmem.audit` hold the rest.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_WHERE = {
    "diffmem.schedule": ["Schedule", "linear", "scaled_linear"],
    "diffmem.sampling": ["cfg_mix", "ddim", "ddpm", "guided"],
    "diffmem.metrics": ["MemorizationFraction", "frechet", "memorization_fraction"],
    "diffmem.dynamics.study": ["StudyConfig", "StudyResult", "run_study"],
    "diffmem.dynamics.timescales": ["TimeRules", "analyze"],
    "diffmem.theory.spectrum": ["spectral_density"],
    "diffmem.theory.constants": ["rf_constants"],
    "diffmem.audit.run": ["AuditConfig", "AuditResult", "run_audit"],
    "diffmem.audit.testbed": ["build_testbed"],
    "diffmem.monitor": ["MemorizationMonitor", "MonitorConfig"],
    "diffmem.external": ["MeasureConfig", "measure_model"],
    "diffmem.dynamics.predict": ["Prediction", "predict"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
