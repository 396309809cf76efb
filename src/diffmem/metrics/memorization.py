"""Memorization fraction: the nearest / second-nearest ratio test (SCIENCE.md section 2).

A generated sample x is memorized when ``|x - a1| / |x - a2| < k`` where a1 and a2 are its nearest and
second-nearest training examples in L2, in the space the model was trained in. ``f_mem`` is the
fraction of memorized samples; its 95% interval is a percentile bootstrap over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MemorizationFraction", "MemorizationResult", "bootstrap_mean_ci", "memorization_fraction", "nearest_two"]


@dataclass(frozen=True)
class MemorizationResult:
    value: float  # fraction of memorized samples
    ci: tuple[float, float]  # bootstrap interval of the fraction
    ratios: np.ndarray  # |x - a1| / |x - a2| per sample
    nearest: np.ndarray  # index of a1 in the training set, per sample
    k: float

    @property
    def memorized(self) -> np.ndarray:
        return self.ratios < self.k


def _flat64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with one example per row, got {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def nearest_two(samples, train, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d1, d2, index of nearest) for every sample: L2 distances to its two nearest training rows."""
    s, tr = _flat64(samples, "samples"), _flat64(train, "train")
    if s.shape[1] != tr.shape[1]:
        raise ValueError(f"samples have dimension {s.shape[1]} but training data {tr.shape[1]}; use the same space")
    if tr.shape[0] < 2:
        raise ValueError("need at least 2 training examples for the nearest/second-nearest ratio")
    d1, d2, idx = [], [], []
    for i in range(0, s.shape[0], chunk):
        d = torch.cdist(s[i : i + chunk], tr)
        v, j = torch.topk(d, 2, dim=1, largest=False)
        d1.append(v[:, 0])
        d2.append(v[:, 1])
        idx.append(j[:, 0])
    return torch.cat(d1).numpy(), torch.cat(d2).numpy(), torch.cat(idx).numpy()


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling rows with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("cannot bootstrap an empty set of values")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def memorization_fraction(
    samples, train, k: float = 1 / 3, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> MemorizationResult:
    """Fraction of ``samples`` whose nearest/second-nearest distance ratio to ``train`` is below ``k``."""
    if not 0 < k < 1:
        raise ValueError(f"k must lie in (0, 1) (the paper uses 1/3), got {k}")
    d1, d2, idx = nearest_two(samples, train)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(d2 > 0, d1 / d2, np.where(d1 > 0, np.inf, 0.0))
    mem = (ratios < k).astype(np.float64)
    return MemorizationResult(float(mem.mean()), bootstrap_mean_ci(mem, n_boot, level, seed), ratios, idx, float(k))


class MemorizationFraction:
    """Stateful shell: accumulate samples over batches, then ``compute()`` against a training set."""

    def __init__(self, train, k: float = 1 / 3, n_boot: int = 1000, seed: int = 0) -> None:
        self.train = _flat64(train, "train")
        self.k, self.n_boot, self.seed = k, n_boot, seed
        self.reset()

    def reset(self) -> None:
        self._ratios: list[np.ndarray] = []

    def update(self, samples) -> None:
        d1, d2, _ = nearest_two(samples, self.train)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._ratios.append(np.where(d2 > 0, d1 / d2, np.where(d1 > 0, np.inf, 0.0)))

    def compute(self) -> MemorizationResult:
        if not self._ratios:
            raise ValueError("no samples: call update() first")
        r = np.concatenate(self._ratios)
        mem = (r < self.k).astype(np.float64)
        return MemorizationResult(
            float(mem.mean()), bootstrap_mean_ci(mem, self.n_boot, seed=self.seed), r, np.array([]), self.k
        )
