"""Measure any model: memorization and quality of a denoiser diffmem did not train.

``diffmem measure --model PATH --data TRAIN [--heldout HELD] --out DIR`` (see docs/measure.md):
a local diffusers folder (``UNet2DModel``, or a ``DDPMPipeline``/``DDIMPipeline`` saved with
``save_pretrained``) or a TorchScript ``forward(x, t) -> eps`` file is sampled with DDIM (eta = 0)
and its samples are tested against the training images with the nearest / second-nearest ratio test.

:func:`measure_model` with :class:`MeasureConfig` returns a :class:`MeasureResult`;
:func:`load_model` gives the :class:`ExternalModel` alone. Names load lazily.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_WHERE = {
    ".config": ["MAX_SAMPLES", "MeasureConfig"],
    ".models": ["ExternalModel", "load_model"],
    ".measure": ["MeasureResult", "cosine_ratio_test", "measure_model"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
