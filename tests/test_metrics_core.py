import numpy as np
import pytest
import torch

from diffmem import data, schedule
from diffmem.metrics import MemorizationFraction, bootstrap_mean_ci, loss_at_time, memorization_fraction, nearest_two


@pytest.fixture(scope="module")
def digits_split():
    return data.split(data.digits(), 256, scale=2.0)


def test_perturbed_training_images_are_memorized(digits_split):
    tr = digits_split.train
    g = torch.Generator().manual_seed(0)
    x = tr[:100] + 0.02 * torch.randn(tr[:100].shape, generator=g)
    r = memorization_fraction(x, tr)
    assert r.value == 1.0 and r.ci == (1.0, 1.0)
    assert np.array_equal(r.nearest, np.arange(100))


def test_held_out_real_images_are_not_memorized(digits_split):
    r = memorization_fraction(digits_split.test, digits_split.train)
    assert r.value < 0.02
    assert r.ci[0] <= r.value <= r.ci[1]


def test_ratio_matches_brute_force():
    rng = np.random.default_rng(1)
    tr, s = rng.normal(size=(30, 5)), rng.normal(size=(40, 5))
    d = np.linalg.norm(s[:, None] - tr[None], axis=-1)
    d.sort(axis=1)
    r = memorization_fraction(s, tr, k=0.5)
    np.testing.assert_allclose(r.ratios, d[:, 0] / d[:, 1], rtol=1e-12)
    assert r.value == pytest.approx(np.mean(d[:, 0] / d[:, 1] < 0.5))
    d1, d2, _ = nearest_two(s, tr, chunk=7)  # chunking does not change the answer
    np.testing.assert_allclose(d1, d[:, 0], rtol=1e-12)
    np.testing.assert_allclose(d2, d[:, 1], rtol=1e-12)


def test_bootstrap_interval_matches_binomial_width():
    v = np.r_[np.ones(100), np.zeros(400)]
    lo, hi = bootstrap_mean_ci(v, n_boot=4000, seed=0)
    se = np.sqrt(0.2 * 0.8 / 500)
    assert lo == pytest.approx(0.2 - 1.96 * se, abs=0.01) and hi == pytest.approx(0.2 + 1.96 * se, abs=0.01)


def test_stateful_shell_equals_functional():
    rng = np.random.default_rng(2)
    tr, s = rng.normal(size=(20, 4)), rng.normal(size=(50, 4))
    m = MemorizationFraction(tr, k=0.6)
    m.update(s[:20])
    m.update(s[20:])
    assert m.compute().value == memorization_fraction(s, tr, k=0.6).value


def test_memorization_input_errors():
    with pytest.raises(ValueError, match="k must"):
        memorization_fraction(np.zeros((3, 2)), np.ones((3, 2)), k=1.5)
    with pytest.raises(ValueError, match="dimension"):
        memorization_fraction(np.zeros((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        memorization_fraction(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        memorization_fraction(np.zeros((3, 2)), np.ones((1, 2)))


def test_loss_at_time_exact_and_null_denoisers():
    s = schedule.linear()
    x0 = torch.zeros(50, 1, 4, 4)  # single data point at 0: exact eps = x_k / sqrt(1 - ab)
    ab = s.alphas_cumprod

    def exact(x, t):
        return x / (1 - ab[t.long()]).sqrt().to(x.dtype).reshape(-1, 1, 1, 1)

    assert loss_at_time(exact, x0, s, 0.01, 5) < 1e-10

    def null(x, t):
        return torch.zeros_like(x)

    assert loss_at_time(null, x0, s, 0.01, 20) == pytest.approx(1.0, abs=0.03)  # E|eps|^2 / d = 1
