"""Gaussian-equivalent constants of the random-features score model at one diffusion time.

For a pre-activation h = e^{-t} sigma_x u + sqrt(Delta_t) v (u, v, w independent standard normals,
Delta_t = 1 - e^{-2t}, Gamma_t^2 = e^{-2t} sigma_x^2 + Delta_t) the features sigma(W x_t / sqrt d) behave,
as far as second moments go, like a linear part in the clean data (a_t), a linear part in the noise
(b_t), a sample-specific non-linear part (v_t) and a noise-specific non-linear part (s_t):

    a_t   = E[sigma(h) u] / (e^{-t} sigma_x)            (= E sigma'(Gamma_t z) by Stein's lemma)
    b_t   = E[v sigma(h)]                                (= sqrt(Delta_t) a_t)
    v_t^2 = E[sigma(h) sigma(h')] - a_t^2 e^{-2t} sigma_x^2,   h' = e^{-t} sigma_x u + sqrt(Delta_t) w
    s_t^2 = E[sigma(Gamma_t z)^2] - a_t^2 e^{-2t} sigma_x^2 - v_t^2 - b_t^2

Every expectation is a one- or two-dimensional Gaussian integral evaluated by Gauss-Hermite
quadrature (nested for the two-dimensional one); ``relu`` and ``linear`` use their closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ACTIVATIONS", "RFConstants", "gauss_hermite", "resolve_activation", "rf_constants"]

Activation = str | Callable[[np.ndarray], np.ndarray]
"""A name in :data:`ACTIVATIONS` or a vectorised numpy function."""


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _linear(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "relu": _relu, "linear": _linear}


def resolve_activation(activation: Activation) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Return ``(name, vectorised numpy function)`` for a name in ACTIVATIONS or a callable."""
    if callable(activation):
        return getattr(activation, "__name__", "custom"), activation
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return activation.lower(), ACTIVATIONS[activation.lower()]
    raise ValueError(
        f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} or pass a vectorised numpy callable"
    )


_GH_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[f(z)], z ~ N(0, 1): sum(w * f(x)) (probabilists' Hermite, weights sum to 1)."""
    if n not in _GH_CACHE:
        with np.errstate(all="ignore"):
            x, w = np.polynomial.hermite_e.hermegauss(n)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w))):
            # numpy's recurrence for the weights overflows from about 370 nodes on
            raise ValueError(f"n_quad={n} is too large for numpy's Gauss-Hermite rule (use at most 360)")
        _GH_CACHE[n] = (x, w / math.sqrt(2.0 * math.pi))
    return _GH_CACHE[n]


@dataclass(frozen=True)
class RFConstants:
    """Gaussian-equivalent constants at diffusion time ``t`` (see the module docstring)."""

    t: float
    sigma_x: float
    activation: str
    delta: float  # Delta_t = 1 - e^{-2t}
    gamma: float  # Gamma_t = sqrt(e^{-2t} sigma_x^2 + Delta_t)
    a: float
    b: float
    v2: float
    s2: float
    mean: float  # E sigma(Gamma_t z); the theory assumes it is 0 (true for odd activations)
    second_moment: float  # E sigma(Gamma_t z)^2

    @property
    def alpha(self) -> float:
        """a_t^2 e^{-2t}: the weight of the data covariance in U."""
        return self.a**2 * math.exp(-2.0 * self.t)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            alpha=self.alpha, delta_t=self.delta, gamma_t=self.gamma, a_t=self.a, b_t=self.b, v_t2=self.v2, s_t2=self.s2
        )
        return d


def _check_t_sigma(t: float, sigma_x: float) -> None:
    if not (isinstance(t, (int, float, np.floating)) and math.isfinite(t) and t > 0):
        raise ValueError(f"diffusion time t must be a finite number > 0 (got {t!r}); e.g. t=0.01 or t=0.1")
    if not (math.isfinite(sigma_x) and sigma_x > 0):
        raise ValueError(
            f"sigma_x must be a finite number > 0 (got {sigma_x!r}); it is sqrt(Tr Sigma / d), 1 for whitened data"
        )


def rf_constants(t: float, sigma_x: float = 1.0, activation: Activation = "tanh", n_quad: int = 160) -> RFConstants:
    """Gaussian-equivalent constants a_t, b_t, v_t^2, s_t^2 (plus Delta_t, Gamma_t) for one diffusion time.

    The definitions are in the module docstring; every expectation is Gauss-Hermite quadrature, except
    for "relu" (arc-cosine kernel) and "linear", which use closed forms.

    Parameters
    ----------
    t : float
        OU diffusion time, finite and > 0 (x_t = e^{-t} x_0 + sqrt(Delta_t) xi, Delta_t = 1 - e^{-2t}).
    sigma_x : float, default 1.0
        Data scale sqrt(Tr Sigma / d), finite and > 0 (1 for whitened data).
    activation : {"tanh", "relu", "linear"} or callable, default "tanh"
        Feature non-linearity; a callable must map a float64 array to an array of the same shape.
    n_quad : int, default 160
        Gauss-Hermite nodes (8 to 360). Smooth activations reach ~1e-12 with the default; callables with kinks
        converge more slowly (raise it).

    Returns
    -------
    RFConstants
        Frozen dataclass of floats: ``t``, ``sigma_x``, ``activation`` (its name), ``delta`` (Delta_t),
        ``gamma`` (Gamma_t), ``a``, ``b``, ``v2``, ``s2``, ``mean`` (E sigma(Gamma_t z); the theory assumes 0),
        ``second_moment``; the property ``alpha`` = a_t^2 e^{-2t}; ``to_dict()`` adds the names a_t, b_t, v_t2,
        s_t2, delta_t, gamma_t used in the JSON files.

    Raises
    ------
    ValueError
        For t or sigma_x not finite and > 0, n_quad outside 8..360, or an unknown activation name.

    Examples
    --------
    >>> c = rf_constants(0.1)
    >>> round(c.a, 6), round(c.b, 6), round(c.v2, 6), round(c.s2, 6), round(c.delta, 6)
    (0.605706, 0.257884, 0.013841, 0.013574, 0.181269)
    >>> lin = rf_constants(0.1, activation="linear")  # a linear feature has no non-linear part
    >>> abs(lin.v2) < 1e-15 and abs(lin.s2) < 1e-15
    True
    """
    _check_t_sigma(float(t), float(sigma_x))
    if int(n_quad) < 8:
        raise ValueError(f"n_quad must be >= 8 (got {n_quad}); the default 160 is accurate for smooth activations")
    name, f = resolve_activation(activation)
    t = float(t)
    sigma_x = float(sigma_x)
    e2 = math.exp(-2.0 * t)
    delta = -math.expm1(-2.0 * t)
    c2 = e2 * sigma_x**2  # variance of the clean part of the pre-activation
    gamma2 = c2 + delta
    gamma = math.sqrt(gamma2)
    if name == "relu" and f is _relu:
        # arc-cosine kernel: E[relu(X) relu(Y)] = var/(2 pi) (sin th + (pi - th) cos th), cos th = corr
        a = 0.5
        mean = gamma / math.sqrt(2.0 * math.pi)
        m2 = gamma2 / 2.0
        rho = c2 / gamma2
        th = math.acos(min(1.0, max(-1.0, rho)))
        cross = gamma2 / (2.0 * math.pi) * (math.sin(th) + (math.pi - th) * math.cos(th))
    elif name == "linear" and f is _linear:
        a, mean, m2, cross = 1.0, 0.0, gamma2, c2
    else:
        x, w = gauss_hermite(n_quad)
        fz = f(gamma * x)
        mean = float(np.sum(w * fz))
        m2 = float(np.sum(w * fz**2))
        a = float(np.sum(w * x * fz)) / gamma  # E[z sigma(Gamma z)] / Gamma = E sigma'
        # E[sigma(h) sigma(h')] = E_u[(E_v sigma(c u + sqrt(Delta) v))^2]
        inner = f(math.sqrt(c2) * x[:, None] + math.sqrt(delta) * x[None, :]) @ w
        cross = float(np.sum(w * inner**2))
    b = math.sqrt(delta) * a
    v2 = cross - a**2 * c2
    s2 = m2 - a**2 * c2 - v2 - b**2
    return RFConstants(
        t=t,
        sigma_x=sigma_x,
        activation=name,
        delta=delta,
        gamma=gamma,
        a=a,
        b=b,
        v2=v2,
        s2=s2,
        mean=mean,
        second_moment=m2,
    )
