"""Phase diagram of the random-features model: L_gen = L_test - L_train over (psi_n, psi_p) at given training times.

Every grid point is one draw of the Gaussian-equivalent model at a finite d, solved in closed form
(:func:`diffmem.theory.dynamics.gaussian_equivalent_curves`), so all training times come from one
eigen-decomposition. The memorisation boundary at time tau is where L_gen crosses ``threshold``; at
tau = inf it approaches the architectural threshold n* = p (psi_n = psi_p).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .constants import rf_constants
from .dynamics import gaussian_equivalent_curves
from .simulation import as_generator, make_problem

__all__ = ["PhaseDiagram", "boundary", "phase_diagram"]


@dataclass
class PhaseDiagram:
    psi_n: np.ndarray  # (N,)
    psi_p: np.ndarray  # (P,)
    taus: np.ndarray  # (T,)
    L_gen: np.ndarray  # (T, N, P)
    L_train: np.ndarray
    L_test: np.ndarray
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
    psi_n: Sequence[float],
    psi_p: Sequence[float],
    taus: Sequence[float],
    *,
    d: int = 32,
    sigma_x: float = 1.0,
    activation="tanh",
    threshold: float = 0.25,
    seed=None,
    progress: Callable[[int, int], None] | None = None,
) -> PhaseDiagram:
    """L_gen on the (psi_n, psi_p) grid at each tau (rescaled time; ``inf`` for the end of training)."""
    psi_n = np.asarray(psi_n, dtype=np.float64)
    psi_p = np.asarray(psi_p, dtype=np.float64)
    taus = np.asarray(taus, dtype=np.float64)
    if (
        psi_n.ndim != 1
        or psi_p.ndim != 1
        or psi_n.size < 2
        or psi_p.size < 1
        or np.any(psi_n <= 0)
        or np.any(psi_p <= 0)
    ):
        raise ValueError("psi_n (>= 2 values) and psi_p (>= 1 value) must be lists of numbers > 0")
    if np.any(np.diff(psi_n) <= 0):
        raise ValueError("psi_n must be strictly increasing")
    if taus.size < 1 or np.any(np.isnan(taus)) or np.any(taus < 0):
        raise ValueError("taus must be numbers >= 0 (inf allowed)")
    if not (isinstance(d, (int, np.integer)) and d >= 2):
        raise ValueError(f"d must be an integer >= 2 (got {d!r})")
    c = rf_constants(t, sigma_x, activation)
    rng = as_generator(seed)
    T, N, P = taus.size, psi_n.size, psi_p.size
    Ltr = np.zeros((T, N, P))
    Lte = np.zeros((T, N, P))
    k = 0
    for i, pn in enumerate(psi_n):
        for j, pp in enumerate(psi_p):
            prob = make_problem(d, float(pp), float(pn), t, sigma_x=sigma_x, activation=activation, seed=rng)
            cur = gaussian_equivalent_curves(prob, taus, constants=c, seed=rng)
            Ltr[:, i, j] = cur.L_train
            Lte[:, i, j] = cur.L_test
            k += 1
            if progress is not None:
                progress(k, N * P)
    return PhaseDiagram(
        psi_n,
        psi_p,
        taus,
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
