"""The record of one check of the monitor: the measurement record plus the onset rule and the action."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..metrics.record import Measurement

__all__ = ["MonitorCheck"]


@dataclass(frozen=True)
class MonitorCheck(Measurement):
    """One check of :class:`~diffmem.monitor.MemorizationMonitor`: a :class:`~diffmem.metrics.Measurement`
    and what the monitor made of it. :meth:`to_dict` is the monitor's record and log line."""

    q_low: float | None = None
    """The ``threshold``-quantile of the distance ratios (:func:`~diffmem.monitor.ratio_quantile`)."""
    predicted_onset: float | None = None
    """The step at which q_low is predicted to reach k (:func:`~diffmem.monitor.predict_onset`), or None."""
    quality_smooth: float | None = None
    """Running median of the quality over ``quality_window`` checks (None without a quality)."""
    quality_best: float | None = None
    """The lowest smoothed quality so far (None without a quality)."""
    alarm: bool = False
    """Whether this check raised an alarm."""
    action: str | None = None
    """What was done about the alarm ("warn", "checkpoint" or "stop"), None without one."""
    checkpoint: int | None = None
    """The step saved to the checkpoint at this check, else None."""
    seconds: float | None = None
    """Wall time of the check."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "step",
        "f_mem",
        "f_mem_ci",
        "q_low",
        "predicted_onset",
        "loss_train",
        "loss_test",
        "loss_gap",
        "quality",
        "quality_smooth",
        "quality_best",
        "alarm",
        "action",
        "checkpoint",
        "seconds",
    )
    """The fields of the monitor's record and log line, in order."""
