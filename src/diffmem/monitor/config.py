"""The settings of :class:`~diffmem.monitor.MemorizationMonitor`: one frozen dataclass (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_SAMPLES", "MonitorConfig"]

MAX_SAMPLES = 20_000
"""The largest sample budget a check may use: the monitor is meant to cost little next to training."""


@dataclass(frozen=True)
class MonitorConfig:
    """When and how :class:`MemorizationMonitor` measures, and what it does on an alarm.

    Examples
    --------
    >>> from diffmem.monitor import MonitorConfig
    >>> MonitorConfig(every=50, action="stop").samples
    200
    """

    every: int = 100
    """Training steps between two checks (``step % every == 0``); about 1/20 of the expected onset (docs/monitor.md)."""
    samples: int = 200
    """Samples drawn per check (at most 20000: the monitor is meant to be cheap)."""
    sampling_steps: int = 25
    """DDIM steps per sample when the monitor samples from a model and schedule."""
    k: float = 1 / 3
    """Memorization threshold on the nearest / second-nearest distance ratio (a sample is a copy below it)."""
    n_boot: int = 1000
    """Bootstrap resamples for the 95% interval of f_mem."""
    threshold: float = 0.01
    """The level of f_mem whose onset the monitor guards against; also the quantile q of the ratios it tracks."""
    action: Literal["warn", "checkpoint", "stop"] = "warn"
    """On an alarm: "warn" (one warning), "checkpoint" (stop refreshing the last safe checkpoint) or "stop"."""
    window: int = 5
    """Number of most recent checks over which log q is fitted against log step (at least 3)."""
    quality_window: int = 3
    """The quality is also reported as the running median over this many checks (quality_smooth; 1: raw)."""
    loss_t: float = 0.01
    """OU time t = -1/2 log alpha_bar at which the training and held-out losses are measured."""
    loss_draws: int = 5
    """Seeded noise draws per example for those losses."""
    loss_examples: int = 2048
    """At most this many training (and held-out) examples enter the losses (the first rows)."""
    loss_gap: bool | None = None
    """Measure the held-out minus training loss: None when possible, True to require it, False never."""
    batch: int = 1000
    """Samples per sampler call (results do not depend on it)."""
    seed: int = 0
    """Seed of the initial noise (the same at every check), of the bootstrap and of the loss noise."""

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting the monitor cannot use."""
        for name in ("every", "sampling_steps", "n_boot", "quality_window", "loss_draws", "loss_examples", "batch"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"MonitorConfig.{name} must be a positive integer, got {v!r}")
        if int(self.samples) != self.samples or self.samples < 2:
            raise ValueError(f"MonitorConfig.samples must be an integer >= 2, got {self.samples!r}")
        if self.samples > MAX_SAMPLES:
            raise ValueError(
                f"MonitorConfig.samples={self.samples} is more than the monitor's budget of {MAX_SAMPLES} samples per "
                "check; the monitor is meant to be cheap next to training: use a few hundred samples, and measure "
                "large sample sets offline (diffmem measure)"
            )
        if int(self.window) != self.window or self.window < 3:
            raise ValueError(f"MonitorConfig.window must be an integer >= 3 (a line's fit), got {self.window}")
        if not 0 < self.k < 1:
            raise ValueError(f"MonitorConfig.k must lie in (0, 1) (the paper uses 1/3), got {self.k}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"MonitorConfig.threshold must lie in (0, 1), got {self.threshold}")
        if self.action not in ("warn", "checkpoint", "stop"):
            raise ValueError(f"MonitorConfig.action must be 'warn', 'checkpoint' or 'stop', got {self.action!r}")
        if not self.loss_t > 0:
            raise ValueError(f"MonitorConfig.loss_t must be positive, got {self.loss_t}")
