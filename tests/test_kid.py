"""KID (unbiased squared MMD, cubic polynomial kernel) against brute force, exact cases, its
unbiasedness, and why the dynamics evaluation uses it on small held-out sets."""

import doctest
import importlib

import numpy as np
import pytest
import torch

from diffmem.data import default_n_test
from diffmem.dynamics.evaluate import FRECHET_MIN_IMAGES_PER_DIM, EvalConfig, quality_measure
from diffmem.metrics import kid
from diffmem.metrics.frechet import DigitsCNN, frechet, frechet_distance, gaussian_stats
from diffmem.metrics.kid import kid_from_features

kid_module = importlib.import_module("diffmem.metrics.kid")  # the attribute diffmem.metrics.kid is the function


def _brute_kid(a, b):
    """The definition written out pair by pair in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m, d = len(a), len(b), a.shape[1]

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1.0) ** 3

    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_equals_brute_force_double_loop(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(23, 7))
    b = 0.3 + 1.2 * rng.normal(size=(17, 7))
    ref = _brute_kid(a, b)
    assert kid_from_features(a, b) == pytest.approx(ref, rel=1e-10)
    assert kid_from_features(b, a) == pytest.approx(ref, rel=1e-10)  # symmetric
    monkeypatch.setattr(kid_module, "_BLOCK", 5)  # kernel sums over blocks of rows, as for large sets
    assert kid_from_features(a, b) == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_equals_torchmetrics_on_equal_sizes():
    tm = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 9)), rng.normal(loc=0.2, size=(40, 9))
    ref = float(tm.poly_mmd(torch.from_numpy(b), torch.from_numpy(a)))
    assert kid_from_features(a, b) == pytest.approx(ref, rel=1e-10)


def test_exact_small_cases():
    # {0, 1} against itself in D = 1: k(0,0) = k(0,1) = 1, k(1,1) = 8
    x = np.array([[0.0], [1.0]])
    assert kid_from_features(x, x) == -3.5  # 1 + 1 - 2 * 11/4; the biased MMD² is 0
    # {0, 1} against {2, 3}: off-diagonal means (1 + 1)/2 = 1 and (7^3 + 7^3)/2 = 343, cross mean
    # (1 + 1 + 27 + 64)/4 = 93/4
    assert kid_from_features(x, np.array([[2.0], [3.0]])) == 1 + 343 - 2 * 93 / 4
    # any set against itself: (2/n)(mean off-diagonal k - mean diagonal k), never 0
    a = np.random.default_rng(2).normal(size=(15, 6))
    K = (a @ a.T / 6 + 1) ** 3
    off = (K.sum() - np.trace(K)) / (15 * 14)
    assert kid_from_features(a, a) == pytest.approx(2 / 15 * (off - np.diag(K).mean()), rel=1e-10)
    assert kid_from_features(a, a) < 0


def test_unbiased_where_frechet_is_not():
    """Two independent sets from the same Gaussian: KID averages to 0, the Fréchet distance does
    not; against a different distribution KID on small sets averages to its large-set value."""
    rng = np.random.default_rng(3)
    d, draws = 16, 400
    kids, fds, shifted = [], [], []
    for _ in range(draws):
        a, b = rng.normal(size=(20, d)), rng.normal(size=(15, d))
        kids.append(kid_from_features(a, b))
        fds.append(frechet_distance(*gaussian_stats(a), *gaussian_stats(b)))
        shifted.append(kid_from_features(a, rng.normal(loc=0.3, size=(10, d))))
    kids, fds, shifted = np.array(kids), np.array(fds), np.array(shifted)
    se = kids.std(ddof=1) / np.sqrt(draws)
    assert abs(kids.mean()) < 4 * se
    assert (kids < 0).mean() > 0.3  # an unbiased estimator of 0 is often negative
    assert fds.min() > 0 and fds.mean() > 50 * fds.std(ddof=1) / np.sqrt(draws)  # biased upwards
    # population MMD² of N(0, I) and N(0.3, I) from large sets (their own error is far below the SE here)
    pop = kid_from_features(rng.normal(size=(3000, d)), rng.normal(loc=0.3, size=(3000, d)))
    assert pop > 0.1
    assert abs(shifted.mean() - pop) < 4 * shifted.std(ddof=1) / np.sqrt(draws)


# --- planted pixel data: 8x8 images, D = 64 pixel features, 30 held-out images (fewer than D) ---
_D, _RANK, _SIGMA = 64, 8, 0.25


def _image_model(seed=0):
    """Images = mean + SIGMA (rank-8 part + isotropic part), each half of the variance; the worse
    model has 25% too little variation (less diverse samples) and is 0.03 too bright."""
    g = np.random.default_rng(seed)
    u = g.normal(size=(_D, _RANK)) / np.sqrt(_RANK)
    mu = 0.5 + 0.05 * g.normal(size=_D)

    def draw(n, rng, scale=1.0, shift=0.0):
        z = np.sqrt(0.5) * rng.normal(size=(n, _RANK)) @ u.T + np.sqrt(0.5) * rng.normal(size=(n, _D))
        x = np.clip(mu + shift + scale * _SIGMA * z, 0, 1)
        return torch.tensor(x, dtype=torch.float32).reshape(n, 1, 8, 8)

    return draw


def _rank_rates(n_heldout, reps, n_samples=500):
    draw = _image_model()
    fd_right = kid_right = 0
    for rep in range(reps):
        rng = np.random.default_rng(100 + rep)
        real, better, worse = draw(n_heldout, rng), draw(n_samples, rng), draw(n_samples, rng, 0.75, 0.03)
        fd_right += frechet(better, real, "pixels") < frechet(worse, real, "pixels")
        kid_right += kid(better, real, "pixels") < kid(worse, real, "pixels")
    return fd_right / reps, kid_right / reps


def test_kid_separates_worse_samples_at_30_heldout_images_where_frechet_does_not():
    """With 30 held-out images (< 64 feature dimensions) the held-out covariance is singular and the
    Fréchet distance is biased by an amount that shrinks with the samples' own spread: it prefers
    the less diverse, shifted set every time. KID ranks them right every time; with 2000 held-out
    images both do, so it is the size of the held-out set that matters."""
    fd_rate, kid_rate = _rank_rates(30, reps=20)
    assert kid_rate >= 0.95
    assert fd_rate <= 0.6
    assert (fd_rate, kid_rate) == (0.0, 1.0)  # the measured rates (deterministic seeds)
    assert _rank_rates(2000, reps=3) == (1.0, 1.0)


def test_subsets():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 5)), rng.normal(loc=0.2, size=(30, 5))
    full = kid_from_features(a, b)
    assert kid_from_features(a, b, subset_size=None) == full
    sq = a[:30]
    assert kid_from_features(sq, b, subset_size=500, subsets=3) == kid_from_features(sq, b)  # whole sets
    v = kid_from_features(a, b, subset_size=10, subsets=3000, seed=1)
    assert v == kid_from_features(a, b, subset_size=10, subsets=3000, seed=1)  # seeded
    assert v != kid_from_features(a, b, subset_size=10, subsets=3000, seed=2)
    # the whole-set estimate is the average over all subset pairs, so random subsets average to it
    single = [kid_from_features(a, b, subset_size=10, subsets=1, seed=s) for s in range(200)]
    assert abs(v - full) < 4 * np.std(single) / np.sqrt(3000)


def test_bad_input():
    with pytest.raises(ValueError, match="same D"):
        kid_from_features(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        kid_from_features(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="subset_size"):
        kid_from_features(np.zeros((3, 2)), np.zeros((3, 2)), subset_size=1)
    with pytest.raises(ValueError, match="subsets"):
        kid_from_features(np.zeros((3, 2)), np.zeros((3, 2)), subset_size=2, subsets=0)
    with pytest.raises(ValueError, match="KID needs at least 2 images"):
        kid(torch.rand(1, 1, 4, 4), torch.rand(5, 1, 4, 4), "pixels")
    with pytest.raises(ValueError, match="differ in shape"):
        kid(torch.rand(4, 1, 4, 4), torch.rand(4, 1, 8, 8), "pixels")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        kid(torch.rand(4, 16), torch.rand(4, 16), "pixels")


def test_documented_examples_run():
    assert doctest.testmod(kid_module, optionflags=doctest.ELLIPSIS).failed == 0


def test_auto_rule_keeps_the_digits_on_frechet():
    n_test = default_n_test(1797)
    assert (n_test, DigitsCNN.feature_dim) == (300, 64)
    assert quality_measure("auto", n_test, DigitsCNN.feature_dim) == "frechet"
    assert quality_measure("auto", FRECHET_MIN_IMAGES_PER_DIM * 64 - 1, 64) == "kid"
    assert quality_measure("auto", 30, 64) == "kid"
    assert quality_measure("frechet", 30, 64) == "frechet" and quality_measure("kid", 300, 64) == "kid"
    assert EvalConfig().quality == "auto"
    with pytest.raises(ValueError, match="quality must be"):
        EvalConfig(quality="fid").validate()  # type: ignore[arg-type]


def test_measure_writes_a_kid_record_on_a_small_heldout_set(tmp_path):
    """30 held-out digits < 4 x 64 features: "auto" measures KID and the record says so."""
    from diffmem.dynamics.evaluate import measure
    from diffmem.dynamics.training import TrainConfig, load_split, train
    from diffmem.metrics.frechet import DigitsFeatures

    cfg = TrainConfig(n=12, n_test=30, width=32, steps=20, checkpoints=1, first_checkpoint=20, resume_every=20)
    train(cfg, tmp_path)
    rec = measure(cfg, EvalConfig(samples=20, sampling_steps=5, n_boot=50, loss_draws=1), tmp_path)[-1]
    assert rec["quality_metric"] == "kid[digits-cnn]"
    sp = load_split(cfg.resolved())
    with np.load(tmp_path / "samples" / f"step_{rec['step']:07d}.npz", allow_pickle=False) as f:
        x = torch.from_numpy(f["samples"])
    feats = DigitsFeatures()
    ref = _brute_kid(feats(sp.to_pixels(x).clamp(0, 1)), feats(sp.to_pixels(sp.test).clamp(0, 1)))
    assert rec["quality"] == pytest.approx(ref, rel=1e-9)
    assert set(rec) == {
        "step",
        "f_mem",
        "f_mem_ci",
        "quality",
        "quality_metric",
        "loss_train",
        "loss_test",
        "median_ratio",
    }
