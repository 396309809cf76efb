"""Spectrum of the feature correlation matrix U in the high-dimensional limit.

Theorem 3.1 of the paper characterises the Stieltjes transform q(z) = (1/p) Tr (U - z)^{-1} through two
auxiliary traces r and s. Eliminating s (it is an explicit function of q and r) leaves two complex
equations in (q, r):

    D      = 1 + (alpha psi_p / psi_n) r + (psi_p v^2 / psi_n) q,      alpha = a_t^2 e^{-2t}
    r_hat  = psi_p alpha / D,        s_hat = b_t^2 psi_p + 1/q
    s      = sum_k w_k / (s_hat + lam_k r_hat),   R = sum_k w_k lam_k / (s_hat + lam_k r_hat)
    F1     = r - R = 0
    F2     = psi_p (s_t^2 - z) + psi_p v^2 / D + (1 - psi_p)/q - s/q^2 = 0

where (lam_k, w_k) is the spectrum of the data covariance Sigma as a discrete mixture. We solve them by
complex Newton steps, vectorised over the lambda grid, following each point down from z = lambda + i Y
(Y large, where q ~ -1/(z - mean)) to z = lambda + i eps in small geometric steps, so every point stays
on the physical branch Im q > 0. The density is Im q / pi at the final eps.

Theorem 3.2 (psi_p > psi_n >> 1) is in :func:`asymptotic_spectrum`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from .constants import Activation, RFConstants, rf_constants

__all__ = [
    "SpectrumResult",
    "asymptotic_spectrum",
    "check_ratios",
    "default_grid",
    "marchenko_pastur_density",
    "solve_stieltjes",
    "spectral_density",
]


def check_ratios(psi_p: float, psi_n: float) -> None:
    for name, v in (("psi_p", psi_p), ("psi_n", psi_n)):
        if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v > 0):
            raise ValueError(
                f"{name} must be a finite number > 0 (got {v!r}); "
                "psi_p = p/d (features per dimension), psi_n = n/d (samples per dimension)"
            )


def _mixture(sigma_eigs, sigma_weights, sigma_x: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    if sigma_eigs is None:
        if sigma_weights is not None:
            raise ValueError("sigma_weights given without sigma_eigs; pass both (or neither for Sigma = sigma_x^2 I)")
        sx = 1.0 if sigma_x is None else float(sigma_x)
        return np.array([sx**2]), np.array([1.0]), sx
    lam = np.atleast_1d(np.asarray(sigma_eigs, dtype=np.float64))
    w = (
        np.full(lam.shape, 1.0 / lam.size)
        if sigma_weights is None
        else np.atleast_1d(np.asarray(sigma_weights, dtype=np.float64))
    )
    if lam.ndim != 1 or w.shape != lam.shape:
        raise ValueError(
            f"sigma_eigs and sigma_weights must be 1-d arrays of the same length (got {lam.shape} and {w.shape})"
        )
    if not (np.all(np.isfinite(lam)) and np.all(lam >= 0) and lam.max() > 0):
        raise ValueError(
            "sigma_eigs must be finite, >= 0 and not all 0 (they are the eigenvalues of the data covariance)"
        )
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError("sigma_weights must be finite, >= 0 and sum to > 0 (they are normalised to 1)")
    w = w / w.sum()
    sx = math.sqrt(float(np.sum(w * lam)))
    if sigma_x is not None and abs(sx - float(sigma_x)) > 1e-9 * max(1.0, sx):
        raise ValueError(f"sigma_x={sigma_x} disagrees with sqrt(mean of sigma_eigs)={sx:.6g}; give only one of them")
    return lam, w, sx


def _system(q, r, z, c: RFConstants, psi_p: float, psi_n: float, lam: np.ndarray, w: np.ndarray):
    """F1, F2 and their complex Jacobian (see the module docstring)."""
    al, b2, v2, s2 = c.alpha, c.b**2, c.v2, c.s2
    dD_dq = psi_p * v2 / psi_n
    dD_dr = al * psi_p / psi_n
    D = 1.0 + dD_dr * r + dD_dq * q
    rh = psi_p * al / D
    sh = b2 * psi_p + 1.0 / q
    den = sh[:, None] + lam[None, :] * rh[:, None]
    inv = w[None, :] / den
    inv2 = inv / den
    S = inv.sum(1)
    R = (inv * lam).sum(1)
    S_sh = -inv2.sum(1)
    S_rh = R_sh = -(inv2 * lam).sum(1)
    R_rh = -(inv2 * lam**2).sum(1)
    sh_q = -1.0 / q**2
    rh_D = -psi_p * al / D**2
    S_q = S_sh * sh_q + S_rh * rh_D * dD_dq
    S_r = S_rh * rh_D * dD_dr
    R_q = R_sh * sh_q + R_rh * rh_D * dD_dq
    R_r = R_rh * rh_D * dD_dr
    F1 = r - R
    t2 = psi_p * v2 / D
    t3 = (1.0 - psi_p) / q
    t4 = S / q**2
    F2 = psi_p * (s2 - z) + t2 + t3 - t4
    J11 = -R_q
    J12 = 1.0 - R_r
    J21 = -t2 / D * dD_dq - t3 / q - S_q / q**2 + 2.0 * t4 / q
    J22 = -t2 / D * dD_dr - S_r / q**2
    scale1 = np.abs(r) + np.abs(R) + 1e-300
    scale2 = psi_p * (np.abs(z) + abs(s2)) + np.abs(t2) + np.abs(t3) + np.abs(t4) + 1e-300
    return F1, F2, J11, J12, J21, J22, scale1, scale2


def _newton(q, r, z, c, psi_p, psi_n, lam, w, tol=1e-12, max_iter=60):
    """Damped complex Newton on all points at once; keeps Im q >= 0. Returns q, r, residual, ok."""
    q = q.copy()
    r = r.copy()
    F1, F2, J11, J12, J21, J22, s1, s2 = _system(q, r, z, c, psi_p, psi_n, lam, w)
    res = np.maximum(np.abs(F1) / s1, np.abs(F2) / s2)
    active = res > tol
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        det = J11[idx] * J22[idx] - J12[idx] * J21[idx]
        det = np.where(det == 0, 1e-300, det)
        dq = (J22[idx] * F1[idx] - J12[idx] * F2[idx]) / det
        dr = (J11[idx] * F2[idx] - J21[idx] * F1[idx]) / det
        step = np.ones(idx.size)
        best = res[idx].copy()
        newq, newr = q[idx].copy(), r[idx].copy()
        pending = np.ones(idx.size, bool)
        for _half in range(12):
            if not pending.any():
                break
            j = np.nonzero(pending)[0]
            qt = q[idx[j]] - step[j] * dq[j]
            rt = r[idx[j]] - step[j] * dr[j]
            g = _system(qt, rt, z[idx[j]], c, psi_p, psi_n, lam, w)
            rt_res = np.maximum(np.abs(g[0]) / g[6], np.abs(g[1]) / g[7])
            good = np.isfinite(rt_res) & (rt_res < best[j]) & (qt.imag >= -1e-14 * np.abs(qt))
            newq[j[good]] = qt[good]
            newr[j[good]] = rt[good]
            best[j[good]] = rt_res[good]
            pending[j[good]] = False
            step[j[~good]] *= 0.5
        moved = ~pending
        q[idx[moved]] = newq[moved]
        r[idx[moved]] = newr[moved]
        F1, F2, J11, J12, J21, J22, s1, s2 = _system(q, r, z, c, psi_p, psi_n, lam, w)
        res = np.maximum(np.abs(F1) / s1, np.abs(F2) / s2)
        stuck = np.zeros_like(active)
        stuck[idx[pending]] = True  # no step size reduced the residual: at the floor (or lost)
        active = (res > tol) & ~stuck
    return q, r, res


def solve_stieltjes(
    z: np.ndarray,
    constants: RFConstants,
    psi_p: float,
    psi_n: float,
    sigma_eigs=None,
    sigma_weights=None,
    y_start: float | None = None,
    shrink: float = 0.75,
    tol: float = 1e-10,
    return_path: bool = False,
):
    """q(z), r(z) for complex ``z`` with Im z > 0, continued down from z.real + i*y_start.

    Returns ``(q, r, residual)`` (and the list of intermediate (eps, q) when ``return_path``).
    """
    check_ratios(psi_p, psi_n)
    lam, w, _ = _mixture(sigma_eigs, sigma_weights, constants.sigma_x if sigma_eigs is None else None)
    z = np.atleast_1d(np.asarray(z, dtype=np.complex128))
    if np.any(z.imag <= 0):
        raise ValueError("solve_stieltjes needs Im z > 0 (the density is the limit Im z -> 0+ of Im q / pi)")
    c = constants
    m1 = c.alpha * float(np.sum(w * lam)) + c.b**2 + c.v2 + c.s2  # (1/p) Tr U
    top = psi_p * (c.b**2 + c.alpha * float(lam.max())) * (1 + 1 / math.sqrt(psi_n)) ** 2 + m1
    y0 = y_start if y_start is not None else 20.0 * max(top, float(np.abs(z.real).max()), 1.0)
    eps_final = z.imag.copy()
    levels = [y0]
    while levels[-1] * shrink > eps_final.min():
        levels.append(levels[-1] * shrink)
    zz = z.real + 1j * np.maximum(eps_final, y0)
    q = -1.0 / (zz - m1)
    r = float(np.sum(w * lam)) * q
    path = []
    res = np.zeros(z.size)
    for y in [*levels, 0.0]:
        zz = z.real + 1j * np.maximum(eps_final, y)
        q, r, res = _newton(q, r, zz, c, psi_p, psi_n, lam, w, tol=tol)
        if return_path:
            path.append((y, q.copy()))
    return (q, r, res, path) if return_path else (q, r, res)


def marchenko_pastur_density(x: np.ndarray, ratio: float, scale: float = 1.0) -> np.ndarray:
    """Density of the non-zero eigenvalues of scale * Y^T Y / m, Y (k x m) Gaussian, ratio = k/m: the law
    with edges scale*(1 -+ sqrt(ratio))^2 and mean scale*ratio... normalised to 1 over its support.

    Concretely: eigenvalues mu of (1/m) Y Y^T (k x k) with ratio = k/m <= 1 have density
    sqrt((mu+ - mu)(mu - mu-)) / (2 pi ratio mu), mu-+ = (1 -+ sqrt(ratio))^2; here mu is multiplied by ``scale``.
    """
    x = np.asarray(x, dtype=np.float64) / scale
    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    out = np.zeros_like(x)
    m = (x > lo) & (x < hi)
    out[m] = np.sqrt((hi - x[m]) * (x[m] - lo)) / (2 * math.pi * ratio * x[m])
    return out / scale


def asymptotic_spectrum(constants: RFConstants, psi_p: float, psi_n: float, lambdas: np.ndarray | None = None) -> dict:
    """The law of Theorem 3.2 (psi_p > psi_n >> 1, Sigma = sigma_x^2 I).

    * a delta peak at s_t^2 of weight 1 - (1 + psi_n)/psi_p;
    * a first bulk of weight psi_n/psi_p: s_t^2 + v_t^2 mu, mu Marchenko-Pastur with edges (1 -+ sqrt(psi_p/psi_n))^2;
    * a second bulk of weight 1/psi_p on the scale psi_p. Its shape is not part of the theorem; we give the
      leading-order law psi_p (b_t^2 + alpha sigma_x^2 mu'), mu' Marchenko-Pastur with ratio 1/psi_n (the
      sample covariance of the data), which is exact as psi_p -> infinity and off by O(1/sqrt(psi_p)) otherwise.

    With ``lambdas``, also the continuous part of that density on the grid (key "density").
    """
    check_ratios(psi_p, psi_n)
    c = constants
    g = psi_p / psi_n
    lo1 = c.s2 + c.v2 * (1 - math.sqrt(g)) ** 2
    hi1 = c.s2 + c.v2 * (1 + math.sqrt(g)) ** 2
    sc2 = psi_p * c.alpha * c.sigma_x**2
    lo2 = psi_p * c.b**2 + sc2 * (1 - 1 / math.sqrt(psi_n)) ** 2
    hi2 = psi_p * c.b**2 + sc2 * (1 + 1 / math.sqrt(psi_n)) ** 2
    out = {
        "valid": bool(psi_p > psi_n),
        "delta": {"location": c.s2, "weight": max(0.0, 1.0 - (1.0 + psi_n) / psi_p)},
        "first_bulk": {"weight": min(psi_n, psi_p) / psi_p, "edges": [lo1, hi1], "mean": c.s2 + c.v2 * g},
        "second_bulk": {"weight": 1.0 / psi_p, "edges": [lo2, hi2], "scale": psi_p * (c.b**2 + c.alpha * c.sigma_x**2)},
        "lambda_min": lo1,
    }
    if lambdas is not None:
        lamb = np.asarray(lambdas, dtype=np.float64)
        rho1 = np.zeros_like(lamb)
        if c.v2 > 0:
            # first-bulk eigenvalues s^2 + v^2 mu, mu = (p/n) x with x ~ MP(ratio n/p) (n < p)
            ratio = min(psi_n / psi_p, 1.0)
            x = (lamb - c.s2) / c.v2 * ratio
            rho1 = (min(psi_n, psi_p) / psi_p) * marchenko_pastur_density(x, ratio) * ratio / c.v2
        rho2 = (
            (1.0 / psi_p) * marchenko_pastur_density(lamb - psi_p * c.b**2, 1.0 / psi_n, scale=sc2)
            if sc2 > 0
            else np.zeros_like(lamb)
        )
        out["density"] = rho1 + rho2
    return out


def default_grid(
    constants: RFConstants, psi_p: float, psi_n: float, n_points: int = 400, sigma_max: float = 1.0
) -> np.ndarray:
    """A grid in lambda - s_t^2, geometric from 1e-4 of the first-bulk scale up past the second bulk.

    Log spacing resolves both bulks (they sit orders of magnitude apart) with the same relative resolution.
    """
    c = constants
    small = max(c.v2 * min(1.0, psi_p / psi_n), c.b**2, 1e-6 * (c.alpha * sigma_max + c.b**2))
    top = (
        psi_p * (c.b**2 + c.alpha * sigma_max) * (1 + 1 / math.sqrt(psi_n)) ** 2 * (1 + 1 / math.sqrt(psi_p)) ** 2 * 1.5
        + c.v2 * (1 + math.sqrt(psi_p / psi_n)) ** 2
    )
    return c.s2 + np.geomspace(1e-4 * small, top, n_points)


POPULATION_MASS_RTOL = 0.25
"""Relative tolerance on the population bulk's mass (1/psi_p) when the bulks are labelled (:class:`SpectrumResult`)."""

DELTA_FLOOR_FACTOR = 3.0
"""Safety factor of :attr:`SpectrumResult.delta_peak_weight_floor` (see docs/theory.md, "Delta-peak weight")."""


@dataclass
class SpectrumResult:
    """Density of U's eigenvalues on a grid (see :func:`spectral_density`).

    **Bulks.** ``edges`` lists the support intervals of the continuous part, lowest first, and ``bulk_weights``
    their masses. Each interval gets a role (``bulk_roles``) by counting directions from the top: U - s_t^2 I has
    d directions of the population part (n-independent, at scale psi_p), so the highest bulks whose masses add up
    to 1/psi_p (within ``POPULATION_MASS_RTOL``) are the **population bulk**. Every bulk below it holds the
    directions specific to the n training points (weight psi_n/psi_p when p > n + d, Theorem 3.2's first bulk);
    when psi_n < psi_p (n below the architectural threshold n* = p) they are the **memorization bulk**, otherwise
    they are labelled ``"sample_specific"`` and there is no memorization bulk. If no group of top bulks has the
    population mass, every bulk is ``"unidentified"``. At finite psi_n the memorization bulk is often split in
    two intervals (d directions just above s_t^2 and n - d above them): ``memorization_bulk`` is their hull.
    """

    constants: RFConstants
    psi_p: float
    psi_n: float
    lambdas: np.ndarray
    density: np.ndarray
    q: np.ndarray
    converged: np.ndarray
    residual: np.ndarray
    delta_peak_weight: float  # exact: 1 - (1 + psi_n)/psi_p when positive (rank of U - s_t^2 I)
    delta_peak_weight_solver: float  # eps * Im q(s_t^2 + i eps) from the equations
    edges: list  # [[lo, hi], ...] of the bulks, from where the density is > 0
    mass: float  # integral of the density over the grid
    eps: float
    sigma_eigs: np.ndarray = field(default_factory=lambda: np.array([1.0]))
    sigma_weights: np.ndarray = field(default_factory=lambda: np.array([1.0]))
    asymptotic: dict = field(default_factory=dict)
    delta_peak_weight_floor: float = math.inf  # resolution of delta_peak_weight_solver (inf: not converged)

    def cdf(self) -> np.ndarray:
        """Cumulative mass of the continuous part along the grid (trapezoid), starting at 0."""
        inc = 0.5 * (self.density[1:] + self.density[:-1]) * np.diff(self.lambdas)
        return np.concatenate([[0.0], np.cumsum(inc)])

    @property
    def bulk_weights(self) -> list[float]:
        """Mass of each interval of ``edges`` (trapezoid integral of the density over it)."""
        cdf = self.cdf()
        return [float(np.interp(hi, self.lambdas, cdf) - np.interp(lo, self.lambdas, cdf)) for lo, hi in self.edges]

    @property
    def bulk_roles(self) -> list[str]:
        """Role of each interval of ``edges``: "memorization", "population", "sample_specific" or "unidentified"."""
        weights = self.bulk_weights
        target = min(1.0, 1.0 / self.psi_p)
        acc = 0.0
        for k in range(len(weights) - 1, -1, -1):  # from the top bulk down
            acc += weights[k]
            if abs(acc - target) <= POPULATION_MASS_RTOL * target:
                below = "memorization" if self.psi_n < self.psi_p else "sample_specific"
                return [below] * k + ["population"] * (len(weights) - k)
            if acc > (1.0 + POPULATION_MASS_RTOL) * target:
                break
        return ["unidentified"] * len(weights)

    def _hull(self, role: str) -> tuple[list[float] | None, float | None]:
        idx = [i for i, r in enumerate(self.bulk_roles) if r == role]
        if not idx:
            return None, None
        weights = self.bulk_weights
        return [self.edges[idx[0]][0], self.edges[idx[-1]][1]], float(sum(weights[i] for i in idx))

    @property
    def memorization_bulk(self) -> list[float] | None:
        """[lo, hi] spanning the memorization bulk (all its intervals), None if there is none (see the class)."""
        return self._hull("memorization")[0]

    @property
    def memorization_bulk_weight(self) -> float | None:
        """Mass of the memorization bulk (psi_n/psi_p when p > n + d), None if there is none."""
        return self._hull("memorization")[1]

    @property
    def population_bulk(self) -> list[float] | None:
        """[lo, hi] spanning the population bulk (mass 1/psi_p), None if it was not identified."""
        return self._hull("population")[0]

    @property
    def population_bulk_weight(self) -> float | None:
        """Mass of the population bulk (1/psi_p), None if it was not identified."""
        return self._hull("population")[1]

    @property
    def lambda_min(self) -> float | None:
        """Left edge of the memorization bulk (``memorization_bulk[0]``), None if there is none.

        It is the smallest eigenvalue of the directions specific to the training set, so psi_p / (Delta_t
        lambda_min) is the time by which the last of them has been learnt.
        """
        bulk = self.memorization_bulk
        return bulk[0] if bulk is not None else None

    @property
    def delta_peak_resolved(self) -> bool:
        """Whether ``delta_peak_weight_solver`` is above its floor (a peak the solver itself can see)."""
        return bool(self.delta_peak_weight_solver > self.delta_peak_weight_floor)

    def to_dict(self) -> dict:
        return {
            "constants": self.constants.to_dict(),
            "psi_p": self.psi_p,
            "psi_n": self.psi_n,
            "lambda": self.lambdas.tolist(),
            "density": self.density.tolist(),
            "converged": self.converged.tolist(),
            "n_unconverged": int((~self.converged).sum()),
            "delta_peak_weight": self.delta_peak_weight,
            "delta_peak_weight_solver": self.delta_peak_weight_solver,
            "delta_peak_weight_floor": self.delta_peak_weight_floor,
            "delta_peak_resolved": self.delta_peak_resolved,
            "edges": self.edges,
            "bulk_weights": self.bulk_weights,
            "bulk_roles": self.bulk_roles,
            "memorization_bulk": self.memorization_bulk,
            "memorization_bulk_weight": self.memorization_bulk_weight,
            "population_bulk": self.population_bulk,
            "population_bulk_weight": self.population_bulk_weight,
            "lambda_min": self.lambda_min,
            "mass": self.mass,
            "mass_expected": 1.0
            - self.delta_peak_weight,  # a gap to `mass` means mass outside the grid (e.g. a hard edge at s_t^2)
            "eps": self.eps,
            "sigma_eigs": self.sigma_eigs.tolist(),
            "sigma_weights": self.sigma_weights.tolist(),
            "asymptotic": {k: v for k, v in self.asymptotic.items() if k != "density"},
            "asymptotic_density": self.asymptotic.get("density", np.array([])).tolist()
            if "density" in self.asymptotic
            else None,
        }


def _find_edges(lam: np.ndarray, inside: np.ndarray) -> list:
    edges = []
    i = 0
    n = lam.size
    while i < n:
        if inside[i]:
            j = i
            while j + 1 < n and inside[j + 1]:
                j += 1
            lo = lam[i] if i == 0 else 0.5 * (lam[i - 1] + lam[i])
            hi = lam[j] if j == n - 1 else 0.5 * (lam[j] + lam[j + 1])
            edges.append([float(lo), float(hi)])
            i = j + 1
        else:
            i += 1
    return edges


# ---------------------------------------------------------------------------------- the parts of spectral_density
_CONVERGED_RESIDUAL = 1e-7  # a point counts as converged below this relative residual


def _resolve_constants(
    t: float | None,
    constants: RFConstants | None,
    sigma_x: float | None,
    activation: Activation,
    sigma_eigs: ArrayLike | None,
    sigma_weights: ArrayLike | None,
) -> tuple[RFConstants, np.ndarray, np.ndarray]:
    """The constants and the data spectrum (lam_k, w_k), checking that t, sigma_x, constants and sigma_eigs agree."""
    lam_s, w_s, sx = _mixture(
        sigma_eigs, sigma_weights, sigma_x if constants is None else (constants.sigma_x if sigma_eigs is None else None)
    )
    if constants is None:
        if t is None:
            raise ValueError("give the diffusion time t (or ready constants=rf_constants(...))")
        constants = rf_constants(t, sx, activation)
    elif sigma_eigs is not None and abs(constants.sigma_x - sx) > 1e-9 * sx:
        raise ValueError(
            f"constants were built with sigma_x={constants.sigma_x} but sigma_eigs give {sx:.6g}; "
            "rebuild them with sigma_x=sqrt(mean eigenvalue)"
        )
    if t is not None and abs(float(t) - constants.t) > 1e-15:
        raise ValueError(f"t={t} disagrees with constants.t={constants.t}; give only one")
    return constants, lam_s, w_s


def _lambda_grid(
    c: RFConstants, psi_p: float, psi_n: float, lambdas: ArrayLike | None, n_points: int, sigma_max: float
) -> np.ndarray:
    """The user's grid (checked) or :func:`default_grid`."""
    if lambdas is None:
        if int(n_points) < 10:
            raise ValueError(f"n_points must be >= 10 (got {n_points})")
        return default_grid(c, psi_p, psi_n, int(n_points), sigma_max)
    lam = np.asarray(lambdas, dtype=np.float64).ravel()
    if lam.size < 2 or not np.all(np.isfinite(lam)) or np.any(np.diff(lam) <= 0):
        raise ValueError("lambdas must be a finite, strictly increasing grid of at least 2 points")
    return lam


def _final_eps(lam: np.ndarray, eps: float | None) -> float:
    """Im z of the final solve: 1e-10 max(1, max |lambda|) by default."""
    scale = max(1.0, float(np.abs(lam).max()))
    out = 1e-10 * scale if eps is None else float(eps)
    if not out > 0:
        raise ValueError(f"eps must be > 0 (got {out})")
    return out


def _solve_on_grid(
    lam: np.ndarray, eps: float, c: RFConstants, psi_p: float, psi_n: float, lam_s: np.ndarray, w_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """q(lambda + i eps) on the grid, its residual, and q at the first level of the path at or below 100 eps."""
    q, _, res, path = solve_stieltjes(lam + 1j * eps, c, psi_p, psi_n, lam_s, w_s, return_path=True)
    q_big = None
    for y, qq in path:
        if y <= 100 * eps:
            q_big = qq
            break
    return q, res, q_big


def _density_and_support(
    q: np.ndarray, res: np.ndarray, q_big: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``converged`` per point, the density Im q / pi, and the support mask.

    A point is in the support when Im q stays put between 100 eps and eps (in a gap Im q is proportional to eps)
    and the density is not negligible; outside it the density is set to 0 (unconverged points keep their value).
    """
    converged = np.isfinite(q) & (res < _CONVERGED_RESIDUAL) & (q.imag >= -1e-10 * np.abs(q))
    density = np.clip(q.imag, 0.0, None) / math.pi
    ratio = q.imag / np.where(q_big.imag > 0, q_big.imag, np.inf) if q_big is not None else np.ones_like(density)
    inside = (ratio > 0.5) & (density > 1e-12 * max(density.max(), 1e-300)) & converged
    density = np.where(inside | ~converged, density, 0.0)
    return converged, density, inside


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _exact_delta_weight(c: RFConstants, psi_p: float, psi_n: float) -> float:
    """Rank count: U - s_t^2 I has rank n + d, so max(0, 1 - (1 + psi_n)/psi_p) of the eigenvalues equal s_t^2."""
    return max(0.0, 1.0 - (1.0 + psi_n) / psi_p) if (c.v2 > 0 or c.alpha > 0) else 1.0


def _continue_down(q, r, x: float, y_from: float, y_to: float, c, psi_p, psi_n, lam, w, shrink: float = 0.75):
    """Follow the solution at z = x + i y_from down to x + i y_to in geometric steps; returns q, residual."""
    res = np.zeros(1)
    y = y_from
    while y > y_to:
        y = max(y * shrink, y_to)
        q, r, res = _newton(q, r, np.array([x + 1j * y]), c, psi_p, psi_n, lam, w, tol=1e-10)
    return q, res


def _solver_delta_weight(
    c: RFConstants, psi_p: float, psi_n: float, lam_s: np.ndarray, w_s: np.ndarray
) -> tuple[float, float]:
    """The solver's delta weight f(e0) = e0 Im q(s_t^2 + i e0), e0 = 1e-7 (v_t^2 + b_t^2), and its floor.

    f(e) - w mixes two errors: the continuous density near s_t^2 adds a positive part that grows with e (like
    e^beta, beta >= 1/2 at a hard edge), and the finite precision of q adds one that grows as e falls (q ~ w/e).
    The floor is DELTA_FLOOR_FACTOR times the larger change of f when e is multiplied or divided by about 4
    (the path level nearest 4 e0, and a short continuation down to e0/4, used when it converges); inf if the solve
    at e0 did not converge.
    """
    e0 = 1e-7 * max(c.v2 + c.b**2, 1e-12)
    q0, r0, res0, path = solve_stieltjes(np.array([c.s2 + 1j * e0]), c, psi_p, psi_n, lam_s, w_s, return_path=True)
    value = float(e0 * q0.imag[0])
    levels = [(y, qq) for y, qq in path if y > 0]
    y_up, q_up = min(levels, key=lambda yq: abs(math.log(yq[0] / (4.0 * e0))))
    q_down, res_down = _continue_down(q0, r0, c.s2, e0, e0 / 4.0, c, psi_p, psi_n, lam_s, w_s)
    changes = [abs(float(y_up * q_up.imag[0]) - value)]
    if res_down[0] < _CONVERGED_RESIDUAL:  # below e0 the solve can lose convergence first: then only the step up
        changes.append(abs(float(e0 / 4.0 * q_down.imag[0]) - value))
    floor = DELTA_FLOOR_FACTOR * max(changes)
    if not (res0[0] < _CONVERGED_RESIDUAL and math.isfinite(floor)):
        floor = math.inf
    return value, floor


def spectral_density(
    t: float | None = None,
    psi_p: float = 64.0,
    psi_n: float = 8.0,
    *,
    constants: RFConstants | None = None,
    sigma_x: float | None = None,
    activation: Activation = "tanh",
    sigma_eigs: ArrayLike | None = None,
    sigma_weights: ArrayLike | None = None,
    lambdas: ArrayLike | None = None,
    n_points: int = 400,
    eps: float | None = None,
) -> SpectrumResult:
    """Eigenvalue density of U (Theorem 3.1) on a lambda grid, its delta peak and bulk edges.

    The equations (module docstring) are solved for q(lambda + i eps) at every grid point by complex
    Newton steps, continued down from far above the real axis so each point stays on the physical
    branch Im q > 0; the density is Im q / pi. Points where Newton did not converge are flagged in
    ``converged`` (their density is still the last iterate, never silently NaN).

    Parameters
    ----------
    t : float, optional
        OU diffusion time, > 0. Give either ``t`` (with ``sigma_x``, ``activation``) or ``constants``.
    psi_p : float, default 64.0
        p/d, random features per data dimension (> 0).
    psi_n : float, default 8.0
        n/d, training points per data dimension (> 0).
    constants : RFConstants, optional
        Ready Gaussian-equivalent constants (from :func:`~diffmem.theory.constants.rf_constants`).
    sigma_x : float, optional
        Data scale, Sigma = sigma_x^2 I (1 when neither it nor ``sigma_eigs`` is given).
    activation : {"tanh", "relu", "linear"} or callable, default "tanh"
        Feature non-linearity (ignored with ``constants``).
    sigma_eigs : array_like of float, shape (K,), optional
        Eigenvalues of the data covariance as a discrete mixture (>= 0, not all 0); then
        sigma_x = sqrt(mean eigenvalue).
    sigma_weights : array_like of float, shape (K,), optional
        Their weights (normalised to sum 1; default equal).
    lambdas : array_like of float, shape (M,), optional
        The grid, strictly increasing; default :func:`default_grid` with ``n_points`` points, log-spaced in
        lambda - s_t^2 from 1e-4 of the first-bulk scale to past the second bulk.
    n_points : int, default 400
        Size of the default grid (>= 10).
    eps : float, optional
        Im z of the final solve (default 1e-10 max(1, max |lambda|)).

    Returns
    -------
    SpectrumResult
        ``lambdas`` and ``density`` (float64, shape (M,)), ``q`` (complex128, (M,)), ``converged`` (bool, (M,)),
        ``residual`` (float64, (M,)), ``delta_peak_weight`` (exact, max(0, 1 - (1 + psi_n)/psi_p)),
        ``delta_peak_weight_solver`` (e0 Im q(s_t^2 + i e0)) and ``delta_peak_weight_floor`` (its resolution),
        ``edges`` (list of [lo, hi] of the bulks) with ``bulk_weights``, ``bulk_roles``, ``memorization_bulk``,
        ``population_bulk`` and ``lambda_min`` (see :class:`SpectrumResult`), ``mass`` (integral of the density
        over the grid), ``asymptotic`` (Theorem 3.2, for Sigma = sigma_x^2 I).

    Raises
    ------
    ValueError
        For psi_p, psi_n or t not finite and > 0, an invalid covariance spectrum or grid, or ``t``, ``sigma_x``
        and ``constants`` that disagree.

    Examples
    --------
    >>> s = spectral_density(0.01, psi_p=64.0, psi_n=8.0, n_points=100)
    >>> s.density.shape, bool(s.converged.all()), s.delta_peak_weight
    ((100,), True, 0.859375)
    >>> s.bulk_roles  # d directions just above s_t^2 and n - d above them, then the d population directions
    ['memorization', 'memorization', 'population']
    >>> s.lambda_min == s.memorization_bulk[0] == s.edges[0][0]
    True
    """
    check_ratios(psi_p, psi_n)
    c, lam_s, w_s = _resolve_constants(t, constants, sigma_x, activation, sigma_eigs, sigma_weights)
    lam = _lambda_grid(c, psi_p, psi_n, lambdas, n_points, float(lam_s.max()))
    eps = _final_eps(lam, eps)
    q, res, q_big = _solve_on_grid(lam, eps, c, psi_p, psi_n, lam_s, w_s)
    converged, density, inside = _density_and_support(q, res, q_big)
    delta_solver, delta_floor = _solver_delta_weight(c, psi_p, psi_n, lam_s, w_s)
    return SpectrumResult(
        constants=c,
        psi_p=float(psi_p),
        psi_n=float(psi_n),
        lambdas=lam,
        density=density,
        q=q,
        converged=converged,
        residual=res,
        delta_peak_weight=_exact_delta_weight(c, psi_p, psi_n),
        delta_peak_weight_solver=delta_solver,
        edges=_find_edges(lam, inside),
        mass=_trapezoid(density, lam),
        eps=eps,
        sigma_eigs=lam_s,
        sigma_weights=w_s,
        asymptotic=asymptotic_spectrum(c, psi_p, psi_n, lam) if len(lam_s) == 1 else {},
        delta_peak_weight_floor=delta_floor,
    )
