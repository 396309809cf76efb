"""The one interface every audited model implements (the built-in testbed, diffusers pipelines).

Everything in :mod:`diffmem.audit` works in the model's own space ("latent" space: pixels in
model space for the testbed, VAE latents for Stable Diffusion).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from ..schedule import Schedule


@runtime_checkable
class GuidedModel(Protocol):
    """A conditional eps-prediction model usable with classifier-free guidance."""

    #: shape of one latent, e.g. (1, 8, 8) for the testbed or (4, 64, 64) for SD at 512 px
    latent_shape: tuple[int, ...]
    #: the training noise schedule of the model
    schedule: Schedule

    def predict(self, x: torch.Tensor, t: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_c, eps_u) for a batch ``x`` of shape (S, *latent_shape) at step indices ``t`` (S,),
        conditioned on ``prompt`` and on the empty prompt, computed in ONE batched forward pass."""
        ...

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map training images (N, C, H, W) in [0, 1] to latents (N, *latent_shape)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Map latents back to images (N, C, H, W) in [0, 1]."""
        ...


def check_prompts(prompts: Sequence[str]) -> None:
    if not prompts:
        raise ValueError("no prompts to audit: give at least one prompt")
