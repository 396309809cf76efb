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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TimeRules", "analyze", "analyze_run", "collapse", "fit_scaling", "tau_gen", "tau_mem", "tau_test_min"]


@dataclass(frozen=True)
class TimeRules:
    mem_threshold: float = 0.01
    gen_fraction: float = 0.1
    persist: int = 1  # the crossing must hold for this many further checkpoints (where they exist)

    def validate(self) -> None:
        if not 0 < self.mem_threshold < 1:
            raise ValueError(f"mem_threshold must lie in (0, 1), got {self.mem_threshold}")
        if not 0 < self.gen_fraction < 1:
            raise ValueError(f"gen_fraction must lie in (0, 1), got {self.gen_fraction}")


def _log_crossing(s0: float, s1: float, v0: float, v1: float, target: float) -> float:
    """Time where the value crosses ``target`` between (s0, v0) and (s1, v1), linear in log time."""
    if v1 == v0:
        return float(s1)
    frac = min(1.0, max(0.0, (target - v0) / (v1 - v0)))
    return float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))


def _first_crossing(steps: Sequence[float], values: Sequence[float], ok, persist: int) -> float | None:
    steps, values = list(steps), list(values)
    for j, v in enumerate(values):
        if ok(v) and all(ok(w) for w in values[j + 1 : j + 1 + persist]):
            return j
    return None


def tau_mem(steps: Sequence[float], f_mem_lo: Sequence[float], rules: TimeRules = TimeRules()) -> float | None:
    """First time the lower bootstrap bound of f_mem reaches the threshold (None if never)."""
    j = _first_crossing(steps, f_mem_lo, lambda v: v >= rules.mem_threshold, rules.persist)
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
    window = s <= until if until is not None and np.any(s <= until) else np.ones_like(s, dtype=bool)
    q_best = float(q[window].min())
    target = q_best + rules.gen_fraction * (float(q[0]) - q_best)
    if q[0] <= target:
        return float(s[0])
    j = _first_crossing(s, q, lambda v: v <= target, 0)
    return _log_crossing(s[j - 1], s[j], q[j - 1], q[j], target) if j else None


def tau_test_min(steps: Sequence[float], loss_test: Sequence[float]) -> float | None:
    """Time of the minimum test loss at fixed t (after it the test loss rises)."""
    if len(steps) == 0:
        return None
    return float(np.asarray(steps)[int(np.nanargmin(np.asarray(loss_test, dtype=np.float64)))])


def fit_scaling(ns: Sequence[float], taus: Sequence[float | None], level: float = 0.95) -> dict:
    """``log tau = c + exponent * log n`` by least squares over the runs where tau was reached."""
    from scipy import stats

    pairs = [(float(n), float(t)) for n, t in zip(ns, taus) if t is not None and t > 0]
    out: dict = {"exponent": None, "exponent_ci": [None, None], "r2": None, "prefactor": None, "points": len(pairs)}
    ratios = [t / n for n, t in pairs]
    out["tau_mem_over_n"] = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    out["tau_mem_over_n_each"] = ratios
    if len(pairs) < 2 or len({n for n, _ in pairs}) < 2:
        return out
    x = np.log([n for n, _ in pairs])
    y = np.log([t for _, t in pairs])
    res = stats.linregress(x, y)
    out.update(exponent=float(res.slope), prefactor=float(np.exp(res.intercept)))
    out["r2"] = float(res.rvalue**2) if len(pairs) > 2 else 1.0
    if len(pairs) > 2:
        h = float(stats.t.ppf(0.5 + level / 2, len(pairs) - 2)) * float(res.stderr)
        out["exponent_ci"] = [float(res.slope - h), float(res.slope + h)]
    return out


def _normalized(curve: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([c["step"] for c in curve], dtype=np.float64)
    f = np.array([c["f_mem"] for c in curve], dtype=np.float64)
    return s, (f / f[-1] if f[-1] > 0 else np.full_like(f, np.nan))


def collapse(runs: list[dict], points: int = 50) -> dict:
    """Spread of f_mem/f_mem(tau_max) across runs against tau/n and against tau (common log grids)."""

    def spread(key_scale: bool) -> float | None:
        curves = []
        for r in runs:
            s, g = _normalized(r["curve"])
            if np.all(np.isnan(g)):
                continue
            curves.append((s / r["n"] if key_scale else s, g))
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
    return {
        "spread_vs_tau_over_n": by_n,
        "spread_vs_tau": by_t,
        "ratio": (by_n / by_t) if by_n is not None and by_t else None,
    }


def analyze_run(n: int, curve: list[dict], rules: TimeRules = TimeRules()) -> dict:
    curve = sorted(curve, key=lambda c: c["step"])
    steps = [c["step"] for c in curve]
    t_mem = tau_mem(steps, [c["f_mem_ci"][0] for c in curve], rules)
    t_gen = tau_gen(steps, [c["quality"] for c in curve], rules)
    return {
        "n": int(n),
        "tau_gen": t_gen,
        "tau_mem": t_mem,
        "tau_test_min": tau_test_min(steps, [c["loss_test"] for c in curve]),
        "f_mem_final": curve[-1]["f_mem"] if curve else None,
        "curve": curve,
    }


def analyze(runs: list[tuple[int, list[dict]]], rules: TimeRules = TimeRules()) -> dict:
    """Per-run times, the tau_mem ~ n fit, the tau_gen spread and the collapse."""
    rules.validate()
    out_runs = [analyze_run(n, c, rules) for n, c in sorted(runs, key=lambda r: r[0])]
    gens = [r["tau_gen"] for r in out_runs if r["tau_gen"] is not None]
    return {
        "runs": out_runs,
        "fit": fit_scaling([r["n"] for r in out_runs], [r["tau_mem"] for r in out_runs]),
        "tau_gen_fit": fit_scaling([r["n"] for r in out_runs], [r["tau_gen"] for r in out_runs]),
        "tau_gen_spread": (max(gens) / min(gens)) if len(gens) >= 2 else None,
        "collapse": collapse(out_runs),
        "rules": rules.__dict__,
    }
