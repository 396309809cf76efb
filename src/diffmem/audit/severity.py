"""Severity: how close generated images are to the training image of their prompt.

The default, :class:`PixelCosine`, is the cosine similarity of *centred* pixel vectors: each image
(converted to grayscale when the channel counts differ, and resized to the reference's size) has
its own mean pixel value subtracted before the cosine, which makes it the Pearson correlation of
the two images' pixels. 1 is an exact copy (up to brightness and contrast); unrelated digits score
about 0.0-0.5. Its copy threshold (0.9) is set for the 8x8 digits testbed. For Stable Diffusion,
use SSCD descriptors (``diffmem.audit.sscd.SSCDSeverity``, threshold 0.75 as in the literature).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PixelCosine", "match_to_reference"]


def match_to_reference(generated: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring generated images (N, C, H, W) to the reference's layout (C, H, W): grayscale both when the
    channel counts differ, resize (bilinear, antialiased) to the reference's height and width."""
    g = torch.as_tensor(generated).detach().to(torch.float64).cpu()
    r = torch.as_tensor(reference).detach().to(torch.float64).cpu()
    if g.ndim != 4 or r.ndim != 3:
        raise ValueError(
            "severity needs generated images (N, C, H, W) and a reference (C, H, W), "
            f"got {tuple(g.shape)} and {tuple(r.shape)}"
        )
    if g.shape[1] != r.shape[0]:
        g, r = g.mean(1, keepdim=True), r.mean(0, keepdim=True)
    if g.shape[-2:] != r.shape[-2:]:
        down = g.shape[-2] > r.shape[-2] or g.shape[-1] > r.shape[-1]
        g = torch.nn.functional.interpolate(
            g, size=tuple(r.shape[-2:]), mode="bilinear", align_corners=False, antialias=down
        )
    return g, r


class PixelCosine:
    """Cosine similarity of mean-centred pixels (the Pearson correlation of the pixel values)."""

    name = "pixel-cosine"

    def __init__(self, threshold: float = 0.9, centered: bool = True) -> None:
        if not -1 <= threshold <= 1:
            raise ValueError(f"a cosine threshold must lie in [-1, 1], got {threshold}")
        self.threshold = float(threshold)
        self.centered = bool(centered)
        if not centered:
            self.name = "pixel-cosine-uncentred"

    def __call__(self, generated: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        g, r = match_to_reference(generated, reference)
        g = g.reshape(len(g), -1)
        r = r.reshape(-1)
        if self.centered:
            g = g - g.mean(1, keepdim=True)
            r = r - r.mean()
        den = g.norm(dim=1) * r.norm()
        out = torch.where(den > 0, (g @ r) / den.clamp_min(1e-300), torch.zeros_like(den))
        return out.numpy()
