"""The measurement record: f_mem with its interval, the quality and the losses of one set of samples.

One typed record and one writer for the three places diffmem measures samples:

* every checkpoint of a run (:func:`diffmem.dynamics.evaluate.measure`): one line of ``metrics.jsonl``;
* every check of :class:`diffmem.monitor.MemorizationMonitor`: its records and log lines (the monitor
  adds its own fields in a subclass);
* a model diffmem did not train (:func:`diffmem.external.measure_model`): the ``f_mem`` block of
  ``measure.json`` (:meth:`Measurement.f_mem_dict`), and :meth:`MeasureResult.measurement
  <diffmem.external.measure.MeasureResult.measurement>` gives the same record as a checkpoint's.

Fields a producer does not measure are None. :meth:`Measurement.to_dict` writes the fields named in
``KEYS``, in that order, as plain Python values (the tuple interval as a list);
:meth:`Measurement.append_to` appends that dict as one JSON line (non-finite numbers as diffmem's
files write them, :func:`diffmem.io.jsonable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .. import io
from .memorization import MemorizationResult

__all__ = ["Measurement"]

_M = TypeVar("_M", bound="Measurement")


@dataclass(frozen=True)
class Measurement:
    """What one evaluation of a set of samples measured (see the module docstring for who writes it).

    Examples
    --------
    >>> import torch
    >>> from diffmem.metrics import memorization_fraction
    >>> mem = memorization_fraction(torch.tensor([[1.0, 0.01], [0.5, 0.5]]), torch.eye(2), n_boot=10)
    >>> m = Measurement.of(mem, n_boot=10, step=100, loss_train=0.2, loss_test=0.3)
    >>> m.to_dict()["f_mem"], m.memorized, round(m.loss_gap, 3)
    (0.5, 1, 0.1)
    >>> list(m.to_dict())
    ['step', 'f_mem', 'f_mem_ci', 'quality', 'quality_metric', 'loss_train', 'loss_test', 'median_ratio']
    """

    f_mem: float
    """Fraction of samples whose nearest / second-nearest distance ratio is below k."""
    f_mem_ci: tuple[float, float]
    """Percentile bootstrap interval of f_mem at ``level`` (resampling samples)."""
    k: float
    """The threshold of the ratio test."""
    samples: int
    """Number of samples tested."""
    memorized: int
    """Number of samples with a ratio below k."""
    n_boot: int
    """Bootstrap resamples behind ``f_mem_ci``."""
    level: float = 0.95
    """Confidence level of ``f_mem_ci``."""
    step: int | None = None
    """Training step of the checkpoint or check (None for a model measured once)."""
    quality: float | None = None
    """The quality number (lower is better), or None where none was measured."""
    quality_metric: str | None = None
    """Which quality number, as ``"frechet[SPACE]"`` or ``"kid[SPACE]"`` (None where it is not named)."""
    loss_train: float | None = None
    """eps-prediction loss on the training examples at a fixed OU time (None where not measured)."""
    loss_test: float | None = None
    """The same loss on held-out examples (None where not measured)."""
    median_ratio: float | None = None
    """Median of every sample's distance ratio (None where not recorded)."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "step",
        "f_mem",
        "f_mem_ci",
        "quality",
        "quality_metric",
        "loss_train",
        "loss_test",
        "median_ratio",
    )
    """The fields :meth:`to_dict` writes, in order: one line of a run's ``metrics.jsonl``."""

    @classmethod
    def of(cls: type[_M], mem: MemorizationResult, *, n_boot: int, level: float = 0.95, **values: Any) -> _M:
        """The record of a :class:`~diffmem.metrics.MemorizationResult` (bootstrapped with ``n_boot`` resamples
        at ``level``) and the other ``values`` measured (``step=``, ``quality=``, ``loss_train=`` ...).

        ``median_ratio`` is the median of ``mem.ratios`` unless given."""
        ratios = np.asarray(mem.ratios)
        values.setdefault("median_ratio", float(np.median(ratios)))
        return cls(
            f_mem=float(mem.value),
            f_mem_ci=(float(mem.ci[0]), float(mem.ci[1])),
            k=float(mem.k),
            samples=int(ratios.size),
            memorized=int(mem.memorized.sum()),
            n_boot=int(n_boot),
            level=float(level),
            **values,
        )

    @property
    def loss_gap(self) -> float | None:
        """``loss_test - loss_train`` (None unless both were measured)."""
        if self.loss_test is None or self.loss_train is None:
            return None
        return self.loss_test - self.loss_train

    def to_dict(self) -> dict[str, Any]:
        """The fields of ``KEYS`` in order, as plain Python values (tuples as lists)."""
        out = {}
        for key in self.KEYS:
            v = getattr(self, key)
            out[key] = list(v) if isinstance(v, tuple) else v
        return out

    def f_mem_dict(self) -> dict[str, Any]:
        """f_mem nested as ``{"value", "ci", "level", "n_boot", "memorized"}`` (the ``f_mem`` of ``measure.json``)."""
        return {
            "value": self.f_mem,
            "ci": list(self.f_mem_ci),
            "level": self.level,
            "n_boot": self.n_boot,
            "memorized": self.memorized,
        }

    def append_to(self, path: str | Path) -> None:
        """Append :meth:`to_dict` to the JSON-lines file ``path`` (one line, fsynced; the folder must exist)."""
        io.append_jsonl(path, self.to_dict())
