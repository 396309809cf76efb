"""The one interface every audited model implements (the built-in testbed, diffusers pipelines).

Everything in :mod:`diffmem.audit` works in the model's own space ("latent" space: pixels in
model space for the testbed, VAE latents for Stable Diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..schedule import Schedule

LABELS = ("memorized", "partial", "normal")


@dataclass(frozen=True)
class PromptSpec:
    """One prompt to audit and the training image it may reproduce.

    ``image`` is the training image in pixels, shape (C, H, W), values in [0, 1], or None when it is
    not known (the usual case in an audit): then only the statistics that need no training image are
    computed (the decomposition is made against each seed's own final sample) and no severity.
    ``label`` is the ground truth when known: "memorized", "partial" or "normal" (None if unknown).
    ``key`` names the prompt in files (unique, filesystem-safe); defaults to a hash of the prompt.
    ``group`` (optional) is a finer grouping than the label, e.g. the testbed's ``point_mass``,
    ``cluster_4`` or ``guidance_cluster``; results are also reported per group.
    """

    prompt: str
    image: torch.Tensor | None
    label: str | None = None
    key: str | None = None
    group: str | None = None

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(self.prompt).__name__}")
        if self.image is not None:
            img = torch.as_tensor(self.image)
            if img.ndim != 3 or not torch.isfinite(img).all() or img.min() < 0 or img.max() > 1:
                raise ValueError(
                    f"the image of prompt {self.prompt!r} must be a finite (C, H, W) tensor with values in [0, 1] "
                    f"(or None when the training image is not known), got shape {tuple(img.shape)}"
                )
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"label of prompt {self.prompt!r} must be one of {LABELS} or None, got {self.label!r}")
        if self.group is not None and (not isinstance(self.group, str) or not self.group.strip()):
            raise ValueError(f"group of prompt {self.prompt!r} must be a non-empty string or None, got {self.group!r}")
        if self.key is None:
            import hashlib

            object.__setattr__(self, "key", "p_" + hashlib.sha1(self.prompt.encode()).hexdigest()[:12])

    @property
    def has_image(self) -> bool:
        """Whether the training image is known."""
        return self.image is not None


@runtime_checkable
class Severity(Protocol):
    """Similarity of generated images to a training image (higher = closer to a copy)."""

    #: a stated name, e.g. "sscd-cosine" or "pixel-cosine"
    name: str
    #: scores at or above this value count as a copy
    threshold: float

    def __call__(self, generated: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        """Scores (N,) for generated pixels (N, C, H, W) in [0, 1] against reference pixels (C, H, W)."""
        ...


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
