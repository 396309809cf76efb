"""diffmem predict: the onset at N from pilots at sizes << N (planted runs; the CLI on a tiny study)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from diffmem.cli import main
from diffmem.dynamics.predict import pilot_sizes, prediction_from_study
from diffmem.dynamics.timescales import RunTimes, fit_scaling


def _run(n, tau_gen, tau_mem, subset=0):
    return RunTimes(
        n=n,
        subset=subset,
        tau_gen=tau_gen,
        tau_mem=tau_mem,
        tau_test_min=None,
        f_mem_final=None,
        curve=(),
        steps=int(200 * n),
        status="planted",
    )


def _planted(sizes=(16, 32, 64), noise=0.05, seed=0):
    """tau_gen = 1400 n^-0.5 and tau_mem = tau_gen + 30 n, with log-normal scatter on the excess."""
    rng = np.random.default_rng(seed)
    runs = []
    for n in sizes:
        for s in range(2):
            g = 1400 * n**-0.5
            runs.append(_run(n, g, g + 30 * n * float(np.exp(rng.normal(0, noise))), s))
    return SimpleNamespace(runs=tuple(runs))


def test_prediction_recovers_a_planted_onset_with_an_offset():
    pred = prediction_from_study(256, _planted(), batch_size=256)
    truth = 1400 / 16 + 30 * 256
    assert pred.tau_mem_pred == pytest.approx(truth, rel=0.1)
    assert pred.tau_mem_ci[0] < truth < pred.tau_mem_ci[1]
    assert pred.tau_gen_pred == pytest.approx(1400 / 16, rel=1e-6)
    assert pred.alpha_ci[0] < 1.0 < pred.alpha_ci[1] and pred.extrapolation == 4
    assert pred.tau_mem_epochs == pytest.approx(pred.tau_mem_pred)  # full batch: one epoch per step
    assert pred.safe_window == (pred.tau_gen_pred, pred.tau_mem_ci[0])
    # a plain power law through the same pilots bends under the offset and predicts too early
    plain = fit_scaling([r.n for r in _planted().runs], [r.tau_mem for r in _planted().runs])
    assert plain.prefactor * 256**plain.exponent < 0.8 * truth
    d = pred.to_dict()
    assert {"n", "tau_mem_pred", "tau_mem_ci", "tau_gen_pred", "pilots", "safe_window"} <= set(d)
    assert len(d["pilots"]) == 6 and "extrapolation by 4x" in pred.summary()


def test_wider_scatter_gives_a_wider_interval_and_too_few_sizes_no_prediction():
    tight = prediction_from_study(256, _planted(noise=0.02), 256)
    loose = prediction_from_study(256, _planted(noise=0.3), 256)
    assert loose.tau_mem_ci[1] / loose.tau_mem_ci[0] > 2 * (tight.tau_mem_ci[1] / tight.tau_mem_ci[0] - 1) + 1
    few = prediction_from_study(256, _planted(sizes=(32, 64)), 256)
    assert few.tau_mem_pred is None and few.tau_mem_ci == (None, None)
    assert "fewer than 3 pilot sizes" in few.summary()


def test_pilot_sizes_and_bad_input(capsys):
    assert pilot_sizes(256) == (16, 32, 64) and pilot_sizes(1000) == (62, 125, 250)
    with pytest.raises(ValueError, match="too small to run 3 distinct pilot sizes"):
        pilot_sizes(40)
    assert main(["predict", "--n", "64", "--pilot-sizes", "16", "32", "64", "--quiet"]) == 2
    assert "pilot sizes must be smaller than n = 64" in capsys.readouterr().err
    assert main(["predict", "--n", "256", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pilot_sizes"] == [16, 32, 64] and out["subsets"] == 2


def test_linear_law_against_power_law_on_planted_sublinear_runs():
    """Planted tau_mem - tau_gen = 100 n^0.8: the power law recovers it, the linear law (alpha = 1)
    overshoots and its alpha check says so."""
    runs = []
    for n in (16, 32, 64):
        for s in range(2):
            runs.append(_run(n, 200.0, 200.0 + 100 * n**0.8 * (1.02 if s else 0.98), s))
    res = SimpleNamespace(runs=tuple(runs))
    truth = 200 + 100 * 256**0.8
    power = prediction_from_study(256, res, 256, law="power")
    linear = prediction_from_study(256, res, 256, law="linear")
    assert power.tau_mem_ci[0] < truth < power.tau_mem_ci[1] and power.law == "power"
    assert linear.tau_mem_pred > 1.2 * truth
    assert linear.alpha == pytest.approx(0.8, abs=0.02) and linear.alpha_ci[1] < 1.0  # the check of alpha = 1 fails
    assert linear.to_dict()["model"] == "tau_mem(n) = tau_gen(n) + c * n"
    with pytest.raises(ValueError, match="law must be one of"):
        prediction_from_study(256, res, 256, law="cubic")
