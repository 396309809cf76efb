"""Conversion between diffmem's training-time axis and the one of the random-features paper's public code.

diffmem (and the paper's equations) write the score as s_A(x) = (A / sqrt p) sigma(W x / sqrt d) and measure
training time as tau = k eta / d^2 after k gradient steps of size eta on A. The paper's public training script
writes the same function without the 1/sqrt(p), s_B(x) = B sigma(W x / sqrt d) (so A = sqrt(p) B), descends the
same loss (1/(n d)) sum |sqrt(Delta_t) s + xi|^2 on B with a step eta_B, and records the time k eta_B.

A step eta_B on B moves A = sqrt(p) B by p eta_B times the gradient in A, i.e. it is a step eta = p eta_B on A.
Hence

    tau = k p eta_B / d^2 = (psi_p / d) * (k eta_B),        k eta_B = (d / psi_p) * tau.

In the script's axis an eigen-direction lambda of U relaxes on the time d / (Delta_t lambda) (diffmem:
psi_p / (Delta_t lambda)), and the script's step eta_B = 1e-2 d / Delta_t is tau = 1e-2 psi_p / Delta_t per step.
A curve drawn against tau / tau_mem is the same in both conventions. docs/theory.md has a worked example.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["paper_code_learning_rate", "paper_code_time_from_tau", "tau_from_paper_code_time"]


def _check(psi_p: float, d: int) -> None:
    if not (isinstance(psi_p, (int, float, np.integer, np.floating)) and math.isfinite(psi_p) and psi_p > 0):
        raise ValueError(f"psi_p must be a finite number > 0 (got {psi_p!r}); it is p/d")
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"d must be an integer >= 1 (got {d!r}); it is the data dimension")


def tau_from_paper_code_time(time: ArrayLike, psi_p: float, d: int) -> np.ndarray:
    """diffmem's tau = k eta / d^2 from the paper code's time k eta_B (readout without 1/sqrt(p)).

    Parameters
    ----------
    time : array_like of float
        Training times k eta_B on the paper code's axis (>= 0).
    psi_p : float
        p/d of the model.
    d : int
        Data dimension.

    Returns
    -------
    numpy.ndarray
        tau = (psi_p / d) * time, float64, the shape of ``time``.

    Examples
    --------
    >>> float(tau_from_paper_code_time(100.0, psi_p=64.0, d=100))
    64.0
    """
    _check(psi_p, d)
    return (float(psi_p) / int(d)) * np.asarray(time, dtype=np.float64)


def paper_code_time_from_tau(tau: ArrayLike, psi_p: float, d: int) -> np.ndarray:
    """The paper code's time k eta_B for diffmem's tau: (d / psi_p) * tau (inverse of :func:`tau_from_paper_code_time`).

    Examples
    --------
    >>> float(paper_code_time_from_tau(64.0, psi_p=64.0, d=100))
    100.0
    """
    _check(psi_p, d)
    return (int(d) / float(psi_p)) * np.asarray(tau, dtype=np.float64)


def paper_code_learning_rate(d: int, t: float, scale: float = 1e-2) -> float:
    """The step on B used by the paper's training script: scale * d / Delta_t (Delta_t = 1 - e^{-2t}).

    One such step advances tau by scale * psi_p / Delta_t.

    Examples
    --------
    >>> round(paper_code_learning_rate(100, 0.1), 4)
    5.5167
    """
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"d must be an integer >= 1 (got {d!r}); it is the data dimension")
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"diffusion time t must be a finite number > 0 (got {t!r})")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0 (got {scale!r})")
    return float(scale) * int(d) / -math.expm1(-2.0 * float(t))
