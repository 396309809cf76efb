"""Fréchet distance between two image sets in a stated feature space.

FD(P, Q) = |mu_P - mu_Q|² + tr(S_P + S_Q - 2 (S_P^{1/2} S_Q S_P^{1/2})^{1/2}),
the 2-Wasserstein distance between Gaussians fitted to the features (Heusel et al. 2017; FID is
this distance in Inception pool features). The matrix square root is taken through symmetric
eigendecompositions in float64 — tr((A S_Q A)^{1/2}) with A = S_P^{1/2} — which is exact for
positive semi-definite covariances and never returns the complex round-off that a general
``sqrtm`` can.

Feature spaces (every quality number in diffmem names its space, e.g. ``frechet[digits-cnn]``):

* ``digits`` — the 64-d penultimate layer of a small CNN classifier trained on the 1797 scikit-learn
  digits by ``scripts/train_digits_features.py`` (weights ship with the package). Input (1, 8, 8)
  pixels in [0, 1]. A clearly better feature space than raw pixels for the digits: it measures
  whether samples look like digits, not how far pixels are from the mean.
* ``pixels`` — the flattened pixels themselves (any shape).
* a path to a TorchScript file — your own feature extractor (e.g. an Inception network exported
  with ``torch.jit.save``); it receives pixels (N, C, H, W) in [0, 1], grayscale repeated to three
  channels when its first convolution asks for 3, and must return (N, D) features.
* ``auto`` — ``digits`` for (1, 8, 8) data, ``pixels`` otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "DigitsFeatures",
    "FeatureSpace",
    "FrechetDistance",
    "PixelFeatures",
    "TorchScriptFeatures",
    "feature_space",
    "frechet",
    "frechet_distance",
    "gaussian_stats",
]


@runtime_checkable
class FeatureSpace(Protocol):
    name: str

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        """Features (N, D) float64 of images (N, C, H, W) in [0, 1]."""
        ...


def _check_pixels(pixels: torch.Tensor, what: str = "images") -> torch.Tensor:
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 4:
        raise ValueError(f"{what} must have shape (N, C, H, W), got {tuple(pixels.shape)}")
    if pixels.shape[0] < 2:
        raise ValueError(f"{what}: a Fréchet distance needs at least 2 images, got {pixels.shape[0]}")
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return pixels.float()


class PixelFeatures:
    name = "pixels"

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = _check_pixels(pixels)
        return pixels.reshape(pixels.shape[0], -1).double().numpy()


class DigitsCNN(nn.Module):
    """Small classifier for (1, 8, 8) digits; ``features`` is its 64-d penultimate layer."""

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.conv1(x))
        h = nn.functional.avg_pool2d(nn.functional.gelu(self.conv2(h)), 2)
        return torch.tanh(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


WEIGHTS = "digits_features.safetensors"


def load_digits_cnn(path: str | Path | None = None) -> DigitsCNN:
    """The shipped digits feature network (or the weights at ``path``)."""
    from safetensors.torch import load_file

    if path is None:
        ref = resources.files("diffmem.metrics").joinpath("weights", WEIGHTS)
        if not ref.is_file():
            raise FileNotFoundError(
                f"the digits feature weights {WEIGHTS} are missing from the installed package; "
                "run `python scripts/train_digits_features.py` or reinstall diffmem"
            )
        with resources.as_file(ref) as p:
            state = load_file(str(p))
    else:
        state = load_file(str(path))
    net = DigitsCNN()
    net.load_state_dict(state)
    return net.eval()


class DigitsFeatures:
    name = "digits-cnn"

    def __init__(self, path: str | Path | None = None):
        self.net = load_digits_cnn(path)

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = _check_pixels(pixels)
        if tuple(pixels.shape[1:]) != (1, 8, 8):
            raise ValueError(
                f"the digits feature space takes (N, 1, 8, 8) images, got {tuple(pixels.shape)}; use features='pixels' "
                "or a TorchScript feature network for other data"
            )
        with torch.no_grad():
            return torch.cat([self.net.features(c) for c in pixels.split(2048)]).double().numpy()


class TorchScriptFeatures:
    """A user's TorchScript feature extractor; never unpickles arbitrary Python objects."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"feature network {path} does not exist; give a TorchScript file saved with torch.jit.save"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 nudges towards torch.export
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise ValueError(
                f"{path} is not a TorchScript file ({type(e).__name__}: {e}); export your network with torch.jit.save"
            ) from e
        self.name = f"torchscript:{path.name}"

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = _check_pixels(pixels)
        with torch.no_grad():
            try:
                self.net(pixels[:2])
            except RuntimeError:
                if pixels.shape[1] != 1:
                    raise
                pixels = pixels.repeat(1, 3, 1, 1)  # grayscale to a 3-channel network
            feats = torch.cat([self.net(c).reshape(c.shape[0], -1) for c in pixels.split(256)])
        return feats.double().numpy()


def feature_space(spec: str | FeatureSpace, image_shape: Sequence[int]) -> FeatureSpace:
    """Resolve ``"auto" | "digits" | "pixels" | path`` (or pass a FeatureSpace through)."""
    if not isinstance(spec, str):
        if not isinstance(spec, FeatureSpace):
            raise ValueError("features must be 'auto', 'digits', 'pixels', a TorchScript path or a FeatureSpace")
        return spec
    shape = tuple(image_shape)
    if spec == "auto":
        return DigitsFeatures() if shape == (1, 8, 8) else PixelFeatures()
    if spec == "digits":
        if shape != (1, 8, 8):
            raise ValueError(
                f"features='digits' needs (1, 8, 8) images, the data have {shape}; use 'pixels' or a TorchScript path"
            )
        return DigitsFeatures()
    if spec == "pixels":
        return PixelFeatures()
    if spec.endswith((".pt", ".pth", ".ts", ".torchscript")) or Path(spec).exists():
        return TorchScriptFeatures(spec)
    raise ValueError(
        f"unknown feature space {spec!r}: choose 'auto', 'digits', 'pixels' or the path of a TorchScript file"
    )


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features (N, D)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, s1) and N(mu2, s2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(d, 0.0)


def frechet(fake: torch.Tensor, real: torch.Tensor, space: FeatureSpace | str = "auto") -> float:
    """Fréchet distance between two image sets in a stated feature space.

    ``|mu_f - mu_r|^2 + Tr(S_f + S_r - 2 (S_f^1/2 S_r S_f^1/2)^1/2)`` between Gaussians fitted
    (float64) to the features of each set. FID is this distance in Inception pool features; every
    record that reports one names its space.

    Parameters
    ----------
    fake, real : torch.Tensor, shape (N, C, H, W) and (M, C, H, W)
        Pixel values in [0, 1], same image shape.
    space : FeatureSpace or str
        ``"auto"`` (the embedded digits features for 8x8 grayscale images, else pixels),
        ``"digits"``, ``"pixels"``, the path of a TorchScript feature network, or a FeatureSpace.

    Returns
    -------
    float
        The distance (>= 0; the square root of the trace term is taken on a symmetric PSD matrix).

    Examples
    --------
    >>> import torch
    >>> a = torch.rand(200, 1, 4, 4)
    >>> round(frechet(a, a, "pixels"), 6)
    0.0
    """
    ff, fr = paired_features(fake, real, space)
    return frechet_distance(*gaussian_stats(ff), *gaussian_stats(fr))


def paired_features(fake: Any, real: Any, space: str | FeatureSpace) -> tuple[np.ndarray, np.ndarray]:
    """Features of generated and reference pixel images in one space, after checking that both are
    images in [0, 1] of the same shape (shared by the Fréchet distance and KID)."""
    fake = _check_pixels(fake, "generated images")
    real = _check_pixels(real, "reference images")
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"generated images {tuple(fake.shape[1:])} and reference images {tuple(real.shape[1:])} differ in shape"
        )
    if isinstance(space, str):
        space = feature_space(space, fake.shape[1:])
    return space(fake), space(real)


@dataclass
class FrechetDistance:
    """Streaming shell: ``update(images, real=...)`` in batches, then ``compute()`` (float64 sums)."""

    space: FeatureSpace | str = "auto"
    _sums: dict = field(default_factory=dict, repr=False)

    def update(self, images: torch.Tensor, real: bool) -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if isinstance(self.space, str):
            self.space = feature_space(self.space, images.shape[1:])
        f = self.space(images) if images.shape[0] >= 2 else self.space(images.repeat(2, 1, 1, 1))[:1]
        n, s, ss = self._sums.get(real, (0, 0.0, 0.0))
        self._sums[real] = (n + f.shape[0], s + f.sum(0), ss + f.T @ f)

    def _stats(self, real: bool):
        if real not in self._sums or self._sums[real][0] < 2:
            raise ValueError(f"need at least 2 {'real' if real else 'generated'} images before compute()")
        n, s, ss = self._sums[real]
        mu = s / n
        return mu, (ss - n * np.outer(mu, mu)) / (n - 1)

    def compute(self) -> float:
        return frechet_distance(*self._stats(False), *self._stats(True))

    def reset(self) -> None:
        self._sums.clear()
