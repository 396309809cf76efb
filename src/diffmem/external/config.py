"""The settings of ``diffmem measure --model``: a frozen dataclass, one command-line flag per field.

This module imports nothing heavy (no torch, no numpy), so the command-line parser can be built from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..validation import Integer, Interval, OneOf, Optional, Satisfies, check

__all__ = ["MAX_SAMPLES", "MeasureConfig", "parse_pixel_range"]

#: the largest sample budget ``measure_model`` accepts (samples are kept in memory, then compared with
#: every training image)
MAX_SAMPLES = 100_000

#: default betas of the two schedules that can be given by flags
SCHEDULE_DEFAULTS = {"linear": (1e-4, 2e-2), "scaled_linear": (0.00085, 0.012)}


def parse_pixel_range(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> ``(LO, HI)``: the model's value for pixel 0 and for pixel 1 (``"-1,1"``, ``"0,1"``).

    >>> parse_pixel_range("-1,1")
    (-1.0, 1.0)
    """
    parts = str(text).replace(" ", "").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"pixel range {text!r} must be two numbers LO,HI (e.g. 0,1 or -1,1; on the command line write "
            "--pixel-range=-1,1 so that the leading minus is not read as a flag)"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"pixel range {text!r} needs finite LO < HI (e.g. -1,1)")
    return lo, hi


@dataclass(frozen=True)
class MeasureConfig:
    """How an external model is sampled and measured (``diffmem measure --model``)."""

    samples: int = 500
    """DDIM samples to draw (at most 100000)."""
    sampling_steps: int = 50
    """DDIM steps per sample (eta = 0)."""
    batch: int = 100
    """Samples per sampler batch (results do not depend on it)."""
    seed: int = 0
    """Seed of the initial noise (sample i starts from seed * 1000003 + i) and of the bootstrap."""
    k: float = 1 / 3
    """Memorization threshold on the nearest / second-nearest distance ratio."""
    n_boot: int = 1000
    """Bootstrap resamples (over samples) for the 95% interval of f_mem."""
    space: str = "pixels"
    """Space of the ratio test: "pixels" (Euclidean distance of [0, 1] pixels), the path of a TorchScript
    embedding network (images in [0, 1] -> (B, D); cosine distance), or "sscd:PATH" for an SSCD TorchScript
    file (its own resizing and ImageNet normalisation; cosine distance)."""
    features: str | None = None
    """Feature space of the quality numbers against --heldout: "auto", "digits", "pixels" or a TorchScript
    file; when not given "auto" (the digits CNN for 1x8x8 images, else pixels). Needs --heldout."""
    pixel_range: str = "-1,1"
    """The model's values for pixels 0 and 1, "LO,HI": -1,1 (diffusers and DDPM) or 0,1."""
    clip_sample: Literal["auto", "on", "off"] = "auto"
    """Clip the predicted x0 at every DDIM step, as diffusers' DDIMScheduler does with clip_sample: auto
    follows scheduler/scheduler_config.json (off for TorchScript and a bare U-Net folder)."""
    schedule: Literal["linear", "scaled_linear"] | None = None
    """Beta schedule of a TorchScript model or a bare UNet2DModel folder, linear when not given (a pipeline
    folder's scheduler config defines its own; a flag that disagrees with it is refused)."""
    T: int | None = None
    """Number of training diffusion steps of that schedule; 1000 when not given."""
    beta_start: float | None = None
    """First beta; when not given 1e-4 (linear) or 0.00085 (scaled_linear)."""
    beta_end: float | None = None
    """Last beta; when not given 0.02 (linear) or 0.012 (scaled_linear)."""
    data_key: str | None = None
    """Array name inside a .npz given to --data / --heldout."""
    image_size: int | None = None
    """Side in pixels an image folder given to --data / --heldout is resized and cropped to; when not
    given the U-Net's sample_size (diffusers folders) or 32."""
    grayscale: bool | None = None
    """Read an image folder as grayscale; when not given, yes for 1-channel models and TorchScript."""
    loss_gap: bool = False
    """Also measure the eps-prediction loss at OU time --loss-t on training and held-out images (needs
    --heldout)."""
    loss_t: float = 0.01
    """OU time t = -1/2 log alpha_bar at which that loss is measured."""
    loss_examples: int = 500
    """Images of each set (the first ones) entering that loss, 5 noise draws each."""
    grid: int = 12
    """Most-copied samples shown beside their nearest training images in most_copied.png."""

    def validate(self) -> None:
        """Refuse settings that cannot be measured, with what to change."""
        too_many = (
            f"--samples {{value}} is more than the maximum of {MAX_SAMPLES} (every sample is kept in memory and "
            "compared with every training image); measure in several runs with different --seed"
        )
        check(
            self,
            {
                "samples": (Integer(min=2), Integer(max=MAX_SAMPLES, message=too_many)),
                "sampling_steps": Integer(min=1),
                "batch": Integer(min=1),
                "seed": Integer(min=0),
                "k": Interval(0, 1, hint="the paper uses 1/3"),
                "n_boot": Integer(min=1),
                "clip_sample": OneOf("auto", "on", "off"),
                "schedule": Optional(OneOf(*SCHEDULE_DEFAULTS)),
                "T": Optional(Integer(min=2)),
                "image_size": Optional(Integer(min=2)),
                "loss_t": Interval(0),
                "loss_examples": Integer(min=1),
                "grid": Integer(min=1),
                "space": Satisfies(
                    lambda s: isinstance(s, str) and bool(s),
                    text="be 'pixels', the path of a TorchScript embedding network or 'sscd:PATH'",
                ),
            },
        )
        parse_pixel_range(self.pixel_range)

    def schedule_flags_given(self) -> bool:
        """Whether any of ``schedule``, ``T``, ``beta_start``, ``beta_end`` was set."""
        return any(v is not None for v in (self.schedule, self.T, self.beta_start, self.beta_end))

    def schedule_args(self) -> tuple[str, int, float, float]:
        """``(kind, T, beta_start, beta_end)`` with the defaults filled in."""
        kind = self.schedule or "linear"
        b0, b1 = SCHEDULE_DEFAULTS[kind]
        return (
            kind,
            int(self.T) if self.T is not None else 1000,
            float(self.beta_start) if self.beta_start is not None else b0,
            float(self.beta_end) if self.beta_end is not None else b1,
        )
