"""KL(P_model || P0) by the change of variables along DDIM, and the score error: checked against closed forms,
brute-force Jacobians and exact samples."""

import doctest
import math

import pytest
import torch

from diffmem import sampling, schedule
from diffmem.data.gmm import GaussianMixture
from diffmem.metrics import kl as kl_module
from diffmem.metrics.kl import kl_divergence, log_density_ddim, score_error
from diffmem.metrics.losses import eps_loss
from diffmem.models import ResidualMLP, mlp_param_count

S = schedule.linear()


# --------------------------------------------------------------------------------------------------
# a one-component Gaussian: DDIM with the exact denoiser is an affine map, so everything is closed form


def ddim_affine(v1: float, steps: int) -> tuple[float, float]:
    """DDIM with the exact denoiser of N(m1, v1 I) maps x_T to A x_T + B m1: returns (A, B).

    eps(x) = sqrt(1 - ab) (x - sqrt(ab) m1) / V with V = ab v1 + 1 - ab, and a step
    x' = c1 x + c2 eps is x' = (c1 + c2 sqrt(1 - ab) / V) x - (c2 sqrt(1 - ab) sqrt(ab) / V) m1."""
    ks = sampling.timesteps(S, steps)
    ab_all = S.alphas_cumprod.tolist()
    A, B = 1.0, 0.0
    for i, k in enumerate(ks):
        ab = ab_all[k]
        abp = ab_all[ks[i + 1]] if i + 1 < len(ks) else 1.0
        c1 = math.sqrt(abp / ab)
        c2 = math.sqrt(1 - abp) - c1 * math.sqrt(1 - ab)
        V = ab * v1 + 1 - ab
        alpha, beta = c1 + c2 * math.sqrt(1 - ab) / V, -c2 * math.sqrt(1 - ab) * math.sqrt(ab) / V
        A, B = alpha * A, alpha * B + beta
    return A, B


def kl_gauss(d: int, m1: torch.Tensor, v1: float, m0: torch.Tensor, v0: float) -> float:
    """KL(N(m1, v1 I) || N(m0, v0 I)) = d/2 (v1/v0 - 1 - log(v1/v0)) + |m1 - m0|^2 / (2 v0)."""
    return 0.5 * d * (v1 / v0 - 1 - math.log(v1 / v0)) + float(((m1 - m0) ** 2).sum()) / (2 * v0)


D = 8
M1, V1 = torch.full((D,), 0.5, dtype=torch.float64), 2.0
M0, V0 = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64), 1.0
MODEL = GaussianMixture(d=D, mu=0.5, components=1, variance=V1)
TARGET = GaussianMixture(d=D, mu=tuple(M0.tolist()), components=1, variance=V0)


@pytest.mark.parametrize("steps", [10, 50])
def test_gaussian_log_density_is_the_exact_push_forward(steps):
    A, B = ddim_affine(V1, steps)
    x_T = torch.randn(200, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, lp = log_density_ddim(MODEL.denoiser(S), x_T, S, steps)
    assert torch.allclose(x0, A * x_T + B * M1, rtol=0, atol=1e-10)
    want = -0.5 * ((x0 - B * M1) ** 2).sum(1) / A**2 - 0.5 * D * math.log(2 * math.pi * A**2)
    assert torch.allclose(lp, want, rtol=0, atol=1e-10)
    # the samples are exactly those of the sampler
    assert torch.equal(x0, sampling.ddim(MODEL.denoiser(S), x_T, S, steps))


@pytest.mark.parametrize("steps", [10, 50])
def test_gaussian_kl_matches_the_closed_form_of_the_samplers_output(steps):
    A, B = ddim_affine(V1, steps)
    r = kl_divergence(MODEL.denoiser(S), TARGET, S, samples=2000, steps=steps, seed=3)
    exact = kl_gauss(D, B * M1, A**2, M0, V0)
    assert abs(r.kl - exact) < 4 * r.kl_se, (r.kl, exact, r.kl_se)
    assert abs(r.entropy - 0.5 * D * math.log(2 * math.pi * math.e * A**2)) < 4 * r.entropy_se
    assert r.kl == pytest.approx(r.cross_entropy - r.entropy, abs=1e-9)
    assert (r.method, r.samples, r.steps, r.probes) == ("exact", 2000, steps, 0)
    # on the same samples, the estimate is the sample mean of the closed-form log-ratio
    x_T = sampling.randn_per_sample([3 * 1_000_003 + i for i in range(2000)], (D,)).double()
    x0 = A * x_T + B * M1
    log_model = -0.5 * ((x0 - B * M1) ** 2).sum(1) / A**2 - 0.5 * D * math.log(2 * math.pi * A**2)
    log_target = -0.5 * ((x0 - M0) ** 2).sum(1) / V0 - 0.5 * D * math.log(2 * math.pi * V0)
    assert r.kl == pytest.approx(float((log_model - log_target).mean()), abs=1e-10)


def test_gaussian_samplers_kl_tends_to_the_continuous_closed_form():
    # The probability-flow ODE maps N(0, I) to N(m1 (1 - s1 sqrt(ab_T / V_T)), v1 / V_T), V_T = ab_T v1 + 1 - ab_T:
    # DDIM tends to it at first order in 1/steps, and that limit is within 0.02 nats of the continuous KL
    # KL(N(m1, v1) || N(m0, v0)) = 3.1024 here (the start N(0, I) is not exactly P_T: 3.0866 for the flow).
    ab_T = float(S.alphas_cumprod[S.T - 1])
    V_T = ab_T * V1 + 1 - ab_T
    A2_flow, B_flow = V1 / V_T, 1 - math.sqrt(V1 * ab_T / V_T)
    errs = []
    for steps in (100, 1000):
        A, B = ddim_affine(V1, steps)
        errs.append(abs(A**2 - A2_flow) + abs(B - B_flow))
    assert 5 < errs[0] / errs[1] < 20  # first order
    continuous = kl_gauss(D, M1, V1, M0, V0)
    flow = kl_gauss(D, B_flow * M1, A2_flow, M0, V0)
    assert abs(flow - continuous) < 0.02
    A, B = ddim_affine(V1, 1000)
    assert abs(kl_gauss(D, B * M1, A**2, M0, V0) - continuous) < 0.04  # 0.013 discretisation + 0.016 start
    # and the estimator agrees with that closed form through the sampler at 1000 steps
    r = kl_divergence(MODEL.denoiser(S), TARGET, S, samples=300, steps=1000, seed=1, batch=300)
    assert abs(r.kl - kl_gauss(D, B * M1, A**2, M0, V0)) < 4 * r.kl_se
    assert abs(r.kl - continuous) < 4 * r.kl_se + 0.04


def test_hutchinson_is_exact_for_an_isotropic_jacobian():
    # the Gaussian denoiser's Jacobian is a multiple of I: every Rademacher probe gives the exact trace
    x_T = torch.randn(50, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, lp_exact = log_density_ddim(MODEL.denoiser(S), x_T, S, 30)
    _, lp_h = log_density_ddim(MODEL.denoiser(S), x_T, S, 30, method="hutchinson")
    assert torch.allclose(lp_h, lp_exact, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# the log-determinant of a network's DDIM map against brute force


def _ddim_map(model, x_T: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """DDIM written out for one sample (differentiable), independent of diffmem.sampling."""
    x = x_T[None]
    ab_all = S.alphas_cumprod
    for i, k in enumerate(ks):
        ab = ab_all[k]
        abp = ab_all[ks[i + 1]] if i + 1 < len(ks) else torch.tensor(1.0, dtype=torch.float64)
        eps = model(x, torch.full((1,), float(k), dtype=torch.float64))
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = abp.sqrt() * x0 + (1 - abp).sqrt() * eps
    return x[0]


def _tiny_net(scale: float, d: int = 3) -> ResidualMLP:
    torch.manual_seed(0)
    net = ResidualMLP((d,), width=8, blocks=2).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)  # larger weights: a Jacobian farther from a multiple of the identity
    return net


def test_log_density_of_a_network_matches_brute_force_jacobians():
    net = _tiny_net(3.0)
    ks = sampling.timesteps(S, 4)
    x_T = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0, lp = log_density_ddim(net, x_T, S, 4)
    for i in range(6):
        J = torch.autograd.functional.jacobian(lambda z: _ddim_map(net, z, ks), x_T[i])
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign != 0
        want = -0.5 * float((x_T[i] ** 2).sum()) - 1.5 * math.log(2 * math.pi) - float(logabsdet)
        assert abs(float(lp[i]) - want) < 1e-10
        assert torch.allclose(x0[i], _ddim_map(net, x_T[i], ks).detach(), rtol=0, atol=1e-12)


def test_hutchinson_estimates_the_trace_unbiasedly():
    # many probes: the per-step factor d log(1 + (c2/c1) tr(J_eps) / d) with the brute-force trace, within
    # 4 standard deviations of the probe noise (Rademacher: Var z^T J z = 2 sum_{i != l} ((J + J^T)/2)_il^2)
    net, probes = _tiny_net(2.0), 4000
    ks = sampling.timesteps(S, 2)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    _, lp = log_density_ddim(net, x_T, S, 2, method="hutchinson", probes=probes, generator=g)
    ab_all = S.alphas_cumprod.tolist()
    want = -0.5 * (x_T**2).sum(1) - 1.5 * math.log(2 * math.pi)
    var = torch.zeros(4, dtype=torch.float64)
    x = x_T.clone()
    for i, k in enumerate(ks):
        ab, abp = ab_all[k], (ab_all[ks[i + 1]] if i + 1 < len(ks) else 1.0)
        c1 = math.sqrt(abp / ab)
        c2 = math.sqrt(1 - abp) - c1 * math.sqrt(1 - ab)
        for j in range(4):
            Je = torch.autograd.functional.jacobian(
                lambda z, k=k: net(z[None], torch.full((1,), float(k), dtype=torch.float64))[0], x[j]
            )
            a = (c2 / c1) * float(Je.trace()) / 3
            want[j] -= 3 * math.log(c1) + 3 * math.log1p(a)
            sym = (Je + Je.T) / 2
            var[j] += ((c2 / c1) / (1 + a)) ** 2 * 2 * float((sym**2).sum() - (sym.diagonal() ** 2).sum()) / probes
        with torch.no_grad():
            x = c1 * x + c2 * net(x, torch.full((4,), float(k), dtype=torch.float64))
    assert ((lp - want).abs() < 4 * var.sqrt()).all(), (lp - want, var.sqrt())
    # the first-order form is not the exact log-det of this strongly anisotropic network (off by up to 0.4),
    # and the test tells them apart
    assert ((log_density_ddim(net, x_T, S, 2)[1] - want).abs() > 4 * var.sqrt()).any()


# --------------------------------------------------------------------------------------------------
# the mixture


def test_exact_mixture_denoiser_has_kl_about_zero():
    # The 100-step sampler's own KL for the exact denoiser, estimated with 20 000 samples (two seeds), is
    # 0.0019 +- 0.0005 and 0.0024 +- 0.0005 nats: we allow 3 standard errors plus 0.003.
    P = GaussianMixture()
    r = kl_divergence(P.denoiser(S), P, S, samples=1000, steps=100, seed=1)
    assert abs(r.kl) < 3 * r.kl_se + 0.003, r
    assert r.kl_se < 0.005
    # a slightly wrong denoiser is seen
    wrong = GaussianMixture(variance=1.5).denoiser(S)
    rw = kl_divergence(wrong, P, S, samples=1000, steps=100, seed=1)
    assert rw.kl > 0.1 and rw.kl > 5 * rw.kl_se


def test_mixture_kl_matches_direct_monte_carlo_on_exact_samples():
    # P_model = the exact denoiser of Q sampled with 250 steps, against KL(Q || P) directly from exact draws
    # of Q (the 250-step sampler's own KL is 0.0001 +- 0.0002 nats on the paper's mixture; we allow 0.005)
    P = GaussianMixture(d=4, mu=1.0, components=3, variance=0.8)
    Q = GaussianMixture(d=4, mu=1.3, components=3, variance=0.6)
    r = kl_divergence(Q.denoiser(S), P, S, samples=600, steps=250, seed=2, batch=600)
    xq = Q.sample(100_000, seed=9)
    direct = (Q.log_prob(xq) - P.log_prob(xq)).mean()
    direct_se = (Q.log_prob(xq) - P.log_prob(xq)).std() / math.sqrt(100_000)
    assert abs(r.kl - float(direct)) < 3 * math.hypot(r.kl_se, float(direct_se)) + 0.005, (r, direct)
    assert r.kl > 0.1


def test_conditional_component_against_the_whole_mixture_is_log_two():
    # KL(N(-mu, I) || (N(mu, I) + N(-mu, I))/2) = log 2 - E log(1 + exp(2 mu.x)), x ~ N(-mu, I): below log 2
    P = GaussianMixture()
    xc = P.component(1).sample(100_000, seed=3)
    direct = float((P.component(1).log_prob(xc) - P.log_prob(xc)).mean())
    assert 0.6 < direct < math.log(2)
    r = kl_divergence(P.denoiser(S, label=1), P, S, samples=500, steps=100, seed=4)
    assert abs(r.kl - direct) < 3 * r.kl_se + 0.01, r
    r_c = kl_divergence(P.denoiser(S, label=1), P.component(1), S, samples=500, steps=100, seed=4)
    assert abs(r_c.kl) < 3 * r_c.kl_se + 0.01, r_c


def test_result_does_not_depend_on_the_batch_and_hutchinson_is_close_to_exact():
    P = GaussianMixture()
    a = kl_divergence(P.denoiser(S), P, S, samples=40, steps=20, batch=40)
    b = kl_divergence(P.denoiser(S), P, S, samples=40, steps=20, batch=7)
    assert a.kl == pytest.approx(b.kl, abs=1e-12) and a.kl_se == pytest.approx(b.kl_se, abs=1e-12)
    ha = kl_divergence(P.denoiser(S), P, S, samples=40, steps=20, batch=40, method="hutchinson")
    hb = kl_divergence(P.denoiser(S), P, S, samples=40, steps=20, batch=7, method="hutchinson")
    assert ha.kl == pytest.approx(hb.kl, abs=1e-12) and ha.probes == 1
    # at 100 steps the Hutchinson form's bias on the paper's mixture is a few thousandths of a nat
    e = kl_divergence(P.denoiser(S), P, S, samples=1000, steps=100, seed=5)
    h = kl_divergence(P.denoiser(S), P, S, samples=1000, steps=100, seed=5, method="hutchinson")
    assert abs(h.kl - e.kl) < 3 * h.kl_se + 0.01
    assert h.cross_entropy == e.cross_entropy  # the same samples


# --------------------------------------------------------------------------------------------------
# score error


def test_score_error_is_zero_for_the_exact_score_and_closed_form_for_a_gaussian():
    P = GaussianMixture(d=5, components=3, variance=0.7)
    for e in score_error(P.denoiser(S), P, S, times=(0.01, 0.5)):
        assert e.error < 1e-20
    # two Gaussians: s_Q - s_P = alpha x + b with x ~ N(a m0, vP I) at step k
    d, m0, m1, v0, v1 = 5, 0.3, -0.2, 1.0, 1.6
    P, Q = (
        GaussianMixture(d=d, mu=m0, components=1, variance=v0),
        GaussianMixture(d=d, mu=m1, components=1, variance=v1),
    )
    res = score_error(Q.denoiser(S), P, S, times=(0.01, 0.2, 1.0), samples=4000, seed=1)
    for e in res:
        ab = float(S.alphas_cumprod[e.step])
        assert e.t == pytest.approx(-0.5 * math.log(ab)) and e.samples == 4000
        a, vp, vq = math.sqrt(ab), ab * v0 + 1 - ab, ab * v1 + 1 - ab
        alpha = 1 / vp - 1 / vq
        b = a * (m1 / vq - m0 / vp)  # per coordinate
        want = alpha**2 * (vp + (a * m0) ** 2) + 2 * alpha * a * m0 * b + b**2
        assert abs(e.error - want) < 4 * e.error_se, (e, want)
    assert [e.step for e in res] == [S.step_for_ou_time(t) for t in (0.01, 0.2, 1.0)]


# --------------------------------------------------------------------------------------------------
# the paper's score model learns the mixture


def test_a_trained_residual_mlp_has_a_far_smaller_kl_than_an_untrained_one():
    P = GaussianMixture()
    assert mlp_param_count(8, 128) == 102_024 == 128 * (2 * 8 + 13) + 8 + 6 * 128**2
    torch.manual_seed(0)
    net = ResidualMLP((8,), width=128)
    assert sum(p.numel() for p in net.parameters()) == 102_024
    net.eval()
    before = kl_divergence(net, P, S, samples=300, steps=50)
    err_before = score_error(net, P, S, times=(0.1,), samples=500)[0].error
    x = P.sample(256, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(400):
        k = torch.randint(1, S.T, (256,), generator=g)
        loss = eps_loss(net, x, k, torch.randn(x.shape, generator=g), S, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    after = kl_divergence(net, P, S, samples=300, steps=50)
    err_after = score_error(net, P, S, times=(0.1,), samples=500)[0].error
    assert before.kl > 1000  # an untrained network's sampler scatters x_T / sqrt(alpha_bar_T) far out
    assert after.kl < 20 and after.kl < 1e-3 * before.kl, (before, after)
    assert err_after < 0.2 * err_before


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_refused():
    P = GaussianMixture()
    den = P.denoiser(S)
    with pytest.raises(ValueError, match=r"method must be one of"):
        kl_divergence(den, P, S, method="trace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"probes must be an integer >= 1"):
        kl_divergence(den, P, S, method="hutchinson", probes=0)
    with pytest.raises(ValueError, match=r"samples must be an integer >= 2"):
        kl_divergence(den, P, S, samples=1)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000\]"):
        kl_divergence(den, P, S, steps=0)
    with pytest.raises(TypeError, match=r"GaussianMixture"):
        kl_divergence(den, object(), S)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"samples must be an integer >= 2"):
        score_error(den, P, S, samples=0)


def test_documented_examples_run():
    assert doctest.testmod(kl_module, optionflags=doctest.ELLIPSIS).failed == 0
