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
    costs = detector_costs(50, 8, 1, 50)
    assert {k: costs[k] for k in ("wen_first", "wen_mean", "seed_collapse", "convergence", "overestimation_a")} == {
        "wen_first": 16,
        "wen_mean": 800,
        "seed_collapse": 16,
        "convergence": 800,
        "overestimation_a": 16,
    }
    assert costs["D1"] == costs["D2"] == costs["D1_final"] == costs["D1_final_early"] == 800
    early = detector_costs(50, 8, 2, 50, early_steps=10)
    assert (early["wen_early"], early["D1_early"], early["D1_final_early"], early["q"]) == (160, 160, 800, 32)
    # against the final sample even the early deviations need the whole trajectory
    assert detector_costs(50, 8, 1, 50, early_steps=10, final_reference=True)["D1_early"] == 800


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
        "summary_by_group",
        "detectors_partial_vs_normal",
        "detectors_memorized_vs_partial",
        "correlations_within_label",
        "mitigation_by_group",
        "mitigation_outcome",
        "decomposition",
        "reference_curves",
    ]
    # an audit.json written before the later keys existed still reads back
    old = {k: saved[k] for k in list(saved)[:13]}
    assert AuditResult.from_dict(old).timings == res.timings
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
    argv += ["--early-fraction", "0.3", "--decompose-against", "final", "--reference-curves", "ddim_exact"]
    argv += ["--mitigation-min-drop", "0.2", "--testbed-partial-sizes", "2", "3", "--testbed-n-guided", "4"]
    argv += ["--testbed-guided-size", "3", "--testbed-guided-weight", "2", "--testbed-guided-members", "same_digit"]
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
        "early_fraction": 0.3,
        "decompose_against": "final",
        "reference_curves": "ddim_exact",
        "mitigation_min_drop": 0.2,
    }
    assert (plan["testbed"]["steps"], plan["testbed"]["width"], plan["testbed"]["seed"]) == (40, 16, 3)
    tb = plan["testbed"]
    assert (tb["partial_sizes"], tb["n_guided"], tb["guided_size"], tb["guided_weight"]) == ([2, 3], 4, 3, 2)
    assert tb["guided_members"] == "same_digit" and tb["partial_size"] is None
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
    assert [res["summary"][k]["prompts"] for k in ("memorized", "partial", "normal")] == [12, 24, 30]
    groups = res["summary_by_group"]
    assert {g: groups[g]["prompts"] for g in groups} == {
        "point_mass": 12,
        "cluster_2": 3,
        "cluster_4": 3,
        "cluster_8": 3,
        "cluster_16": 3,
        "guidance_cluster": 12,
        "digit": 10,
        "scanner": 20,
    }
    out_g = res["mitigation_outcome"]["groups"]
    assert res["mitigation_outcome"]["min_severity_drop"] == 0.1
    assert set(out_g["guidance_cluster"]) == {"conditional_only", "no_early_guidance", "negative_early_guidance"}
    r = out_g["point_mass"]["no_early_guidance"]
    assert r["drop"] == pytest.approx(r["severity_constant"] - r["severity"]) and r["mitigated"] == (r["drop"] >= 0.1)
    for text in ("within each label", "mitigation outcome per group", "partial (positive) vs normal"):
        assert text in out
    assert (tmp_path / "report.html").is_file() and (tmp_path / "testbed" / "weights.safetensors").is_file()
    # a second run reuses the testbed and every prompt
    assert main(args) == 0
    assert "0 prompts computed, 66 reused" in capsys.readouterr().out


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
    assert labels.count("memorized") == 12 and labels.count("partial") == 24 and labels.count("normal") == 30
    assert len({s.key for s in specs}) == len(specs)
    # memorized and partial captions own their images; the reference is the caption's first image
    caps = m1.captions
    owned = [i for c in caps if c.label != "normal" for i in set(c.images)]
    assert len(owned) == len(set(owned))
    assert [s.group for s in specs] == [c.group for c in caps]
    # graded clusters: sizes cycle through 2, 4, 8, 16; the anchor's nearest same-digit neighbours
    from sklearn.datasets import load_digits

    digit_of = load_digits().target
    graded = [c for c in caps if c.group.startswith("cluster_")]
    assert [len(c.images) for c in graded] == [2, 4, 8, 16] * 3
    assert all(
        c.group == f"cluster_{len(c.images)}" and {int(digit_of[i]) for i in c.images} == {c.digit} for c in graded
    )
    # guidance-created: the reference listed 3 times, then one image of each of the digits d+3, d+6, d+9
    guided = [c for c in caps if c.group == "guidance_cluster"]
    assert len(guided) == 12
    for c in guided:
        ref, others = c.images[0], c.images[3:]
        assert c.images[:3] == (ref,) * 3 and len(others) == 3 and ref not in others
        d = int(digit_of[ref])
        assert [int(digit_of[i]) for i in others] == [(d + 3) % 10, (d + 6) % 10, (d + 9) % 10]
        assert c.digits == tuple(sorted({d, (d + 3) % 10, (d + 6) % 10, (d + 9) % 10})) and c.digit == -1
    same = build_testbed(
        tmp_path / "same", seed=3, progress=False, config=TestbedConfig(steps=1, width=8, guided_members="same_digit")
    )[0]
    for c in (c for c in same.captions if c.group == "guidance_cluster"):
        assert {int(digit_of[i]) for i in c.images} == {c.digit} and len(set(c.images)) == 4
    # fidelity: a sample of any of the caption's digits counts
    from diffmem.data import digits as load

    px = load().pixels
    c = guided[0]
    got = m1.fidelity(c.text, px[[c.images[0], c.images[3]]])
    want = np.isin(m1._classifier(px[[c.images[0], c.images[3]]]), c.digits).astype(float)
    np.testing.assert_array_equal(got, want)
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


# ------------------------------------------------------------------------------------- reference curves
def _sd_steps(sched, steps=50):
    """Stable Diffusion's DDIM step indices: leading spacing plus steps_offset 1 (981, 961, ..., 1)."""
    return [k + 1 for k in timesteps(sched, steps, "leading")]


def _oracle(ab_all, r):
    """The eps-prediction of a model whose x0-prediction is r at every step."""

    def eps(x, t):
        ab = ab_all[t.long()].reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * r) / (1 - ab).sqrt()

    return eps


def test_ddim_exact_coefficients_are_what_an_oracle_ddim_run_gives():
    # deterministic DDIM whose x0-prediction is exactly r at every step, in float64
    sched = scaled_linear()
    ab_all = sched.alphas_cumprod
    for ks in (_sd_steps(sched), timesteps(sched, 13, "trailing")):
        g = torch.Generator().manual_seed(0)
        r = torch.randn(1, 4, 4, generator=g, dtype=torch.float64)
        x_T = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
        seen: list[torch.Tensor] = []
        ddim(_oracle(ab_all, r), x_T, sched, ks=ks, observer=lambda st, seen=seen: seen.append(st.x))
        w0, wT, rmse = analysis.decompose(torch.stack(seen), r, x_T)
        e0, eT = analysis.ddim_exact_coefficients(ab_all[ks].numpy())
        np.testing.assert_allclose(w0, np.repeat(e0[:, None], 3, 1), rtol=0, atol=1e-10)
        np.testing.assert_allclose(wT, np.repeat(eT[:, None], 3, 1), rtol=0, atol=1e-10)
        assert rmse.max() < 1e-10
        assert e0[0] == 0 and eT[0] == 1  # the first latent is x_T itself
        # and they are not the forward-process curves: the test can tell the two apart
        s0, _ = analysis.reference_curves(ab_all[ks].numpy(), "sqrt_ab")
        assert np.abs(w0[:, 0] - s0).max() > 0.01


def test_ddim_exact_and_sqrt_ab_differ_by_about_0_08_for_stable_diffusion():
    # SD-1.4: scaled_linear 0.00085..0.012, T = 1000, 50 DDIM steps, leading spacing with offset 1
    sched = scaled_linear(1000, 0.00085, 0.012)
    ks = _sd_steps(sched)
    assert ks[:3] == [981, 961, 941] and ks[-1] == 1
    ab = sched.alphas_cumprod[ks].numpy()
    s0, sT = analysis.reference_curves(ab, "sqrt_ab")
    e0, eT = analysis.reference_curves(ab, "ddim_exact")
    gap = np.abs(s0 - e0)
    # the largest gap is at the first step, where the exact w0 is 0 and sqrt(ab_981) = 0.076
    assert gap.max() == pytest.approx(np.sqrt(ab[0]), rel=1e-12) and gap.argmax() == 0
    assert 0.07 < gap.max() < 0.085
    assert np.abs(sT - eT).max() < 0.005  # wT barely differs
    np.testing.assert_allclose(s0, np.sqrt(ab)) and np.testing.assert_allclose(sT, np.sqrt(1 - ab))
    with pytest.raises(ValueError, match="reference curves must be one of"):
        analysis.reference_curves(ab, "linear")


def test_deviations_against_either_curve_and_over_the_early_steps():
    sched = scaled_linear()
    ab = sched.alphas_cumprod[timesteps(sched, 20)].numpy()
    for kind in analysis.REFERENCE_CURVES:
        r0, rT = analysis.reference_curves(ab, kind)
        w0 = np.repeat(r0[:, None], 4, 1) + 0.05
        wT = np.repeat(rT[:, None], 4, 1) - 0.02
        assert analysis.deviations(w0, wT, ab, kind) == pytest.approx((0.05 * 20, 0.02 * 20))
        assert analysis.deviations(w0, wT, ab, kind, steps=4) == pytest.approx((0.05 * 4, 0.02 * 4))
    # a seed with an undefined decomposition (NaN) is left out of the mean
    r0, rT = analysis.reference_curves(ab, "sqrt_ab")
    w0 = np.stack([r0 + 0.1, np.full_like(r0, np.nan)], 1)
    wT = np.stack([rT, np.full_like(rT, np.nan)], 1)
    assert analysis.deviations(w0, wT, ab)[0] == pytest.approx(0.1 * 20)


def test_decompose_against_each_seeds_own_reference_matches_brute_force():
    rng = np.random.default_rng(7)
    steps, S, d = 5, 3, 9
    ref, xT = rng.normal(size=(S, d)), rng.normal(size=(S, d))
    xs = rng.normal(size=(steps, S, d))
    w0, wT, rmse = analysis.decompose(torch.tensor(xs), torch.tensor(ref), torch.tensor(xT))
    for i in range(steps):
        for s in range(S):
            A = np.stack([ref[s], xT[s]], 1)
            coef, *_ = np.linalg.lstsq(A, xs[i, s], rcond=None)
            assert (w0[i, s], wT[i, s]) == pytest.approx(tuple(coef), rel=1e-9, abs=1e-12)
            assert rmse[i, s] == pytest.approx(np.sqrt(np.mean((xs[i, s] - A @ coef) ** 2)), rel=1e-9)
    # a reference that is zero (or collinear with the noise) gives NaN for that seed, or raises
    ref[1] = 0.0
    w0, _, _ = analysis.decompose(torch.tensor(xs), torch.tensor(ref), torch.tensor(xT), degenerate="nan")
    assert np.isnan(w0[:, 1]).all() and np.isfinite(w0[:, [0, 2]]).all()
    with pytest.raises(ValueError, match="collinear"):
        analysis.decompose(torch.tensor(xs), torch.tensor(ref), torch.tensor(xT))


# ------------------------------------------------------------------------------------- overestimation
def test_revised_overestimation_identity_holds_to_1e_10():
    rng = np.random.default_rng(8)
    for g in (7.5, 3.0, 0.0, -1.0):
        x0c, x0u, x = rng.normal(size=(3, 5, 11)), rng.normal(size=(3, 5, 11)), rng.normal(size=11)
        gs = np.array([g, g, g])
        for rows in (slice(0, 1), slice(0, 3)):
            t = analysis.overestimation_terms(
                torch.tensor(x0c[rows]), torch.tensor(x0u[rows]), torch.tensor(x), gs[rows]
            )
            assert t["E_rel"] ** 2 == pytest.approx((t["q"] - 1) ** 2 + t["r_perp"] ** 2, abs=1e-10, rel=0)
            assert t["a_parallel"] == pytest.approx(g * t["q"], abs=1e-12)
            assert t["off_target"] == pytest.approx(abs(g) * t["r_perp"], abs=1e-12)


def test_revised_overestimation_equals_its_closed_forms_on_a_planted_prediction():
    # x0_u = mu for every seed; x0_c = mu + alpha v + beta w with w orthogonal to v = x - mu
    rng = np.random.default_rng(9)
    d, S = 16, 4
    x, mu = rng.normal(size=d), rng.normal(size=d)
    v = x - mu
    w = rng.normal(size=d)
    w -= (w @ v) / (v @ v) * v
    for alpha, beta, g in ((1.0, 0.0, 7.5), (0.6, 0.3, 7.5), (1.2, -0.5, 2.0)):
        x0c = np.broadcast_to(mu + alpha * v + beta * w, (1, S, d))
        x0u = np.broadcast_to(mu, (1, S, d))
        t = analysis.overestimation_terms(torch.tensor(x0c.copy()), torch.tensor(x0u.copy()), torch.tensor(x), g)
        ratio = abs(beta) * np.linalg.norm(w) / np.linalg.norm(v)
        assert t["a_parallel"] == pytest.approx(g * alpha, rel=1e-12)
        assert t["off_target"] == pytest.approx(g * ratio, rel=1e-10, abs=1e-12)
        assert t["q"] == pytest.approx(alpha, rel=1e-12)
        assert t["r_perp"] == pytest.approx(ratio, rel=1e-10, abs=1e-12)
        assert t["E_rel"] == pytest.approx(np.hypot(alpha - 1, ratio), rel=1e-10, abs=1e-12)
        # today's a (centred on the same seed's x0_u) is g times the conditional fit, identically
        x0g = x0u + g * (x0c - x0u)
        a = analysis.overestimation(torch.tensor(x0g), torch.tensor(x0u.copy()), torch.tensor(x))
        a_c = analysis.overestimation(torch.tensor(x0c.copy()), torch.tensor(x0u.copy()), torch.tensor(x))
        assert a == pytest.approx(g * a_c, rel=1e-12) and a_c == pytest.approx(alpha, rel=1e-12)


def test_revised_overestimation_of_a_planted_memorizer():
    model, specs = _specs(1, 1)
    ks = timesteps(model.schedule, 10)
    mem, norm = (analysis.analyze(record(model, s.prompt, [0, 1, 2], ks, 7.5), model.targets[s.prompt]) for s in specs)
    # memorized: the guidance step is exactly g (x - mu): q = 1, nothing off target
    assert mem["q"] == pytest.approx(1.0, abs=1e-3) and mem["a_parallel"] == pytest.approx(7.5, rel=1e-3)
    assert mem["r_perp"] < 1e-3 and mem["E_rel"] < 1e-3 and mem["off_target"] < 1e-2
    # normal: no conditional signal, q = 0 and E_rel = 1
    assert abs(norm["q"]) < 1e-3 and norm["E_rel"] == pytest.approx(1.0, abs=1e-3)


def test_noise_prediction_decomposition_against_its_theory():
    model, specs = _specs(1, 0)
    p = specs[0].prompt
    ks = timesteps(model.schedule, 10)
    x = model.targets[p]
    for g in (1.0, 7.5):
        traj = record(model, p, [0, 1], ks, g)
        w0, wt, _ = analysis.eps_decomposition(traj.eps_g(), traj.x, x)
        t0, tt = analysis.eps_theory(traj.alpha_bar.numpy())
        # eps_g = (x_k - g sqrt(ab) x)/sqrt(1-ab): w0 is g times its theory, wt is its theory
        np.testing.assert_allclose(w0, g * np.repeat(t0[:, None], 2, 1), rtol=2e-3)
        np.testing.assert_allclose(wt, np.repeat(tt[:, None], 2, 1), rtol=2e-3)
        stats = analysis.analyze(traj, x)
        assert stats["eps_w0_ratio_first"] == pytest.approx(g, rel=2e-3)
        assert stats["eps_wt_ratio_early"] == pytest.approx(1.0, rel=2e-3)


# ------------------------------------------------------------------------------------- early steps, blind statistics
def test_early_steps_and_their_bad_input():
    assert analysis.early_steps(50, 0.2) == 10 and analysis.early_steps(6, 0.2) == 2
    assert analysis.early_steps(50, 1.0) == 50 and analysis.early_steps(50, 0.001) == 1
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"early fraction must lie in \(0, 1\]"):
            analysis.early_steps(50, bad)
        with pytest.raises(ValueError, match=r"early_fraction must lie in \(0, 1\]"):
            AuditConfig(early_fraction=bad).validate()


def test_early_statistics_are_the_whole_trajectory_ones_on_the_early_steps():
    model, specs = _specs(1, 1)
    ks = timesteps(model.schedule, 10)
    traj = record(model, specs[1].prompt, [0, 1, 2], ks, 7.5)
    x = model.targets[specs[1].prompt]
    early = analysis.analyze(traj, x, early_fraction=0.3)
    full = analysis.analyze(traj, x, early_fraction=1.0)
    assert early["early_steps"] == 3 and full["early_steps"] == 10
    for a, b in (("D1_early", "D1"), ("D2_early", "D2"), ("D1_final_early", "D1_final"), ("wen_early", "wen_mean")):
        assert full[a] == pytest.approx(full[b], rel=1e-12)
    w0 = np.asarray(early["curves"]["w0"])
    assert early["D1_early"] == pytest.approx(float((w0[:3] - np.sqrt(traj.alpha_bar.numpy()[:3])).sum()), rel=1e-9)
    wen = np.asarray(early["curves"]["wen"])
    assert early["wen_early"] == pytest.approx(wen[:3].mean()) and early["wen_first"] == pytest.approx(wen[0])


def test_final_reference_statistics_cannot_see_the_training_image():
    model, specs = _specs(1, 1)
    ks = timesteps(model.schedule, 8)
    traj = record(model, specs[0].prompt, [0, 1, 2], ks, 7.5)
    x = model.targets[specs[0].prompt]
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with_x, with_other, blind = (analysis.analyze(traj, v) for v in (x, other, None))
    no_image = ("D1_final", "D2_final", "D1_final_early", "D2_final_early", "wen_first", "wen_early", "seed_collapse")
    no_image += ("seed_collapse_early", "convergence", "convergence_early", "final_distance")
    for k in no_image:
        assert with_x[k] == with_other[k] == blind[k], k
    assert with_x["D1_training"] != with_other["D1_training"]  # the training-image statistics do see it
    assert blind["decomposition_reference"] == "final" and blind["D1"] == blind["D1_final"]
    assert with_x["decomposition_reference"] == "training" and with_x["D1"] == with_x["D1_training"]
    for k in ("overestimation_a", "q", "D1_training", "loss_ratio_first", "cos_guidance_x_early"):
        assert blind[k] is None
    assert blind["deviations"]["training"]["sqrt_ab"]["D1"] is None
    assert set(with_x["deviations"]) == {"training", "final"}
    assert set(with_x["deviations"]["final"]) == {"sqrt_ab", "ddim_exact"}
    forced = analysis.analyze(traj, x, decompose_against="final", reference_curves="ddim_exact")
    assert forced["D1"] == forced["deviations"]["final"]["ddim_exact"]["D1"] == forced["D1_final"]
    with pytest.raises(ValueError, match="needs the prompt's training image"):
        analysis.analyze(traj, None, decompose_against="training")


# ------------------------------------------------------------------------------------- correlations, AUROC intervals
def test_bootstrap_intervals_match_a_brute_force_loop():
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    from diffmem.audit.detectors import auroc_interval

    rng = np.random.default_rng(10)
    a = rng.normal(size=25)
    b = 0.5 * a + rng.normal(size=25)
    got = analysis.correlations({"s": a}, b, n_boot=300, seed=3)["s"]
    idx = np.random.default_rng(3).integers(0, 25, (300, 25))
    pb = [stats.pearsonr(a[i], b[i])[0] for i in idx]
    sb = [stats.spearmanr(a[i], b[i])[0] for i in idx]
    assert got["pearson_ci"] == pytest.approx(list(np.quantile(pb, [0.025, 0.975])), rel=1e-9)
    assert got["spearman_ci"] == pytest.approx(list(np.quantile(sb, [0.025, 0.975])), rel=1e-9)
    pos, neg = rng.normal(1, 1, 9), rng.normal(0, 1, 14)
    pos[0] = neg[0]  # a tie
    lo, hi = auroc_interval(pos, neg, 400, np.random.default_rng(4))
    r = np.random.default_rng(4)
    ip, ineg = r.integers(0, 9, (400, 9)), r.integers(0, 14, (400, 14))
    vals = [roc_auc_score([1] * 9 + [0] * 14, np.concatenate([pos[i], neg[j]])) for i, j in zip(ip, ineg)]
    assert [lo, hi] == pytest.approx(list(np.quantile(vals, [0.025, 0.975])), rel=1e-12)
    t = roc_table({"d": np.concatenate([pos, neg])}, ["memorized"] * 9 + ["normal"] * 14, n_boot=400, seed=4)["d"]
    assert t["auroc_ci"] == pytest.approx([lo, hi]) and lo <= t["auroc"] <= hi


def test_correlations_within_each_group():
    rng = np.random.default_rng(11)
    a = rng.normal(size=30)
    b = np.where(np.arange(30) < 15, a, -a) + 0.1 * rng.normal(size=30)
    groups = ["up"] * 15 + ["down"] * 14 + [None]
    out = analysis.correlations_by_group({"s": a}, b, groups, n_boot=100)
    assert set(out) == {"up", "down"} and out["up"]["s"]["n"] == 15 and out["down"]["s"]["n"] == 14
    assert out["up"]["s"]["pearson"] > 0.9 and out["down"]["s"]["pearson"] < -0.9
    assert out["up"]["s"] == analysis.correlations({"s": a[:15]}, b[:15], n_boot=100)["s"]


def test_mitigation_outcome_applies_the_fixed_drop():
    from diffmem.audit.mitigation import mitigation_outcome

    def rec(group, const, sched, fid_c, fid_s):
        return {
            "label": "partial",
            "group": group,
            "mitigation": {
                "constant": {"severity": const, "fidelity": fid_c},
                "no_early_guidance": {"severity": sched, "fidelity": fid_s},
            },
        }

    prompts = [
        rec("cluster", [0.9, 0.9], [0.7, 0.8], [1.0, 1.0], [1.0, 0.0]),
        rec("point", [1.0, 1.0], [0.95, 0.97], [1.0, 1.0], [1.0, 1.0]),
        {"label": "normal", "group": "blind", "mitigation": {"constant": {"severity": None, "fidelity": [1.0]}}},
    ]
    table = mitigation_table(prompts, 0.9, by="group")
    assert "blind" not in table["constant"]  # no training image, no severity
    out = mitigation_outcome(table, 0.1)
    c, pm = out["groups"]["cluster"]["no_early_guidance"], out["groups"]["point"]["no_early_guidance"]
    assert c["drop"] == pytest.approx(0.15) and c["mitigated"] and c["fidelity_cost"] == pytest.approx(0.5)
    assert pm["drop"] == pytest.approx(0.04) and not pm["mitigated"] and pm["fidelity_cost"] == 0
    assert not mitigation_outcome(table, 0.2)["groups"]["cluster"]["no_early_guidance"]["mitigated"]


# ------------------------------------------------------------------------------------- prompts without images
def test_run_audit_with_prompts_without_a_training_image(tmp_path):
    model, specs = _specs(3, 3)
    blind = [PromptSpec(s.prompt, None, s.label, key=s.key) for s in specs]
    res = run_audit(model, blind, _small_cfg(), tmp_path / "blind", progress=False)
    assert res.decomposition["prompts_without_image"] == [s.key for s in specs]
    assert res.decomposition["prompts_by_reference"] == {"training": 0, "final": 6}
    assert "no training image" in res.decomposition["note"]
    by = {p["key"]: p for p in res.prompts}
    for p in by.values():
        assert p["severity"] is None and p["copy_rate"] is None and p["decomposition_reference"] == "final"
        assert p["D1"] == p["D1_final"] and p["overestimation_a"] is None
    # a planted memorizer's guided x0-prediction is g x at every step, so against its own final sample
    # (= g x) the latents follow the exact unrolled DDIM weights: D1 from those curves is 0
    for k in ("m0", "m1", "m2"):
        assert abs(by[k]["deviations"]["final"]["ddim_exact"]["D1"]) < 1e-5
        assert by[k]["D1_final"] == pytest.approx(by[k]["deviations"]["final"]["sqrt_ab"]["D1"])
        assert by[k]["D1_final"] < -0.5  # and below the forward-process curves
    assert not res.detectors["D1_final"]["needs_image"]
    assert not res.detectors["D1"]["needs_image"]  # D1 is made against the final sample here
    assert res.detectors["overestimation_a"]["auroc"] is None
    assert all(r["pearson"] is None for r in res.correlations.values())  # no severity, no correlation
    assert "no training image" in (tmp_path / "blind" / "report.html").read_text()
    # the same prompts with their images: the final-sample statistics are the same numbers
    seen = run_audit(model, specs, _small_cfg(), tmp_path / "seen", progress=False)
    for k in ("D1_final", "D2_final", "D1_final_early", "wen_first", "convergence"):
        assert [p[k] for p in seen.prompts] == [p[k] for p in res.prompts], k
    assert seen.detectors["D1"]["needs_image"] and seen.decomposition["prompts_by_reference"]["training"] == 6
    with pytest.raises(ValueError, match="needs every prompt's training image"):
        run_audit(model, blind, _small_cfg(decompose_against="training"), tmp_path / "t", progress=False)


def test_run_audit_reports_every_new_table(tmp_path):
    model, specs = _specs(3, 3, 3)
    specs = [PromptSpec(s.prompt, s.image, s.label, key=s.key, group=f"g_{s.label}") for s in specs]
    res = run_audit(model, specs, _small_cfg(reference_curves="ddim_exact"), tmp_path / "a", progress=False)
    assert (
        res.detectors_partial_vs_normal["D1"]["n_pos"] == 3 and res.detectors_memorized_vs_partial["D1"]["n_neg"] == 3
    )
    lo, hi = res.detectors["D1_final"]["auroc_ci"]
    assert lo is not None and lo <= res.detectors["D1_final"]["auroc"] <= hi
    assert set(res.correlations_within_label) == {"memorized", "partial", "normal"}
    assert set(res.summary_by_group) == {"g_memorized", "g_partial", "g_normal"}
    assert set(res.mitigation_by_group["constant"]) == {"g_memorized", "g_partial", "g_normal", "all"}
    assert res.reference_curves["max_difference"]["w0"] == pytest.approx(
        model.schedule.alphas_cumprod[res.timesteps[0]].item() ** 0.5
    )
    p = res.prompts[0]
    assert p["D1"] == p["deviations"]["training"]["ddim_exact"]["D1"] and p["reference_curves"] == "ddim_exact"
    for f in ("overestimation.png", "eps_decomposition.png", "decomposition.png"):
        assert (tmp_path / "a" / "figures" / f).is_file()
    with pytest.raises(ValueError, match="reference_curves must be"):
        run_audit(model, specs, _small_cfg(reference_curves="linear"), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="decompose_against must be"):
        run_audit(model, specs, _small_cfg(decompose_against="both"), tmp_path / "b", progress=False)


def test_testbed_config_refuses_bad_cluster_settings():
    from diffmem.audit.testbed import TestbedConfig

    assert TestbedConfig().resolved_partial_sizes == (2, 4, 8, 16)
    assert TestbedConfig(partial_size=4).resolved_partial_sizes == (4,)  # the older single-size flag
    for bad, message in (
        ({"partial_sizes": (1, 4)}, r"partial_sizes must be one or more integers in \[2, 64\]"),
        ({"partial_sizes": ()}, "partial_sizes must be one or more"),
        ({"partial_size": 1}, "partial_size must be an integer >= 2"),
        ({"n_guided": 21}, r"n_guided must be in \[0, 20\]"),
        ({"guided_size": 1}, r"guided_size must be an integer in \[2, 32\]"),
        ({"guided_size": 5}, "at most 4 with guided_members='other_digits'"),
        ({"guided_weight": 0}, r"guided_weight must be an integer in \[1, 32\]"),
        ({"guided_members": "mixed"}, "guided_members must be"),
    ):
        with pytest.raises(ValueError, match=message):
            TestbedConfig(**bad).validate()


def test_cli_early_fraction_and_pipeline_seed_defaults(capsys, tmp_path):
    from diffmem.cli import main

    assert main(["audit", "--dry-run", "--early-fraction", "0"]) == 2
    assert "early_fraction must lie in (0, 1]" in capsys.readouterr().err
    assert main(["audit", "--dry-run", "--early-fraction", "1.5"]) == 2
    capsys.readouterr()
    # a pipeline audit defaults to the paper's 20 seeds per prompt; the testbed keeps its 8
    assert main(["audit", "--dry-run", "--model", str(tmp_path), "--manifest", "m.csv"]) == 0
    assert json.loads(capsys.readouterr().out)["audit"]["seeds"] == 20
    assert main(["audit", "--dry-run", "--model", str(tmp_path), "--manifest", "m.csv", "--seeds", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["audit"]["seeds"] == 4
    assert main(["audit", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["audit"]["seeds"] == 8
    assert main(["audit", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--images is for a pipeline manifest" in capsys.readouterr().err
