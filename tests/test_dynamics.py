import math

import numpy as np
import pytest

from diffmem.dynamics.timescales import (
    TimeRules,
    analyze,
    analyze_run,
    collapse,
    fit_scaling,
    tau_gen,
    tau_mem,
    tau_test_min,
)


def test_tau_mem_interpolates_the_lower_bound_in_log_time():
    steps = [100, 200, 400, 800, 1600]
    lo = [0.0, 0.0, 0.01, 0.03, 0.2]
    # threshold 0.02 is crossed halfway (in value) between 400 and 800 -> geometric midpoint
    assert tau_mem(steps, lo, TimeRules(mem_threshold=0.02)) == pytest.approx(math.sqrt(400 * 800))
    assert tau_mem(steps, [0.0] * 5) is None
    assert tau_mem(steps, [0.5] * 5) == 100  # already memorizing at the first checkpoint


def test_tau_mem_ignores_a_single_blip():
    steps = [100, 200, 400, 800, 1600]
    lo = [0.0, 0.05, 0.0, 0.0, 0.1]  # one noisy checkpoint, then the real onset
    t = tau_mem(steps, lo, TimeRules(mem_threshold=0.02, persist=1))
    assert 800 < t < 1600


def test_tau_gen_rule_on_a_planted_curve():
    steps = np.array([10, 100, 1000, 10000, 100000], dtype=float)
    q = np.array([100.0, 50.0, 10.0, 1.0, 1.0])
    # target = 1 + 0.1 * 99 = 10.9, crossed between 100 (50) and 1000 (10)
    frac = (10.9 - 50) / (10 - 50)
    expected = math.exp(math.log(100) + frac * (math.log(1000) - math.log(100)))
    assert tau_gen(steps, q) == pytest.approx(expected)
    # the best value is taken before tau_mem when given
    q2 = np.array([100.0, 50.0, 10.0, 5.0, 0.1])
    assert tau_gen(steps, q2, until=10000) == pytest.approx(tau_gen(steps[:4], q2[:4]))


def test_scaling_fit_recovers_a_planted_power_law():
    rng = np.random.default_rng(0)
    ns = np.array([16, 32, 64, 128, 256])
    taus = 80 * ns**1.0 * np.exp(rng.normal(0, 0.05, ns.size))
    fit = fit_scaling(ns, taus)
    assert fit.exponent == pytest.approx(1.0, abs=0.1)
    assert fit.exponent_ci[0] < 1.0 < fit.exponent_ci[1]
    assert fit.r2 > 0.98
    assert fit.tau_mem_over_n == pytest.approx(80, rel=0.1)
    exact = fit_scaling([10, 100, 1000], [5, 50, 500])
    assert exact.exponent == pytest.approx(1.0) and exact.r2 == pytest.approx(1.0)
    assert fit_scaling([10, 20], [None, 3]).exponent is None  # one point: no fit


def _curve(n, scale_with_n=True):
    steps = np.geomspace(10, 400 * n, 200)
    x = steps / n if scale_with_n else steps / 64
    f = 1 / (1 + np.exp(-(np.log(x) - np.log(150)) * 3))
    return [
        dict(
            step=float(s),
            f_mem=float(v),
            f_mem_ci=[float(v) * 0.8, float(v) * 1.2],
            quality=1.0 + 100 * np.exp(-s / 500),
            loss_train=1 - v,
            loss_test=1 + v,
        )
        for s, v in zip(steps, f)
    ]


def test_collapse_ratio_detects_tau_over_n_scaling():
    runs = [analyze_run(n, _curve(n)) for n in (16, 64, 256)]
    c = collapse(runs)
    assert c.spread_vs_tau_over_n < 5e-3 and c.ratio < 0.05
    runs = [analyze_run(n, _curve(n, scale_with_n=False)) for n in (16, 64, 256)]
    assert collapse(runs).ratio > 1


def test_analyze_end_to_end_on_planted_runs():
    res = analyze([(n, _curve(n)) for n in (16, 32, 64, 128)])
    assert res.fit.exponent == pytest.approx(1.0, abs=0.02)
    assert res.tau_gen_spread == pytest.approx(1.0, abs=0.05)
    assert [r.n for r in res.runs] == [16, 32, 64, 128]
    assert tau_test_min([1, 2, 3], [3.0, 1.0, 2.0]) == 2


def test_bad_rules():
    with pytest.raises(ValueError, match="mem_threshold"):
        TimeRules(mem_threshold=0).validate()
