"""The settings of ``diffmem measure --model``: a frozen dataclass, one command-line flag per field.

This module imports nothing heavy (no torch, no numpy), so the command-line parser can be built from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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
        if int(self.samples) != self.samples or self.samples < 2:
            raise ValueError(f"samples must be an integer >= 2, got {self.samples}")
        if self.samples > MAX_SAMPLES:
            raise ValueError(
                f"--samples {self.samples} is more than the maximum of {MAX_SAMPLES} (every sample is kept in "
                "memory and compared with every training image); measure in several runs with different --seed"
            )
        if int(self.sampling_steps) != self.sampling_steps or self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be a positive integer, got {self.sampling_steps}")
        if int(self.batch) != self.batch or self.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {self.batch}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed}")
        if not 0 < self.k < 1:
            raise ValueError(f"k must lie in (0, 1) (the paper uses 1/3), got {self.k}")
        if int(self.n_boot) != self.n_boot or self.n_boot < 1:
            raise ValueError(f"n_boot must be a positive integer, got {self.n_boot}")
        parse_pixel_range(self.pixel_range)
        if self.clip_sample not in ("auto", "on", "off"):
            raise ValueError(f"clip_sample must be 'auto', 'on' or 'off', got {self.clip_sample!r}")
        if self.schedule is not None and self.schedule not in SCHEDULE_DEFAULTS:
            raise ValueError(f"schedule must be 'linear' or 'scaled_linear', got {self.schedule!r}")
        if self.T is not None and (int(self.T) != self.T or self.T < 2):
            raise ValueError(f"T must be an integer >= 2, got {self.T}")
        if self.image_size is not None and (int(self.image_size) != self.image_size or self.image_size < 2):
            raise ValueError(f"image_size must be an integer >= 2, got {self.image_size}")
        if not self.loss_t > 0:
            raise ValueError(f"loss_t must be positive, got {self.loss_t}")
        if int(self.loss_examples) != self.loss_examples or self.loss_examples < 1:
            raise ValueError(f"loss_examples must be a positive integer, got {self.loss_examples}")
        if int(self.grid) != self.grid or self.grid < 1:
            raise ValueError(f"grid must be a positive integer, got {self.grid}")
        if not self.space:
            raise ValueError("space must be 'pixels', the path of a TorchScript embedding network or 'sscd:PATH'")

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
