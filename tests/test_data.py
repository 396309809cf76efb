import numpy as np
import pytest
import torch
from PIL import Image

from diffmem import data


def test_digits_are_embedded_and_scaled():
    im = data.digits()
    assert im.pixels.shape == (1797, 1, 8, 8)
    assert float(im.pixels.min()) == 0.0 and float(im.pixels.max()) == 1.0


def test_split_is_deterministic_disjoint_and_mean_subtracted():
    im = data.digits()
    a = data.split(im, 64, scale=2.0)
    b = data.split(im, 64, scale=2.0)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_indices, b.test_indices)
    assert set(a.train_indices.tolist()).isdisjoint(a.test_indices.tolist())
    c = data.split(im, 64, subset_index=1, scale=2.0)
    assert set(a.train_indices.tolist()).isdisjoint(c.train_indices.tolist())
    assert torch.equal(a.test_indices, c.test_indices)
    # model space is scale * (pixels - pool mean) and round-trips exactly
    assert torch.allclose(a.to_pixels(a.train), im.pixels[a.train_indices], atol=1e-6)
    pool = [i for i in range(1797) if i not in set(a.test_indices.tolist())]
    assert torch.allclose(a.mean, im.pixels[pool].mean(0), atol=1e-6)
    # subsets of increasing size are nested (the first n of the same pool order)
    big = data.split(im, 128, scale=2.0)
    assert torch.equal(big.train_indices[:64], a.train_indices)


def test_n_larger_than_data_is_refused_with_the_limit():
    im = data.digits()
    with pytest.raises(ValueError, match=r"use n <= 1497"):
        data.split(im, 5000)
    with pytest.raises(ValueError, match=r"use n <= 748"):
        data.split(im, 1000, subset_index=1)


def test_npz_loading_and_bad_arrays(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=x)
    im = data.from_npz(tmp_path / "ok.npz")
    assert im.pixels.shape == (20, 1, 6, 6)
    np.testing.assert_allclose(im.pixels[:, 0].numpy(), x / 255.0, rtol=1e-6)
    # channels-last RGB
    np.savez(tmp_path / "rgb.npz", x=np.random.rand(5, 4, 4, 3).astype(np.float32))
    assert data.from_npz(tmp_path / "rgb.npz").pixels.shape == (5, 3, 4, 4)
    bad = np.random.rand(10, 4, 4).astype(np.float32)
    bad[3, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", images=bad)
    with pytest.raises(ValueError, match="NaN"):
        data.from_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", images=np.random.rand(10))
    with pytest.raises(ValueError, match="shape"):
        data.from_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(ValueError, match="--data-key"):
        data.from_npz(tmp_path / "two.npz")
    np.savez(tmp_path / "range.npz", images=np.full((4, 3, 3), 7.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.from_npz(tmp_path / "range.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="cannot read"):
        data.from_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        data.from_npz(tmp_path / "missing.npz")


def test_image_folder_resize_centre_crop_grayscale(tmp_path):
    # 40x20 RGB image: left half black, right half white; centre crop of the resized 32-high image
    # keeps a vertical edge in the middle
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, 20:] = 255
    for i in range(3):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    im = data.from_folder(tmp_path, size=16)
    assert im.pixels.shape == (3, 1, 16, 16)
    row = im.pixels[0, 0, 8].numpy()
    assert row[0] < 0.05 and row[-1] > 0.95 and 0.2 < row.mean() < 0.8
    assert data.load(str(tmp_path), size=16).pixels.shape == (3, 1, 16, 16)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"broken\.png"):
        data.from_folder(tmp_path, size=16)


def test_unknown_source():
    with pytest.raises(FileNotFoundError, match="neither"):
        data.load("no/such/thing")
