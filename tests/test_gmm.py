"""The Gaussian mixture: exact density, exact score at every diffusion time, seeded sampling, bad input."""

import doctest
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from diffmem import sampling, schedule
from diffmem.data import gmm
from diffmem.data.gmm import GaussianMixture


def test_defaults_are_the_papers_mixture():
    P = GaussianMixture()
    assert (P.d, P.components, P.variance) == (8, 2, 1.0)
    assert torch.equal(P.means, torch.stack([torch.ones(8), -torch.ones(8)]).double())


@pytest.mark.parametrize("t", [0.0, 0.01, 0.3, 1.0, 3.0])
def test_score_matches_the_closed_form_of_the_papers_case(t):
    P = GaussianMixture()
    x = 2.0 * torch.randn(500, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu = torch.ones(8, dtype=torch.float64)
    closed = mu * math.exp(-t) * torch.tanh(math.exp(-t) * (x @ mu))[:, None] - x
    assert torch.allclose(P.score(x, t), closed, rtol=0, atol=1e-12)


def _fd_grad(f, x, h=1e-5):
    g = torch.zeros_like(x)
    for i in range(x.shape[-1]):
        e = torch.zeros_like(x)
        e[..., i] = h
        g[..., i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("t", [0.0, 0.2, 1.5])
def test_score_is_the_gradient_of_log_prob_by_finite_differences(t):
    P = GaussianMixture(d=3, mu=(1.0, -0.5, 2.0), components=5, variance=0.4, means_seed=3)
    x = 1.5 * torch.randn(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fd = _fd_grad(lambda z: P.log_prob_t(z, t), x)
    assert torch.allclose(P.score(x, t), fd, rtol=0, atol=1e-6)
    # the conditional score is the gradient of the conditional log-density
    y = torch.arange(200) % 5
    fd_c = _fd_grad(lambda z: P.log_prob_t(z, t, label=y), x)
    assert torch.allclose(P.score(x, t, label=y), fd_c, rtol=0, atol=1e-6)
    # one time per sample
    ts = torch.linspace(0.0, 2.0, 200, dtype=torch.float64)
    one_by_one = torch.stack([P.score(x[i : i + 1], float(ts[i]))[0] for i in range(0, 200, 37)])
    assert torch.allclose(P.score(x, ts)[::37], one_by_one, rtol=0, atol=1e-13)


def test_log_prob_matches_scipy():
    P = GaussianMixture(d=4, mu=0.7, components=3, variance=2.5, means_seed=5)
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    m = P.means.numpy()
    comp = np.stack([multivariate_normal(m[k], 2.5 * np.eye(4)).logpdf(x.numpy()) for k in range(3)], 1)
    ref = logsumexp(comp, axis=1) - math.log(3)
    assert np.allclose(P.log_prob(x).numpy(), ref, rtol=0, atol=1e-10)
    y = torch.tensor([0, 1, 2] * 100)
    assert np.allclose(P.log_prob(x, label=y).numpy(), comp[np.arange(300), y.numpy()], rtol=0, atol=1e-10)
    # at OU time t each component is N(e^-t m_k, (e^-2t v + 1 - e^-2t) I)
    t = 0.6
    ab = math.exp(-2 * t)
    comp_t = np.stack(
        [
            multivariate_normal(math.sqrt(ab) * m[k], (ab * 2.5 + 1 - ab) * np.eye(4)).logpdf(x.numpy())
            for k in range(3)
        ],
        1,
    )
    assert np.allclose(P.log_prob_t(x, t).numpy(), logsumexp(comp_t, axis=1) - math.log(3), rtol=0, atol=1e-10)


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_score_is_the_score_of_the_forward_process(t):
    # Stein's identity E_{P_t}[s(x) x^T] = -I and E_{P_t}[s(x)] = 0 on exact draws of
    # x_t = e^-t x_0 + sqrt(1 - e^-2t) xi
    P = GaussianMixture(d=3, mu=1.5, components=3, variance=0.3)
    n = 200_000
    x0 = P.sample(n, seed=4)
    xi = torch.randn(n, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xt = math.exp(-t) * x0 + math.sqrt(1 - math.exp(-2 * t)) * xi
    s = P.score(xt, t)
    stein = s.T @ xt / n
    assert torch.allclose(stein, -torch.eye(3, dtype=torch.float64), atol=0.03)
    assert s.mean(0).abs().max() < 0.03
    # with a wrong variance the identity fails, so the check can fail
    wrong = GaussianMixture(d=3, mu=1.5, components=3, variance=0.6).score(xt, t)
    assert (wrong.T @ xt / n + torch.eye(3, dtype=torch.float64)).abs().max() > 0.1


def test_eps_is_minus_sqrt_one_minus_alpha_bar_times_the_score():
    P = GaussianMixture(d=5, components=4, variance=0.5)
    s = schedule.linear()
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    k = torch.arange(0, 1000, 1000 // 64)[:64]
    t = s.ou_time(k)
    want = -torch.sqrt(1 - s.alphas_cumprod[k])[:, None] * P.score(x, t)
    assert torch.allclose(P.eps(x, k, s), want, rtol=0, atol=1e-12)
    assert torch.allclose(P.eps(x, k.double(), s), want, rtol=0, atol=1e-12)  # float step indices, as ddim passes
    assert torch.allclose(P.eps(x, 500, s), -math.sqrt(1 - float(s.alphas_cumprod[500])) * P.score(x, s.ou_time(500)))
    assert P.eps(x.float(), k, s).dtype == torch.float32
    # the exact denoiser runs in the sampler like any model
    out = sampling.ddim(P.denoiser(s), torch.randn(10, 5, dtype=torch.float64), s, steps=20)
    assert out.shape == (10, 5) and torch.isfinite(out).all()


def test_sampling_is_seeded_nested_and_has_the_right_moments():
    P = GaussianMixture(d=3, mu=2.0, components=3, variance=0.25)
    x, y = P.sample_with_labels(20_000, seed=11)
    x2, y2 = P.sample_with_labels(20_000, seed=11)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(P.sample(10, seed=12), x[:10])
    # the first m rows do not depend on n: training sets of growing n are nested
    for m in (1, 15, 16, 17, 1000):
        xm, ym = P.sample_with_labels(m, seed=11)
        assert torch.equal(xm, x[:m]) and torch.equal(ym, y[:m])
    assert torch.equal(P.sample(100, seed=11, dtype=torch.float32), x[:100].float())
    assert x.dtype == torch.float64 and y.dtype == torch.int64
    # equal weights, and x - m_y ~ N(0, v I)
    counts = torch.bincount(y, minlength=3).double() / 20_000
    assert (counts - 1 / 3).abs().max() < 0.015
    r = x - P.means[y]
    assert r.mean(0).abs().max() < 0.02
    assert torch.allclose(torch.cov(r.T), 0.25 * torch.eye(3, dtype=torch.float64), atol=0.01)
    # a generator works too, and its state decides the draw
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(P.sample(5, g1), P.sample(5, g2))
    assert P.sample(0, seed=0).shape == (0, 3)


def test_means_of_more_components_come_in_seeded_pairs_at_the_norm_of_mu():
    mu = (1.0, 2.0, -1.0, 0.5)
    P = GaussianMixture(d=4, mu=mu, components=5, means_seed=2)
    m = P.means
    assert torch.equal(m[0], torch.tensor(mu, dtype=torch.float64)) and torch.equal(m[1], -m[0])
    assert torch.allclose(m[2], -m[3], rtol=0, atol=0)
    assert torch.allclose(m.norm(dim=1), torch.full((5,), float(torch.tensor(mu).norm()), dtype=torch.float64))
    assert torch.equal(GaussianMixture(d=4, mu=mu, components=4, means_seed=2).means, m[:4])  # nested in K
    assert torch.equal(GaussianMixture(d=4, mu=mu, components=5, means_seed=2).means, m)  # reproducible
    assert not torch.allclose(GaussianMixture(d=4, mu=mu, components=5, means_seed=3).means[2], m[2])
    assert torch.equal(GaussianMixture(d=4, mu=2.0, components=1).means, torch.full((1, 4), 2.0, dtype=torch.float64))
    assert GaussianMixture(d=1, components=3).means.abs().eq(1).all()


def test_component_and_to_dict():
    P = GaussianMixture(d=3, mu=(1.0, 0.0, 2.0), components=3, variance=0.5)
    x = torch.randn(50, 3, dtype=torch.float64)
    for y in range(3):
        c = P.component(y)
        assert c.components == 1 and torch.equal(c.means[0], P.means[y])
        assert torch.allclose(c.log_prob(x), P.log_prob(x, label=y), rtol=0, atol=1e-12)
        assert torch.allclose(c.score(x, 0.3), P.score(x, 0.3, label=y), rtol=0, atol=1e-12)
    spec = P.to_dict()
    assert GaussianMixture(**spec) == P
    assert GaussianMixture(**GaussianMixture().to_dict()) == GaussianMixture()
    assert GaussianMixture(mu=[1.0] * 8) == GaussianMixture(mu=tuple([1.0] * 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 0}, r"d must be an integer >= 1"),
        ({"d": 2.5}, r"d must be an integer >= 1"),
        ({"variance": 0.0}, r"variance must be a positive"),
        ({"variance": -1.0}, r"variance must be a positive"),
        ({"variance": float("nan")}, r"variance must be a positive"),
        ({"components": 0}, r"components must be an integer >= 1"),
        ({"mu": (1.0, 2.0, 3.0)}, r"mu has 3 entries .* but d = 8; pass a scalar c"),
        ({"mu": [[1.0] * 8]}, r"pass a scalar c .* or a vector of length 8"),
        ({"mu": float("inf")}, r"mu must be finite"),
        ({"mu": "a"}, r"mu must be a number or a vector"),
    ],
)
def test_bad_specifications_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_bad_arguments_are_refused():
    P = GaussianMixture()
    s = schedule.linear()
    x = torch.zeros(3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 8\)"):
        P.log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"OU time t must be finite and >= 0"):
        P.score(x, -0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        P.score(x, 0.1, label=2)
    with pytest.raises(ValueError, match=r"label must be an integer in \[0, 1\]"):
        P.component(5)
    with pytest.raises(ValueError, match=r"step indices must lie in \[0, 999\]"):
        P.eps(x, 1000, s)
    with pytest.raises(ValueError, match=r"n must be an integer >= 0"):
        P.sample(-1)
    with pytest.raises(ValueError, match=r"dtype must be"):
        P.sample(2, dtype=torch.int64)


def test_documented_examples_run():
    assert doctest.testmod(gmm, optionflags=doctest.ELLIPSIS).failed == 0
