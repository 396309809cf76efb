"""One ``metrics.jsonl`` record of ``diffmem measure`` against an independent brute-force computation.

Everything is recomputed here from the checkpoint with plain loops and numpy/scipy: DDIM sampling in
float64 from the documented per-sample seeds, the ratio test by sorting all distances, the percentile
bootstrap, the Fréchet distance with ``scipy.linalg.sqrtm``, and the losses at t = 0.01 from the
documented noise draws.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from diffmem import io as dio
from diffmem.dynamics.evaluate import EvalConfig, measure
from diffmem.dynamics.training import TrainConfig, list_checkpoints, load_checkpoint, load_split, train
from diffmem.metrics.frechet import DigitsFeatures


def _ddim64(model, x_T, ab, steps):
    """DDIM (eta 0) with "leading" spacing, written out in float64 with the model in float32."""
    T = len(ab)
    ks = [i * (T // steps) for i in range(steps)][::-1]
    x = x_T.double()
    for i, k in enumerate(ks):
        a = float(ab[k])
        a_prev = float(ab[ks[i + 1]]) if i + 1 < len(ks) else 1.0
        eps = model(x.float(), torch.full((x.shape[0],), float(k))).double()
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def test_one_measure_record_matches_a_brute_force_computation(tmp_path):
    cfg = TrainConfig(n=12, width=32, steps=40, checkpoints=2, first_checkpoint=20, resume_every=20, log_every=10)
    run = tmp_path / "run"
    train(cfg, run)
    ev = EvalConfig(samples=40, sampling_steps=10, n_boot=300, loss_draws=2, seed=3)
    records = measure(cfg, ev, run)
    step, path = list_checkpoints(run)[-1]
    rec = next(r for r in records if r["step"] == step)

    cfg = cfg.resolved()
    sp = load_split(cfg)
    model = load_checkpoint(path, cfg, sp.shape)
    ab = np.cumprod(1 - np.linspace(cfg.beta_start, cfg.beta_end, cfg.T))

    # samples: x_T of sample i from its own seed ev.seed * 1_000_003 + i
    x_T = torch.stack(
        [torch.randn(sp.shape, generator=torch.Generator().manual_seed(ev.seed * 1_000_003 + i)) for i in range(40)]
    )
    with torch.no_grad():
        x = _ddim64(model, x_T, ab, ev.sampling_steps)
    with np.load(run / "samples" / f"step_{step:07d}.npz", allow_pickle=False) as f:
        np.testing.assert_allclose(f["samples"], x.numpy(), atol=2e-4)
    xs = x.numpy().reshape(40, -1)

    # ratio test by sorting every distance
    tr = sp.train.double().numpy().reshape(len(sp.train), -1)
    d = np.sqrt(((xs[:, None, :] - tr[None, :, :]) ** 2).sum(-1))
    d.sort(axis=1)
    mem = (d[:, 0] / d[:, 1] < ev.k).astype(float)
    assert rec["f_mem"] == pytest.approx(mem.mean(), abs=1e-12)
    assert rec["median_ratio"] == pytest.approx(np.median(d[:, 0] / d[:, 1]), rel=1e-4)
    # percentile bootstrap over samples with numpy's generator seeded by ev.seed
    idx = np.random.default_rng(ev.seed).integers(0, 40, size=(ev.n_boot, 40))
    lo, hi = np.quantile(mem[idx].mean(1), [0.025, 0.975])
    assert rec["f_mem_ci"] == pytest.approx([lo, hi], abs=1e-12)

    # Fréchet distance in the embedded digits feature space, with scipy's matrix square root
    feats = DigitsFeatures()
    fa = feats(sp.to_pixels(x.float()).clamp(0, 1))
    fb = feats(sp.to_pixels(sp.test).clamp(0, 1))
    ma, mb = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    fd = float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * covmean))
    assert rec["quality_metric"] == "frechet[digits-cnn]"
    assert rec["quality"] == pytest.approx(fd, rel=2e-3, abs=1e-3)

    # losses at the step whose OU time -1/2 log ab is closest to t = 0.01, same noise draws
    k = int(np.argmin(np.abs(-0.5 * np.log(ab) - ev.loss_t)))

    def loss(x0):
        g = torch.Generator().manual_seed(ev.seed)
        total = 0.0
        for _ in range(ev.loss_draws):
            eps = torch.randn(x0.shape, generator=g)
            xk = math.sqrt(ab[k]) * x0 + math.sqrt(1 - ab[k]) * eps
            with torch.no_grad():
                pred = model(xk, torch.full((len(x0),), float(k)))
            total += float(((pred.double() - eps.double()) ** 2).mean())
        return total / ev.loss_draws

    assert rec["loss_train"] == pytest.approx(loss(sp.train), rel=1e-5)
    assert rec["loss_test"] == pytest.approx(loss(sp.test), rel=1e-5)
    # the record on disk is the one returned
    assert dio.read_jsonl(run / "metrics.jsonl")[-1] == rec
