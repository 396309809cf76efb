"""Training on data of any width and scale: the input-to-output skip for wide data, the model-space
scale from the data, budgets that follow the run, and a study that says what happened per size."""

import json

import numpy as np
import pytest
import torch

from diffmem import io as dio
from diffmem.cli import main
from diffmem.dynamics.ensemble import stacked_mlp
from diffmem.dynamics.study import QUICK_DRAWS, StudyConfig, annotate_runs
from diffmem.dynamics.timescales import RunTimes, fit_scaling
from diffmem.dynamics.training import (
    TrainConfig,
    checkpoint_steps,
    list_checkpoints,
    load_checkpoint,
    load_split,
    train,
    unit_scale,
)
from diffmem.metrics.losses import eps_loss
from diffmem.models import ResidualMLP, build, mlp_param_count, mlp_skip


def _smooth_images(path, count=64, side=25, seed=0):
    """Random smooth grayscale images (sums of a few 2-D cosines) in [0, 1], saved as a user's .npz."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    imgs = np.zeros((count, side, side))
    for i in range(count):
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
            imgs[i] += np.cos(2 * np.pi * (fy * yy + fx * xx) + ph)
    imgs = (imgs - imgs.min()) / (imgs.max() - imgs.min())
    np.savez(path, images=imgs.astype(np.float32))
    return path


def test_skip_rule_and_parameter_count():
    assert mlp_skip("auto", 625, 256) and not mlp_skip("auto", 64, 256) and not mlp_skip("auto", 256, 256)
    assert mlp_skip("on", 8, 256) and not mlp_skip("off", 625, 256)
    with pytest.raises(ValueError, match="skip must be one of"):
        mlp_skip("yes", 8, 8)
    m = build("mlp", (1, 25, 25), 64)  # auto: 625 > 64
    assert m.gain is not None
    assert sum(p.numel() for p in m.parameters()) == mlp_param_count(625, 64, skip=True)
    assert build("mlp", (1, 8, 8), 256).gain is None  # the digits keep the plain MLP


def test_stacked_mlp_with_skip_matches_each_member():
    torch.manual_seed(0)
    nets = [ResidualMLP((30,), width=8, skip=True) for _ in range(2)]
    for n in nets:  # a non-zero gain, so the skip path is exercised
        torch.nn.init.normal_(n.gain.weight)
    params = {
        k: torch.stack([dict(n.named_parameters())[k].detach() for n in nets]) for k, _ in nets[0].named_parameters()
    }
    x, t = torch.randn(2, 5, 30), torch.randint(1, 999, (2, 5)).float()
    got = stacked_mlp(params, x, t, width=8, blocks=3)
    for i, n in enumerate(nets):
        torch.testing.assert_close(got[i], n(x[i], t[i]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skip,expect_small", [("auto", True), ("off", False)])
def test_wide_data_large_t_noise_prediction(tmp_path, skip, expect_small):
    """d = 625 pixels through a width-64 MLP: with the skip (the default rule) the noise-prediction
    error at t = 900 falls near 0 within 300 steps; without it, it stays large."""
    path = _smooth_images(tmp_path / "wide.npz")
    cfg = TrainConfig(
        data=str(path),
        n=48,
        n_test=16,
        width=64,
        skip=skip,
        steps=300,
        checkpoints=2,
        first_checkpoint=10,
        resume_every=1000,
        log_every=100,
    )
    run = train(cfg, tmp_path / skip)
    cfg = cfg.resolved()
    sp = load_split(cfg)
    model = load_checkpoint(list_checkpoints(run)[-1][1], cfg, sp.shape)
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    g = torch.Generator().manual_seed(0)
    x0 = sp.train.repeat(8, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        err = float(eps_loss(model, x0, torch.full((x0.shape[0],), 900), eps, ab, reduction="mean"))
    if expect_small:
        assert err < 0.05
    else:
        assert err > 0.3


def test_default_scale_is_unit_variance(tmp_path):
    x = np.random.default_rng(0).uniform(0.2, 0.4, (40, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=x)
    rms = float(np.sqrt(((x.astype(np.float64) - x.mean(0)) ** 2).mean()))
    assert unit_scale(str(tmp_path / "d.npz")) == pytest.approx(1 / rms, rel=5e-3)
    cfg = TrainConfig(data=str(tmp_path / "d.npz"), n=16).resolved()
    sp = load_split(cfg)
    assert float(sp.train.std()) == pytest.approx(1.0, rel=0.2)  # a subset of unit-variance data
    from sklearn.datasets import load_digits

    d = load_digits().images / 16.0
    assert TrainConfig().resolved().scale == pytest.approx(1 / np.sqrt(((d - d.mean(0)) ** 2).mean()), rel=5e-3)
    np.savez(tmp_path / "flat.npz", images=np.full((5, 4, 4), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="constant"):
        unit_scale(str(tmp_path / "flat.npz"))


def test_extended_grid_keeps_every_checkpoint():
    base = checkpoint_steps(3200, 32, 10)
    assert checkpoint_steps(3200, 32, 10, base=3200) == base
    g2, g4, gmax = (checkpoint_steps(s, 32, 10, base=3200) for s in (6400, 12800, 11000))
    assert set(base) < set(g2) < set(g4) and set(g2) < set(gmax)
    assert 6400 in g4 and g4[-1] == 12800 and gmax[-1] == 11000
    ratios = np.diff(np.log(g4[len(base) - 1 :]))
    assert ratios.max() < 2.5 * np.diff(np.log(base[-6:])).mean()  # about the same density beyond the base


def _rt(n, tau_mem, lo=0.0, subset=0):
    curve = ({"step": 10, "f_mem": lo, "f_mem_ci": [lo, lo + 0.01], "quality": 1.0, "loss_test": 1.0},)
    return RunTimes(n=n, subset=subset, tau_gen=100.0, tau_mem=tau_mem, tau_test_min=None, f_mem_final=lo, curve=curve)


def test_status_of_runs_that_did_not_memorize(tmp_path):
    cfg = StudyConfig(sizes=(32, 64, 128, 256), steps_per_n=120, max_steps_per_n=240, min_steps=100)
    runs = [_rt(32, 5000.0), _rt(64, 10000.0), _rt(128, None), _rt(256, None)]
    out = annotate_runs(cfg, tmp_path, runs)  # no folders: the runs used their first budget
    assert out[0].status.startswith("tau_mem reached at 5000 of 3840 steps") and out[0].steps_needed is None
    r = out[2]
    assert r.steps == 15360 and r.max_steps == 30720 and not r.budget_exhausted
    assert "tau_mem NOT reached within 15360 steps = 120 n (15360 of at most 30720 steps" in r.status
    assert r.steps_needed == pytest.approx(20000.0)  # 156.25 n^1 from the two sizes that memorized
    assert out[3].steps_needed == pytest.approx(40000.0) and "--max-steps-per-n 235" in out[3].status
    early = annotate_runs(cfg, tmp_path, [_rt(32, 500.0), _rt(64, 1000.0), _rt(128, None)])[2]
    assert early.steps_needed is None and "memorizes later than they predict" in early.status
    d = out[3].to_dict()
    assert d["reached"] == {"tau_gen": True, "tau_mem": False} and d["steps_needed"] == pytest.approx(40000.0)
    # nothing memorized: no estimate, and what to change
    none = annotate_runs(cfg, tmp_path, [_rt(32, None), _rt(64, None)])
    assert none[0].steps_needed is None and "no size memorized, so no estimate" in none[0].status
    # two reached sizes give no exponent (a line through two points is not a result); three do
    assert fit_scaling([32, 64, 128], [2000.0, 4000.0, None]).exponent is None
    assert fit_scaling([32, 64, 128], [2000.0, 4000.0, 8000.0]).exponent == pytest.approx(1.0)


TINY = [
    "--width",
    "32",
    "--checkpoints",
    "4",
    "--first-checkpoint",
    "20",
    "--eval-samples",
    "64",
    "--eval-sampling-steps",
    "10",
    "--eval-n-boot",
    "200",
    "--workers",
    "1",
    "--quiet",
]


def test_study_extends_runs_and_says_when_the_budget_ran_out(tmp_path, capsys):
    out = tmp_path / "study"
    args = [
        "dynamics",
        "--out",
        str(out),
        "--sizes",
        "16",
        "32",
        "--steps-per-n",
        "10",
        "--max-steps-per-n",
        "40",
        "--min-steps",
        "100",
        *TINY,
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    for r in res["runs"]:  # far too short to memorize: every run doubled twice, then stopped
        assert r["steps"] == r["max_steps"] == 40 * r["n"]
        assert r["reached"]["tau_mem"] is False and r["budget_exhausted"] is True
        assert "tau_mem NOT reached" in r["status"] and "no size memorized" in r["status"]
        assert json.loads((out / r["run_dir"] / "config.json").read_text())["steps"] == 40 * r["n"]
        steps = [c["step"] for c in r["curve"]]
        assert set(checkpoint_steps(max(100, 10 * r["n"]), 4, 20)) <= set(steps)  # the first grid is kept
        assert steps == [s for s, _ in list_checkpoints(out / r["run_dir"])]  # every checkpoint measured
    assert res["fit"]["exponent"] is None and res["fit"]["points"] == 0
    assert "n = 16, subset 0: tau_mem NOT reached" in text and "no scaling exponent" in text
    assert "NOT reached" in (out / "report.html").read_text()
    # the extended run is the run trained to the larger budget directly (exact resume on the CPU)
    run16 = res["runs"][0]
    direct = TrainConfig(
        n=16, steps=640, budget_base=160, width=32, checkpoints=4, first_checkpoint=20, draws=QUICK_DRAWS
    ).resolved()
    d = train(direct, tmp_path / "direct")
    a = dio.load_tensors(out / run16["run_dir"] / "checkpoints" / "step_0000640.safetensors")[0]
    b = dio.load_tensors(d / "checkpoints" / "step_0000640.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming the finished study trains nothing more
    mt = (out / run16["run_dir"] / "metrics.jsonl").read_text()
    assert main(args) == 0
    assert (out / run16["run_dir"] / "metrics.jsonl").read_text() == mt
