"""Memorization fraction: the nearest / second-nearest ratio test (Bonnaire et al. 2025).

A generated sample x is memorized when ``|x - a1| / |x - a2| < k`` where a1 and a2 are its nearest and
second-nearest training examples in L2, in the space the model was trained in. ``f_mem`` is the
fraction of memorized samples; its 95% interval is a percentile bootstrap over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .neighbors import DEFAULT_MEMORY_BUDGET, two_nearest

__all__ = [
    "MemorizationFraction",
    "MemorizationResult",
    "bootstrap_mean_ci",
    "distance_ratios",
    "fraction_from_ratios",
    "memorization_fraction",
    "nearest_two",
]


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


def nearest_two(
    samples,
    train,
    chunk: int = 4096,
    *,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    device=None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d1, d2, index of nearest) for every sample: L2 distances to its two nearest training rows.

    Exact (equal to a float64 brute force, ties to the lower index) and in bounded memory: see
    :func:`diffmem.metrics.neighbors.two_nearest`. ``chunk`` caps the samples per block,
    ``memory_budget`` (bytes) the working blocks; neither changes the result. ``device`` defaults to the
    samples' device; ``backend`` is "auto", "torch" or "faiss".
    """
    r = two_nearest(
        samples,
        train,
        memory_budget=memory_budget,
        device=device,
        backend=backend,
        max_block=chunk,
        names=("samples", "train"),
    )
    return r.d1, r.d2, r.index1


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
    """Fraction of ``samples`` that copy a training example: the ratio test of Bonnaire et al. (2025).

    A sample x is memorized when ``|x - a1| / |x - a2| < k``, with a1 and a2 its nearest and
    second-nearest training examples in L2 (in the space the model was trained in). Distances are
    computed in float64 on the CPU.

    Parameters
    ----------
    samples : torch.Tensor or numpy.ndarray, shape (N, ...)
        Generated samples, one per row (any trailing shape; flattened).
    train : torch.Tensor or numpy.ndarray, shape (M, ...)
        The training set, same trailing size as ``samples``, M >= 2.
    k : float
        Threshold on the distance ratio, in (0, 1); the paper uses 1/3 and checks 1/4 and 1/2.
    n_boot : int
        Bootstrap resamples (over samples) for the interval.
    level : float
        Confidence level of the percentile bootstrap interval.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    MemorizationResult
        ``value`` (the fraction f_mem), ``ci`` (its interval), ``ratios`` (N,) float64,
        ``nearest`` (N,) int64 indices of a1 in ``train``, ``k``; ``memorized`` is the (N,) mask.

    Examples
    --------
    >>> import torch
    >>> train = torch.eye(4)
    >>> samples = torch.tensor([[1.0, 0.0, 0.0, 0.01], [0.6, 0.4, 0.0, 0.0]])
    >>> r = memorization_fraction(samples, train, k=1/3)
    >>> r.value, r.memorized.tolist(), r.nearest.tolist()
    (0.5, [True, False], [0, 0])
    """
    if not 0 < k < 1:
        raise ValueError(f"k must lie in (0, 1) (the paper uses 1/3), got {k}")
    d1, d2, idx = nearest_two(samples, train)
    return fraction_from_ratios(distance_ratios(d1, d2), idx, k, n_boot=n_boot, level=level, seed=seed)


def distance_ratios(d1, d2) -> np.ndarray:
    """The ratio test's ``d1 / d2`` per sample, with 0/0 = 0 (a sample on two identical training points) and
    x/0 = inf: the one ratio every memorization test in diffmem uses (any distance, e.g. cosine).

    >>> distance_ratios(np.array([1.0, 0.0, 2.0]), np.array([4.0, 0.0, 0.0])).tolist()
    [0.25, 0.0, inf]
    """
    d1, d2 = np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d2 > 0, d1 / d2, np.where(d1 > 0, np.inf, 0.0))


def fraction_from_ratios(
    ratios, nearest, k: float = 1 / 3, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> MemorizationResult:
    """The :class:`MemorizationResult` of per-sample distance ratios (from :func:`distance_ratios`) and the
    indices of the nearest training examples: f_mem is the fraction of ratios below ``k``, with its
    percentile bootstrap interval over samples."""
    ratios, idx = np.asarray(ratios, dtype=np.float64), np.asarray(nearest)
    mem = (ratios < k).astype(np.float64)
    return MemorizationResult(float(mem.mean()), bootstrap_mean_ci(mem, n_boot, level, seed), ratios, idx, float(k))


class MemorizationFraction:
    """Stateful shell over :func:`memorization_fraction`: ``update()`` with batches of samples, then
    ``compute()`` gives the same :class:`MemorizationResult` as one call on all the samples."""

    def __init__(self, train, k: float = 1 / 3, n_boot: int = 1000, seed: int = 0) -> None:
        if not 0 < k < 1:
            raise ValueError(f"k must lie in (0, 1) (the paper uses 1/3), got {k}")
        self.train = _flat64(train, "train")
        self.k, self.n_boot, self.seed = k, n_boot, seed
        self.reset()

    def reset(self) -> None:
        """Forget the samples seen so far."""
        self._ratios: list[np.ndarray] = []
        self._nearest: list[np.ndarray] = []

    def update(self, samples) -> None:
        """Add a batch of samples (shape ``(B, ...)``, the training data's space)."""
        d1, d2, idx = nearest_two(samples, self.train)
        self._ratios.append(distance_ratios(d1, d2))
        self._nearest.append(idx)

    def compute(self) -> MemorizationResult:
        """f_mem, its bootstrap interval, and every sample's ratio and nearest training index."""
        if not self._ratios:
            raise ValueError("no samples: call update() first")
        return fraction_from_ratios(
            np.concatenate(self._ratios), np.concatenate(self._nearest), self.k, n_boot=self.n_boot, seed=self.seed
        )
