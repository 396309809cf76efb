"""Training dynamics of the random-features score model: closed-form gradient flow and a GD check.

Loss at diffusion time t (per dimension, averaged over the n training points and the noise):
    L(A) = 1 + (Delta/(d p)) Tr(A U A^T) + (2 sqrt(Delta)/(d sqrt p)) Tr(A V).
Gradient descent A <- A - eta grad L in the rescaled time tau = k eta / d^2 is the flow
    dA/dtau = -(2 Delta / psi_p) A U - (2 d sqrt(Delta)/sqrt p) V^T,
whose solution from A = 0 is A(tau) = A* (1 - exp(-(2 Delta/psi_p) U tau)), A* = -sqrt(p/Delta) V^T U^{-1}.
In the eigenbasis (lam_k, u_k) of U, with g_k = |V^T u_k|^2 and h_k(tau) = (1 - e^{-2 Delta lam_k tau/psi_p}) / lam_k:
    L_train(tau) = 1 - (1/d) sum_k (g_k / lam_k) (1 - e^{-4 Delta lam_k tau / psi_p})
    L_test(tau)  = 1 + (1/d) h^T [(O^T U_pop O) o (P P^T)] h - (2/d) sum_k h_k (P o O^T V_pop)_k.,   P = O^T V
For Gaussian data the score error follows from the test loss (denoising score matching identity):
    E_score = (1/d) E|s_A(x) - grad log P_t(x)|^2 = (L_test - 1)/Delta + (1/d) Tr Sigma_t^{-1},  Sigma_t = Gamma_t^2 I.
Each eigen-direction relaxes on the time psi_p / (Delta lam): tau_gen ~ 1/Delta (the second bulk, lam ~ psi_p)
and tau_mem = psi_p / (Delta lam_min), lam_min the left edge of the first bulk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .constants import RFConstants, resolve_activation
from .simulation import RFProblem, Seed, as_generator, exact_matrices, gaussian_equivalent, population_matrices

__all__ = [
    "EigenSystem",
    "LossCurves",
    "closed_form_losses",
    "default_taus",
    "eigensystem_dense",
    "eigensystem_gaussian_equivalent",
    "exact_curves",
    "fit_power_law",
    "gaussian_equivalent_curves",
    "predicted_times",
    "quadratic_losses",
    "simulate_gd",
]


@dataclass
class LossCurves:
    """Loss curves on a grid of rescaled training times tau."""

    tau: np.ndarray
    L_train: np.ndarray
    L_test: np.ndarray
    E_score: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def L_gen(self) -> np.ndarray:
        return self.L_test - self.L_train

    def to_dict(self) -> dict:
        return {
            "tau": self.tau.tolist(),
            "L_train": self.L_train.tolist(),
            "L_test": self.L_test.tolist(),
            "L_gen": self.L_gen.tolist(),
            "E_score": self.E_score.tolist(),
            **self.meta,
        }


@dataclass
class EigenSystem:
    """What the closed form needs, in the eigenbasis O of U: eigenvalues lam (k,), P = O^T V (k x d),
    Q = O^T U_pop O (k x k), R = O^T V_pop (k x d).

    Directions of U outside the k kept ones must have O^T V = 0 (they never move A).
    """

    lam: np.ndarray
    P: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    d: int
    p: int
    delta: float
    trace_inv_sigma_t: float  # (1/d) Tr Sigma_t^{-1} (= 1/Gamma_t^2 for isotropic data)


def _check_taus(taus: ArrayLike) -> np.ndarray:
    out = np.asarray(taus, dtype=np.float64).ravel()
    if out.size == 0 or np.any(np.isnan(out)) or np.any(out < 0):
        raise ValueError("training times tau must be a non-empty list of numbers >= 0 (inf: the end of training)")
    return out


def closed_form_losses(es: EigenSystem, taus: ArrayLike, chunk: int = 64) -> LossCurves:
    """L_train, L_test, E_score at the given rescaled times (formulas in the module docstring)."""
    tau = _check_taus(taus)
    lam = np.asarray(es.lam, dtype=np.float64)
    if np.any(lam <= 0):
        raise ValueError(
            "U must be positive definite (an eigenvalue <= 0 was found); "
            "s_t^2 > 0 needs a non-linear activation and t > 0"
        )
    psi_p = es.p / es.d
    g = np.sum(es.P**2, axis=1)
    K = es.Q * (es.P @ es.P.T)
    m = np.sum(es.P * es.R, axis=1)
    Ltr = np.empty(tau.size)
    Lte = np.empty(tau.size)
    for s in range(0, tau.size, chunk):
        tt = tau[s : s + chunk]
        rate = (2.0 * es.delta / psi_p) * lam[:, None] * tt[None, :]
        f = -np.expm1(-rate)  # 1 - e^{-rate}
        h = f / lam[:, None]
        Ltr[s : s + chunk] = 1.0 - (g / lam) @ (-np.expm1(-2.0 * rate)) / es.d
        Lte[s : s + chunk] = 1.0 + np.sum(h * (K @ h), axis=0) / es.d - 2.0 * (m @ h) / es.d
    Esc = (Lte - 1.0) / es.delta + es.trace_inv_sigma_t
    return LossCurves(tau, Ltr, Lte, Esc)


def eigensystem_dense(
    U: np.ndarray, V: np.ndarray, U_pop: np.ndarray, V_pop: np.ndarray, delta: float, gamma2: float
) -> EigenSystem:
    """Eigen-decompose a dense U (p x p): O(p^3)."""
    lam, vecs = np.linalg.eigh(U)
    return EigenSystem(
        lam=lam,
        P=vecs.T @ V,
        Q=vecs.T @ U_pop @ vecs,
        R=vecs.T @ V_pop,
        d=V.shape[1],
        p=U.shape[0],
        delta=delta,
        trace_inv_sigma_t=1.0 / gamma2,
    )


def eigensystem_gaussian_equivalent(
    problem: RFProblem, constants: RFConstants | None = None, seed: Seed = None
) -> EigenSystem:
    """Gaussian-equivalent train U = s2 I + Z Z^T (low rank), population
    U_pop = (alpha sigma_x^2 + b^2) W W^T/d + (v^2 + s^2) I, V = V_pop = b W / sqrt d.
    Only the n + d directions spanned by Z matter (V lies in that span): O(p (n+d)^2)."""
    c = constants or problem.constants()
    ge = gaussian_equivalent(problem, c, seed)
    vecs, S, _ = np.linalg.svd(ge.Z, full_matrices=False)
    lam = S**2 + c.s2
    d = problem.d
    P = vecs.T @ ge.V
    OW = vecs.T @ problem.W / math.sqrt(d)
    Q = (c.alpha * c.sigma_x**2 + c.b**2) * (OW @ OW.T)
    Q[np.diag_indices(Q.shape[0])] += c.v2 + c.s2
    return EigenSystem(
        lam=lam, P=P, Q=Q, R=P.copy(), d=d, p=problem.p, delta=c.delta, trace_inv_sigma_t=1.0 / c.gamma**2
    )


def gaussian_equivalent_curves(
    problem: RFProblem, taus: ArrayLike, constants: RFConstants | None = None, seed: Seed = None
) -> LossCurves:
    """Closed-form curves for the Gaussian-equivalent model of this draw (fast: no p x p matrix)."""
    c = constants or problem.constants()
    t0 = time.perf_counter()
    curves = closed_form_losses(eigensystem_gaussian_equivalent(problem, c, seed), taus)
    curves.meta.update(method="gaussian_equivalent", population="gaussian_equivalent", seconds=time.perf_counter() - t0)
    return curves


def exact_curves(problem: RFProblem, taus: ArrayLike, order: int = 3, matrices: tuple | None = None) -> LossCurves:
    """Closed-form curves with the exact U, V of this draw (noise expectation analytic) and the exact
    population U, V for Gaussian data: O(p^3), for p up to a few thousand. ``matrices`` as in :func:`simulate_gd`."""
    t0 = time.perf_counter()
    if matrices is None:
        U, V = exact_matrices(problem, order=order)
        pop = population_matrices(problem)
    else:
        U, V, pop = matrices
    curves = closed_form_losses(eigensystem_dense(U, V, pop["U"], pop["V"], problem.delta, pop["gamma2"]), taus)
    curves.meta.update(method="exact", population="exact_gaussian_data", seconds=time.perf_counter() - t0)
    return curves


def quadratic_losses(A: np.ndarray, U: np.ndarray, V: np.ndarray, delta: float) -> float:
    """L(A) = 1 + (Delta/(d p)) Tr(A U A^T) + (2 sqrt(Delta)/(d sqrt p)) Tr(A V)."""
    d, p = A.shape
    return float(
        1.0 + delta / (d * p) * np.sum((A @ U) * A) + 2.0 * math.sqrt(delta) / (d * math.sqrt(p)) * np.sum(A * V.T)
    )


def simulate_gd(
    problem: RFProblem,
    taus: ArrayLike,
    *,
    dtau: float | None = None,
    seed: Seed = None,
    dtype: Any = np.float64,
    evaluate: str = "exact",
    order: int = 3,
    progress: Callable[[int, int], None] | None = None,
    lam_max: float | None = None,
    matrices: tuple | None = None,
) -> LossCurves:
    """Full-batch gradient descent on A from 0, with a fresh noise draw for every training point at every step
    (like the paper's numerics), for the actual activation. The step is eta = dtau d^2 (default: 25% of the
    stability limit psi_p / (Delta lam_max)); steps run until the last of ``taus`` and the iterate is recorded at
    the first step at or after each requested tau.

    ``evaluate="exact"`` measures each recorded A with the exact train U, V (noise expectation analytic) and the
    exact population U, V for Gaussian data — so the curve has no Monte Carlo noise of its own. ``matrices``
    = ``(U, V, population_matrices(problem))`` skips recomputing them.

    The fresh noise makes A fluctuate around the gradient flow; the fluctuation adds to both losses an excess
    of order (dtau / dtau_max) / psi_n (independent of d), so a few-percent check at small psi_n needs a
    step well below the stability limit dtau_max = psi_p / (Delta lam_max).
    """
    tau = np.sort(_check_taus(taus))
    if not np.isfinite(tau[-1]):
        raise ValueError("simulate_gd needs finite training times tau")
    if evaluate != "exact":
        raise ValueError("evaluate must be 'exact' (the only evaluation implemented)")
    rng = as_generator(seed)
    _, f = resolve_activation(problem.activation)
    W, X = problem.W, problem.X
    p, d = W.shape
    n = X.shape[1]
    delta = problem.delta
    psi_p = p / d
    if matrices is None:
        U, V = exact_matrices(problem, order=order)
        pop = population_matrices(problem)
    else:
        U, V, pop = matrices
    if dtau is None:
        lmax = lam_max if lam_max is not None else float(np.linalg.eigvalsh(U)[-1]) if p <= 3000 else _power_lmax(U)
        dtau = 0.25 * psi_p / (delta * lmax)
    if not (math.isfinite(dtau) and dtau > 0):
        raise ValueError(f"dtau must be > 0 (got {dtau})")
    eta = dtau * d * d
    n_steps = math.ceil(tau[-1] / dtau)
    rec_steps = np.minimum(np.ceil(tau / dtau - 1e-9).astype(int), n_steps)
    Wd = (W / math.sqrt(d)).astype(dtype)
    base = (math.exp(-problem.t) * (W @ X) / math.sqrt(d)).astype(dtype)
    A = np.zeros((d, p), dtype=dtype)
    sq = math.sqrt(delta)
    coef = 2.0 * sq / (d * n * math.sqrt(p))
    out_A = {}
    t0 = time.perf_counter()
    want = set(rec_steps.tolist())
    if 0 in want:
        out_A[0] = A.astype(np.float64)
    for k in range(1, n_steps + 1):
        xi = rng.standard_normal((d, n)).astype(dtype)
        phi = f(base + sq * (Wd @ xi))  # (p, n)
        resid = (sq / math.sqrt(p)) * (A @ phi) + xi  # sqrt(Delta) s_A + xi, (d, n)
        A -= (eta * coef) * (resid @ phi.T)
        if k in want:
            out_A[k] = A.astype(np.float64)
        if progress is not None and (k % 50 == 0 or k == n_steps):
            progress(k, n_steps)
    sim_s = time.perf_counter() - t0
    Ltr = np.array([quadratic_losses(out_A[k], U, V, delta) for k in rec_steps])
    Lte = np.array([quadratic_losses(out_A[k], pop["U"], pop["V"], delta) for k in rec_steps])
    Esc = (Lte - 1.0) / delta + 1.0 / pop["gamma2"]
    return LossCurves(
        rec_steps * dtau,
        Ltr,
        Lte,
        Esc,
        meta={
            "method": "gd",
            "dtau": dtau,
            "eta": eta,
            "n_steps": n_steps,
            "seconds": sim_s,
            "evaluation": "exact U, V (train) and exact Gaussian-data population",
        },
    )


def _power_lmax(U: np.ndarray, iters: int = 200) -> float:
    from scipy.sparse.linalg import eigsh

    return float(eigsh(U, k=1, which="LA", return_eigenvectors=False, tol=1e-6)[0])


def predicted_times(constants: RFConstants, psi_p: float, psi_n: float, spectrum=None) -> dict:
    """tau_gen ~ 1/Delta_t; tau_mem = psi_p / (Delta_t lam_min) with lam_min from Theorem 3.2
    (s^2 + v^2 (1 - sqrt(psi_p/psi_n))^2) and, with a solved ``spectrum``, from the finite-psi_n first bulk."""
    from .spectrum import asymptotic_spectrum, check_ratios

    check_ratios(psi_p, psi_n)
    c = constants
    asym = asymptotic_spectrum(c, psi_p, psi_n)
    lam_min = asym["lambda_min"]
    out = {
        "tau_gen": 1.0 / c.delta,
        "lambda_min": lam_min,
        "tau_mem": psi_p / (c.delta * lam_min),
        "n_star_psi_n": psi_p,
        "tau_gen_second_bulk": psi_p / (c.delta * asym["second_bulk"]["scale"]),
    }
    out["ratio"] = out["tau_mem"] / out["tau_gen"]
    # above the architectural threshold n* = p the first bulk no longer separates from the population part:
    # training to convergence does not memorise
    out["memorization_expected"] = bool(psi_n < psi_p)
    if spectrum is not None:
        lm = first_bulk_edge(spectrum)
        out["lambda_min_finite"] = lm
        out["tau_mem_finite"] = psi_p / (c.delta * lm) if lm else None
    return out


def first_bulk_edge(spectrum) -> float | None:
    """Left edge of the bulk that holds most of the weight below the top (population) bulk.

    At finite psi_n the memorization bulk has two parts: d directions just above s_t^2 and n - d above them.
    This is the edge of the heavier, upper part, the finite-psi_n counterpart of Theorem 3.2's left edge; the
    lower part is skipped unless the two have merged. The lower part relaxes last and carries most of the
    generalization gap; its edge is ``spectrum.lambda_min`` (see :class:`~diffmem.theory.spectrum.SpectrumResult`).
    """
    if not spectrum.edges:
        return None
    cdf = spectrum.cdf()
    masses = [
        float(np.interp(hi, spectrum.lambdas, cdf) - np.interp(lo, spectrum.lambdas, cdf)) for lo, hi in spectrum.edges
    ]
    cands = list(range(len(spectrum.edges) - 1)) or [0]  # all but the top (second) bulk
    best = max(cands, key=lambda i: masses[i])
    return spectrum.edges[best][0]


def fit_power_law(x: ArrayLike, y: ArrayLike) -> dict:
    """Least-squares slope of log y against log x: exponent, prefactor, r2."""
    with np.errstate(divide="ignore", invalid="ignore"):  # log of 0 or < 0 is rejected just below
        lx = np.log(np.asarray(x, dtype=np.float64))
        ly = np.log(np.asarray(y, dtype=np.float64))
    if lx.size < 2 or not (np.all(np.isfinite(lx)) and np.all(np.isfinite(ly))):
        raise ValueError("need at least two positive, finite points to fit a power law")
    A = np.vstack([lx, np.ones_like(lx)]).T
    (k, b), *_ = np.linalg.lstsq(A, ly, rcond=None)
    pred = A @ np.array([k, b])
    ss = np.sum((ly - ly.mean()) ** 2)
    return {
        "exponent": float(k),
        "prefactor": float(math.exp(b)),
        "r2": float(1 - np.sum((ly - pred) ** 2) / ss) if ss > 0 else 1.0,
    }


def default_taus(tau_mem: float, n: int = 60, lo: float = 1e-3, hi: float = 30.0) -> np.ndarray:
    """Log-spaced training times from lo * tau_mem to hi * tau_mem."""
    return np.geomspace(lo * tau_mem, hi * tau_mem, n)
