"""Small grayscale image sets that are not the digits, for checking the defaults on other data.

The defaults of ``diffmem dynamics`` (model, model-space scale, budget) were chosen on the embedded
digits. This script cuts a data set of another kind from the two photographs that ship with
scikit-learn (``sklearn.datasets.load_sample_images``: a temple in China and a flower, 427 x 640
RGB each): ``--count`` of the non-overlapping square tiles of ``--crop`` pixels (drawn at random,
so no two images share a pixel), converted to grayscale and block-averaged down to ``--size`` x
``--size``, stored as a user would pass them (``.npz`` with one array ``images`` of shape
(N, size, size), values in [0, 1]).

    python benchmarks/other_data.py --size 12 --out runs/patches12.npz
    python benchmarks/other_data.py --size 25 --crop 25 --out runs/patches25.npz
    diffmem dynamics --data runs/patches12.npz --out runs/patches12

Nothing is downloaded: the photographs are part of scikit-learn's package data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def patches(count: int, crop: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` grayscale crops of ``crop`` pixels, block-averaged to ``size`` x ``size``, in [0, 1]."""
    from sklearn.datasets import load_sample_images

    if crop % size:
        raise ValueError(f"crop ({crop}) must be a multiple of size ({size})")
    photos = [im.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0 for im in load_sample_images().images]
    f = crop // size
    tiles = [
        g[r : r + crop, c : c + crop].reshape(size, f, size, f).mean((1, 3))
        for g in photos
        for r in range(0, g.shape[0] - crop + 1, crop)
        for c in range(0, g.shape[1] - crop + 1, crop)
    ]
    if count > len(tiles):
        raise ValueError(f"only {len(tiles)} tiles of {crop} pixels exist; ask for --count <= {len(tiles)}")
    pick = np.random.default_rng(seed).choice(len(tiles), count, replace=False)
    out = np.stack([tiles[i] for i in pick])
    return out.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=400, help="number of images")
    ap.add_argument("--size", type=int, default=12, help="side of the stored images")
    ap.add_argument("--crop", type=int, default=None, help="side of the tiles (default 2 x size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/patches.npz")
    args = ap.parse_args()
    x = patches(args.count, args.crop or 2 * args.size, args.size, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=x)
    rms = float(np.sqrt(((x - x.mean(0)) ** 2).mean()))
    print(f"wrote {args.out}: {x.shape[0]} images of {x.shape[1]}x{x.shape[2]}, RMS about the mean {rms:.3f}")


if __name__ == "__main__":
    main()
