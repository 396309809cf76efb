"""From evaluated checkpoints to timescales: tau_gen, tau_mem, the scaling fit and the collapse.

The paper reads both times off its curves and gives no numeric rule. Ours (docs/dynamics.md):

* **tau_mem** — the first training time at which the *lower* end of the 95% bootstrap interval of
  f_mem reaches ``mem_threshold`` (default 0.01) and stays there at the next checkpoint too,
  interpolated linearly in log time between the two checkpoints that bracket the crossing. Using
  the lower bound means a handful of lucky near-copies among the samples cannot trigger it.
* **tau_gen** — the first training time at which the quality (a Fréchet distance: lower is better)
  comes within ``gen_fraction`` (default 10%) of its total improvement of its best value,
  ``q <= q_best + gen_fraction * (q_first - q_best)``, again interpolated in log time, where
  ``q_best`` is the best value over the whole run (so tau_gen does not depend on tau_mem).
* **scaling** — least squares of ``log tau_mem`` against ``log n``: exponent, its 95% confidence
  interval (Student t), R²; and ``tau_mem / n`` per run with its geometric mean.
* **collapse** — ``f_mem(tau) / f_mem(tau_max)`` interpolated on a common log grid: the mean spread
  (standard deviation across runs) against ``tau / n`` versus against ``tau``; a ratio below 1 means
  the curves collapse when time is rescaled by n.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..validation import Integer, Interval, check

__all__ = [
    "Analysis",
    "Collapse",
    "CollapseFit",
    "RunSamples",
    "RunTimes",
    "ScalingFit",
    "TimeRules",
    "alpha_from_level_times",
    "analyze",
    "analyze_run",
    "collapse",
    "collapse_fit",
    "excess_time",
    "fit_scaling",
    "level_times",
    "tau_gen",
    "tau_mem",
    "tau_test_min",
]


@dataclass(frozen=True)
class TimeRules:
    """The rules that turn curves into tau_gen and tau_mem (fixed before measuring; see docs/dynamics.md)."""

    mem_threshold: float = 0.01
    """tau_mem: the level the lower 95% bootstrap bound of f_mem must reach."""
    gen_fraction: float = 0.1
    """tau_gen: the quality must come within this fraction of its total improvement of its best value."""
    persist: int = 1
    """tau_mem: the crossing must hold for this many further checkpoints (where they exist)."""
    gen_smooth: int = 3
    """tau_gen: running median over this many consecutive (log-spaced) checkpoints before the rule (1: none)."""
    gen_before_mem: bool = True
    """tau_gen: take the best quality before tau_mem only (memorized samples can lower the distance again later)."""

    def validate(self) -> None:
        """Raise ``ValueError`` on a rule that cannot be applied."""
        check(
            self,
            {
                "mem_threshold": Interval(0, 1),
                "gen_fraction": Interval(0, 1),
                "persist": Integer(min=0),
                "gen_smooth": Integer(min=1, odd=True),
            },
        )


def _log_crossing(s0: float, s1: float, v0: float, v1: float, target: float) -> float:
    """Time where the value crosses ``target`` between (s0, v0) and (s1, v1), linear in log time."""
    if v1 == v0:
        return float(s1)
    frac = min(1.0, max(0.0, (target - v0) / (v1 - v0)))
    return float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))


def _first_crossing(values: Sequence[float], ok: Callable[[float], bool], persist: int) -> int | None:
    """Index of the first value where ``ok`` holds, there and at the next ``persist`` values (None if never)."""
    values = list(values)
    for j, v in enumerate(values):
        if ok(v) and all(ok(w) for w in values[j + 1 : j + 1 + persist]):
            return j
    return None


def tau_mem(steps: Sequence[float], f_mem_lo: Sequence[float], rules: TimeRules = TimeRules()) -> float | None:
    """First time the lower bootstrap bound of f_mem reaches the threshold (None if never)."""
    j = _first_crossing(f_mem_lo, lambda v: v >= rules.mem_threshold, rules.persist)
    if j is None:
        return None
    if j == 0:
        return float(steps[0])
    return _log_crossing(steps[j - 1], steps[j], f_mem_lo[j - 1], f_mem_lo[j], rules.mem_threshold)


def tau_gen(
    steps: Sequence[float], quality: Sequence[float], rules: TimeRules = TimeRules(), until: float | None = None
) -> float | None:
    """First time the quality comes within ``gen_fraction`` of its improvement of its best value."""
    s = np.asarray(steps, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(q)
    s, q = s[ok], q[ok]
    if s.size < 2:
        return None
    q = running_median(q, rules.gen_smooth)
    window = s <= until if until is not None and np.any(s <= until) else np.ones_like(s, dtype=bool)
    q_best = float(q[window].min())
    target = q_best + rules.gen_fraction * (float(q[0]) - q_best)
    if q[0] <= target:
        return float(s[0])
    j = _first_crossing(q.tolist(), lambda v: v <= target, 0)
    return _log_crossing(s[j - 1], s[j], q[j - 1], q[j], target) if j else None


def running_median(values: np.ndarray, width: int) -> np.ndarray:
    """Median over a centred window of ``width`` (odd) points; the window shrinks at the ends.

    >>> running_median(np.array([5.0, 1.0, 9.0, 2.0, 2.0]), 3).tolist()
    [3.0, 5.0, 2.0, 2.0, 2.0]
    """
    v = np.asarray(values, dtype=np.float64)
    if width <= 1:
        return v
    h = width // 2
    return np.array([np.median(v[max(0, i - h) : i + h + 1]) for i in range(v.size)])


def tau_test_min(steps: Sequence[float], loss_test: Sequence[float]) -> float | None:
    """Time of the minimum test loss at fixed t (after it the test loss rises)."""
    if len(steps) == 0:
        return None
    return float(np.asarray(steps)[int(np.nanargmin(np.asarray(loss_test, dtype=np.float64)))])


@dataclass(frozen=True)
class ScalingFit:
    """``log tau = log prefactor + exponent * log n``, least squares over the runs where tau was reached."""

    exponent: float | None
    """The fitted exponent (None with fewer than two distinct sizes)."""
    exponent_ci: tuple[float | None, float | None]
    """Its 95% confidence interval (Student t; needs at least three points)."""
    r2: float | None
    """Coefficient of determination of the log-log fit."""
    prefactor: float | None
    """``exp(intercept)``: tau at n = 1."""
    points: int
    """How many runs entered the fit."""
    tau_mem_over_n: float | None
    """Geometric mean of tau / n over those runs."""
    tau_mem_over_n_each: tuple[float, ...]
    """tau / n of each of those runs."""

    def to_dict(self) -> dict:
        return {
            "exponent": self.exponent,
            "exponent_ci": list(self.exponent_ci),
            "r2": self.r2,
            "prefactor": self.prefactor,
            "points": self.points,
            "tau_mem_over_n": self.tau_mem_over_n,
            "tau_mem_over_n_each": list(self.tau_mem_over_n_each),
        }


def fit_scaling(
    ns: Sequence[float], taus: Sequence[float | None], level: float = 0.95, min_sizes: int = 3
) -> ScalingFit:
    """Fit ``log tau = c + exponent * log n`` by least squares over the runs where tau was reached.

    No exponent (None) unless the time was reached at ``min_sizes`` distinct sizes or more: a
    line through two sizes has no interval and is not presented as a result.

    Parameters
    ----------
    ns : sequence of float
        Training-set sizes.
    taus : sequence of float or None
        The time of each run (None or <= 0 where it was not reached: left out of the fit).
    level : float
        Confidence level of ``exponent_ci``.
    min_sizes : int
        The fewest distinct sizes that give an exponent.

    Returns
    -------
    ScalingFit

    Examples
    --------
    >>> fit = fit_scaling([32, 64, 128], [3200.0, 6400.0, 12800.0])
    >>> round(fit.exponent, 6), round(fit.tau_mem_over_n, 6)
    (1.0, 100.0)
    """
    from scipy import stats

    pairs = [(float(n), float(t)) for n, t in zip(ns, taus) if t is not None and t > 0]
    ratios = tuple(t / n for n, t in pairs)
    over_n = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    if len(pairs) < 2 or len({n for n, _ in pairs}) < max(2, min_sizes):
        return ScalingFit(None, (None, None), None, None, len(pairs), over_n, ratios)
    x = np.log([n for n, _ in pairs])
    y = np.log([t for _, t in pairs])
    res = stats.linregress(x, y)
    ci: tuple[float | None, float | None] = (None, None)
    if len(pairs) > 2:
        h = float(stats.t.ppf(0.5 + level / 2, len(pairs) - 2)) * float(res.stderr)
        ci = (float(res.slope - h), float(res.slope + h))
    r2 = float(res.rvalue**2) if len(pairs) > 2 else 1.0
    return ScalingFit(float(res.slope), ci, r2, float(np.exp(res.intercept)), len(pairs), over_n, ratios)


def _normalized(curve: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([c["step"] for c in curve], dtype=np.float64)
    f = np.array([c["f_mem"] for c in curve], dtype=np.float64)
    return s, (f / f[-1] if f[-1] > 0 else np.full_like(f, np.nan))


@dataclass(frozen=True)
class Collapse:
    """Spread of the normalized f_mem curves across runs against tau/n and against tau."""

    spread_vs_tau_over_n: float | None
    spread_vs_tau: float | None
    ratio: float | None
    """``spread_vs_tau_over_n / spread_vs_tau``; below 1 when rescaling time by n brings the curves together."""

    def to_dict(self) -> dict:
        return asdict(self)


def collapse(runs: Sequence[RunTimes], points: int = 50) -> Collapse:
    """Spread of f_mem/f_mem(tau_max) across runs against tau/n and against tau (common log grids)."""

    def spread(key_scale: bool) -> float | None:
        curves = []
        for r in runs:
            s, g = _normalized(list(r.curve))
            if np.all(np.isnan(g)):
                continue
            curves.append((s / r.n if key_scale else s, g))
        if len(curves) < 2:
            return None
        lo = max(c[0][0] for c in curves)
        hi = min(c[0][-1] for c in curves)
        if not hi > lo:
            return None
        grid = np.exp(np.linspace(np.log(lo), np.log(hi), points))
        vals = np.stack([np.interp(np.log(grid), np.log(x), g) for x, g in curves])
        return float(np.mean(np.std(vals, axis=0)))

    by_n, by_t = spread(True), spread(False)
    return Collapse(by_n, by_t, (by_n / by_t) if by_n is not None and by_t else None)


@dataclass(frozen=True)
class RunTimes:
    """The times read off one run's curve."""

    n: int
    """Training-set size."""
    subset: int
    """Which disjoint training subset of that size."""
    tau_gen: float | None
    """Generalization time (steps), None if the quality never reached its plateau."""
    tau_mem: float | None
    """Memorization time (steps), None if f_mem's lower bound never reached the threshold."""
    tau_test_min: float | None
    """Step of the smallest test loss at fixed t."""
    f_mem_final: float | None
    """f_mem at the last checkpoint."""
    curve: tuple[dict, ...] = field(repr=False)
    """One record per checkpoint, by step: step, f_mem, f_mem_ci, quality, quality_metric, loss_train, loss_test."""
    run_dir: str | None = None
    """The run folder, relative to the study folder (set by the study)."""
    steps: int | None = None
    """The run's training budget in steps (set by the study; larger than its first one if extended)."""
    max_steps: int | None = None
    """The largest budget the run could be extended to (set by the study)."""
    status: str | None = None
    """What happened, in words: both times reached, or what was not and what to change (set by the study)."""
    steps_needed: float | None = None
    """Where tau_mem was not reached: the steps the study estimates it would take (None if it cannot tell)."""

    @property
    def budget_exhausted(self) -> bool:
        """tau_mem was not reached although the run used its largest budget."""
        return self.tau_mem is None and self.steps is not None and self.steps >= (self.max_steps or self.steps)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "n": self.n,
            "subset": self.subset,
            "tau_gen": self.tau_gen,
            "tau_mem": self.tau_mem,
            "tau_test_min": self.tau_test_min,
            "f_mem_final": self.f_mem_final,
            "curve": [dict(c) for c in self.curve],
        }
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        if self.steps is not None:
            out["steps"] = self.steps
            out["max_steps"] = self.max_steps
            out["reached"] = {"tau_gen": self.tau_gen is not None, "tau_mem": self.tau_mem is not None}
            out["budget_exhausted"] = self.budget_exhausted
            out["steps_needed"] = self.steps_needed
            out["status"] = self.status
        return out


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyze` reads off a set of runs."""

    runs: tuple[RunTimes, ...]
    """One entry per run, by increasing n."""
    fit: ScalingFit
    """tau_mem against n."""
    tau_gen_fit: ScalingFit
    """tau_gen against n (an exponent near 0 means tau_gen does not depend on n)."""
    tau_gen_spread: float | None
    """max / min of tau_gen across runs."""
    collapse: Collapse
    rules: TimeRules
    excess_fit: ScalingFit | None = None
    """tau_mem - tau_gen against n: the time spent memorizing after generation is learned (runs where
    both were reached and tau_mem > tau_gen)."""

    def to_dict(self) -> dict:
        return {
            "runs": [r.to_dict() for r in self.runs],
            "fit": self.fit.to_dict(),
            "excess_fit": None if self.excess_fit is None else self.excess_fit.to_dict(),
            "tau_gen_fit": self.tau_gen_fit.to_dict(),
            "tau_gen_spread": self.tau_gen_spread,
            "collapse": self.collapse.to_dict(),
            "rules": asdict(self.rules),
        }

    def with_runs(self, runs: Sequence[RunTimes]) -> Analysis:
        """The same analysis with the run entries replaced (e.g. annotated with their folders)."""
        return replace(self, runs=tuple(runs))


def analyze_run(n: int, curve: Sequence[dict], rules: TimeRules = TimeRules(), subset: int = 0) -> RunTimes:
    """tau_gen, tau_mem, the test-loss minimum and the final f_mem of one run's curve."""
    pts = sorted(curve, key=lambda c: c["step"])
    steps = [c["step"] for c in pts]
    t_mem = tau_mem(steps, [c["f_mem_ci"][0] for c in pts], rules)
    return RunTimes(
        n=int(n),
        subset=int(subset),
        tau_gen=tau_gen(steps, [c["quality"] for c in pts], rules, until=t_mem if rules.gen_before_mem else None),
        tau_mem=t_mem,
        tau_test_min=tau_test_min(steps, [c["loss_test"] for c in pts]),
        f_mem_final=pts[-1]["f_mem"] if pts else None,
        curve=tuple(pts),
    )


def analyze(
    runs: Sequence[tuple[int, Sequence[dict]]], rules: TimeRules = TimeRules(), subsets: Sequence[int] | None = None
) -> Analysis:
    """Per-run times, the tau_mem ~ n fit, the tau_gen fit and spread, and the collapse.

    Parameters
    ----------
    runs : sequence of (n, curve)
        ``curve`` holds one record per checkpoint with at least ``step``, ``f_mem``, ``f_mem_ci``,
        ``quality`` and ``loss_test`` (what ``metrics.jsonl`` holds).
    rules : TimeRules
        The thresholds that turn curves into times.
    subsets : sequence of int, optional
        The training subset of each run (default: all 0).

    Returns
    -------
    Analysis
        Frozen; ``to_dict()`` gives the ``runs``, ``fit``, ``tau_gen_fit``, ``tau_gen_spread``,
        ``collapse`` and ``rules`` entries of ``results.json``.
    """
    rules.validate()
    subs = list(subsets) if subsets is not None else [0] * len(runs)
    if len(subs) != len(runs):
        raise ValueError(f"got {len(runs)} runs but {len(subs)} subset indices")
    order = sorted(range(len(runs)), key=lambda i: (runs[i][0], subs[i]))
    out_runs = tuple(analyze_run(runs[i][0], runs[i][1], rules, subs[i]) for i in order)
    gens = [r.tau_gen for r in out_runs if r.tau_gen is not None]
    return Analysis(
        runs=out_runs,
        fit=fit_scaling([r.n for r in out_runs], [r.tau_mem for r in out_runs]),
        tau_gen_fit=fit_scaling([r.n for r in out_runs], [r.tau_gen for r in out_runs]),
        tau_gen_spread=(max(gens) / min(gens)) if len(gens) >= 2 else None,
        collapse=collapse(out_runs),
        rules=rules,
        excess_fit=fit_scaling([r.n for r in out_runs], [excess_time(r) for r in out_runs]),
    )


def excess_time(run: RunTimes) -> float | None:
    """tau_mem - tau_gen of one run (None unless both were reached and tau_mem > tau_gen).

    tau_mem grows as ``tau_0 + c * n`` when memorization can only start once generation is
    learned; the excess removes the offset ``tau_0`` that bends a log-log fit of tau_mem below
    slope 1 at small n.
    """
    if run.tau_mem is None or run.tau_gen is None or run.tau_mem <= run.tau_gen:
        return None
    return run.tau_mem - run.tau_gen


# ------------------------------------------------------------------------------------------------
# The collapse exponent: for which alpha do the f_mem curves coincide against tau / n^alpha?


def level_times(
    steps: Sequence[float], f: Sequence[float], levels: Sequence[float], persist: int = 1
) -> list[float | None]:
    """For each level, the first time f reaches it and stays there for ``persist`` more checkpoints,
    interpolated linearly in log time (None where it never does)."""
    out: list[float | None] = []
    fl = [float(v) for v in f]
    for level in levels:
        j = _first_crossing(fl, functools.partial(operator.le, level), persist)
        if j is None:
            out.append(None)
        elif j == 0:
            out.append(float(steps[0]))
        else:
            out.append(_log_crossing(steps[j - 1], steps[j], fl[j - 1], fl[j], level))
    return out


def alpha_from_level_times(ns: Sequence[float], times: Sequence[Sequence[float | None]]) -> tuple[float | None, int]:
    """The exponent alpha of ``t_level(n) = c_level * n^alpha`` with one intercept per level.

    ``times[r][l]`` is the time at which run r (size ``ns[r]``) reaches level l. Only the levels
    that every run reached enter (a matched range: no run is extrapolated). Least squares of
    ``log t`` on ``log n`` after removing each level's mean. Returns ``(alpha, levels used)``;
    alpha is None with fewer than two distinct sizes or no shared level.

    Examples
    --------
    >>> alpha, used = alpha_from_level_times([10, 40], [[5.0, 50.0, None], [10.0, 100.0, 300.0]])
    >>> round(alpha, 6), used
    (0.5, 2)
    """
    levels = len(times[0]) if len(times) else 0
    used = [j for j in range(levels) if all(t[j] is not None and float(t[j] or 0) > 0 for t in times)]
    logn = np.log(np.asarray(ns, dtype=np.float64))
    if not used or np.ptp(logn) == 0:
        return None, len(used)
    xs, ys = [], []
    for j in used:
        logt = np.log(np.array([float(t[j] or 0) for t in times]))
        xs.append(logn - logn.mean())
        ys.append(logt - logt.mean())
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float((x * y).sum() / (x * x).sum()), len(used)


@dataclass(frozen=True)
class RunSamples:
    """Per-sample outcomes of one run: the nearest/second-nearest ratio of every sample at every
    checkpoint (sample i starts from the same noise at every checkpoint)."""

    n: int
    subset: int
    steps: np.ndarray
    """(C,) checkpoint steps, increasing."""
    ratios: np.ndarray
    """(C, S) distance ratios."""


@dataclass(frozen=True)
class CollapseFit:
    """The collapse exponent: the curves f_mem(tau / n^alpha) coincide best at ``alpha``."""

    alpha: float | None
    """Least-squares exponent of the times at which f_mem reaches each shared level."""
    alpha_ci: tuple[float | None, float | None]
    """95% percentile bootstrap interval (samples resampled within runs, subsets within sizes)."""
    levels: tuple[float, ...]
    """The f_mem levels tried."""
    levels_used: int
    """How many of them every run reached (the matched range)."""
    n_boot: int
    """Bootstrap replicates that gave an exponent."""

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "alpha_ci": list(self.alpha_ci),
            "levels": list(self.levels),
            "levels_used": self.levels_used,
            "n_boot": self.n_boot,
        }


def collapse_fit(
    runs: Sequence[RunSamples],
    k: float = 1 / 3,
    levels: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
    *,
    persist: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    offsets: Sequence[float | None] | None = None,
) -> CollapseFit:
    """Estimate alpha such that f_mem(tau / n^alpha) coincide, with a bootstrap interval.

    Each run's f_mem curve (samples with ratio < ``k``) is reduced to the times at which it reaches
    fixed ``levels``; alpha is the common slope of log time against log n over the levels that every
    run reached (:func:`alpha_from_level_times`). Nothing is normalised by a run's own end point, so
    curves that do not scale as n^alpha give another alpha. The interval resamples the samples of
    every run (the same resampled samples at every checkpoint) and, where a size has several
    subsets, the subsets of that size.

    Parameters
    ----------
    runs : sequence of RunSamples
        At least two distinct sizes.
    k : float
        Ratio threshold of the memorization test.
    levels : sequence of float
        f_mem levels, fixed before measuring.
    persist, n_boot, seed
        Checkpoints a crossing must hold for; bootstrap replicates; its seed.
    offsets : sequence of float or None, optional
        One time per run subtracted from its level times before the fit (e.g. its tau_gen: the
        curves then coincide against (tau - tau_gen) / n^alpha). A level reached before its run's
        offset, or a run without offset, counts as not reached. The offsets are held fixed in the
        bootstrap.

    Returns
    -------
    CollapseFit
    """
    levels = tuple(float(v) for v in levels)
    if offsets is not None and len(offsets) != len(runs):
        raise ValueError(f"got {len(runs)} runs but {len(offsets)} offsets")
    mems = [(np.asarray(r.ratios) < k).astype(np.float64) for r in runs]
    ns = [r.n for r in runs]

    def alpha_of(indices: Sequence[int], cols: Sequence[Any]) -> tuple[float | None, int]:
        times = []
        for i, c in zip(indices, cols):
            f = mems[i].mean(1) if c is None else mems[i][:, c].mean(1)
            t = level_times(runs[i].steps.tolist(), f.tolist(), levels, persist)
            if offsets is not None:
                off = offsets[i]
                t = [None if v is None or off is None or v <= off else v - off for v in t]
            times.append(t)
        return alpha_from_level_times([ns[i] for i in indices], times)

    alpha, used = alpha_of(range(len(runs)), [None] * len(runs))
    rng = np.random.default_rng(seed)
    by_size: dict[int, list[int]] = {}
    for i, r in enumerate(runs):
        by_size.setdefault(r.n, []).append(i)
    boots = []
    for _ in range(n_boot):
        chosen = [int(g[j]) for g in by_size.values() for j in rng.integers(0, len(g), len(g))]
        cols = [rng.integers(0, mems[i].shape[1], mems[i].shape[1]) for i in chosen]
        a, _ = alpha_of(chosen, cols)
        if a is not None:
            boots.append(a)
    ci: tuple[float | None, float | None] = (None, None)
    if len(boots) >= max(10, n_boot // 2):
        lo, hi = np.quantile(boots, [0.025, 0.975])
        ci = (float(lo), float(hi))
    return CollapseFit(alpha, ci, levels, used, len(boots))
