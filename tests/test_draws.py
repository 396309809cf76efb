"""Noise draws per example (--draws R): each batch example enters the step R times with independent
diffusion steps and noises, which divides the variance of the gradient by R without moving its mean;
single runs, the ensemble and resume handle it like every other setting."""

import json

import pytest
import torch

from diffmem import io as dio
from diffmem.dynamics.ensemble import train_ensemble
from diffmem.dynamics.training import (
    TrainConfig,
    build_model,
    draw_batch,
    list_checkpoints,
    load_split,
    sample_step,
    train,
)
from diffmem.metrics.losses import eps_loss
from setting_checks import resumes_and_ensembles_alike

KW = dict(n=12, width=32, steps=30, checkpoints=3, first_checkpoint=5, resume_every=10, log_every=10)


def test_each_chosen_example_is_repeated_in_place():
    x = torch.arange(20.0).reshape(10, 2)
    for replacement, b in ((False, 10), (False, 4), (True, 7)):
        one = draw_batch(x, b, replacement, torch.Generator().manual_seed(3))
        three = draw_batch(x, b, replacement, torch.Generator().manual_seed(3), draws=3)
        assert three.shape == (3 * b, 2)
        # the same examples are chosen, each repeated three times in a row
        assert torch.equal(three, one.repeat_interleave(3, dim=0))


def test_draws_divide_the_gradient_variance_without_moving_its_mean():
    """Over many independent steps from one fixed model, the mean gradient of R = 8 draws per example
    equals that of one draw (both estimate the same expected loss), and its variance is 8 times smaller
    (it would stay the same if the copies shared their diffusion step or noise)."""
    cfg = TrainConfig(n=16, width=32).resolved()
    sp = load_split(cfg)
    x, net = sp.train, build_model(cfg, sp.shape)
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    grads = {}
    for draws in (1, 8):
        c = TrainConfig(n=16, width=32, draws=draws).resolved()
        gen = torch.Generator().manual_seed(draws)
        rows = []
        for _ in range(400):
            x0, k, eps = sample_step(x, c, gen)
            assert x0.shape[0] == k.shape[0] == eps.shape[0] == 16 * draws
            net.zero_grad()
            eps_loss(net, x0, k, eps, ab, reduction="mean").backward()
            rows.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        grads[draws] = torch.stack(rows).double()
    var1, var8 = grads[1].var(0).sum(), grads[8].var(0).sum()
    assert 6.0 < float(var1 / var8) < 10.5
    # the means agree to within their standard errors (the larger one, of the single draw)
    diff = (grads[1].mean(0) - grads[8].mean(0)).pow(2).sum()
    assert float(diff) < 4 * float(var1 + var8) / 400


def test_draws_in_runs_ensembles_resume_and_old_folders(tmp_path):
    cfg = TrainConfig(**KW, draws=4)
    cfgs = [cfg, TrainConfig(**KW, draws=4, subset_index=1, seed=2)]
    full = resumes_and_ensembles_alike(cfgs[0], cfgs[1], tmp_path)
    plain = train(TrainConfig(**KW), tmp_path / "plain")
    a = dio.load_tensors(list_checkpoints(full)[-1][1])[0]
    b = dio.load_tensors(list_checkpoints(plain)[-1][1])[0]
    assert any(not torch.allclose(a[k], b[k]) for k in a)  # the setting changes the training

    dirs = [tmp_path / "e0", tmp_path / "e1"]
    with pytest.raises(ValueError, match="draws"):
        train_ensemble([cfgs[0], TrainConfig(**KW, subset_index=1)], dirs, tmp_path / "g2")

    # a folder from before the setting (no "draws" key) resumes as one draw, and is refused for four
    saved = json.loads((plain / "config.json").read_text())
    del saved["draws"]
    (plain / "config.json").write_text(json.dumps(saved))
    train(TrainConfig(**KW), plain)
    with pytest.raises(ValueError, match="draws"):
        train(cfg, plain)


def test_bad_draws_is_refused():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="draws must be a positive integer"):
            TrainConfig(draws=bad).resolved()
