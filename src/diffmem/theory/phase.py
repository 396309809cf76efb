"""Phase diagram of the random-features model: L_gen = L_test - L_train over (psi_n, psi_p) at given training times.

Every grid point is one draw of the Gaussian-equivalent model at a finite d, solved in closed form
(:func:`diffmem.theory.gradient_flow.gaussian_equivalent_curves`), so all training times come from one
eigen-decomposition. The memorisation boundary at time tau is where L_gen crosses ``threshold``; at
tau = inf it approaches the architectural threshold n* = p (psi_n = psi_p).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .constants import Activation, rf_constants
from .gradient_flow import gaussian_equivalent_curves
from .simulation import Seed, as_generator, make_problem

__all__ = ["PhaseDiagram", "boundary", "phase_diagram"]


@dataclass
class PhaseDiagram:
    """Losses on a (tau, psi_n, psi_p) grid (see :func:`phase_diagram`); arrays are float64."""

    psi_n: np.ndarray  # (N,)
    psi_p: np.ndarray  # (P,)
    taus: np.ndarray  # (T,), inf allowed
    L_gen: np.ndarray  # (T, N, P), L_test - L_train
    L_train: np.ndarray  # (T, N, P)
    L_test: np.ndarray  # (T, N, P)
    threshold: float
    meta: dict

    def boundary(self) -> np.ndarray:
        """(T, P): the psi_n above which L_gen < threshold (log-interpolated; nan if never/always)."""
        return boundary(self.psi_n, self.L_gen, self.threshold)

    def to_dict(self) -> dict:
        return {
            "psi_n": self.psi_n.tolist(),
            "psi_p": self.psi_p.tolist(),
            "tau": [float(t) if math.isfinite(t) else "inf" for t in self.taus],
            "L_gen": self.L_gen.tolist(),
            "L_train": self.L_train.tolist(),
            "L_test": self.L_test.tolist(),
            "threshold": self.threshold,
            "boundary_psi_n": self.boundary().tolist(),
            "n_star_psi_n": self.psi_p.tolist(),
            **self.meta,
        }


def boundary(psi_n: np.ndarray, L_gen: np.ndarray, threshold: float) -> np.ndarray:
    """(T, P) array: for each time and psi_p, the psi_n of the last crossing of ``threshold`` from above as
    psi_n grows (linear in log psi_n between grid points); NaN where L_gen never crosses it."""
    T, N, P = L_gen.shape
    out = np.full((T, P), np.nan)
    x = np.log(psi_n)
    for i in range(T):
        for j in range(P):
            y = L_gen[i, :, j] - threshold
            # last crossing from above to below as psi_n grows
            for k in range(N - 1, 0, -1):
                if y[k - 1] > 0 >= y[k]:
                    out[i, j] = math.exp(x[k - 1] + (x[k] - x[k - 1]) * y[k - 1] / (y[k - 1] - y[k]))
                    break
    return out


def phase_diagram(
    t: float,
    psi_n: ArrayLike,
    psi_p: ArrayLike,
    taus: ArrayLike,
    *,
    d: int = 32,
    sigma_x: float = 1.0,
    activation: Activation = "tanh",
    threshold: float = 0.25,
    seed: Seed = None,
    progress: Callable[[int, int], None] | None = None,
) -> PhaseDiagram:
    """L_gen = L_test - L_train on the (psi_n, psi_p) grid at each training time.

    Each grid point is one draw (W, X, Omega) of the Gaussian-equivalent model at dimension ``d``, solved
    in closed form for all ``taus`` at once; the draws come one after the other from one generator.

    Parameters
    ----------
    t : float
        OU diffusion time, > 0 (Delta_t = 1 - e^{-2t}).
    psi_n : array_like of float, shape (N,)
        n/d values, strictly increasing, > 0, at least two.
    psi_p : array_like of float, shape (P,)
        p/d values, > 0, at least one.
    taus : array_like of float, shape (T,)
        Rescaled training times tau = k eta / d^2, >= 0; ``math.inf`` is the end of training.
    d : int, default 32
        Data dimension of each draw (p = round(psi_p d), n = round(psi_n d)).
    sigma_x : float, default 1.0
        Data scale: x ~ N(0, sigma_x^2 I).
    activation : {"tanh", "relu", "linear"} or callable, default "tanh"
        Feature non-linearity.
    threshold : float, default 0.25
        L_gen level that defines the memorisation boundary.
    seed : int, list of int, numpy.random.Generator or None
        Seed of the draws.
    progress : callable (done, total) -> None, optional
        Called after each grid point.

    Returns
    -------
    PhaseDiagram
        ``psi_n`` (N,), ``psi_p`` (P,), ``taus`` (T,) as float64 arrays; ``L_gen``, ``L_train``, ``L_test``
        float64 arrays of shape (T, N, P); ``threshold``; ``meta`` (t, d, constants, method).
        ``boundary()`` gives the (T, P) boundary in psi_n, ``to_dict()`` the JSON-able form.

    Raises
    ------
    ValueError
        For grids that are empty, not positive or (psi_n) not increasing, negative or NaN times, d < 2.

    Examples
    --------
    >>> import math
    >>> pd = phase_diagram(0.1, [1.0, 4.0, 16.0], [4.0], [100.0, math.inf], d=6, seed=0)
    >>> pd.L_gen.shape
    (2, 3, 1)
    >>> pd.to_dict()["tau"]
    [100.0, 'inf']
    """
    pn_grid = np.asarray(psi_n, dtype=np.float64)
    pp_grid = np.asarray(psi_p, dtype=np.float64)
    tau = np.asarray(taus, dtype=np.float64)
    if (
        pn_grid.ndim != 1
        or pp_grid.ndim != 1
        or pn_grid.size < 2
        or pp_grid.size < 1
        or np.any(pn_grid <= 0)
        or np.any(pp_grid <= 0)
    ):
        raise ValueError("psi_n (>= 2 values) and psi_p (>= 1 value) must be lists of numbers > 0")
    if np.any(np.diff(pn_grid) <= 0):
        raise ValueError("psi_n must be strictly increasing")
    if tau.size < 1 or np.any(np.isnan(tau)) or np.any(tau < 0):
        raise ValueError("taus must be numbers >= 0 (inf allowed)")
    if not (isinstance(d, (int, np.integer)) and d >= 2):
        raise ValueError(f"d must be an integer >= 2 (got {d!r})")
    c = rf_constants(t, sigma_x, activation)
    rng = as_generator(seed)
    T, N, P = tau.size, pn_grid.size, pp_grid.size
    Ltr = np.zeros((T, N, P))
    Lte = np.zeros((T, N, P))
    k = 0
    for i, pn in enumerate(pn_grid):
        for j, pp in enumerate(pp_grid):
            prob = make_problem(d, float(pp), float(pn), t, sigma_x=sigma_x, activation=activation, seed=rng)
            cur = gaussian_equivalent_curves(prob, tau, constants=c, seed=rng)
            Ltr[:, i, j] = cur.L_train
            Lte[:, i, j] = cur.L_test
            k += 1
            if progress is not None:
                progress(k, N * P)
    return PhaseDiagram(
        pn_grid,
        pp_grid,
        tau,
        Lte - Ltr,
        Ltr,
        Lte,
        float(threshold),
        {
            "t": float(t),
            "d": int(d),
            "constants": c.to_dict(),
            "method": "gaussian_equivalent closed form, one draw per point",
        },
    )
