"""The exact two-nearest-neighbour search against float64 brute force: random, adversarial and tied cases."""

import doctest
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from diffmem import data
from diffmem.metrics import memorization_fraction, nearest_two
from diffmem.metrics import neighbors as nb
from diffmem.metrics.neighbors import TwoNearest, pair_sqdist64, two_nearest


def brute(samples, refs) -> TwoNearest:
    """Float64 brute force: every distance as the plain sum of squared differences, stable sort."""
    s = torch.as_tensor(np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples)
    r = torch.as_tensor(np.asarray(refs) if not isinstance(refs, torch.Tensor) else refs)
    s, r = s.reshape(len(s), -1).double(), r.reshape(len(r), -1).double()
    d = ((s[:, None, :] - r[None, :, :]) ** 2).sum(-1).sqrt()
    o = torch.argsort(d, dim=1, stable=True)[:, :2]
    v = d.gather(1, o)
    return TwoNearest(v[:, 0].numpy(), v[:, 1].numpy(), o[:, 0].numpy(), o[:, 1].numpy())


def assert_same(got: TwoNearest, want: TwoNearest) -> None:
    for name in ("index1", "index2", "d1", "d2"):
        a, b = getattr(got, name), getattr(want, name)
        assert np.array_equal(a, b), f"{name} differs at rows {np.flatnonzero(a != b)[:10]}"
    assert got.d1.dtype == np.float64 and got.index1.dtype == np.int64


def naive_float32(samples, refs) -> np.ndarray:
    """The uncorrected float32 matrix-product search (what the float64 re-check protects against)."""
    s, r = torch.as_tensor(samples).float(), torch.as_tensor(refs).float()
    d2 = (s * s).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2 * s @ r.T
    return torch.topk(d2, 2, dim=1, largest=False).indices.numpy()


@pytest.mark.parametrize("precision", ["auto", "float32", "float64"])
@pytest.mark.parametrize(("n", "m", "d"), [(1, 2, 1), (40, 30, 5), (120, 700, 64), (33, 257, 300)])
def test_random_cases_equal_brute_force(n, m, d, precision):
    g = torch.Generator().manual_seed(n * 1000 + m + d)
    s, r = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) * 2 + 0.5
    want = brute(s, r)
    assert_same(two_nearest(s, r, precision=precision), want)
    ref = np.sort(cdist(s.double().numpy(), r.double().numpy()), axis=1)  # an independent implementation
    np.testing.assert_allclose(want.d1, ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(want.d2, ref[:, 1], rtol=1e-12)


@pytest.mark.parametrize("budget", [1, 3_000, 60_000, 2**20, nb.DEFAULT_MEMORY_BUDGET])
@pytest.mark.parametrize("max_block", [1, 7, None])
def test_result_does_not_depend_on_the_blocks(budget, max_block):
    g = torch.Generator().manual_seed(3)
    r = torch.randn(90, 24, generator=g)
    s = torch.cat([torch.randn(30, 24, generator=g), r[:10] + 1e-3 * torch.randn(10, 24, generator=g), r[20:22]])
    r[50] = r[20]  # a duplicated reference, and samples on it
    want = brute(s, r)
    for precision in ("float32", "float64"):
        assert_same(two_nearest(s, r, memory_budget=budget, max_block=max_block, precision=precision), want)


def test_block_sizes_respect_the_budget():
    for n, m, d, budget in [(10_000, 32_768, 1024, 256 * 2**20), (500, 10**6, 3072, 64 * 2**20), (7, 5, 3, 10**5)]:
        rows, cols, pairs, cache = nb._block_sizes(n, m, d, 4, budget, n)
        held = 2 * rows * cols * 4 + (rows + cols) * d * 12 + (n * d * 4 if cache else 0)
        assert held <= budget and 4 * 8 * d * pairs <= budget
        assert 1 <= rows <= n and 1 <= cols <= m


def test_large_common_offset():
    # every coordinate near 1e4: float32 products alone lose the distances (|x|^2 ~ 3e9, ulp 256)
    g = torch.Generator().manual_seed(4)
    r = 1e4 + torch.randn(400, 32, generator=g, dtype=torch.float64)
    s = 1e4 + torch.randn(60, 32, generator=g, dtype=torch.float64)
    want = brute(s, r)
    assert not np.array_equal(naive_float32(s, r)[:, 0], want.index1)  # the case is a hard one
    for precision in ("float32", "float64"):
        assert_same(two_nearest(s, r, precision=precision), want)
    assert_same(two_nearest(s.float(), r.float(), precision="float32"), brute(s.float(), r.float()))


def test_nearly_equal_distances_that_float32_cannot_order():
    # 16 references at distances 1 + k 1e-9 (k shuffled) from the sample, among far ones of norm ~ 800:
    # float32 cannot tell them apart, so all 16 are candidates (more than are kept: the full pass runs)
    g = torch.Generator().manual_seed(5)
    d, k = 64, 16
    x = torch.randn(1, d, generator=g, dtype=torch.float64) * 100
    v = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64)).Q.T  # orthonormal directions
    radius = 1 + 1e-9 * torch.randperm(k, generator=g).double()
    near = x + radius[:, None] * v
    far = torch.randn(300, d, generator=g, dtype=torch.float64) * 100
    r = torch.cat([far[:150], near, far[150:]])
    s = torch.cat([x, x + 1e-12])
    want = brute(s, r)
    assert np.array_equal(want.index1 - 150, [int(radius.argmin())] * 2)
    assert not np.array_equal(naive_float32(s, r)[:, :2], np.stack([want.index1, want.index2], 1))
    for precision in ("float32", "float64"):
        assert_same(two_nearest(s, r, precision=precision), want)


def test_float64_distances_one_ulp_apart():
    # squared distances 1 + j 2^-52: distinct in float64 only; the float64 products' bound keeps them all
    d = 8
    e = torch.eye(d, dtype=torch.float64)
    r = torch.cat([e * (1 + j * 2.0**-52) ** 0.5 for j in (3, 1, 2)] + [torch.full((20, d), 5.0)])
    s = torch.zeros(1, d, dtype=torch.float64)
    want = brute(s, r)
    for precision in ("float32", "float64"):
        assert_same(two_nearest(s, r, precision=precision), want)


def test_exact_ties_lowest_index_first():
    # integer data: every float64 distance is exact, so ties are exact ties
    g = torch.Generator().manual_seed(6)
    r = torch.randint(-5, 6, (60, 10), generator=g).double()
    r[17] = r[4]
    r[33] = r[4]  # three copies of one row
    r[40] = r[12]
    s = torch.stack([r[4], r[12], r[40], r[7], torch.zeros(10)])
    axis = torch.zeros(12, 10, dtype=torch.float64)
    for i in range(10):  # ten references at distance 3 from the origin, two at distance 4
        axis[i, i] = 3.0 if i % 2 else -3.0
    axis[10, 0], axis[11, 1] = 4.0, -4.0
    r2 = torch.cat([r + 100, axis])  # the origin's nearest: ten tied at distance 3 (more than the 8 kept)
    for precision in ("float32", "float64"):
        got = two_nearest(s, r, precision=precision)
        assert_same(got, brute(s, r))
        assert got.index1[:3].tolist() == [4, 12, 12] and got.index2[:3].tolist() == [17, 40, 40]
        assert got.d1[:3].tolist() == [0.0] * 3 and got.d2[:3].tolist() == [0.0] * 3
        got2 = two_nearest(s[4:], r2, precision=precision)
        assert_same(got2, brute(s[4:], r2))
        assert (got2.index1[0], got2.index2[0], got2.d1[0], got2.d2[0]) == (60, 61, 3.0, 3.0)


def test_all_references_equal():
    r = torch.ones(50, 6)
    s = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))
    got = two_nearest(s, r, memory_budget=5_000)
    assert_same(got, brute(s, r))
    assert got.index1.tolist() == [0] * 4 and got.index2.tolist() == [1] * 4 and np.array_equal(got.d1, got.d2)


def test_sample_equal_to_a_training_row_and_the_ratio_convention():
    g = torch.Generator().manual_seed(8)
    tr = torch.randn(30, 16, generator=g)
    tr[21] = tr[9]
    s = torch.stack([tr[3], tr[9], tr[3] + 0.5])
    d1, d2, idx = nearest_two(s, tr)
    assert d1[0] == 0.0 and d2[0] > 0 and idx[0] == 3
    assert d1[1] == 0.0 and d2[1] == 0.0 and idx[1] == 9
    res = memorization_fraction(s, tr, k=1 / 3, n_boot=10)
    assert res.ratios[0] == 0.0 and res.ratios[1] == 0.0  # 0/0 = 0: a sample on two identical rows
    assert res.memorized[:2].all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64, np.uint8])
def test_input_types(dtype):
    rng = np.random.default_rng(9)
    r = (rng.normal(size=(80, 3, 4, 4)) * 20).astype(dtype)
    s = np.concatenate([(rng.normal(size=(25, 3, 4, 4)) * 20).astype(dtype), r[:5]])
    assert_same(two_nearest(s, r, precision="float32"), brute(s.astype(np.float64), r.astype(np.float64)))


def test_digits_against_brute_force():
    x = data.digits().pixels
    tr, s = x[:600], torch.cat([x[600:900], x[:50]])
    want = brute(s, tr)
    for precision in ("float32", "float64"):
        assert_same(two_nearest(s, tr, precision=precision, memory_budget=2**20), want)


def test_long_rows_sum_in_blocks():
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(3, 20_000, generator=g), torch.randn(3, 20_000, generator=g)
    np.testing.assert_allclose(pair_sqdist64(a, b).numpy(), ((a.double() - b.double()) ** 2).sum(1).numpy(), rtol=1e-13)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a lone long row is what a threaded sum would split
    try:
        one = torch.stack([pair_sqdist64(a[i : i + 1], b[i : i + 1])[0] for i in range(3)])
        assert torch.equal(one, pair_sqdist64(a, b))  # a pair's value does not depend on its batch
    finally:
        torch.set_num_threads(threads)
    r = torch.randn(40, 20_000, generator=g)
    s = torch.cat([torch.randn(5, 20_000, generator=g), r[:3] + 0.01])
    got = two_nearest(s, r, precision="float32")
    d2 = torch.stack([pair_sqdist64(s[i : i + 1].expand(40, -1), r) for i in range(len(s))])
    o = torch.argsort(d2.sqrt(), dim=1, stable=True)[:, :2]
    assert np.array_equal(got.index1, o[:, 0].numpy()) and np.array_equal(got.index2, o[:, 1].numpy())
    assert np.array_equal(got.d1, d2.sqrt().gather(1, o)[:, 0].numpy())


def test_reduced_precision_matmul_settings_are_overridden_and_restored():
    g = torch.Generator().manual_seed(11)
    r = 50 + torch.randn(300, 128, generator=g)
    s = 50 + torch.randn(20, 128, generator=g)
    torch.set_float32_matmul_precision("medium")  # would allow bf16 products
    try:
        before = torch.backends.mkldnn.matmul.fp32_precision
        assert_same(two_nearest(s, r, precision="float32"), brute(s, r))
        assert torch.backends.mkldnn.matmul.fp32_precision == before
    finally:
        torch.set_float32_matmul_precision("highest")


def test_nearest_two_keeps_its_contract():
    rng = np.random.default_rng(12)
    tr, s = rng.normal(size=(30, 5)), rng.normal(size=(40, 5))
    want = brute(s, tr)
    for chunk in (1, 7, 4096):
        d1, d2, idx = nearest_two(s, tr, chunk=chunk)
        assert np.array_equal(d1, want.d1) and np.array_equal(d2, want.d2) and np.array_equal(idx, want.index1)
    d1, d2, idx = nearest_two(s, tr, memory_budget=10_000, device="cpu", backend="torch")
    assert np.array_equal(idx, want.index1)


def test_bad_input():
    ok = np.zeros((3, 2))
    with pytest.raises(ValueError, match="dimension 2 but train 4"):
        nearest_two(ok, np.ones((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        two_nearest(ok, np.ones((1, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        two_nearest(ok, np.ones((0, 2)))
    with pytest.raises(ValueError, match="samples is empty"):
        two_nearest(np.zeros((0, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="samples contains NaN or inf"):
        two_nearest(np.array([[0.0, np.nan]]), np.ones((3, 2)))
    with pytest.raises(ValueError, match="train contains NaN or inf"):
        nearest_two(ok, np.array([[0.0, 1.0], [np.inf, 0.0]]))
    with pytest.raises(ValueError, match="references contains NaN or inf"):
        two_nearest(ok, torch.tensor([[0.0, 1.0], [-np.inf, 0.0]]))
    with pytest.raises(ValueError, match="one example per row"):
        two_nearest(np.zeros(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="real numbers"):
        two_nearest(np.zeros((2, 2), dtype=complex), np.ones((3, 2)))
    with pytest.raises(ValueError, match="overflow float64"):
        two_nearest(np.full((2, 2), 1e300), np.ones((3, 2)))
    for bad in (0, -1, float("nan"), "1GB", None):
        with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
            two_nearest(ok, np.ones((3, 2)), memory_budget=bad)
    with pytest.raises(ValueError, match="backend must be one of auto, torch, faiss"):
        two_nearest(ok, np.ones((3, 2)), backend="annoy")
    with pytest.raises(ValueError, match="precision must be one of"):
        two_nearest(ok, np.ones((3, 2)), precision="float16")
    with pytest.raises(ValueError, match="max_block must be a positive"):
        two_nearest(ok, np.ones((3, 2)), max_block=0)
    with pytest.raises(ValueError, match="unknown device 'banana'"):
        two_nearest(ok, np.ones((3, 2)), device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            two_nearest(ok, np.ones((3, 2)), device="cuda")


def test_faiss_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "diffmem\[faiss\]"'):
        two_nearest(np.zeros((3, 2)), np.ones((3, 2)), backend="faiss")
    monkeypatch.setattr(nb, "FAISS_THRESHOLD", 1)
    r = np.random.default_rng(0).normal(size=(20, 3))
    assert_same(two_nearest(r[:4], r, backend="auto"), brute(r[:4], r))  # auto falls back to torch


def test_faiss_backend_equals_brute_force(monkeypatch):
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(13)
    r = torch.randn(500, 48, generator=g)
    r[100] = r[7]
    s = torch.cat([torch.randn(60, 48, generator=g), r[:5], r[7:8], 1e3 + torch.zeros(1, 48)])
    want = brute(s, r)
    for budget in (20_000, nb.DEFAULT_MEMORY_BUDGET):
        assert_same(two_nearest(s, r, backend="faiss", memory_budget=budget), want)
    off_r, off_s = 1e4 + r.double(), 1e4 + s.double()  # the large common offset
    assert_same(two_nearest(off_s, off_r, backend="faiss"), brute(off_s, off_r))
    axis = torch.cat([torch.eye(12) * 3, -torch.eye(12) * 3, torch.full((5, 12), 9.0)])  # 24 exact ties
    assert_same(two_nearest(torch.zeros(2, 12), axis, backend="faiss"), brute(torch.zeros(2, 12), axis))
    calls = []
    real = nb._first_pass_faiss
    monkeypatch.setattr(nb, "_first_pass_faiss", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(nb, "FAISS_THRESHOLD", 499)
    assert_same(two_nearest(s, r), want)  # auto: faiss past the threshold
    assert calls == [1]
    monkeypatch.setattr(nb, "FAISS_THRESHOLD", 500)
    two_nearest(s, r)
    assert calls == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_equals_cpu():
    g = torch.Generator().manual_seed(14)
    r = torch.randn(3000, 256, generator=g)
    r[10] = r[20]
    s = torch.cat([torch.randn(500, 256, generator=g), r[:50] + 1e-3, r[20:21]])
    cpu = two_nearest(s, r, precision="float32")
    for got in (two_nearest(s.cuda(), r.cuda()), two_nearest(s, r, device="cuda"), two_nearest(s.cuda(), r)):
        assert np.array_equal(got.index1, cpu.index1) and np.array_equal(got.index2, cpu.index2)
        np.testing.assert_allclose(got.d1, cpu.d1, rtol=1e-13)
        np.testing.assert_allclose(got.d2, cpu.d2, rtol=1e-13)
    ri, si = torch.randint(-8, 9, (2000, 64), generator=g).float(), torch.randint(-8, 9, (300, 64), generator=g).float()
    ri[5] = ri[9]
    si[0] = ri[5]
    assert_same(two_nearest(si.cuda(), ri.cuda()), brute(si, ri))  # integer data: exact on any device


def test_documented_example():
    assert doctest.testmod(nb, optionflags=doctest.ELLIPSIS).failed == 0
