import math

import numpy as np
import pytest
import torch

from diffmem import sampling, schedule


def test_linear_schedule_matches_closed_form_product():
    s = schedule.linear(1000, 1e-4, 2e-2)
    betas = np.linspace(1e-4, 2e-2, 1000)
    assert s.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert s.T == 1000


def test_ou_time_conversions():
    s = schedule.linear()
    k = 40
    t = float(s.ou_time(k))
    assert math.isclose(math.exp(-2 * t), float(s.alphas_cumprod[k]), rel_tol=1e-12)
    assert s.step_for_ou_time(t) == k
    with pytest.raises(ValueError, match="positive"):
        s.step_for_ou_time(-0.1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(T=1), "T must be an integer >= 2"),
        (dict(beta_start=0.0), "need 0 < beta_start"),
        (dict(beta_start=0.3, beta_end=0.1), "beta_start <= beta_end"),
    ],
)
@pytest.mark.parametrize("make", [schedule.linear, schedule.scaled_linear])
def test_schedules_reject_bad_input(make, bad, message):
    with pytest.raises(ValueError, match=message):
        make(**bad)


def test_scaled_linear_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    ours = schedule.scaled_linear(1000, 0.00085, 0.012)
    np.testing.assert_allclose(ours.betas.numpy(), ref.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-5)


def test_cfg_mix_is_the_guidance_formula():
    g = torch.Generator().manual_seed(0)
    eu, ec = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    torch.testing.assert_close(sampling.cfg_mix(eu, ec, 7.5), eu + 7.5 * (ec - eu))
    torch.testing.assert_close(sampling.cfg_mix(eu, ec, 0.0), eu)
    torch.testing.assert_close(sampling.cfg_mix(eu, ec, 1.0), ec)
    den = sampling.guided(lambda x, t: x + ec, lambda x, t: x + eu, 2.0)
    torch.testing.assert_close(den(torch.zeros(3, 5), torch.zeros(3)), eu + 2.0 * (ec - eu))


def _toy_denoiser(dim=16, seed=0):
    """Near-exact denoiser for N(0, 0.25 I) data plus a small nonlinear perturbation (bounded outputs)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g) * 0.3
    ab_all = schedule.linear().alphas_cumprod

    def den(x, t):
        ab = ab_all[t.long()].reshape(-1, 1).to(x.dtype)
        return (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab) + 0.05 * torch.tanh(x @ w.to(x.dtype))

    return den


@pytest.mark.parametrize("steps", [10, 50, 100])
def test_ddim_agrees_with_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    s = schedule.linear()
    den = _toy_denoiser()
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    ours = sampling.ddim(den, x, s, steps)
    sch = diffusers.DDIMScheduler(
        num_train_timesteps=1000, trained_betas=s.betas.numpy(), clip_sample=False, set_alpha_to_one=True
    )
    sch.set_timesteps(steps)
    assert sch.timesteps.tolist() == sampling.timesteps(s, steps)
    y = x.clone()
    for t in sch.timesteps:
        y = sch.step(den(y, torch.full((8,), float(t))), t, y).prev_sample
    assert torch.max(torch.abs(y - ours)) < 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacings_match_diffusers(spacing):
    diffusers = pytest.importorskip("diffusers")
    s = schedule.linear()
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    for steps in (7, 50, 1000):
        sch.set_timesteps(steps)
        assert sch.timesteps.tolist() == sampling.timesteps(s, steps, spacing)


@pytest.mark.parametrize("steps", [1000, 25])
def test_ddpm_agrees_with_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    s = schedule.linear()
    den = _toy_denoiser()
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    ours = sampling.ddpm(den, x, s, steps, generator=torch.Generator().manual_seed(3))
    sch = diffusers.DDPMScheduler(
        num_train_timesteps=1000, trained_betas=s.betas.numpy(), clip_sample=False, variance_type="fixed_small"
    )
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    y = x.clone()
    for t in sch.timesteps:
        y = sch.step(den(y, torch.full((4,), float(t))), t, y, generator=g).prev_sample
    assert torch.max(torch.abs(y - ours)) < 1e-4


def test_ddim_with_exact_denoiser_recovers_the_data_point():
    # Data = a single point x*: the exact eps is (x - sqrt(ab) x*) / sqrt(1 - ab); DDIM must land on x*.
    s = schedule.linear()
    x_star = torch.randn(1, 10, dtype=torch.float64)
    ab = s.alphas_cumprod

    def exact(x, t):
        a = ab[t.long()].reshape(-1, 1)
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()

    x_T = torch.randn(5, 10, dtype=torch.float64)
    out = sampling.ddim(exact, x_T, s, 20)
    assert torch.allclose(out, x_star.expand(5, -1), atol=1e-10)


def test_observer_sees_every_step_and_guidance_is_linear():
    s = schedule.linear()
    seen = []
    den_c, den_u = _toy_denoiser(seed=0), _toy_denoiser(seed=1)
    x = torch.randn(3, 16)
    sampling.ddim(sampling.guided(den_c, den_u, 7.5), x, s, 10, observer=seen.append)
    assert [st.index for st in seen] == list(range(10))
    assert seen[-1].t_prev == -1 and seen[-1].alpha_bar_prev == 1.0
    st = seen[0]
    t = torch.full((3,), float(st.t))
    expected = den_u(st.x, t) + 7.5 * (den_c(st.x, t) - den_u(st.x, t))
    assert torch.allclose(st.eps, expected, atol=1e-6)
    assert torch.allclose(st.x0, sampling.predict_x0(st.x, st.eps, st.alpha_bar))


def test_randn_per_sample_does_not_depend_on_batching():
    a = sampling.randn_per_sample([5, 6, 7], (2, 3))
    b = torch.cat([sampling.randn_per_sample([5], (2, 3)), sampling.randn_per_sample([6, 7], (2, 3))])
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_sampler_input_errors():
    s = schedule.linear()
    with pytest.raises(ValueError, match="steps"):
        sampling.timesteps(s, 0)
    with pytest.raises(ValueError, match="spacing"):
        sampling.timesteps(s, 10, "weird")
    with pytest.raises(TypeError, match="Schedule"):
        sampling.ddim(_toy_denoiser(), torch.randn(2, 16), None, 10)
