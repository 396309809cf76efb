"""The denoising (eps-prediction) loss, and its value at a fixed diffusion time t (default 0.01, 5 noise draws)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedule import Schedule, noise

__all__ = ["eps_loss", "loss_at_time"]


def eps_loss(
    denoiser: Callable,
    x0: torch.Tensor,
    k: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: torch.Tensor | Schedule,
    *,
    reduction: str = "none",
) -> torch.Tensor:
    """The denoising loss: squared error between ``eps`` and the prediction at ``x_k``.

    ``x_k = sqrt(ab[k]) x0 + sqrt(1 - ab[k]) eps`` is fed to ``denoiser(x_k, k)`` (k as a float tensor
    in ``x0``'s dtype) and compared with ``eps``. This one function is the training loss of
    ``diffmem train``, of the audit testbed and the loss the metrics report at a fixed time.

    Parameters
    ----------
    denoiser : callable
        ``(x, t) -> eps_hat`` with ``x`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``.
    x0 : torch.Tensor
        Clean examples, shape ``(B, ...)``.
    k : torch.Tensor
        Integer step indices, shape ``(B,)`` (any device: moved to ``x0``'s).
    eps : torch.Tensor
        The noise, shape of ``x0``.
    alpha_bar : torch.Tensor or Schedule
        ``alphas_cumprod`` of shape ``(T,)`` (indexed by ``k``), or a :class:`~diffmem.schedule.Schedule`.
    reduction : {"none", "mean"}
        ``"none"``: the mean over each example's entries, shape ``(B,)``; ``"mean"``: the mean over
        every entry, a scalar (the training objective).

    Returns
    -------
    torch.Tensor
        Per-example losses ``(B,)`` or a scalar, in ``x0``'s dtype.
    """
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    ab_all = alpha_bar.alphas_cumprod if isinstance(alpha_bar, Schedule) else alpha_bar
    ab = ab_all.to(k.device)[k]
    pred = denoiser(noise(x0, eps, ab), k.to(x0.device, x0.dtype))
    err = (pred - eps) ** 2
    return err.mean() if reduction == "mean" else err.flatten(1).mean(1)


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
