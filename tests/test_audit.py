"""Guided-sampling audit: planted analytic models with known answers, brute-force references,
resume, bad input, and a tiny end-to-end run of ``diffmem audit --model testbed``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffmem import io, sampling
from diffmem.audit import analysis, recorder
from diffmem.audit.detectors import detector_costs, roc_table, tpr_at_fpr
from diffmem.audit.mitigation import guidance_schedule, mitigation_table
from diffmem.audit.protocol import PromptSpec
from diffmem.audit.recorder import Trajectory, prompt_seeds, record, sample_final
from diffmem.audit.run import AuditConfig, AuditResult, run_audit
from diffmem.audit.severity import PixelCosine
from diffmem.sampling import ddim, guided, randn_per_sample, timesteps
from diffmem.schedule import scaled_linear

SHAPE = (1, 4, 4)


class Planted:
    """An analytic GuidedModel: x0_hat_u = mu (= 0) for every prompt; x0_hat_c = the prompt's image
    x exactly for "memorized" prompts and = mu for the others. Then x0_hat(c; g) = mu + g (x - mu)."""

    def __init__(self, images: dict[str, torch.Tensor], memorized: set[str]):
        self.latent_shape = SHAPE
        self.schedule = scaled_linear()
        self.targets = {p: self.encode(img[None])[0].double() for p, img in images.items()}
        self.memorized = memorized
        self.calls: list[tuple[str, int]] = []

    def _eps(self, x, t, x0):
        ab = self.schedule.alphas_cumprod[t.long()].reshape(-1, *([1] * len(SHAPE)))
        return ((x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()).to(x.dtype)

    def predict(self, x, t, prompt):
        self.calls.append((prompt, x.shape[0]))
        eps_u = self._eps(x, t, torch.zeros(SHAPE, dtype=torch.float64))
        eps_c = self._eps(x, t, self.targets[prompt]) if prompt in self.memorized else eps_u.clone()
        return eps_c, eps_u

    def encode(self, pixels):
        return pixels.float() * 2 - 1

    def decode(self, latents):
        return ((latents.float() + 1) / 2).clamp(0, 1)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(SHAPE, generator=g) for _ in range(n)]


def _specs(n_mem=3, n_norm=3, n_part=0):
    imgs = _images(n_mem + n_norm + n_part)
    specs = [PromptSpec(f"memorized prompt {i}", imgs[i], "memorized", key=f"m{i}") for i in range(n_mem)]
    specs += [PromptSpec(f"normal prompt {i}", imgs[n_mem + i], "normal", key=f"n{i}") for i in range(n_norm)]
    specs += [
        PromptSpec(f"partial prompt {i}", imgs[n_mem + n_norm + i], "partial", key=f"p{i}") for i in range(n_part)
    ]
    model = Planted({s.prompt: s.image for s in specs}, {s.prompt for s in specs if s.label != "normal"})
    return model, specs


def test_planted_model_behaves_as_planted():
    # the analytic model the other tests rely on: exact x0 estimates from both branches, one call per batch
    model, specs = _specs(1, 1)
    mem, norm = specs[0].prompt, specs[1].prompt
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([900, 500, 10])
    ab = model.schedule.alphas_cumprod[k].reshape(-1, 1, 1, 1)

    def x0_of(eps):
        return (x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()

    eps_c, eps_u = model.predict(x, k.float(), mem)
    assert eps_c.shape == eps_u.shape == x.shape and model.calls == [(mem, 3)]
    torch.testing.assert_close(x0_of(eps_c), model.targets[mem].expand(3, *SHAPE), atol=1e-4, rtol=0)
    torch.testing.assert_close(x0_of(eps_u), torch.zeros(3, *SHAPE, dtype=torch.float64), atol=1e-4, rtol=0)
    eps_c, eps_u = model.predict(x, k.float(), norm)
    torch.testing.assert_close(eps_c, eps_u, rtol=0, atol=0)  # a normal prompt: no conditional signal
    img = specs[0].image[None]
    torch.testing.assert_close(model.decode(model.encode(img)), img, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- recorder
def test_record_matches_ddim_with_cfg_and_calls_model_once_per_step():
    model, specs = _specs(1, 0)
    p = specs[0].prompt
    ks = timesteps(model.schedule, 10)
    seeds = [3, 4, 5]
    traj = record(model, p, seeds, ks, guidance=7.5)
    assert model.calls == [(p, 3)] * 10  # one batched call (both branches) per step

    def cond(x, t):
        return model.predict(x, t, p)[0]

    def unc(x, t):
        return model.predict(x, t, p)[1]

    ref = ddim(guided(cond, unc, 7.5), randn_per_sample(seeds, SHAPE), model.schedule, ks=ks)
    torch.testing.assert_close(traj.x_final, ref)
    torch.testing.assert_close(traj.x_T, randn_per_sample(seeds, SHAPE))
    assert traj.x.shape == (10, 3, *SHAPE) and traj.ks.tolist() == ks
    ab = model.schedule.alphas_cumprod[ks]
    torch.testing.assert_close(traj.alpha_bar, ab)
    # the three x0 estimates are the exact planted ones
    x = model.targets[p]
    torch.testing.assert_close(traj.x0_c(), x.expand_as(traj.x0_c()), atol=2e-4, rtol=0)
    torch.testing.assert_close(traj.x0_u(), torch.zeros_like(traj.x0_u()), atol=2e-4, rtol=0)
    torch.testing.assert_close(traj.x0_g(), (7.5 * x).expand_as(traj.x0_g()), atol=2e-3, rtol=0)


def test_trajectory_round_trip_on_disk(tmp_path):
    model, specs = _specs(1, 0)
    traj = record(model, specs[0].prompt, [0, 1], timesteps(model.schedule, 5), 3.0, path=tmp_path / "t.safetensors")
    back = Trajectory.load(tmp_path / "t.safetensors")
    for k in Trajectory._KEYS:
        torch.testing.assert_close(getattr(back, k), getattr(traj, k))
    assert back.prompt == specs[0].prompt
    with pytest.raises(FileNotFoundError, match="no recorded trajectory at"):
        Trajectory.load(tmp_path / "missing.safetensors")


def test_recorder_guides_with_sampling_cfg_mix(monkeypatch):
    """The guided prediction is diffmem.sampling.cfg_mix, once per step, with the step's scale."""
    assert recorder.cfg_mix is sampling.cfg_mix
    seen = []

    def spy(eps_u, eps_c, scale):
        seen.append(scale if isinstance(scale, float) else "tensor")
        return sampling.cfg_mix(eps_u, eps_c, scale)

    monkeypatch.setattr(recorder, "cfg_mix", spy)
    model, specs = _specs(1, 1)
    p = specs[0].prompt
    ks = timesteps(model.schedule, 6)
    scales = [0.0, -1.0, 7.5, 7.5, 7.5, 7.5]
    traj = record(model, p, [0, 1], ks, scales)
    assert seen == scales
    seen.clear()
    final = sample_final(model, p, [0, 1], ks, scales)
    assert seen == scales
    torch.testing.assert_close(final, traj.x_final, rtol=0, atol=0)
    # the stored guided prediction is the same mix of the stored branches (float64)
    g = torch.tensor(scales, dtype=torch.float64).reshape(-1, 1, 1, 1, 1)
    want = sampling.cfg_mix(traj.eps_u.double(), traj.eps_c.double(), g)
    torch.testing.assert_close(traj.eps_g(), want, rtol=1e-15, atol=0)
    # and the recorded latents are those of DDIM guided by that mix (float32), step by step
    x_prev = []

    def guided_eps(x, t):
        eps_c, eps_u = model.predict(x, t, p)
        return sampling.cfg_mix(eps_u, eps_c, scales[len(x_prev)])

    ddim(
        guided_eps, randn_per_sample([0, 1], SHAPE), model.schedule, ks=ks, observer=lambda st: x_prev.append(st.x_prev)
    )
    torch.testing.assert_close(torch.stack(x_prev[:-1]), traj.x[1:], rtol=0, atol=0)
    torch.testing.assert_close(x_prev[-1], traj.x_final, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- analyses
def test_overestimation_equals_g_when_memorized_and_zero_otherwise():
    model, specs = _specs(1, 1)
    ks = timesteps(model.schedule, 20)
    for g in (1.0, 3.0, 7.5):
        for spec, want in ((specs[0], g), (specs[1], 0.0)):
            traj = record(model, spec.prompt, [0, 1, 2, 3], ks, g)
            x = model.encode(spec.image[None])[0].double()
            for first in (1, 3):
                a = analysis.overestimation(traj.x0_g()[:first], traj.x0_u()[:first], x)
                assert a == pytest.approx(want, abs=1e-3 * max(1.0, g))


def test_overestimation_least_squares_against_numpy():
    rng = np.random.default_rng(1)
    x0g, mu, x = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7)), rng.normal(size=7)
    A = (x[None, None] - mu).reshape(-1, 1)
    b = (x0g - mu).reshape(-1)
    want = np.linalg.lstsq(A, b, rcond=None)[0][0]
    assert analysis.overestimation(torch.tensor(x0g), torch.tensor(mu), torch.tensor(x)) == pytest.approx(
        want, rel=1e-12
    )


def test_loss_identity_and_cfg_loss_of_a_memorizer():
    model, specs = _specs(1, 0)
    p = specs[0].prompt
    ks = timesteps(model.schedule, 10)
    g = 7.5
    traj = record(model, p, [0, 1, 2], ks, g)
    x = model.targets[p]
    ab = traj.alpha_bar.numpy()
    lg = analysis.trajectory_loss(traj.x, traj.eps_g(), x, ab)
    lc = analysis.trajectory_loss(traj.x, traj.eps_c, x, ab)
    # loss = ab/(1-ab) |x0_hat - x|^2 (mean over coordinates and seeds)
    via_x0 = ab / (1 - ab) * ((traj.x0_g() - x) ** 2).flatten(2).mean(-1).mean(-1).numpy()
    np.testing.assert_allclose(lg, via_x0, rtol=1e-6)
    # the memorizer's conditional branch is exact (loss 0); guidance overestimates by g:
    # x0_g - x = (g - 1) x  =>  loss_g = ab/(1-ab) (g-1)^2 mean(x^2)
    np.testing.assert_allclose(lc, 0.0, atol=1e-6)
    np.testing.assert_allclose(lg, ab / (1 - ab) * (g - 1) ** 2 * float((x**2).mean()), rtol=2e-3)


def test_decompose_matches_brute_force_lstsq():
    rng = np.random.default_rng(0)
    steps, S, d = 4, 3, 10
    x, xT = rng.normal(size=d), rng.normal(size=(S, d))
    w0, wT = rng.normal(size=(steps, S)), rng.normal(size=(steps, S))
    xs = w0[..., None] * x + wT[..., None] * xT + 0.1 * rng.normal(size=(steps, S, d))
    a0, aT, rmse = analysis.decompose(torch.tensor(xs), torch.tensor(x), torch.tensor(xT))
    for i in range(steps):
        for s in range(S):
            A = np.stack([x, xT[s]], 1)
            coef, *_ = np.linalg.lstsq(A, xs[i, s], rcond=None)
            assert a0[i, s] == pytest.approx(coef[0], rel=1e-9, abs=1e-12)
            assert aT[i, s] == pytest.approx(coef[1], rel=1e-9, abs=1e-12)
            assert rmse[i, s] == pytest.approx(np.sqrt(np.mean((xs[i, s] - A @ coef) ** 2)), rel=1e-9)
    # exact planted weights, no residual
    b0, bT, r = analysis.decompose(
        torch.tensor(w0[..., None] * x + wT[..., None] * xT), torch.tensor(x), torch.tensor(xT)
    )
    np.testing.assert_allclose(b0, w0, rtol=1e-10)
    np.testing.assert_allclose(bT, wT, rtol=1e-10)
    np.testing.assert_allclose(r, 0, atol=1e-10)


def test_deviations_vanish_on_the_theoretical_schedule():
    sched = scaled_linear()
    ks = timesteps(sched, 25)
    ab = sched.alphas_cumprod[ks].numpy()
    rng = np.random.default_rng(2)
    x, xT = rng.normal(size=(1, 4, 4)), rng.normal(size=(5, 1, 4, 4))
    xs = np.sqrt(ab)[:, None, None, None, None] * x + np.sqrt(1 - ab)[:, None, None, None, None] * xT[None]
    w0, wT, _ = analysis.decompose(torch.tensor(xs), torch.tensor(x), torch.tensor(xT))
    d1, d2 = analysis.deviations(w0, wT, ab)
    assert d1 == pytest.approx(0, abs=1e-10) and d2 == pytest.approx(0, abs=1e-10)
    # shifting w0 up by 0.1 at every step gives D1 = 0.1 * steps
    d1, d2 = analysis.deviations(w0 + 0.1, wT - 0.2, ab)
    assert d1 == pytest.approx(0.1 * len(ks)) and d2 == pytest.approx(0.2 * len(ks))


def test_decomposition_of_a_memorizer_follows_the_unrolled_ddim_coefficients():
    # conditional-only sampling of an exact memorizer keeps eps fixed at its first value, so
    # x_k = sqrt(ab_k) x + sqrt(1-ab_k) (x_T - sqrt(ab_0) x)/sqrt(1-ab_0) exactly
    model, specs = _specs(1, 0)
    p = specs[0].prompt
    ks = timesteps(model.schedule, 12)
    traj = record(model, p, [7, 8], ks, 1.0)
    x = model.targets[p]
    w0, wT, rmse = analysis.decompose(traj.x, x, traj.x_T)
    ab = traj.alpha_bar.numpy()
    want0 = np.sqrt(ab) - np.sqrt(1 - ab) * np.sqrt(ab[0]) / np.sqrt(1 - ab[0])
    wantT = np.sqrt(1 - ab) / np.sqrt(1 - ab[0])
    np.testing.assert_allclose(w0, np.repeat(want0[:, None], 2, 1), atol=1e-5)
    np.testing.assert_allclose(wT, np.repeat(wantT[:, None], 2, 1), atol=1e-5)
    assert rmse.max() < 1e-5


def test_pairwise_distance_and_cosine_against_brute_force():
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(3, 5, 2, 3))
    got = analysis.pairwise_distance(torch.tensor(xs))
    for t in range(3):
        flat = xs[t].reshape(5, -1)
        want = np.mean([np.linalg.norm(flat[i] - flat[j]) / np.sqrt(6) for i in range(5) for j in range(i + 1, 5)])
        assert got[t] == pytest.approx(want, rel=1e-10)
    flat = xs[0].reshape(5, -1)
    want = np.mean(
        [
            flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
            for i in range(5)
            for j in range(i + 1, 5)
        ]
    )
    assert analysis.pairwise_cosine(torch.tensor(xs[0])) == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="2 seeds"):
        analysis.pairwise_distance(torch.zeros(2, 1, 4))
    assert analysis.convergence(np.array([2.0, 1.0, 0.5]), 2) == pytest.approx(0.75)


def test_cosines_of_planted_noise_predictions():
    x = torch.tensor([1.0, 0.0, 0.0])
    xT = torch.tensor([[0.0, 1.0, 0.0]])
    eps_c = torch.tensor([[[1.0, 1.0, 0.0]]])
    eps_u = torch.tensor([[[0.0, -1.0, 0.0]]])
    c = analysis.cosine_curves(eps_c, eps_u, x, xT)
    assert c["cos_epsc_x"][0] == pytest.approx(1 / math.sqrt(2))
    assert c["cos_epsu_x"][0] == pytest.approx(0.0)
    assert c["cos_epsc_xT"][0] == pytest.approx(1 / math.sqrt(2))
    assert c["cos_epsu_xT"][0] == pytest.approx(-1.0)
    assert c["cos_guidance_x"][0] == pytest.approx(-1 / math.sqrt(5))  # eps_u - eps_c = (-1, -2, 0)


def test_correlations_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(4)
    a = rng.normal(size=30)
    b = 0.7 * a + rng.normal(size=30)
    out = analysis.correlations({"s": a, "const": np.ones(30)}, b, n_boot=200, seed=1)
    assert out["s"]["pearson"] == pytest.approx(stats.pearsonr(a, b)[0], rel=1e-12)
    assert out["s"]["spearman"] == pytest.approx(stats.spearmanr(a, b)[0], rel=1e-12)
    lo, hi = out["s"]["pearson_ci"]
    assert lo < out["s"]["pearson"] < hi
    assert out["const"]["pearson"] is None
    assert analysis.correlations({"s": a}, b, n_boot=200, seed=1) == {"s": out["s"]}  # seeded


# ------------------------------------------------------------------------------------- detectors
def test_roc_table_against_sklearn_and_brute_force_tpr():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    labels = ["memorized"] * 20 + ["normal"] * 150 + ["partial"] * 10
    s = np.concatenate([rng.normal(2, 1, 20), rng.normal(0, 1, 150), rng.normal(1, 1, 10)])
    s[3] = s[40]  # a tie across classes
    t = roc_table({"d": s}, labels)["d"]
    y = np.array([1] * 20 + [0] * 150)
    assert t["auroc"] == pytest.approx(roc_auc_score(y, s[:170]))
    assert (t["n_pos"], t["n_neg"]) == (20, 150)
    # brute force: best TPR over thresholds with at most 1% false positives
    best = 0.0
    for thr in np.unique(s[:170]):
        pred = s[:170] >= thr
        if pred[20:].mean() <= 0.01:
            best = max(best, pred[:20].mean())
    assert t["tpr_at_1fpr"] == pytest.approx(best)
    assert tpr_at_fpr(y, s[:170]) == pytest.approx(best)
    t2 = roc_table({"d": s}, labels, positive=("memorized", "partial"))["d"]
    assert t2["n_pos"] == 30
    assert roc_table({"d": s[:20]}, labels[:20])["d"]["auroc"] is None  # no negatives
    assert detector_costs(50, 8, 1, 50) == {
        "wen_first": 16,
        "wen_mean": 800,
        "seed_collapse": 16,
        "convergence": 800,
        "overestimation_a": 16,
        "D1": 800,
        "D2": 800,
    }


# ------------------------------------------------------------------------------------- severity, mitigation
def test_pixel_cosine_is_pearson_correlation_of_pixels():
    rng = np.random.default_rng(6)
    ref = torch.tensor(rng.random((1, 8, 8)))
    gen = torch.tensor(rng.random((3, 1, 8, 8)))
    gen[0] = 0.5 * ref + 0.2  # brightness/contrast change of the reference
    sev = PixelCosine()(gen, ref)
    for i in range(3):
        assert sev[i] == pytest.approx(np.corrcoef(gen[i].reshape(-1), ref.reshape(-1))[0, 1], rel=1e-9)
    assert sev[0] == pytest.approx(1.0)
    # RGB generated vs grayscale reference at another size: grayscale + resize
    rgb = ref.repeat(3, 1, 1).float().repeat_interleave(2, -1).repeat_interleave(2, -2)[None]
    assert PixelCosine()(rgb, ref)[0] > 0.9
    with pytest.raises(ValueError, match=r"threshold must lie in \[-1, 1\], got 2.0"):
        PixelCosine(threshold=2.0)


def test_guidance_schedules_and_mitigation_table():
    assert guidance_schedule("constant", 7.5, 4) == [7.5] * 4
    assert guidance_schedule("conditional_only", 7.5, 3) == [1.0] * 3
    assert guidance_schedule("no_early_guidance", 7.5, 5, 2, 0.0) == [0.0, 0.0, 7.5, 7.5, 7.5]
    assert guidance_schedule("negative_early_guidance", 7.5, 3, 1, -1.0) == [-1.0, 7.5, 7.5]
    with pytest.raises(ValueError, match="unknown guidance schedule 'bogus'"):
        guidance_schedule("bogus", 7.5, 3)
    with pytest.raises(ValueError, match=r"transition must be in \[0, 3\], got 4"):
        guidance_schedule("constant", 7.5, 3, 4)
    prompts = [
        {"label": "memorized", "mitigation": {"constant": {"severity": [1.0, 0.8], "fidelity": [1.0, 0.0]}}},
        {"label": "normal", "mitigation": {"constant": {"severity": [0.2, 0.4], "fidelity": [float("nan")] * 2}}},
    ]
    t = mitigation_table(prompts, 0.9)["constant"]
    assert t["memorized"] == {"prompts": 1, "severity": pytest.approx(0.9), "copy_rate": 0.5, "fidelity": 0.5}
    assert t["normal"]["fidelity"] is None and t["all"]["severity"] == pytest.approx(0.6)


# ------------------------------------------------------------------------------------- run_audit
def _small_cfg(**kw):
    return AuditConfig(**{"steps": 6, "seeds": 3, "n_boot": 50, **kw})


def _strip(res):
    res = res.to_dict()
    res.pop("timings")
    for p in res["prompts"]:
        p.pop("seconds")
    return res


def test_run_audit_on_planted_models(tmp_path):
    model, specs = _specs(3, 3, 2)
    res = run_audit(model, specs, _small_cfg(), tmp_path / "a", progress=False)
    assert isinstance(res, AuditResult)
    by = {p["key"]: p for p in res.prompts}
    for k in ("m0", "m1", "m2"):
        assert by[k]["overestimation_a"] == pytest.approx(7.5, rel=1e-3)
        assert by[k]["severity"] > 0.8  # guided x0 = 7.5 x, clamped to [0, 1]: the same pattern, saturated
        assert by[k]["final_distance"] < 1e-3  # every seed lands on the same sample
    for k in ("n0", "n1", "n2"):
        assert by[k]["overestimation_a"] == pytest.approx(0.0, abs=1e-4)
        assert by[k]["severity"] == 0.0  # x0 = mu = mid-gray: no pattern at all
    assert res.detectors["overestimation_a"]["auroc"] == 1.0
    assert res.detectors["overestimation_a"]["n_pos"] == 3 and res.detectors_with_partial["D1"]["n_pos"] == 5
    assert set(res.mitigation) == {"constant", "conditional_only", "no_early_guidance", "negative_early_guidance"}
    for f in (
        "audit.json",
        "report.html",
        "figures/roc.png",
        "figures/decomposition.png",
        "figures/mitigation.png",
        "prompts/m0.json",
        "trajectories/m0.safetensors",
        "audit_config.json",
    ):
        assert (tmp_path / "a" / f).is_file(), f
    html = (tmp_path / "a" / "report.html").read_text()
    assert "data:image/png;base64," in html
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["summary"]["memorized"]["prompts"] == 3
    # audit.json is exactly the result's to_dict(), which reads back into an equal result
    assert saved == res.to_dict()
    assert list(saved) == [
        "config",
        "model",
        "severity_metric",
        "timesteps",
        "seeds",
        "summary",
        "detectors",
        "detectors_with_partial",
        "correlations",
        "mitigation",
        "mean_curves",
        "prompts",
        "timings",
    ]
    assert AuditResult.from_dict(saved) == res
    # the result cannot be changed through what to_dict() hands out
    d = res.to_dict()
    d["summary"]["memorized"]["prompts"] = -1
    assert res.summary["memorized"]["prompts"] == 3
    with pytest.raises(ValueError, match=r"not an audit result: missing \['timings'\]"):
        AuditResult.from_dict({k: v for k, v in saved.items() if k != "timings"})


class _InterruptError(Exception):
    pass


class _Breaking:
    """Wraps a model and raises once ``limit`` prompts have started."""

    def __init__(self, model, limit):
        self.m, self.limit, self.seen = model, limit, []
        self.latent_shape, self.schedule = model.latent_shape, model.schedule

    def predict(self, x, t, prompt):
        if prompt not in self.seen:
            self.seen.append(prompt)
        if len(self.seen) > self.limit:
            raise _InterruptError
        return self.m.predict(x, t, prompt)

    def encode(self, p):
        return self.m.encode(p)

    def decode(self, z):
        return self.m.decode(z)


def test_resume_after_interruption_gives_the_same_results(tmp_path):
    model, specs = _specs(3, 3)
    cfg = _small_cfg()
    full = run_audit(model, specs, cfg, tmp_path / "full", progress=False)
    broken = _Breaking(model, 2)
    broken.to_dict = lambda: {"kind": "Planted"}
    model.to_dict = lambda: {"kind": "Planted"}
    with pytest.raises(_InterruptError):
        run_audit(broken, specs, cfg, tmp_path / "resume", progress=False)
    assert sorted(p.name for p in (tmp_path / "resume" / "prompts").glob("*.json")) == ["m0.json", "m1.json"]
    model.calls.clear()
    res = run_audit(model, specs, cfg, tmp_path / "resume", progress=False)
    assert {p for p, _ in model.calls} == {s.prompt for s in specs[2:]}  # finished prompts not recomputed
    assert res.timings["prompts_reused"] == 2 and res.timings["prompts_computed"] == 4
    a, b = _strip(full), _strip(res)
    a["model"], b["model"] = {}, {}
    assert a == b


def test_bad_input_is_refused(tmp_path):
    model, specs = _specs(1, 1)
    with pytest.raises(ValueError, match="no prompts"):
        run_audit(model, [], _small_cfg(), tmp_path / "x", progress=False)
    for bad, message in (
        ({"guidance": -1.0}, r"guidance must lie in \[0, 50\]"),
        ({"guidance": 51.0}, r"guidance must lie in \[0, 50\]"),
        ({"steps": 0}, r"steps must be an integer in \[1, 1000\], got 0"),
        ({"steps": 1001}, r"steps must be an integer in \[1, 1000\], got 1001"),
        ({"seeds": 1}, "seeds must be an integer >= 2"),
        ({"first_steps": 7}, r"first_steps must be in \[1, steps=6\], got 7"),
        ({"converge_step": 0}, r"converge_step must be in \[1, steps=6\]"),
        ({"mitigation_transition": 1.5}, r"mitigation transition is a fraction of the steps in \[0, 1\], got 1.5"),
        ({"spacing": "uniform"}, "spacing must be 'leading', 'trailing' or 'linspace'"),
    ):
        with pytest.raises(ValueError, match=message):
            run_audit(model, specs, _small_cfg(**bad), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_audit(model, [specs[0], specs[0]], _small_cfg(), tmp_path / "x", progress=False)
    run_audit(model, specs, _small_cfg(mitigation=False), tmp_path / "y", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        run_audit(model, specs, _small_cfg(mitigation=False, guidance=5.0), tmp_path / "y", progress=False)
    renamed = [PromptSpec("another prompt", specs[0].image, "memorized", key=specs[0].key)]
    model.targets["another prompt"] = model.targets[specs[0].prompt]
    with pytest.raises(ValueError, match="stable unique keys"):
        run_audit(model, renamed, _small_cfg(mitigation=False), tmp_path / "y", progress=False)


# ------------------------------------------------------------------------------------- CLI + testbed
def test_cli_dry_run_and_errors(capsys):
    from diffmem.cli import main

    assert main(["audit", "--dry-run", "--steps", "20", "--guidance", "3"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["audit"]["steps"] == 20 and plan["audit"]["guidance"] == 3.0 and plan["model"] == "testbed"
    assert plan["testbed"]["steps"] > 0
    assert main(["audit", "--dry-run", "--guidance", "-1"]) == 2
    assert (
        "error: guidance must lie in [0, 50] (Stable Diffusion's default is 7.5), got -1.0" in capsys.readouterr().err
    )
    assert main(["audit", "--dry-run", "--steps", "0"]) == 2
    assert "error: steps must be an integer in [1, 1000], got 0" in capsys.readouterr().err
    assert main(["audit", "--dry-run", "--testbed-width", "0"]) == 2
    assert "error: width must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["audit", "--model", "/no/such/folder", "--manifest", "m.csv", "--out", "/tmp/unused"]) == 2
    err = capsys.readouterr().err
    assert "--model must be 'testbed' or a local diffusers pipeline folder; /no/such/folder is not a folder" in err
    assert main(["audit", "--manifest", "m.csv", "--out", "/tmp/unused"]) == 2
    assert "--manifest is for a pipeline folder; the testbed brings its own prompts" in capsys.readouterr().err


def test_cli_keeps_every_flag_name(capsys):
    """Every flag of the audit command keeps its name, and lands in the configuration field it names."""
    from diffmem.cli import main

    argv = ["audit", "--dry-run", "--quiet", "--model", "testbed", "--out", "/tmp/unused", "--seed", "3"]
    argv += ["--guidance", "2.5", "--steps", "12", "--seeds", "3", "--first-steps", "2", "--converge-step", "5"]
    argv += ["--n-boot", "7", "--transition", "0.5", "--early-scale", "0.25", "--negative-scale", "-2"]
    argv += ["--no-mitigation", "--no-trajectories", "--testbed-steps", "40", "--testbed-width", "16"]
    argv += ["--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["audit"] == {
        "guidance": 2.5,
        "steps": 12,
        "seeds": 3,
        "seed": 3,
        "first_steps": 2,
        "converge_step": 5,
        "spacing": "leading",
        "n_boot": 7,
        "mitigation": False,
        "mitigation_transition": 0.5,
        "mitigation_early_scale": 0.25,
        "mitigation_negative_scale": -2.0,
        "save_trajectories": False,
    }
    assert (plan["testbed"]["steps"], plan["testbed"]["width"], plan["testbed"]["seed"]) == (40, 16, 3)
    assert (plan["model"], plan["out"], plan["device"]) == ("testbed", "/tmp/unused", "cpu")
    # without flags: the configurations' own defaults
    assert main(["audit", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    from diffmem.audit.testbed import TestbedConfig
    from diffmem.config import to_dict

    assert plan["audit"] == to_dict(AuditConfig()) and plan["testbed"] == to_dict(TestbedConfig())


def test_cli_end_to_end_on_a_tiny_testbed(tmp_path, capsys):
    from diffmem.cli import main

    args = [
        "audit",
        "--out",
        str(tmp_path),
        "--testbed-steps",
        "60",
        "--testbed-width",
        "32",
        "--steps",
        "4",
        "--seeds",
        "2",
        "--n-boot",
        "20",
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for text in ("per label", "AUROC", "TPR@1%FPR", "Pearson", "mitigation", "wall time"):
        assert text in out
    res = json.loads((tmp_path / "audit.json").read_text())
    assert [res["summary"][k]["prompts"] for k in ("memorized", "partial", "normal")] == [12, 12, 30]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "testbed" / "weights.safetensors").is_file()
    # a second run reuses the testbed and every prompt
    assert main(args) == 0
    assert "0 prompts computed, 54 reused" in capsys.readouterr().out


def test_testbed_is_deterministic_and_reused(tmp_path):
    from diffmem.audit.testbed import TestbedConfig, build_testbed

    cfg = TestbedConfig(steps=20, width=16, resume_every=10)
    m1, specs = build_testbed(tmp_path / "a", seed=3, progress=False, config=cfg)
    m2, _ = build_testbed(tmp_path / "b", seed=3, progress=False, config=cfg)
    for k, v in m1.net.state_dict().items():
        torch.testing.assert_close(v, m2.net.state_dict()[k], rtol=0, atol=0)
    _, specs3 = build_testbed(tmp_path / "a", seed=3, progress=False, config=cfg)  # reuse
    assert [s.prompt for s in specs3] == [s.prompt for s in specs]
    labels = [s.label for s in specs]
    assert labels.count("memorized") == 12 and labels.count("partial") == 12 and labels.count("normal") == 30
    assert len({s.key for s in specs}) == len(specs)
    # memorized and partial captions own their images; the reference is the caption's first image
    caps = m1.captions
    owned = [i for c in caps if c.label != "normal" for i in c.images]
    assert len(owned) == len(set(owned))
    x = torch.randn(4, *m1.latent_shape)
    ec, eu = m1.predict(x, torch.full((4,), 500.0), specs[0].prompt)
    assert ec.shape == eu.shape == x.shape and not torch.allclose(ec, eu)
    torch.testing.assert_close(m1.decode(m1.encode(specs[0].image[None])), specs[0].image[None], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="knows no caption"):
        m1.predict(x, torch.zeros(4), "not a caption")
    with pytest.raises(ValueError, match="another configuration"):
        build_testbed(tmp_path / "a", seed=4, progress=False, config=cfg)
    assert prompt_seeds(0, 3) == [0, 1, 2] and prompt_seeds(1, 2) == [100003, 100004]


def test_testbed_training_resumes_exactly(tmp_path, monkeypatch):
    from diffmem.audit import testbed

    cfg = testbed.TestbedConfig(steps=30, width=16, resume_every=10)
    ref, _ = testbed.build_testbed(tmp_path / "ref", progress=False, config=cfg)
    real_lr = testbed._lr

    def breaking_lr(c, step):
        if step == 25:
            raise KeyboardInterrupt
        return real_lr(c, step)

    monkeypatch.setattr(testbed, "_lr", breaking_lr)
    with pytest.raises(KeyboardInterrupt):
        testbed.build_testbed(tmp_path / "cut", progress=False, config=cfg)
    assert not (tmp_path / "cut" / "weights.safetensors").exists()
    # the state of step 20 (the last multiple of resume_every): model, optimizer and the loop's generator only
    st, _ = io.load_tensors(tmp_path / "cut" / "state.safetensors")
    assert int(st["step"]) == 20 and "rng.loop" in st and "rng.torch" not in st
    assert {k.split(".")[0] for k in st} == {"model", "optim", "rng", "step"}
    monkeypatch.setattr(testbed, "_lr", real_lr)
    resumed, _ = testbed.build_testbed(tmp_path / "cut", progress=False, config=cfg)
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0)


def test_testbed_refuses_a_training_state_of_an_older_layout(tmp_path):
    from diffmem.audit.testbed import TestbedConfig, build_testbed

    folder = tmp_path / "old"
    folder.mkdir()
    old = {"net.w": torch.zeros(2), "opt.0.step": torch.tensor(3.0), "rng": torch.Generator().get_state()}
    io.save_tensors(folder / "state.safetensors", {**old, "step": torch.tensor(10)})
    cfg = TestbedConfig(steps=20, width=8, resume_every=10)
    with pytest.raises(ValueError, match=r"state\.safetensors was written by an older diffmem.*delete it"):
        build_testbed(folder, progress=False, config=cfg)
