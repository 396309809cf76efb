"""Denoising losses at a fixed diffusion time (SCIENCE.md section 2: t = 0.01, 5 noise draws)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedule import Schedule, noise

__all__ = ["eps_loss", "loss_at_time"]


def eps_loss(model: Callable, x0: torch.Tensor, k: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Per-example mean squared error between eps and the model's eps-prediction at steps k."""
    ab = schedule.alphas_cumprod.to(k.device)[k]
    pred = model(noise(x0, eps, ab), k.to(x0.dtype))
    return ((pred - eps) ** 2).flatten(1).mean(1)


@torch.no_grad()
def loss_at_time(
    model: Callable,
    x0: torch.Tensor,
    schedule: Schedule,
    t: float = 0.01,
    draws: int = 5,
    *,
    seed: int = 0,
    batch: int = 2048,
) -> float:
    """Mean eps-MSE over ``x0`` at the step whose OU time is closest to ``t``, averaged over ``draws``
    independent noise draws (float64 accumulation). The noise is seeded so that every checkpoint
    sees the same draws."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    k = schedule.step_for_ou_time(t)
    g = torch.Generator().manual_seed(int(seed))
    total, count = 0.0, 0
    for _ in range(draws):
        for i in range(0, x0.shape[0], batch):
            xb = x0[i : i + batch]
            eps = torch.randn(xb.shape, generator=g, dtype=xb.dtype).to(xb.device)  # same draws on any device
            kk = torch.full((xb.shape[0],), k, dtype=torch.long, device=xb.device)
            total += float(eps_loss(model, xb, kk, eps, schedule).double().sum())
            count += xb.shape[0]
    return total / count
