"""The settings of :class:`~diffmem.monitor.MemorizationMonitor`: one frozen dataclass (no torch, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..validation import Integer, Interval, OneOf, check

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
        positive = Integer(min=1)
        budget = (
            "{label}={value} is more than the monitor's budget of "
            f"{MAX_SAMPLES} samples per check; the monitor is meant to be cheap next to training: use a few "
            "hundred samples, and measure large sample sets offline (diffmem measure)"
        )
        check(
            self,
            {
                **dict.fromkeys(
                    ("every", "sampling_steps", "n_boot", "quality_window", "loss_draws", "loss_examples", "batch"),
                    positive,
                ),
                "samples": (Integer(min=2), Integer(max=MAX_SAMPLES, message=budget)),
                "window": Integer(min=3, hint="a line's fit"),
                "k": Interval(0, 1, hint="the paper uses 1/3"),
                "threshold": Interval(0, 1),
                "action": OneOf("warn", "checkpoint", "stop"),
                "loss_t": Interval(0),
            },
            label="{cls}.{name}",
        )
