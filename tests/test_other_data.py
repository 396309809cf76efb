"""The other-data generator of benchmarks/other_data.py: the letters set is what the README's
other-data figures were measured on, so its content must not drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "other_data.py"
    spec = importlib.util.spec_from_file_location("other_data", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_glyphs_are_832_distinct_letters_in_unit_range():
    x = _module().glyphs(12)
    assert x.shape == (832, 12, 12) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    flat = x.reshape(len(x), -1).astype(np.float64)
    d = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.05  # no two faces draw a letter identically at 12x12
    # white on black: the border is background, the centre carries ink
    assert x[:, 0, :].mean() < 0.02 and x[:, 4:8, 4:8].mean() > 0.2
    # the same letter in two faces is closer than two different letters in one face ('o' vs 'O' aside)
    a_sans, a_serif, b_sans = flat[0], flat[52 * 8], flat[1]
    assert np.linalg.norm(a_sans - a_serif) < np.linalg.norm(a_sans - b_sans)


def test_glyph_subset_and_bad_count():
    mod = _module()
    sub = mod.glyphs(12, count=100, seed=1)
    full = mod.glyphs(12)
    assert sub.shape == (100, 12, 12)
    assert all((np.abs(full - s).sum((1, 2)) == 0).any() for s in sub)
    with pytest.raises(ValueError, match="only 832 glyphs"):
        mod.glyphs(12, count=900)
