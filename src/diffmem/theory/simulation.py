"""Finite-size matrices of the random-features model: exact U, V for a drawn W, X, and their Gaussian equivalent.

Notation: W (p x d) and X (d x n) have i.i.d. N(0,1) entries (X scaled by sigma_x), C = W W^T / d,
pre-activations h = W x_t / sqrt(d) with x_t = e^{-t} x + sqrt(Delta_t) xi.

* ``exact_matrices`` takes the noise expectation analytically. For one training point the pre-activations
  h_i, h_j are jointly Gaussian (means m = e^{-t} W x / sqrt d, covariance Delta_t C), so
      E[sigma(h_i) sigma(h_j)] = sum_k (Delta_t C_ij)^k / k!  E[sigma^(k)(h_i)] E[sigma^(k)(h_j)]
  (Taylor series in the covariance), truncated at ``order`` (off-diagonal C_ij = O(d^-1/2), so the terms
  fall like Delta_t^k d^{-k/2}); the diagonal is computed exactly. E[sigma^(k)(m + s z)] = E[sigma(m + s z)
  He_k(z)] / s^k (Stein), by Gauss-Hermite quadrature, so any activation works without derivatives.
  V = E[sigma(h) xi^T] = sqrt(Delta_t) diag(E sigma'(h)) W / sqrt d exactly (Stein again).
* ``population_matrices``: the same with x ~ N(0, sigma_x^2 I), i.e. the test-set (population) U and V.
* ``gaussian_equivalent`` : U = G G^T / n + b_t^2 W W^T / d + s_t^2 I, G = e^{-t} a_t W X / sqrt d + v_t Omega,
  V = b_t W / sqrt d, kept in low-rank form U = s_t^2 I + Z Z^T, Z = [G / sqrt n, b_t W / sqrt d].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .constants import Activation, RFConstants, gauss_hermite, resolve_activation, rf_constants

__all__ = [
    "GaussianEquivalent",
    "RFProblem",
    "Seed",
    "as_generator",
    "eigenvalue_histogram",
    "exact_matrices",
    "features",
    "gaussian_equivalent",
    "ge_eigenvalues",
    "make_problem",
    "mc_matrices",
    "population_matrices",
]


Seed = int | Sequence[int] | np.random.Generator | None
"""What every ``seed=`` argument accepts: an int, a list of ints (numpy seed sequence), a Generator, or None."""


def as_generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    if isinstance(seed, (list, tuple)) and all(isinstance(s, (int, np.integer)) for s in seed):
        return np.random.default_rng(list(seed))
    raise ValueError(f"seed must be an int, a list of ints, None or a numpy Generator (got {type(seed).__name__})")


@dataclass
class RFProblem:
    """One draw of the random-features problem: frozen weights W (p x d), training data X (d x n)."""

    W: np.ndarray
    X: np.ndarray
    t: float
    sigma_x: float = 1.0
    activation: Activation = "tanh"

    @property
    def d(self) -> int:
        return self.W.shape[1]

    @property
    def p(self) -> int:
        return self.W.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def delta(self) -> float:
        return -math.expm1(-2.0 * self.t)

    def constants(self) -> RFConstants:
        return rf_constants(self.t, self.sigma_x, self.activation)


def make_problem(
    d: int,
    psi_p: float,
    psi_n: float,
    t: float,
    *,
    sigma_x: float = 1.0,
    activation: Activation = "tanh",
    seed: Seed = None,
) -> RFProblem:
    """Draw W (p x d) and X (d x n), p = round(psi_p d), n = round(psi_n d)."""
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"d must be an integer >= 1 (got {d!r})")
    for name, v in (("psi_p", psi_p), ("psi_n", psi_n), ("t", t), ("sigma_x", sigma_x)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0 (got {v!r})")
    p, n = int(np.rint(psi_p * d)), int(np.rint(psi_n * d))  # half to even, like round()
    if p < 1 or n < 1:
        raise ValueError(f"psi_p*d and psi_n*d must round to >= 1 (got p={p}, n={n}); increase d")
    name, _ = resolve_activation(activation)
    rng = as_generator(seed)
    W = rng.standard_normal((p, d))
    X = sigma_x * rng.standard_normal((d, n))
    return RFProblem(
        W=W, X=X, t=float(t), sigma_x=float(sigma_x), activation=activation if callable(activation) else name
    )


def features(W: np.ndarray, x: np.ndarray, activation: Activation = "tanh") -> np.ndarray:
    """sigma(W x / sqrt d) for x of shape (d, m): (p, m)."""
    _, f = resolve_activation(activation)
    return f(W @ x / math.sqrt(W.shape[1]))


def _hermite_moments(f, mean: np.ndarray, std: np.ndarray, order: int, n_quad: int) -> list[np.ndarray]:
    """[E f^(k)(mean + std z) for k = 0..order] via E[f(mean + std z) He_k(z)] / std^k, plus E f^2 last."""
    x, w = gauss_hermite(n_quad)
    he = np.polynomial.hermite_e.hermevander(x, order)  # (Q, order+1)
    vals = f(mean[..., None] + std[..., None] * x)  # (..., Q)
    mom = (vals * w) @ he  # (..., order+1)
    out = [mom[..., k] / std**k for k in range(order + 1)]
    out.append((vals**2) @ w)
    return out


def exact_matrices(
    problem: RFProblem, order: int = 3, n_quad: int = 32, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Training U (p x p) and V (p x d) with the noise expectation done analytically (see module docstring)."""
    if order < 1:
        raise ValueError(f"order must be >= 1 (got {order})")
    _, f = resolve_activation(problem.activation)
    W, X, t = problem.W, problem.X, problem.t
    p, d = W.shape
    n = X.shape[1]
    delta = problem.delta
    C = W @ W.T / d
    cdiag = np.diag(C).copy()
    std = np.sqrt(delta * cdiag)[:, None]
    M = math.exp(-t) * (W @ X) / math.sqrt(d)  # (p, n) means
    acc = [np.zeros((p, p)) for _ in range(order + 1)]
    diag = np.zeros(p)
    d1 = np.zeros(p)
    for s in range(0, n, chunk):
        m = M[:, s : s + chunk]
        mom = _hermite_moments(f, m, np.broadcast_to(std, m.shape), order, n_quad)
        for k in range(order + 1):
            acc[k] += mom[k] @ mom[k].T
        diag += mom[-1].sum(1)
        d1 += mom[1].sum(1)
    U = np.zeros((p, p))
    Ck = np.ones_like(C)
    for k in range(order + 1):
        U += (delta**k / math.factorial(k)) * Ck * acc[k]
        Ck = Ck * C
    U /= n
    U[np.diag_indices(p)] = diag / n
    V = math.sqrt(delta) * (d1 / n)[:, None] * W / math.sqrt(d)
    return U, V


def mc_matrices(problem: RFProblem, n_draws: int, seed: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """U, V with the noise expectation replaced by ``n_draws`` noise draws per training point (a check)."""
    rng = as_generator(seed)
    W, X, t = problem.W, problem.X, problem.t
    p, d = W.shape
    n = X.shape[1]
    U = np.zeros((p, p))
    V = np.zeros((p, d))
    for _ in range(n_draws):
        xi = rng.standard_normal(X.shape)
        phi = features(W, math.exp(-t) * X + math.sqrt(problem.delta) * xi, problem.activation)
        U += phi @ phi.T
        V += phi @ xi.T
    return U / (n * n_draws), V / (n * n_draws)


def population_matrices(problem: RFProblem, order: int = 9, n_quad: int = 64) -> dict:
    """Population U, V for Gaussian data x ~ N(0, sigma_x^2 I), exact for this W (series to ``order``).

    Also returns ``Phi_x`` = E[sigma(h) x_t^T] (for the score error) and ``gamma2`` = Gamma_t^2.
    """
    _, f = resolve_activation(problem.activation)
    W = problem.W
    p, d = W.shape
    gamma2 = math.exp(-2 * problem.t) * problem.sigma_x**2 + problem.delta
    C = W @ W.T / d
    std = np.sqrt(gamma2 * np.diag(C))
    mom = _hermite_moments(f, np.zeros(p), std, order, n_quad)
    U = np.zeros((p, p))
    Ck = np.ones_like(C)
    for k in range(order + 1):
        U += (gamma2**k / math.factorial(k)) * Ck * np.outer(mom[k], mom[k])
        Ck = Ck * C
    U[np.diag_indices(p)] = mom[-1]
    base = mom[1][:, None] * W / math.sqrt(d)
    return {"U": U, "V": math.sqrt(problem.delta) * base, "Phi_x": gamma2 * base, "gamma2": gamma2, "mean": mom[0]}


@dataclass
class GaussianEquivalent:
    """U = s2 I + Z Z^T (p x p, never formed unless asked), V = b W / sqrt d."""

    Z: np.ndarray
    s2: float
    V: np.ndarray

    def dense_U(self) -> np.ndarray:
        U = self.Z @ self.Z.T
        U[np.diag_indices(U.shape[0])] += self.s2
        return U


def gaussian_equivalent(
    problem: RFProblem, constants: RFConstants | None = None, seed: Seed = None
) -> GaussianEquivalent:
    """The Gaussian-equivalent U and V for this W, X (Omega drawn from ``seed``)."""
    c = constants or problem.constants()
    rng = as_generator(seed)
    W, X = problem.W, problem.X
    p, d = W.shape
    n = X.shape[1]
    # Z = [G / sqrt n, b W / sqrt d] filled in place (p may be ~1e5): Omega is drawn in row blocks, which gives the
    # same numbers as one (p, n) draw because the generator fills arrays in C order
    Z = np.empty((p, n + d))
    Z[:, :n] = W @ X
    Z[:, :n] *= math.exp(-c.t) * c.a / math.sqrt(d * n)
    sv = math.sqrt(max(c.v2, 0.0) / n)
    rows = max(1, (1 << 22) // max(n, 1))
    for i in range(0, p, rows):
        Z[i : i + rows, :n] += sv * rng.standard_normal((min(rows, p - i), n))
    Z[:, n:] = (c.b / math.sqrt(d)) * W
    return GaussianEquivalent(Z=Z, s2=c.s2, V=c.b * W / math.sqrt(d))


def ge_eigenvalues(ge: GaussianEquivalent) -> np.ndarray:
    """All p eigenvalues of s2 I + Z Z^T (sorted), from the small (n+d) x (n+d) Gram matrix: exact, O(p (n+d)^2)."""
    p, k = ge.Z.shape
    if k >= p:
        return np.linalg.eigvalsh(ge.dense_U())
    ev = np.clip(np.linalg.eigvalsh(ge.Z.T @ ge.Z), 0.0, None) + ge.s2
    return np.sort(np.concatenate([np.full(p - k, ge.s2), ev]))


def eigenvalue_histogram(
    eigs: np.ndarray,
    delta_location: float | None = None,
    bins: int | np.ndarray = 200,
    log: bool = True,
    rtol: float = 1e-8,
) -> dict:
    """Histogram (as a density normalised to the fraction of eigenvalues it holds) outside the delta peak.

    Eigenvalues within ``rtol`` (relative) of ``delta_location`` are counted into ``delta_count``.
    """
    eigs = np.sort(np.asarray(eigs, dtype=np.float64))
    n = eigs.size
    in_delta = (
        np.zeros(n, bool)
        if delta_location is None
        else np.abs(eigs - delta_location) <= rtol * max(abs(delta_location), 1e-300) + 1e-12
    )
    rest = eigs[~in_delta]
    if isinstance(bins, int):
        lo, hi = rest.min(), rest.max()
        bins = np.geomspace(lo, hi * (1 + 1e-9), bins + 1) if (log and lo > 0) else np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(rest, bins=bins)
    dens = counts / (n * np.diff(edges))
    return {
        "edges": edges.tolist(),
        "density": dens.tolist(),
        "counts": counts.tolist(),
        "n_eigs": n,
        "delta_count": int(in_delta.sum()),
        "delta_fraction": float(in_delta.mean()),
    }
