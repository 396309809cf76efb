import numpy as np
import pytest
import scipy.linalg
import torch

from diffmem.data import digits, split
from diffmem.metrics.frechet import (
    DigitsFeatures,
    FrechetDistance,
    PixelFeatures,
    TorchScriptFeatures,
    feature_space,
    frechet,
    frechet_distance,
    gaussian_stats,
    load_digits_cnn,
)


def _random_psd(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(1)
    s1, s2 = _random_psd(rng, 12), _random_psd(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def digit_sets():
    sp = split(digits(), 256)
    real = sp.to_pixels(sp.test).clamp(0, 1)
    train = sp.to_pixels(sp.train).clamp(0, 1)
    return train, real


def test_shipped_digits_network_is_a_real_classifier():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    with torch.no_grad():
        acc = (load_digits_cnn()(x).argmax(1).numpy() == d.target).mean()
    assert acc > 0.97


def test_digits_features_rank_worse_sets_worse(digit_sets):
    train, real = digit_sets
    g = torch.Generator().manual_seed(0)
    space = feature_space("auto", (1, 8, 8))
    assert space.name == "digits-cnn"
    good = frechet(train, real, space)
    slightly_noisy = frechet((train + 0.1 * torch.randn(train.shape, generator=g)).clamp(0, 1), real, space)
    very_noisy = frechet((train + 0.4 * torch.randn(train.shape, generator=g)).clamp(0, 1), real, space)
    blurred = frechet(torch.nn.functional.avg_pool2d(train, 3, 1, 1), real, space)
    collapsed = frechet(train[:10].repeat(26, 1, 1, 1), real, space)  # 10 images repeated: low diversity
    assert good < slightly_noisy < very_noisy < blurred
    assert collapsed > 3 * good
    # the digit network cares about digit shape: blurring is far worse than mild noise, unlike in pixels
    px = PixelFeatures()
    assert blurred / slightly_noisy > 1.5 * frechet(torch.nn.functional.avg_pool2d(train, 3, 1, 1), real, px) / frechet(
        (train + 0.1 * torch.randn(train.shape, generator=g)).clamp(0, 1), real, px
    )


def test_streaming_equals_one_shot(digit_sets):
    train, real = digit_sets
    fd = FrechetDistance("digits")
    for chunk in train.split(100):
        fd.update(chunk, real=False)
    for chunk in real.split(77):
        fd.update(chunk, real=True)
    assert fd.compute() == pytest.approx(frechet(train, real, "digits"), rel=1e-9)
    fd.reset()
    with pytest.raises(ValueError, match="at least 2"):
        fd.compute()


def test_gaussian_stats_match_numpy():
    f = np.random.default_rng(2).normal(size=(50, 4))
    mu, cov = gaussian_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(cov, np.cov(f.T))


def test_torchscript_feature_space(tmp_path, digit_sets):
    train, real = digit_sets

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    torch.manual_seed(0)
    net = Net()
    path = tmp_path / "feat.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    space = feature_space(str(path), (1, 8, 8))
    with torch.no_grad():
        direct = net(train.repeat(1, 3, 1, 1)).double().numpy()
        direct_real = net(real.repeat(1, 3, 1, 1)).double().numpy()
    np.testing.assert_allclose(space(train), direct, rtol=1e-6, atol=1e-7)  # grayscale repeated to 3 channels
    # the distance in that space equals the closed form on the network's own features (scipy's sqrtm)
    ma, mb = direct.mean(0), direct_real.mean(0)
    ca, cb = np.cov(direct, rowvar=False), np.cov(direct_real, rowvar=False)
    ref = ((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet(train, real, space) == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        frechet(torch.full((4, 1, 8, 8), float("nan")), torch.rand(4, 1, 8, 8), "pixels")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        frechet(torch.rand(4, 64), torch.rand(4, 64), "pixels")
    with pytest.raises(ValueError, match="differ in shape"):
        frechet(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 16, 16), "pixels")
    with pytest.raises(ValueError, match="'digits' needs"):
        feature_space("digits", (1, 16, 16))
    with pytest.raises(ValueError, match="unknown feature space"):
        feature_space("inception", (3, 32, 32))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist"):
        TorchScriptFeatures(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="not a TorchScript"):
        TorchScriptFeatures(bad)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        DigitsFeatures()(torch.rand(4, 1, 16, 16))
