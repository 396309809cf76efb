"""Samplers as pure functions of (denoiser, x_T, schedule, steps).

A *denoiser* is any callable ``denoiser(x, t) -> eps`` where ``t`` is a float tensor of shape
``(batch,)`` holding discrete step indices in ``[0, T)``. What to record is declared by the caller
through ``observer``: it is called once per step with a :class:`Step` and must not modify tensors.

The DDIM update (eta = 0) is ``x0_hat = (x_k - sqrt(1 - ab_k) eps_hat) / sqrt(ab_k)``,
``x_{k'} = sqrt(ab_{k'}) x0_hat + sqrt(1 - ab_{k'}) eps_hat``; it agrees with ``diffusers.DDIMScheduler``
(``timestep_spacing="leading"``, ``set_alpha_to_one=True``, ``clip_sample=False``, eta = 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .schedule import Schedule

__all__ = [
    "Denoiser",
    "Step",
    "cfg_mix",
    "ddim",
    "ddpm",
    "guided",
    "predict_x0",
    "randn_per_sample",
    "timesteps",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """What the sampler knows at one step (all tensors are shared, do not modify them)."""

    index: int  # 0 .. steps-1, in sampling order
    t: int  # current step index k
    t_prev: int  # next (less noisy) step index, -1 for the final step to x_0
    alpha_bar: float
    alpha_bar_prev: float
    x: torch.Tensor  # x_k
    eps: torch.Tensor  # the denoiser's prediction at (x_k, k)
    x0: torch.Tensor  # x0_hat = (x_k - sqrt(1-ab) eps) / sqrt(ab)
    x_prev: torch.Tensor  # the latent after the update


Observer = Callable[[Step], None]


def timesteps(schedule: Schedule, steps: int, spacing: str = "leading") -> list[int]:
    """Descending step indices for a sampler of ``steps`` steps.

    ``"leading"``: ``k_i = i * (T // steps)`` (the diffusers default for DDIM and Stable Diffusion);
    ``"trailing"``: ``round(T - i * T/steps) - 1``; ``"linspace"``: ``round(linspace(0, T-1, steps))``.
    """
    T = schedule.T
    if int(steps) != steps or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, {T}], got {steps}")
    steps = int(steps)
    if spacing == "leading":
        ratio = T // steps
        ks = [i * ratio for i in range(steps)]
    elif spacing == "trailing":
        step_size = T / steps
        ks = [round(T - i * step_size) - 1 for i in range(steps)][::-1]
    elif spacing == "linspace":
        ks = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return sorted(ks, reverse=True)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab)."""
    return (x - (1.0 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def _prev_steps(ks: Sequence[int]) -> list[int]:
    return list(ks[1:]) + [-1]


def _check(x_T: torch.Tensor, schedule: Schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise TypeError("schedule must be a diffmem.schedule.Schedule (e.g. schedule.linear())")
    if not torch.is_floating_point(x_T):
        raise ValueError("x_T must be a floating-point tensor")


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    steps: int = 50,
    *,
    spacing: str = "leading",
    observer: Observer | None = None,
    ks: Sequence[int] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``x_T``; returns the final x0 estimate.

    At each used step k (next step k'): ``x0_hat = (x_k - sqrt(1 - ab_k) eps_hat) / sqrt(ab_k)`` and
    ``x_{k'} = sqrt(ab_{k'}) x0_hat + sqrt(1 - ab_{k'}) eps_hat``, with ``ab = 1`` after the last
    step. Agrees with ``diffusers.DDIMScheduler`` (eta 0, ``set_alpha_to_one=True``, no clipping).

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, t) -> eps_hat``: x of shape ``(B, ...)``, t a float tensor ``(B,)`` of step indices.
    x_T : torch.Tensor, shape (B, ...)
        Initial noise (floating point; its device and dtype are kept).
    schedule : Schedule
        The noise schedule the denoiser was trained with.
    steps : int
        Number of sampler steps, spaced by ``spacing`` ("leading", "trailing" or "linspace").
    observer : callable, optional
        Called with a :class:`Step` after every update (to record trajectories).
    ks : sequence of int, optional
        Explicit descending step indices, instead of ``steps``/``spacing``.

    Returns
    -------
    torch.Tensor
        The samples, shape and dtype of ``x_T``.

    Examples
    --------
    >>> import torch
    >>> from diffmem import schedule, sampling
    >>> s = schedule.linear()
    >>> x0 = sampling.ddim(lambda x, t: torch.zeros_like(x), torch.ones(2, 3), s, steps=10)
    >>> x0.shape
    torch.Size([2, 3])
    """
    _check(x_T, schedule)
    ks = list(ks) if ks is not None else timesteps(schedule, steps, spacing)
    ab_all = schedule.alphas_cumprod
    x = x_T
    for i, (k, k_prev) in enumerate(zip(ks, _prev_steps(ks))):
        ab = float(ab_all[k])
        ab_prev = float(ab_all[k_prev]) if k_prev >= 0 else 1.0
        eps = denoiser(x, torch.full((x.shape[0],), float(k), dtype=x.dtype, device=x.device))
        x0 = predict_x0(x, eps, ab)
        x_new = ab_prev**0.5 * x0 + (1.0 - ab_prev) ** 0.5 * eps
        if observer is not None:
            observer(Step(i, k, k_prev, ab, ab_prev, x, eps, x0, x_new))
        x = x_new
    return x


@torch.no_grad()
def ddpm(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    steps: int | None = None,
    *,
    generator: torch.Generator | None = None,
    spacing: str = "leading",
    observer: Observer | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (posterior variance ``beta_tilde``, as diffusers' ``fixed_small``).

    With ``steps < T`` the per-step beta is ``1 - ab_k / ab_{k'}`` between consecutive used steps.
    The fresh noise comes from ``generator``; it is not added at the last step.

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, t) -> eps_hat`` as for :func:`ddim`.
    x_T : torch.Tensor, shape (B, ...)
        Initial noise.
    schedule : Schedule
        The noise schedule.
    steps : int, optional
        Sampler steps (default: all T).
    generator : torch.Generator, optional
        Source of the fresh noise (a CPU generator gives the same noise on every device).
    observer : callable, optional
        Called with a :class:`Step` after every update.

    Returns
    -------
    torch.Tensor
        The samples, shape and dtype of ``x_T``.
    """
    _check(x_T, schedule)
    ks = timesteps(schedule, steps or schedule.T, spacing)
    ab_all = schedule.alphas_cumprod
    x = x_T
    for i, (k, k_prev) in enumerate(zip(ks, _prev_steps(ks))):
        ab = float(ab_all[k])
        ab_prev = float(ab_all[k_prev]) if k_prev >= 0 else 1.0
        beta = 1.0 - ab / ab_prev
        eps = denoiser(x, torch.full((x.shape[0],), float(k), dtype=x.dtype, device=x.device))
        x0 = predict_x0(x, eps, ab)
        mean = (ab_prev**0.5 * beta / (1.0 - ab)) * x0 + ((1.0 - beta) ** 0.5 * (1.0 - ab_prev) / (1.0 - ab)) * x
        if k_prev >= 0:
            var = (1.0 - ab_prev) / (1.0 - ab) * beta
            # drawn where the generator lives (a CPU generator gives the same noise on every device)
            z = torch.randn(
                x.shape,
                generator=generator,
                dtype=x.dtype,
                device=generator.device if generator is not None else x.device,
            ).to(x.device)
            x_new = mean + var**0.5 * z
        else:
            x_new = mean
        if observer is not None:
            observer(Step(i, k, k_prev, ab, ab_prev, x, eps, x0, x_new))
        x = x_new
    return x


def cfg_mix(eps_u: torch.Tensor, eps_c: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance of two noise predictions: ``eps_u + scale * (eps_c - eps_u)``.

    ``scale = 0`` gives the unconditional prediction, ``1`` the conditional one, ``> 1`` extrapolates
    past it (Stable Diffusion's default is 7.5). Because x0_hat is affine in eps, the same mix of the
    two x0 estimates gives the guided one: ``x0_hat(c; g) = x0_u + g (x0_c - x0_u)``.

    Parameters
    ----------
    eps_u, eps_c : torch.Tensor
        Unconditional and conditional predictions of the same shape ``(B, ...)``.
    scale : float or torch.Tensor
        The guidance scale g (a tensor broadcasts, e.g. one scale per step).

    Returns
    -------
    torch.Tensor
        The guided prediction, shape and dtype of ``eps_u``.
    """
    return eps_u + scale * (eps_c - eps_u)


def guided(cond: Denoiser, uncond: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance as a new denoiser: ``x, t -> cfg_mix(uncond(x, t), cond(x, t), scale)``.

    Parameters
    ----------
    cond, uncond : callable
        Denoisers ``(x, t) -> eps`` with and without the condition.
    scale : float
        The guidance scale g.

    Returns
    -------
    callable
        A denoiser for :func:`ddim` / :func:`ddpm`.
    """

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cfg_mix(uncond(x, t), cond(x, t), scale)

    return denoiser


def randn_per_sample(seeds: Sequence[int], shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of shape ``(len(seeds), *shape)`` where row i depends only on seeds[i].

    Results therefore do not depend on how samples are batched.
    """
    out = torch.empty((len(seeds), *shape), dtype=dtype)
    g = torch.Generator()
    for i, s in enumerate(seeds):
        g.manual_seed(int(s))
        out[i] = torch.randn(tuple(shape), generator=g, dtype=dtype)
    return out
