"""Noise schedules and conversions between discrete DDPM steps and Ornstein-Uhlenbeck time.

Notation: ``alpha_bar[k] = prod_{j<=k} (1 - beta_j)``; the forward process is
``x_k = sqrt(alpha_bar[k]) x_0 + sqrt(1 - alpha_bar[k]) eps``. The continuous OU time of step k is
``t = -1/2 log alpha_bar[k]`` so that ``x_t = e^{-t} x_0 + sqrt(Delta_t) xi`` with
``Delta_t = 1 - e^{-2t}``. Everything is float64; cast at the point of use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Schedule", "linear", "noise"]


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete variance-preserving schedule with T steps (indices 0..T-1)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError("betas must be a 1-D sequence of at least 2 values")
        if not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    @property
    def T(self) -> int:
        return int(self.betas.numel())

    def ou_time(self, k: torch.Tensor | int) -> torch.Tensor:
        """OU time t = -1/2 log alpha_bar[k] of step index k."""
        return -0.5 * torch.log(self.alphas_cumprod[torch.as_tensor(k, dtype=torch.long)])

    def step_for_ou_time(self, t: float) -> int:
        """The step index whose OU time is closest to ``t`` (t > 0)."""
        if not t > 0:
            raise ValueError(f"OU time must be positive, got {t}")
        return int(torch.argmin(torch.abs(self.ou_time(torch.arange(self.T)) - t)))

    def to_dict(self) -> dict:
        return {"T": self.T, "betas": self.betas.tolist()}


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Schedule:
    """The DDPM linear schedule: betas evenly spaced from ``beta_start`` to ``beta_end``.

    Parameters
    ----------
    T : int
        Number of diffusion steps (>= 2); step indices run over ``0 .. T-1``.
    beta_start, beta_end : float
        First and last beta, ``0 < beta_start <= beta_end < 1`` (DDPM: 1e-4 and 2e-2).

    Returns
    -------
    Schedule
        float64 ``betas`` and ``alphas_cumprod = cumprod(1 - betas)``, each of shape ``(T,)``.

    Examples
    --------
    >>> from diffmem.schedule import linear
    >>> s = linear(1000, 1e-4, 2e-2)
    >>> s.T, round(float(s.alphas_cumprod[-1]), 6)
    (1000, 4e-05)
    """
    _check_betas(T, beta_start, beta_end)
    return Schedule(torch.linspace(beta_start, beta_end, int(T), dtype=torch.float64))


def scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Stable Diffusion's schedule: betas linear in square-root space.

    ``betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` (``"scaled_linear"`` in diffusers).

    Parameters
    ----------
    T : int
        Number of diffusion steps (>= 2).
    beta_start, beta_end : float
        First and last beta, ``0 < beta_start <= beta_end < 1``.

    Returns
    -------
    Schedule
        float64 ``betas`` and ``alphas_cumprod`` of shape ``(T,)``.

    Examples
    --------
    >>> from diffmem.schedule import scaled_linear
    >>> s = scaled_linear()
    >>> round(float(s.alphas_cumprod[-1]), 5)
    0.00466
    """
    _check_betas(T, beta_start, beta_end)
    return Schedule(torch.linspace(beta_start**0.5, beta_end**0.5, int(T), dtype=torch.float64) ** 2)


def _check_betas(T: int, beta_start: float, beta_end: float) -> None:
    if int(T) != T or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")


def noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Forward process: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, alpha_bar broadcast per sample."""
    ab = alpha_bar.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
