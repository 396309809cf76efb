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

RAW = TimeRules(gen_smooth=1, gen_before_mem=False)  # tau_gen off the unsmoothed curve, best value anywhere


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
    assert tau_gen(steps, q, RAW) == pytest.approx(expected)
    # the best value is taken before tau_mem when given
    q2 = np.array([100.0, 50.0, 10.0, 5.0, 0.1])
    assert tau_gen(steps, q2, RAW, until=10000) == pytest.approx(tau_gen(steps[:4], q2[:4], RAW))


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
    res = analyze([(n, _curve(n)) for n in (16, 32, 64, 128)], RAW)  # n=16 memorizes before its quality plateau
    assert res.fit.exponent == pytest.approx(1.0, abs=0.02)
    assert res.tau_gen_spread == pytest.approx(1.0, abs=0.05)
    assert [r.n for r in res.runs] == [16, 32, 64, 128]
    assert tau_test_min([1, 2, 3], [3.0, 1.0, 2.0]) == 2


def test_bad_rules():
    with pytest.raises(ValueError, match="mem_threshold"):
        TimeRules(mem_threshold=0).validate()


def _planted_runs(alpha, sizes=(32, 64, 128, 256), subsets=2, samples=400, seed=0):
    """Sample i of a run memorizes from its own onset time 60 n^alpha u_i on (u_i log-normal):
    f_mem(tau) is then a function of tau / n^alpha exactly, up to sampling noise."""
    from diffmem.dynamics.timescales import RunSamples

    rng = np.random.default_rng(seed)
    runs = []
    for n in sizes:
        for sub in range(subsets):
            steps = np.unique(np.geomspace(10, 600 * 256, 40).round())
            onset = 60 * n**alpha * np.exp(rng.normal(0.5, 0.8, samples))
            ratios = np.where(steps[:, None] >= onset[None, :], 0.1, 0.9)
            runs.append(RunSamples(n, sub, steps, ratios))
    return runs


def test_collapse_exponent_recovers_planted_scaling_and_can_fail():
    from diffmem.dynamics.timescales import collapse_fit

    lin = collapse_fit(_planted_runs(1.0), n_boot=200)
    assert lin.alpha == pytest.approx(1.0, abs=0.05)
    assert lin.alpha_ci[0] < 1.0 < lin.alpha_ci[1] and lin.levels_used >= 4
    sq = collapse_fit(_planted_runs(0.5), n_boot=200)
    assert sq.alpha == pytest.approx(0.5, abs=0.05)
    assert sq.alpha_ci[1] < 1.0  # tau ~ n^0.5 does not pass as tau ~ n
    assert sq.alpha_ci[0] < 0.5 < sq.alpha_ci[1]


def test_level_times_and_alpha_need_a_matched_range():
    from diffmem.dynamics.timescales import alpha_from_level_times, level_times

    steps = [10, 100, 1000]
    assert level_times(steps, [0.0, 0.1, 0.3], [0.1, 0.2, 0.5]) == [
        pytest.approx(100.0),
        pytest.approx(math.exp(math.log(100) + 0.5 * math.log(10))),
        None,
    ]
    # the run that never reaches a level removes that level for every run; no level at all -> no alpha
    assert alpha_from_level_times([10, 20], [[None, 5.0], [3.0, 10.0]]) == (pytest.approx(1.0), 1)
    assert alpha_from_level_times([10, 20], [[None], [3.0]]) == (None, 0)


def test_tau_gen_smoothing_ignores_a_single_low_outlier():
    steps = np.geomspace(10, 10000, 13)
    q = np.array([20, 20, 19, 15, 10, 7, 6, 6, 6, 6, 2.0, 6, 6])  # one checkpoint falls to 2 by chance
    raw = tau_gen(steps, q, RAW)  # the outlier sets q_best = 2: target 3.8 is reached only at the outlier
    assert raw == pytest.approx(steps[10], rel=0.3)
    smooth = tau_gen(steps, q, TimeRules(gen_smooth=3))  # median of 3 removes it: q_best = 6, target 7.4
    expected = math.exp(math.log(steps[4]) + (10 - 7.4) / (10 - 7) * (math.log(steps[5]) - math.log(steps[4])))
    assert smooth == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="gen_smooth must be an odd positive integer"):
        TimeRules(gen_smooth=2).validate()


def test_tau_gen_before_mem_ignores_a_late_dip():
    steps = [10.0, 100.0, 1000.0, 10000.0, 100000.0]
    curve = [
        dict(step=s, f_mem=f, f_mem_ci=[f, f], quality=q, loss_test=1.0)
        for s, f, q in zip(steps, [0, 0, 0, 0.2, 0.5], [20.0, 8.0, 7.0, 7.5, 1.0])
    ]
    late = analyze_run(32, curve, RAW)  # q_best = 1 (after memorization): target 2.9 only reached at the end
    assert late.tau_gen > 10000
    early = analyze_run(32, curve, TimeRules(gen_smooth=1, gen_before_mem=True))  # q_best = 7 before tau_mem
    assert early.tau_mem == pytest.approx(math.exp(math.log(1000) + 0.05 * math.log(10)))  # 0.01 of the way to 0.2
    target = 7 + 0.1 * 13
    frac = (target - 20) / (8 - 20)
    assert early.tau_gen == pytest.approx(math.exp(math.log(10) + frac * math.log(10)))


def _rt(n, tau_gen, tau_mem):
    from diffmem.dynamics.timescales import RunTimes

    return RunTimes(n=n, subset=0, tau_gen=tau_gen, tau_mem=tau_mem, tau_test_min=None, f_mem_final=None, curve=())


def test_excess_time_removes_a_planted_offset():
    from diffmem.dynamics.timescales import excess_time

    ns = [16, 32, 64, 128]
    # planted: generation learned at 300 steps, memorization 28 steps per example after it
    runs = [(n, 300.0, 300.0 + 28.0 * n) for n in ns]
    raw = fit_scaling(ns, [m for _, _, m in runs])
    assert raw.exponent < 0.85  # the offset bends the log-log fit below 1
    ex = fit_scaling(ns, [excess_time(_rt(n, g, m)) for n, g, m in runs])
    assert ex.exponent == pytest.approx(1.0, abs=1e-9) and ex.tau_mem_over_n == pytest.approx(28.0)
    # and it can fail: a planted n^0.5 excess stays n^0.5
    half = [excess_time(_rt(n, 300.0, 300.0 + 200 * n**0.5)) for n in ns]
    assert fit_scaling(ns, half).exponent == pytest.approx(0.5, abs=1e-9)
    assert excess_time(_rt(16, 500.0, 400.0)) is None  # memorized before generating
    assert excess_time(_rt(16, None, 400.0)) is None


def test_collapse_with_offsets_recovers_the_scaling_of_the_excess():
    from diffmem.dynamics.timescales import RunSamples, collapse_fit

    rng = np.random.default_rng(1)
    runs, offsets = [], []
    for n in (16, 32, 64, 128):
        for sub in range(2):
            steps = np.unique(np.geomspace(10, 2e5, 240).round())  # dense: the excess is read near the offset
            onset = 2000.0 + 40 * n * np.exp(rng.normal(0.5, 0.8, 400))  # offset 2000, then tau ~ n
            runs.append(RunSamples(n, sub, steps, np.where(steps[:, None] >= onset[None, :], 0.1, 0.9)))
            offsets.append(2000.0)
    plain = collapse_fit(runs, n_boot=100)
    assert plain.alpha_ci[1] < 0.95  # the offset makes the plain collapse sublinear
    ex = collapse_fit(runs, n_boot=100, offsets=offsets)
    # the excess is read between checkpoints near the offset: a few per cent of grid bias remain
    assert ex.alpha == pytest.approx(1.0, abs=0.07) and ex.alpha_ci[0] > plain.alpha_ci[1]
    with pytest.raises(ValueError, match="got 8 runs but 2 offsets"):
        collapse_fit(runs, offsets=[1.0, 2.0])
