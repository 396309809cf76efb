"""Data sources and the deterministic train/test split used everywhere in diffmem.

A :class:`Images` holds raw images in pixel units ``[0, 1]`` with shape ``(N, C, H, W)``.
:func:`split` turns it into a :class:`Split`: a held-out test set and a training subset of size n,
both mapped to model space as ``scale * (pixels - mean)`` where ``mean`` is the per-pixel mean of
the whole training pool (every image not in the test set), so that runs with different n and
different subsets live in the same space (the paper's convention: pixels in [0,1] minus the
training-set mean).

Sources: :func:`digits` (scikit-learn's 8x8 digits, shipped in its wheel: no download),
:func:`from_npz` (a ``.npz`` array file, loaded without pickle) and :func:`from_folder` (an image
folder with the paper's CelebA preprocessing: resize, centre crop, grayscale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Images", "Split", "default_n_test", "digits", "from_folder", "from_npz", "load", "split"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class Images:
    """Raw images in [0, 1], shape (N, C, H, W), float32."""

    pixels: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        x = self.pixels
        if x.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 images, got {x.shape[0]}")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise ValueError(f"{self.name}: {bad} image(s) contain NaN or inf values; clean or drop them first")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, eq=False)
class Split:
    """A training subset and a held-out test set in model space ``scale * (pixels - mean)``."""

    train: torch.Tensor  # (n, C, H, W)
    test: torch.Tensor  # (n_test, C, H, W)
    mean: torch.Tensor  # (C, H, W), pixel units
    scale: float
    train_indices: torch.Tensor  # indices into the source images
    test_indices: torch.Tensor

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale + self.mean

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) * self.scale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def digits() -> Images:
    """scikit-learn's 1797 handwritten digits, 8x8, values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 16.0
    return Images(torch.from_numpy(x)[:, None], "digits")


def _to_nchw(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    x = arr.astype(np.float32)
    if arr.dtype == np.uint8 or (np.issubdtype(arr.dtype, np.integer) and np.nanmax(x) > 1):
        x = x / 255.0
    if x.ndim == 3:  # (N, H, W)
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # (N, H, W, C)
        x = np.moveaxis(x, -1, 1)
    elif x.ndim != 4:
        raise ValueError(f"{name}: expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {arr.shape}")
    finite = np.isfinite(x)
    if finite.all() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(
            f"{name}: float pixels must lie in [0, 1] (or pass uint8 in 0..255); got [{x.min()}, {x.max()}]"
        )
    return torch.from_numpy(np.ascontiguousarray(x))


def from_npz(path: str | Path, key: str | None = None) -> Images:
    """Images from a ``.npz`` file (loaded with ``allow_pickle=False``).

    ``key`` names the array; by default the file must hold exactly one array (or one named
    ``images`` / ``x``). uint8 arrays are read as 0..255, float arrays must be in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip, truncated, or an object array that would need pickle
        raise ValueError(f"cannot read {path} as a .npz array file: {e}") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not a .npz archive; save it with numpy.savez")
    with f:
        keys = list(f.keys())
        if key is None:
            named = [k for k in ("images", "x") if k in keys]
            if len(keys) == 1:
                key = keys[0]
            elif named:
                key = named[0]
            else:
                raise ValueError(f"{path} holds arrays {keys}; say which one with --data-key")
        if key not in keys:
            raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
        try:
            arr = f[key]
        except Exception as e:
            raise ValueError(f"cannot read array {key!r} from {path}: {e}") from e
    return Images(_to_nchw(arr, str(path)), path.stem)


def _load_image(p: Path, size: int, grayscale: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as f:
            im = f.convert("L" if grayscale else "RGB")
            w, h = im.size
            s = size / min(w, h)  # resize the shorter side to `size`, then centre-crop
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {p}: {e}") from e
    return a[None] if grayscale else np.moveaxis(a, -1, 0)


def from_folder(path: str | Path, size: int = 32, grayscale: bool = True, limit: int | None = None) -> Images:
    """Images from a folder (sorted by file name), with the paper's CelebA preprocessing.

    Each image is resized so that its shorter side is ``size``, centre-cropped to ``size x size``,
    converted to grayscale (unless ``grayscale=False``) and scaled to [0, 1].
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such image folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:limit] if limit else files
    x = np.stack([_load_image(p, size, grayscale) for p in files])
    return Images(torch.from_numpy(x), path.name)


def load(source: str = "digits", *, key: str | None = None, size: int = 32, grayscale: bool = True) -> Images:
    """``"digits"``, a ``.npz`` file or an image folder."""
    if source == "digits":
        return digits()
    p = Path(source)
    if p.is_dir():
        return from_folder(p, size=size, grayscale=grayscale)
    if p.suffix == ".npz" or p.is_file():
        return from_npz(p, key=key)
    raise FileNotFoundError(f"data source {source!r} is neither 'digits', an existing .npz file nor an image folder")


def default_n_test(n_images: int) -> int:
    """Held-out test size: a sixth of the images, at most 2048 (the paper's test size)."""
    return int(min(2048, max(1, round(n_images / 6))))


def split(
    images: Images,
    n: int,
    *,
    subset_index: int = 0,
    n_test: int | None = None,
    scale: float = 1.0,
    split_seed: int = 0,
) -> Split:
    """Deterministic split: a seeded permutation of the images; its first ``n_test`` are the test
    set, the rest the training pool; subset ``i`` is pool[i*n:(i+1)*n], so different
    ``subset_index`` values give disjoint training sets."""
    N = len(images)
    n_test = default_n_test(N) if n_test is None else int(n_test)
    if not 1 <= n_test < N:
        raise ValueError(f"n_test must be in [1, {N - 1}] for {N} images, got {n_test}")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    if subset_index < 0:
        raise ValueError(f"subset_index must be >= 0, got {subset_index}")
    pool = N - n_test
    if (subset_index + 1) * n > pool:
        most = pool // (subset_index + 1)
        raise ValueError(
            f"n={n} with subset_index={subset_index} needs {(subset_index + 1) * n} training images but "
            f"{images.name} has {pool} (after holding out {n_test} for test); use n <= {most}"
        )
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(int(split_seed)))
    test_idx, pool_idx = perm[:n_test], perm[n_test:]
    train_idx = pool_idx[subset_index * n : (subset_index + 1) * n]
    mean = images.pixels[pool_idx].mean(0)

    def to_model(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) * scale

    return Split(
        train=to_model(images.pixels[train_idx]),
        test=to_model(images.pixels[test_idx]),
        mean=mean,
        scale=float(scale),
        train_indices=train_idx,
        test_indices=test_idx,
    )
