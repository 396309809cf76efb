"""Small grayscale image sets that are not the digits, for checking the defaults on other data.

The defaults of ``diffmem dynamics`` (model, model-space scale, budget) were chosen on the embedded
digits. This script makes data sets of two other kinds, stored as a user would pass them (``.npz``
with one array ``images`` of shape (N, size, size), values in [0, 1]):

* ``--kind tiles``: ``--count`` of the non-overlapping square tiles of ``--crop`` pixels cut from the
  two photographs that ship with scikit-learn (``sklearn.datasets.load_sample_images``: a temple in
  China and a flower, 427 x 640 RGB each), drawn at random so no two images share a pixel,
  converted to grayscale and block-averaged down to ``--size`` x ``--size``. Textures: many tiles
  (sky, petals) are close to several others.
* ``--kind glyphs``: the 52 Latin letters a-z, A-Z rendered in the 16 text faces that ship with
  matplotlib (DejaVu Sans, Sans Mono and Serif and STIX General, each regular, bold, italic and
  bold italic): 832 white-on-black glyphs drawn 36 px high and centred on a 4·size canvas, then
  block-averaged to ``--size`` x ``--size``. Objects on a background, like the digits, but other
  shapes and other writers (``--count`` picks a random subset).

    python benchmarks/other_data.py --kind glyphs --size 12 --out runs/glyphs12.npz
    python benchmarks/other_data.py --size 12 --out runs/patches12.npz
    python benchmarks/other_data.py --size 25 --crop 25 --out runs/patches25.npz
    diffmem dynamics --data runs/glyphs12.npz --out runs/glyphs12

Nothing is downloaded: the photographs and the fonts are package data of scikit-learn and
matplotlib.
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


def glyphs(size: int = 12, count: int | None = None, seed: int = 0) -> np.ndarray:
    """The letters a-z, A-Z in matplotlib's 16 text faces, white on black, ``size`` x ``size``, in [0, 1]."""
    import string

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    styles = {"Sans": "Oblique", "SansMono": "Oblique", "Serif": "Italic"}
    faces = [ttf / f"DejaVu{fam}{st}.ttf" for fam, it in styles.items() for st in ("", "-Bold", f"-{it}", f"-Bold{it}")]
    faces += [ttf / f"STIXGeneral{style}.ttf" for style in ("", "Bol", "Italic", "BolIta")]
    missing = [f.name for f in faces if not f.exists()]
    if missing:
        raise FileNotFoundError(f"matplotlib's fonts {missing} are missing from {ttf}")
    canvas, f = 4 * size, 4
    out = []
    for face in faces:
        font = ImageFont.truetype(str(face), round(36 * size / 12))
        for ch in string.ascii_letters:
            im = Image.new("L", (canvas, canvas), 0)
            ImageDraw.Draw(im).text((canvas / 2, canvas / 2), ch, fill=255, font=font, anchor="mm")
            a = np.asarray(im, dtype=np.float64) / 255.0
            out.append(a.reshape(size, f, size, f).mean((1, 3)))
    x = np.stack(out).astype(np.float32)
    if count is not None:
        if count > len(x):
            raise ValueError(f"only {len(x)} glyphs exist; ask for --count <= {len(x)}")
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), count, replace=False))]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("tiles", "glyphs"), default="tiles", help="which data set (see above)")
    ap.add_argument("--count", type=int, default=None, help="number of images (tiles: 400, glyphs: all 832)")
    ap.add_argument("--size", type=int, default=12, help="side of the stored images")
    ap.add_argument("--crop", type=int, default=None, help="side of the tiles (default 2 x size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/patches.npz")
    args = ap.parse_args()
    if args.kind == "glyphs":
        x = glyphs(args.size, args.count, args.seed)
    else:
        x = patches(args.count or 400, args.crop or 2 * args.size, args.size, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=x)
    rms = float(np.sqrt(((x - x.mean(0)) ** 2).mean()))
    print(f"wrote {args.out}: {x.shape[0]} images of {x.shape[1]}x{x.shape[2]}, RMS about the mean {rms:.3f}")


if __name__ == "__main__":
    main()
