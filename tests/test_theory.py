"""Tests of diffmem.theory (random-features theory): constants, spectrum, simulation, dynamics, phase, CLI.

Full-size checks (d = 100, p = 6400) live in benchmarks/bench_theory.py; here d is small.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import math

import numpy as np
import pytest

from diffmem.theory import (
    closed_form_losses,
    eigensystem_dense,
    exact_curves,
    exact_matrices,
    fit_power_law,
    gaussian_equivalent,
    ge_eigenvalues,
    make_problem,
    mc_matrices,
    phase_diagram,
    population_matrices,
    predicted_times,
    rf_constants,
    simulate_gd,
    spectral_density,
)
from diffmem.theory.gradient_flow import quadratic_losses
from diffmem.theory.simulation import RFProblem


def _ks(spec, eigs) -> float:
    eigs = np.sort(eigs)
    F = spec.cdf()
    F = F / F[-1]
    hi = np.searchsorted(eigs, spec.lambdas, side="right") / eigs.size
    lo = np.searchsorted(eigs, spec.lambdas, side="left") / eigs.size
    return float(max(np.abs(F - hi).max(), np.abs(F - lo).max()))


# ------------------------------------------------------------------------------------------------ constants
def _mc_constants(t, sigma_x, f, m=1_000_000, seed=0):
    """Monte Carlo estimates of a, b, v^2, s^2 and their standard errors."""
    rng = np.random.default_rng(seed)
    u, v, w = rng.standard_normal((3, m))
    c = math.exp(-t) * sigma_x
    sd = math.sqrt(-math.expm1(-2 * t))
    h, h2 = c * u + sd * v, c * u + sd * w
    fh = f(h)
    gamma = math.sqrt(c**2 + sd**2)
    terms = {"a": fh * u / c, "b": v * fh, "cross": fh * f(h2), "m2": f(gamma * u) ** 2}
    est = {k: float(np.mean(x)) for k, x in terms.items()}
    se = {k: float(np.std(x)) / math.sqrt(m) for k, x in terms.items()}
    a, b = est["a"], est["b"]
    v2 = est["cross"] - a**2 * c**2
    s2 = est["m2"] - a**2 * c**2 - v2 - b**2
    se_a2 = 2 * abs(a) * c**2 * se["a"]
    return (
        {"a": a, "b": b, "v2": v2, "s2": s2},
        {"a": se["a"], "b": se["b"], "v2": se["cross"] + se_a2, "s2": se["m2"] + se["cross"] + 2 * abs(b) * se["b"]},
    )


@pytest.mark.parametrize(
    "t,sigma_x,act", [(0.01, 1.0, "tanh"), (0.1, 1.0, "tanh"), (0.5, 2.0, "tanh"), (0.1, 1.0, "relu")]
)
def test_constants_match_monte_carlo(t, sigma_x, act):
    c = rf_constants(t, sigma_x, act)
    f = np.tanh if act == "tanh" else (lambda x: np.maximum(x, 0.0))
    mc, se = _mc_constants(t, sigma_x, f)
    for k in ("a", "b", "v2", "s2"):
        assert abs(getattr(c, k) - mc[k]) < 5 * se[k], (k, getattr(c, k), mc[k], se[k])
    assert c.delta == pytest.approx(1 - math.exp(-2 * t), rel=1e-14)
    assert c.gamma**2 == pytest.approx(math.exp(-2 * t) * sigma_x**2 + c.delta, rel=1e-14)


def _polynomial_constants(t, sigma_x, power):
    """Closed forms of a, b, v^2, s^2 for sigma(h) = h (power 1) and sigma(h) = h^3 (power 3).

    With c^2 = e^{-2t} sigma_x^2 (variance of the clean part), Gamma^2 = c^2 + Delta and, for jointly Gaussian
    X, Y of variance Gamma^2 and covariance c^2: E[X^3 Y^3] = 9 Gamma^4 c^2 + 6 c^6, E X^6 = 15 Gamma^6.
    """
    c2 = math.exp(-2 * t) * sigma_x**2
    delta = -math.expm1(-2 * t)
    g2 = c2 + delta
    if power == 1:
        a, cross, m2 = 1.0, c2, g2
    else:
        a, cross, m2 = 3 * g2, 9 * g2**2 * c2 + 6 * c2**3, 15 * g2**3
    b = math.sqrt(delta) * a
    v2 = cross - a**2 * c2
    return {"a": a, "b": b, "v2": v2, "s2": m2 - a**2 * c2 - v2 - b**2}


@pytest.mark.parametrize("t,sigma_x", [(0.01, 1.0), (0.3, 1.3)])
def test_constants_closed_forms(t, sigma_x):
    """Linear (closed-form branch) and cubic (quadrature of a callable) against their closed forms; the relu
    closed form against the quadrature of the same function given as a callable."""
    for act, power in (("linear", 1), (lambda x: x**3, 3)):
        c = rf_constants(t, sigma_x, act)
        ref = _polynomial_constants(t, sigma_x, power)
        for k, v in ref.items():
            assert getattr(c, k) == pytest.approx(v, rel=1e-10, abs=1e-12), (act, k)
    closed = rf_constants(t, sigma_x, "relu")
    err = {}
    for n_quad in (160, 360):
        quad = rf_constants(t, sigma_x, lambda x: np.maximum(x, 0.0), n_quad=n_quad)
        for k in ("a", "b", "second_moment"):
            assert getattr(quad, k) == pytest.approx(getattr(closed, k), rel=1e-10)
        err[n_quad] = max(abs(getattr(quad, k) / getattr(closed, k) - 1) for k in ("v2", "s2"))
    # v^2 and s^2 integrate the kink (nested quadrature): the error falls like n_quad^-1.5 towards the closed form
    assert err[360] < 1e-3 and err[360] < 0.4 * err[160]


def test_constants_reject_bad_input():
    with pytest.raises(ValueError, match=r"diffusion time t must be a finite number > 0 \(got 0\.0\)"):
        rf_constants(0.0)
    with pytest.raises(ValueError, match=r"sigma_x must be a finite number > 0 \(got inf\)"):
        rf_constants(0.1, math.inf)
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoid'"):
        rf_constants(0.1, activation="sigmoid")
    with pytest.raises(ValueError, match=r"n_quad must be >= 8 \(got 4\)"):
        rf_constants(0.1, n_quad=4)
    with pytest.raises(ValueError, match=r"n_quad=400 is too large"):  # numpy's weights overflow: NaN otherwise
        rf_constants(0.1, n_quad=400)


# ------------------------------------------------------------------------------------------------ spectrum
def test_spectrum_mass_delta_and_branch():
    s = spectral_density(0.01, 64.0, 8.0)
    assert s.lambdas.size == 400 and s.converged.all()
    assert np.all(np.isfinite(s.density))
    assert np.all(s.q.imag >= 0)  # physical branch
    # delta weight: the fraction of eigenvalues of a Gaussian-equivalent U equal to s_t^2 (U - s_t^2 I has rank n + d)
    e = ge_eigenvalues(gaussian_equivalent(make_problem(20, 64.0, 8.0, 0.01, seed=0), s.constants, seed=1))
    w = float(np.mean(np.abs(e - s.constants.s2) <= 1e-9 * s.constants.s2))
    assert w == 1 - (160 + 20) / 1280
    assert s.delta_peak_weight == pytest.approx(w, rel=1e-15)
    assert s.delta_peak_weight_solver == pytest.approx(w, abs=1e-6)
    assert s.mass == pytest.approx(1 - w, rel=5e-3)
    # three bulks: d directions near s^2, the n-specific first bulk, the population bulk at scale psi_p
    assert len(s.edges) == 3
    lo2, hi2 = s.edges[2]
    assert 5 < lo2 < 15 and 35 < hi2 < 55  # paper: second bulk at lambda ~ 10-45
    # mass of each bulk: the n + d non-trivial directions split into d (near s^2), n - d (first bulk), d (second)
    cdf = s.cdf()
    masses = [np.interp(hi, s.lambdas, cdf) - np.interp(lo, s.lambdas, cdf) for lo, hi in s.edges]
    assert masses == pytest.approx([1 / 64, 7 / 64, 1 / 64], abs=5e-4)


def test_stieltjes_matches_brute_force_resolvent():
    """q(z) of the equations = (1/p) Tr (U - z)^-1 of Gaussian-equivalent draws, off the real axis."""
    from diffmem.theory.spectrum import solve_stieltjes

    c = rf_constants(0.1)
    z = np.array([0.05 + 0.02j, 0.3 + 0.05j, 5.0 + 1.0j, 20.0 + 2.0j])
    q, _, res = solve_stieltjes(z, c, 16.0, 4.0)
    assert np.all(res < 1e-8)
    emp = np.zeros(z.size, complex)
    for s in range(4):
        e = ge_eigenvalues(gaussian_equivalent(make_problem(60, 16.0, 4.0, 0.1, seed=s), c, seed=100 + s))
        emp += np.mean(1.0 / (e[:, None] - z[None, :]), axis=0) / 4
    assert np.abs(q - emp).max() < 0.02 * np.abs(q).max()
    assert np.all(np.abs(q - emp) / np.abs(q) < 0.03)


def test_spectrum_matches_gaussian_equivalent_eigenvalues():
    s = spectral_density(0.01, 64.0, 8.0)
    prob = make_problem(40, 64.0, 8.0, 0.01, seed=0)
    e = ge_eigenvalues(gaussian_equivalent(prob, s.constants, seed=1))
    at = np.abs(e - s.constants.s2) <= 1e-9 * s.constants.s2
    assert at.mean() == pytest.approx(1 - (prob.n + prob.d) / prob.p, abs=1e-12)  # exact delta weight
    assert _ks(s, e[~at]) < 0.03
    # the same outside a wrong theory (psi_n = 6) must fail the bound
    assert _ks(spectral_density(0.01, 64.0, 6.0), e[~at]) > 0.05


def test_spectrum_matches_exact_matrix():
    """Exact U (noise expectation analytic, tanh) at d = 24: the top n + d eigenvalues follow the theory."""
    s = spectral_density(0.1, 16.0, 4.0)
    prob = make_problem(24, 16.0, 4.0, 0.1, seed=3)
    U, _ = exact_matrices(prob)
    e = np.linalg.eigvalsh(U)
    top = e[-(prob.n + prob.d) :]
    assert _ks(s, top) < 0.12
    # the remaining p - n - d eigenvalues sit near s_t^2 (the delta peak, smeared at finite d)
    rest = e[: -(prob.n + prob.d)]
    assert 0.5 < np.median(rest) / s.constants.s2 < 1.5
    assert np.quantile(rest, 0.9) < s.edges[1][0]  # below the first bulk


def test_spectrum_mixture_covariance():
    lam, wts = np.array([0.5, 1.5]), np.array([0.5, 0.5])
    s = spectral_density(0.05, 32.0, 4.0, sigma_eigs=lam, sigma_weights=wts, n_points=300)
    assert s.converged.all() and s.constants.sigma_x == pytest.approx(1.0)
    d = 40
    rng = np.random.default_rng(0)
    diag = np.repeat(lam, d // 2)
    W = rng.standard_normal((32 * d, d))
    X = np.sqrt(diag)[:, None] * rng.standard_normal((d, 4 * d))
    e = ge_eigenvalues(gaussian_equivalent(RFProblem(W=W, X=X, t=0.05), s.constants, seed=1))
    at = np.abs(e - s.constants.s2) <= 1e-9 * s.constants.s2
    assert _ks(s, e[~at]) < 0.03
    iso = spectral_density(0.05, 32.0, 4.0, n_points=300)
    assert _ks(iso, e[~at]) > _ks(s, e[~at])


def test_asymptotic_law_is_approached():
    from diffmem.theory import asymptotic_spectrum

    c = rf_constants(0.1)
    a = asymptotic_spectrum(c, 64.0, 8.0)
    assert a["delta"]["weight"] == pytest.approx(1 - 9 / 64) and a["first_bulk"]["weight"] == pytest.approx(8 / 64)
    # at psi_p >> psi_n >> 1 the solver's first-bulk edges approach Theorem 3.2
    s = spectral_density(0.1, 4096.0, 64.0, n_points=600)
    a = asymptotic_spectrum(c, 4096.0, 64.0)
    first = max(s.edges[:-1], key=lambda e: e[1] - e[0])
    assert first[0] == pytest.approx(a["first_bulk"]["edges"][0], rel=0.1)
    assert first[1] == pytest.approx(a["first_bulk"]["edges"][1], rel=0.1)


def test_spectrum_rejects_and_flags(monkeypatch):
    for kw, msg in (
        (dict(psi_p=0.0), r"psi_p must be a finite number > 0 \(got 0\.0\)"),
        (dict(psi_n=-1.0), r"psi_n must be a finite number > 0 \(got -1\.0\)"),
        (dict(psi_p=float("nan")), r"psi_p must be a finite number > 0 \(got nan\)"),
    ):
        with pytest.raises(ValueError, match=msg):
            spectral_density(0.01, **{**dict(psi_p=64.0, psi_n=8.0), **kw})
    with pytest.raises(ValueError, match=r"diffusion time t must be a finite number > 0 \(got -0\.01\)"):
        spectral_density(-0.01, 64.0, 8.0)
    with pytest.raises(ValueError, match=r"sigma_eigs must be finite, >= 0 and not all 0"):
        spectral_density(0.01, 64.0, 8.0, sigma_eigs=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"lambdas must be a finite, strictly increasing grid"):
        spectral_density(0.01, 64.0, 8.0, lambdas=[1.0, 0.5])
    # a point where Newton fails is flagged, never a silent NaN
    from diffmem.theory import spectrum as sp

    real = sp._newton

    def broken(q, r, z, *a, **k):
        q, r, res = real(q, r, z, *a, **k)
        res = res.copy()
        res[z.size // 2] = 1.0
        return q, r, res

    monkeypatch.setattr(sp, "_newton", broken)
    s = spectral_density(0.01, 64.0, 8.0, n_points=50)
    assert (~s.converged).sum() == 1 and not s.converged[25]
    assert np.all(np.isfinite(s.density))
    assert s.to_dict()["n_unconverged"] == 1


def _counts_between(eigs, s2, cuts):
    """Eigenvalues of a Gaussian-equivalent U outside the delta peak, counted between consecutive cuts."""
    rest = eigs[np.abs(eigs - s2) > 1e-9 * s2]
    return [int(((rest > lo) & (rest <= hi)).sum()) for lo, hi in zip(cuts[:-1], cuts[1:])]


@pytest.mark.parametrize(
    "psi_p,psi_n,roles",
    [
        (64.0, 8.0, ["memorization", "memorization", "population"]),  # the paper's spectrum settings
        (64.0, 0.5, ["memorization", "population", "population"]),  # n < d: the population part splits in two
        (4.0, 8.0, ["sample_specific", "population"]),  # n > p: no memorization bulk
    ],
)
def test_bulk_roles_match_gaussian_equivalent_counts(psi_p, psi_n, roles):
    """The memorization and population bulks hold the n and d directions of brute-force eigenvalues."""
    s = spectral_density(0.01, psi_p, psi_n)
    assert s.bulk_roles == roles
    prob = make_problem(40, psi_p, psi_n, 0.01, seed=0)
    e = ge_eigenvalues(gaussian_equivalent(prob, s.constants, seed=1))
    pop = s.population_bulk
    below = [s.edges[i] for i, r in enumerate(roles) if r != "population"]
    cut = math.sqrt(below[-1][1] * pop[0])  # in the gap between the population bulk and the bulks below it
    n_below, n_pop = _counts_between(e, s.constants.s2, [0.0, cut, math.inf])
    assert n_pop == prob.d
    assert n_below == min(prob.n, prob.p - prob.d)
    assert s.population_bulk_weight == pytest.approx(prob.d / prob.p, rel=0.03)
    if psi_n < psi_p:
        assert s.memorization_bulk == [below[0][0], below[-1][1]]
        assert s.memorization_bulk_weight == pytest.approx(n_below / prob.p, rel=0.03)  # Theorem 3.2: psi_n/psi_p
        assert s.lambda_min == s.memorization_bulk[0]
    else:
        assert s.memorization_bulk is None and s.memorization_bulk_weight is None and s.lambda_min is None
        assert s.bulk_weights[0] == pytest.approx((prob.p - prob.d) / prob.p, rel=0.03)


def test_memorization_bulk_carries_the_generalization_gap():
    """Dropping the directions of the memorization bulk from the closed form removes the generalization gap at the
    end of training; its lower part (d directions just above s_t^2) carries most of it, its upper part little."""
    import dataclasses as dc

    from diffmem.theory import eigensystem_gaussian_equivalent

    c = rf_constants(0.1)
    s = spectral_density(constants=c, psi_p=64.0, psi_n=8.0)
    assert s.bulk_roles == ["memorization", "memorization", "population"]
    es = eigensystem_gaussian_equivalent(make_problem(20, 64.0, 8.0, 0.1, seed=0), c, seed=1)
    cuts = [math.sqrt(s.edges[i][1] * s.edges[i + 1][0]) for i in range(2)]

    def gap_without(mask):
        keep = ~mask
        sub = dc.replace(es, lam=es.lam[keep], P=es.P[keep], Q=es.Q[np.ix_(keep, keep)], R=es.R[keep])
        return float(closed_form_losses(sub, [math.inf]).L_gen[0])

    full = gap_without(np.zeros(es.lam.size, bool))
    assert full > 1.0
    assert gap_without(es.lam < cuts[1]) < 0.1 * full  # the whole memorization bulk
    assert gap_without(es.lam < cuts[0]) < 0.1 * full  # its lower part alone
    assert gap_without((es.lam > cuts[0]) & (es.lam < cuts[1])) > 0.8 * full  # its upper part alone
    assert gap_without(es.lam > cuts[1]) > 0.3 * full  # the population bulk is not where the gap comes from


def test_delta_peak_weight_floor():
    """The solver's delta weight is within its floor of the exact rank count; where the exact weight is 0 (p = n + d,
    a hard edge at s_t^2) the solver's value is > 0 but below its floor, and an unconverged solve has floor inf."""
    ok = spectral_density(0.01, 64.0, 8.0, n_points=60)
    assert abs(ok.delta_peak_weight_solver - ok.delta_peak_weight) <= ok.delta_peak_weight_floor
    assert ok.delta_peak_weight_floor < 1e-3 * ok.delta_peak_weight and ok.delta_peak_resolved
    for psi_p, psi_n in ((2.0, 1.0), (4.0, 8.0)):
        z = spectral_density(0.1, psi_p, psi_n, n_points=60)
        assert z.delta_peak_weight == 0.0
        assert 0.0 < z.delta_peak_weight_solver <= z.delta_peak_weight_floor and not z.delta_peak_resolved
    edge = spectral_density(0.1, 2.0, 1.0, n_points=60)
    assert edge.delta_peak_weight_solver > 1e-4  # the continuous density piled up at s_t^2 leaks into the residue
    d = edge.to_dict()
    assert d["delta_peak_weight_floor"] == edge.delta_peak_weight_floor and d["delta_peak_resolved"] is False


# ------------------------------------------------------------------------------------------------ simulation
def test_exact_matrices_match_monte_carlo_noise():
    prob = make_problem(8, 4.0, 2.0, 0.3, seed=0)
    U, V = exact_matrices(prob, order=6)
    Um, Vm = mc_matrices(prob, 20000, seed=1)
    assert np.abs(U - Um).max() < 0.01 * np.abs(U).max()
    assert np.abs(V - Vm).max() < 0.02 * np.abs(V).max()
    pop = population_matrices(prob)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 400_000)) * prob.sigma_x
    xi = rng.standard_normal(x.shape)
    phi = np.tanh(prob.W @ (math.exp(-prob.t) * x + math.sqrt(prob.delta) * xi) / math.sqrt(8))
    assert np.abs(pop["U"] - phi @ phi.T / x.shape[1]).max() < 0.01 * np.abs(pop["U"]).max()
    assert np.abs(pop["V"] - phi @ xi.T / x.shape[1]).max() < 0.02 * np.abs(pop["V"]).max()


# ------------------------------------------------------------------------------------------------ dynamics
def test_closed_form_equals_matrix_exponential():
    from scipy.linalg import expm

    prob = make_problem(6, 4.0, 2.0, 0.2, seed=1)
    U, V = exact_matrices(prob)
    pop = population_matrices(prob)
    es = eigensystem_dense(U, V, pop["U"], pop["V"], prob.delta, pop["gamma2"])
    taus = np.array([0.0, 3.0, 30.0, 300.0])
    cur = closed_form_losses(es, taus)
    p, d = prob.p, prob.d
    Astar = -math.sqrt(p / prob.delta) * V.T @ np.linalg.inv(U)
    for i, tau in enumerate(taus):
        A = Astar @ (np.eye(p) - expm(-(2 * prob.delta / (p / d)) * U * tau))
        assert cur.L_train[i] == pytest.approx(quadratic_losses(A, U, V, prob.delta), abs=1e-10)
        assert cur.L_test[i] == pytest.approx(quadratic_losses(A, pop["U"], pop["V"], prob.delta), abs=1e-10)
    assert cur.L_train[0] == 1.0 and cur.L_test[0] == pytest.approx(1.0)


def test_score_error_identity_by_monte_carlo():
    prob = make_problem(6, 4.0, 2.0, 0.2, seed=2)
    U, V = exact_matrices(prob)
    pop = population_matrices(prob)
    es = eigensystem_dense(U, V, pop["U"], pop["V"], prob.delta, pop["gamma2"])
    tau = 50.0
    cur = closed_form_losses(es, [tau])
    lam, vecs = np.linalg.eigh(U)
    h = -np.expm1(-(2 * prob.delta / 4.0) * lam * tau) / lam
    A = -math.sqrt(prob.p / prob.delta) * V.T @ vecs @ np.diag(h) @ vecs.T
    rng = np.random.default_rng(0)
    xt = math.sqrt(pop["gamma2"]) * rng.standard_normal((6, 400_000))
    s = A @ np.tanh(prob.W @ xt / math.sqrt(6)) / math.sqrt(prob.p)
    mc = np.mean(np.sum((s + xt / pop["gamma2"]) ** 2, axis=0)) / 6
    assert cur.E_score[0] == pytest.approx(mc, rel=0.01)


def test_gradient_descent_matches_closed_form():
    c = rf_constants(0.1)
    prob = make_problem(12, 16.0, 4.0, 0.1, seed=0)
    pred = predicted_times(c, 16.0, 4.0)
    U, V = exact_matrices(prob)
    pop = population_matrices(prob)
    lmax = float(np.linalg.eigvalsh(U)[-1])
    dtau = 0.1 * 16.0 / (c.delta * lmax)
    taus = np.geomspace(30 * dtau, 1.5 * pred["tau_mem"], 6)
    gd = simulate_gd(prob, taus, dtau=dtau, seed=1, matrices=(U, V, pop))
    ref = exact_curves(prob, gd.tau, matrices=(U, V, pop))
    assert np.max(np.abs(gd.L_train / ref.L_train - 1)) < 0.04
    assert np.max(np.abs(gd.L_test / ref.L_test - 1)) < 0.04
    # the curves move a lot over this range, so agreement is not trivial
    assert ref.L_train[0] - ref.L_train[-1] > 0.1


def test_paper_code_time_axis_matches_closed_form():
    """Gradient descent written as the paper's public script does it (readout B = A / sqrt p, step 1e-2 d / Delta_t
    on B, time k * step) follows diffmem's closed form at tau = (psi_p / d) k step, and not at the raw time."""
    from diffmem.theory import paper_code_learning_rate, paper_code_time_from_tau, tau_from_paper_code_time

    d, psi_p, psi_n, t = 8, 32.0, 8.0, 0.1  # psi_p / d = 4: the converted and the raw time are far apart
    prob = make_problem(d, psi_p, psi_n, t, seed=0)
    U, V = exact_matrices(prob)
    pop = population_matrices(prob)
    p, n, delta = prob.p, prob.n, prob.delta
    lr = paper_code_learning_rate(d, t)
    assert lr == pytest.approx(1e-2 * d / (1 - math.exp(-2 * t)), rel=1e-14)
    record = {100, 700, 2500, 6400}
    rng = np.random.default_rng(1)
    base = math.exp(-t) * prob.W @ prob.X / math.sqrt(d)
    Wd = prob.W / math.sqrt(d)
    B_mean = np.zeros((d, p))  # descent on the noise-averaged loss (1/(n d)) sum E|sqrt(Delta) B phi + xi|^2
    B_sgd = np.zeros((d, p))  # one fresh noise draw per training point and step, as in the script
    got: dict[str, list[float]] = {"mean": [], "sgd": []}
    for k in range(1, max(record) + 1):
        B_mean -= lr * ((2 * delta / d) * B_mean @ U + (2 * math.sqrt(delta) / d) * V.T)
        xi = rng.standard_normal((d, n))
        phi = np.tanh(base + math.sqrt(delta) * Wd @ xi)
        B_sgd -= lr * (2 * math.sqrt(delta) / (n * d)) * (math.sqrt(delta) * B_sgd @ phi + xi) @ phi.T
        if k in record:
            for key, B in (("mean", B_mean), ("sgd", B_sgd)):
                got[key].append(quadratic_losses(math.sqrt(p) * B, U, V, delta))  # the same score as A = sqrt(p) B
    time = lr * np.array(sorted(record), dtype=float)
    tau = tau_from_paper_code_time(time, psi_p, d)
    assert tau == pytest.approx(p * time / d**2, rel=1e-14)
    assert paper_code_time_from_tau(tau, psi_p, d) == pytest.approx(time, rel=1e-14)
    ref = exact_curves(prob, tau, matrices=(U, V, pop)).L_train
    assert ref[0] - ref[-1] > 0.1  # the curve moves: agreement is not trivial
    err = {k: float(np.max(np.abs(np.array(v) / ref - 1))) for k, v in got.items()}
    assert err["mean"] < 2e-4, err  # only the step's discretisation separates descent from the flow
    assert err["sgd"] < 0.04, err  # plus the fluctuation excess of the fresh noise, ~ (step / stability limit) / psi_n
    wrong = exact_curves(prob, time, matrices=(U, V, pop)).L_train  # reading the script's time as tau
    assert np.max(np.abs(np.array(got["mean"]) - wrong)) > 0.04
    with pytest.raises(ValueError, match=r"d must be an integer >= 1 \(got 0\)"):
        tau_from_paper_code_time(1.0, psi_p, 0)


def test_tau_mem_exponent_and_times():
    c = rf_constants(0.1)
    psi_n = [4.0, 8.0, 16.0, 32.0]
    pts = [predicted_times(c, 64.0, pn) for pn in psi_n]
    fit = fit_power_law(psi_n, [p["tau_mem"] for p in pts])
    assert abs(fit["exponent"] - 1.0) < 0.1
    tau_gen = 1 / (1 - math.exp(-0.2))  # 1/Delta_t at t = 0.1
    for pn, p in zip(psi_n, pts):
        # Theorem 3.2 left edge of the first bulk: s_t^2 + v_t^2 (1 - sqrt(psi_p/psi_n))^2
        lam_min = c.s2 + c.v2 * (1 - math.sqrt(64.0 / pn)) ** 2
        assert p["tau_gen"] == pytest.approx(tau_gen, rel=1e-12)
        assert p["tau_mem"] == pytest.approx(64.0 / ((1 - math.exp(-0.2)) * lam_min), rel=1e-12)
        assert p["ratio"] == pytest.approx(64.0 / lam_min, rel=1e-12)
        assert p["tau_mem"] > 10 * p["tau_gen"]
        assert p["memorization_expected"]
    assert not predicted_times(c, 8.0, 16.0)["memorization_expected"]
    # the memorisation time is where L_train of the closed form drops: later for larger psi_n
    from diffmem.theory import gaussian_equivalent_curves

    drops = []
    for pn in (4.0, 16.0):
        prob = make_problem(16, 64.0, pn, 0.1, seed=0)
        taus = np.geomspace(1, 1e7, 400)
        cur = gaussian_equivalent_curves(prob, taus, constants=c, seed=1)
        Lgen = cur.L_gen
        drops.append(taus[np.argmax(Lgen > 0.5 * Lgen[-1])])
    assert 2 < drops[1] / drops[0] < 8  # ~ 4 = ratio of psi_n


def test_dynamics_rejects_bad_input():
    prob = make_problem(4, 2.0, 1.0, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"training times tau must be a non-empty list of numbers >= 0"):
        simulate_gd(prob, [-1.0])
    with pytest.raises(ValueError, match=r"simulate_gd needs finite training times tau"):
        simulate_gd(prob, [1.0, math.inf])
    with pytest.raises(ValueError, match=r"psi_p must be a finite number > 0 \(got 0\.0\)"):
        predicted_times(rf_constants(0.1), 0.0, 4.0)
    with pytest.raises(ValueError, match=r"^t must be a finite number > 0 \(got -0\.1\)"):
        make_problem(10, 4.0, 2.0, -0.1)
    with pytest.raises(ValueError, match=r"need at least two positive, finite points"):
        fit_power_law([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"psi_n must be strictly increasing"):
        phase_diagram(0.1, [2.0, 1.0], [4.0], [10.0], d=4)


# ------------------------------------------------------------------------------------------------ phase
def test_phase_boundary_moves_with_tau_and_reaches_n_star():
    psi_n = np.geomspace(0.5, 64, 15)
    pd = phase_diagram(0.1, psi_n, [4.0, 8.0], [1e2, 1e3, math.inf], d=12, threshold=0.25, seed=0)
    b = pd.boundary()
    assert np.all(np.isfinite(b))
    assert np.all(np.diff(b, axis=0) > 0)  # the memorisation region grows with training time
    # at infinite time the boundary sits near the architectural threshold n* = p (psi_n = psi_p) and follows psi_p
    assert 0.6 < b[2, 0] / 4.0 < 1.6 and 0.6 < b[2, 1] / 8.0 < 1.6
    assert 1.4 < b[2, 1] / b[2, 0] < 2.8
    assert pd.L_gen[2, 0, 1] > 1.0 and pd.L_gen[2, -1, 1] < 0.05


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_spectrum_json_and_plot(tmp_path):
    from diffmem.cli import main

    rc = main(["theory", "spectrum", "--out", str(tmp_path), "--n-points", "80", "--simulate", "--d", "20", "--plot"])
    assert rc == 0
    res = json.loads((tmp_path / "spectrum.json").read_text())
    for k in ("constants", "lambda", "density", "delta_peak_weight", "edges"):
        assert k in res
    assert len(res["lambda"]) == len(res["density"]) == 80
    assert res["delta_peak_weight"] == pytest.approx(1 - 9 / 64)
    # a_t = E sigma'(Gamma_t z) with Gamma_t = 1 for sigma_x = 1: E[1 - tanh(z)^2] by scipy's adaptive quadrature
    from scipy.integrate import quad

    a_ref = quad(lambda z: (1 - math.tanh(z) ** 2) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12)[0]
    assert res["constants"]["a_t"] == pytest.approx(a_ref, rel=1e-10)
    assert res["constants"]["delta_t"] == pytest.approx(1 - math.exp(-0.02), rel=1e-14)
    assert (tmp_path / "figures" / "spectrum.png").stat().st_size > 1000
    assert res["mass"] == pytest.approx(res["mass_expected"], rel=0.05)  # 80-point trapezoid
    sim = res["simulation"]
    assert sim["matrix"] == "gaussian_equivalent" and sim["histogram"]["delta_count"] == 1280 - 160 - 20
    assert sim["ks_distance"] < 0.05
    rc = main(
        [
            "theory",
            "spectrum",
            "--out",
            str(tmp_path / "ex"),
            "--n-points",
            "80",
            "--simulate",
            "--matrix",
            "exact",
            "--d",
            "16",
        ]
    )
    assert rc == 0
    sim = json.loads((tmp_path / "ex" / "spectrum.json").read_text())["simulation"]
    assert sim["matrix"] == "exact" and sim["histogram"]["delta_count"] == 1024 - 128 - 16
    assert sim["ks_distance"] < 0.3  # finite-d corrections to Gaussian equivalence: 0.23 at d = 16, 0.05 at d = 100


def test_cli_dynamics_and_phase(tmp_path):
    from diffmem.cli import main

    rc = main(
        [
            "theory",
            "dynamics",
            "--out",
            str(tmp_path / "dyn"),
            "--d",
            "8",
            "--psi-n",
            "4",
            "8",
            "--n-taus",
            "12",
            "--quiet",
            "--plot",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "dyn" / "dynamics.json").read_text())
    assert [r["psi_n"] for r in res["runs"]] == [4.0, 8.0]
    r = res["runs"][0]
    assert len(r["theory"]["tau"]) == len(r["theory"]["L_train"]) == 12
    c = res["constants"]
    lam_min = c["s2"] + c["v2"] * (1 - math.sqrt(64.0 / 4.0)) ** 2  # Theorem 3.2 edge at psi_p = 64, psi_n = 4
    tau_mem = 64.0 / ((1 - math.exp(-0.2)) * lam_min)
    assert r["predicted"]["tau_gen"] == pytest.approx(1 / (1 - math.exp(-0.2)), rel=1e-12)
    assert r["predicted"]["tau_mem"] == pytest.approx(tau_mem, rel=1e-12)
    # the time grid: geometric from tau_min_ratio to tau_max_ratio (defaults 1e-4, 100) times tau_mem
    assert r["theory"]["tau"] == pytest.approx(np.geomspace(1e-4 * tau_mem, 100 * tau_mem, 12).tolist(), rel=1e-12)
    assert r["theory"]["L_gen"] == pytest.approx(
        (np.array(r["theory"]["L_test"]) - np.array(r["theory"]["L_train"])).tolist(), abs=1e-15
    )
    assert (tmp_path / "dyn" / "figures" / "dynamics.png").exists()
    rc = main(
        [
            "theory",
            "phase",
            "--out",
            str(tmp_path / "ph"),
            "--d",
            "6",
            "--psi-n",
            "1",
            "4",
            "16",
            "--psi-p",
            "4",
            "--taus",
            "100",
            "inf",
            "--plot",
        ]
    )
    assert rc == 0
    ph = json.loads((tmp_path / "ph" / "phase.json").read_text())
    assert ph["tau"] == [100.0, "inf"] and np.asarray(ph["L_gen"]).shape == (2, 3, 1)
    assert (tmp_path / "ph" / "figures" / "phase.png").exists()


def test_cli_rejects_unphysical(tmp_path, capsys):
    from diffmem.cli import main

    assert main(["theory", "spectrum", "--out", str(tmp_path), "--t", "-0.1"]) == 2
    assert "--t must be a finite number > 0 (got -0.1)" in capsys.readouterr().err
    assert main(["theory", "spectrum", "--out", str(tmp_path), "--psi-n", "0"]) == 2
    assert "--psi-n must be a finite number > 0 (got 0.0)" in capsys.readouterr().err
    assert main(["theory", "phase", "--out", str(tmp_path), "--psi-n", "4", "2"]) == 2
    assert "--psi-n must be at least two increasing numbers > 0" in capsys.readouterr().err
    assert not (tmp_path / "spectrum.json").exists()
    assert not (tmp_path / "phase.json").exists()
    # choices come from the Literal annotations of the configurations
    with pytest.raises(SystemExit):
        main(["theory", "spectrum", "--activation", "sigmoid", "--dry-run"])
    assert "invalid choice: 'sigmoid'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["theory", "dynamics", "--method", "dense", "--dry-run"])
    assert "invalid choice: 'dense'" in capsys.readouterr().err


def _dry_run(capsys, argv):
    from diffmem.cli import main

    assert main(["theory", *argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_flags_reach_the_configuration(capsys):
    """Every flag of the three commands lands in its configuration field (--dry-run prints it unvalidated)."""
    from diffmem.theory.run import DynamicsConfig, PhaseConfig, SpectrumConfig, config_dict

    common = ["--t", "0.05", "--sigma-x", "2", "--activation", "relu", "--seed", "7"]
    got = _dry_run(
        capsys,
        ["spectrum", *common, "--psi-p", "32", "--psi-n", "4", "--d", "50", "--n-points", "100"]
        + ["--sigma-eigs", "1", "3", "--sigma-weights", "1", "2", "--simulate", "--matrix", "exact", "--bins", "30"],
    )
    assert got == {
        "psi_p": 32.0,
        "psi_n": 4.0,
        "t": 0.05,
        "sigma_x": 2.0,
        "activation": "relu",
        "n_points": 100,
        "sigma_eigs": [1.0, 3.0],
        "sigma_weights": [1.0, 2.0],
        "simulate": True,
        "matrix": "exact",
        "d": 50,
        "bins": 30,
        "seed": 7,
    }
    got = _dry_run(
        capsys,
        ["dynamics", *common, "--psi-p", "16", "--psi-n", "2", "4", "--d", "20", "--method", "exact"]
        + ["--n-taus", "10", "--tau-min-ratio", "0.01", "--tau-max-ratio", "10", "--gd", "--gd-max-steps", "5"]
        + ["--gd-dtau-frac", "0.1", "--quiet", "--plot", "--out", "unused"],
    )
    assert got == {
        "psi_p": 16.0,
        "psi_n": [2.0, 4.0],
        "t": 0.05,
        "d": 20,
        "sigma_x": 2.0,
        "activation": "relu",
        "method": "exact",
        "n_taus": 10,
        "tau_min_ratio": 0.01,
        "tau_max_ratio": 10.0,
        "gd": True,
        "gd_max_steps": 5,
        "gd_dtau_frac": 0.1,
        "seed": 7,
    }
    got = _dry_run(
        capsys,
        ["phase", *common, "--psi-p", "4", "8", "--psi-n", "2", "4", "8", "--taus", "10", "inf"]
        + ["--threshold", "0.5", "--d", "10", "--quiet"],
    )
    assert got == {
        "t": 0.05,
        "psi_n": [2.0, 4.0, 8.0],
        "psi_p": [4.0, 8.0],
        "taus": [10.0, "inf"],
        "d": 10,
        "sigma_x": 2.0,
        "activation": "relu",
        "threshold": 0.5,
        "seed": 7,
    }
    # no flags: the configurations' defaults; the last of --simulate / --no-simulate wins
    for cmd, cls in (("spectrum", SpectrumConfig), ("dynamics", DynamicsConfig), ("phase", PhaseConfig)):
        assert _dry_run(capsys, [cmd]) == config_dict(cls())
    assert _dry_run(capsys, ["spectrum", "--simulate", "--no-simulate"])["simulate"] is False
    assert _dry_run(capsys, ["dynamics", "--gd", "--no-gd"])["gd"] is False


def test_configuration_defaults_and_help():
    from diffmem.cliutils import field_docs
    from diffmem.theory.run import DynamicsConfig, PhaseConfig, SpectrumConfig

    # the phase grids are written out as literals (no numpy import when the command line is built)
    assert PhaseConfig().psi_n == tuple(float(x) for x in np.geomspace(1, 128, 15))
    assert PhaseConfig().psi_p == tuple(float(x) for x in np.geomspace(2, 64, 11))
    for cls in (SpectrumConfig, DynamicsConfig, PhaseConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, (cls.__name__, missing)


@pytest.mark.parametrize("module", ["constants", "spectrum", "phase", "run", "time_axis"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"diffmem.theory.{module}")
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, res
