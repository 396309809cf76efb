"""Copy-detection severity with a user-supplied SSCD TorchScript model (Pizzi et al., CVPR 2022).

Nothing is downloaded: point ``path`` at a TorchScript file from the SSCD repository
(facebookresearch/sscd-copy-detection). The memorization audit's protocol (Kim et al.'s code), the
default here: ``sscd_disc_large.torchscript.pt`` (ResNeXt101, 1024-dimensional descriptors), every
image resized to 288 x 288 without keeping the aspect ratio and without cropping (bilinear,
antialiased when shrinking), ImageNet normalisation (mean 0.485, 0.456, 0.406; std 0.229, 0.224,
0.225), the cosine of the L2-normalised descriptors, and a copy at a cosine of 0.75 or more.
``size=None`` keeps the input size; ``size=320`` is the SSCD README's square variant for the
ResNet50 models such as ``sscd_disc_mixup``. Grayscale inputs are repeated to RGB.

Without an SSCD file the audit falls back to the core's pixel-space cosine (``PixelCosine``,
named "pixel-cosine"), which is a cruder proxy and is stated as such in the report.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PAPER_SIZE", "PAPER_THRESHOLD", "SSCDSeverity"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: input side of the audit protocol (square resize, no crop)
PAPER_SIZE = 288
#: SSCD cosine at or above which a generated image counts as a copy
PAPER_THRESHOLD = 0.75


class SSCDSeverity:
    """Severity = cosine similarity of SSCD descriptors of generated images and the training image."""

    name = "sscd-cosine"

    def __init__(
        self,
        path: str | Path,
        threshold: float = PAPER_THRESHOLD,
        size: int | None = PAPER_SIZE,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no SSCD model file at {path}; download a TorchScript model such as sscd_disc_large.torchscript.pt "
                "from the SSCD repository (facebookresearch/sscd-copy-detection on GitHub) and pass its local path"
            )
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
        if size is not None and (int(size) != size or size < 8):
            raise ValueError(f"size must be an integer >= 8 (the audit protocol uses 288) or None, got {size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", DeprecationWarning
                )  # torch >= 2.10 deprecates TorchScript; SSCD ships it
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError/ValueError/pickle errors for non-TorchScript files
            raise ValueError(
                f"{path} is not a TorchScript model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "use the SSCD '*.torchscript.pt' files, not the '.classy.pt'/'.torchvision.pt' weight files"
            ) from e
        self.path = str(path)
        self.threshold = float(threshold)
        self.size = None if size is None else int(size)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model = model.to(self.device).eval()
        probe = self.descriptors(torch.full((1, 3, self.size or 64, self.size or 64), 0.5))
        self.dim = int(probe.shape[1])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> the normalised (N, 3, size, size) batch SSCD expects."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (N, 1 or 3, H, W) with values in [0, 1], got {shape}")
        x = images.detach().to(torch.float32).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            shrink = x.shape[-2] > self.size or x.shape[-1] > self.size
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=bool(shrink)
            )
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors (N, D) in float64 of images (N, C, H, W) in [0, 1]."""
        out = []
        for lo in range(0, images.shape[0], self.batch_size):
            x = self.preprocess(images[lo : lo + self.batch_size]).to(self.device)
            d = self.model(x)
            if isinstance(d, (tuple, list)):
                d = d[0]
            if not isinstance(d, torch.Tensor) or d.ndim != 2 or d.shape[0] != x.shape[0]:
                got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
                raise ValueError(f"the SSCD model {self.path} must return descriptors of shape (N, D), got {got}")
            out.append(d.detach().to(torch.float64).cpu())
        d = torch.cat(out)
        return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def __call__(self, generated: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        """Cosine similarities (N,) of each generated image (N, C, H, W) with the reference (C, H, W)."""
        if not isinstance(reference, torch.Tensor) or reference.ndim != 3:
            shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
            raise ValueError(f"reference must be one image of shape (C, H, W), got {shape}")
        g = self.descriptors(generated)
        r = self.descriptors(reference.unsqueeze(0))
        return (g @ r[0]).numpy()
