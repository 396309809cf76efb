"""Evaluate every checkpoint of a run: samples, memorization fraction, quality, losses at fixed t.

Appends one JSON object per checkpoint to ``metrics.jsonl`` (a :class:`~diffmem.metrics.Measurement`;
append-only; a re-run skips the steps already there, so an interrupted evaluation resumes) and keeps
the samples of every checkpoint in ``samples/step_XXXXXXX.npz`` (model space).

The initial noise of sample i is drawn from its own seed (``seed * 1_000_003 + i``), so every
checkpoint is sampled from the same x_T and results do not depend on the batch size.

Quality is the Fréchet distance to the held-out images when there are at least
:data:`FRECHET_MIN_IMAGES_PER_DIM` of them per feature dimension, else the kernel distance (KID),
which stays unbiased on a small held-out set (``EvalConfig.quality`` overrides the choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .. import io, sampling
from ..config import claim_folder, resolve_device
from ..data import Split
from ..metrics import Measurement, loss_at_time, memorization_fraction
from ..validation import Integer, Interval, OneOf, check
from .training import TrainConfig, list_checkpoints, load_checkpoint, load_split

__all__ = ["FRECHET_MIN_IMAGES_PER_DIM", "EvalConfig", "measure", "quality_measure", "sample_checkpoint"]

FRECHET_MIN_IMAGES_PER_DIM = 4
"""``quality="auto"`` uses the Fréchet distance when the held-out set has at least this many images
per feature dimension (its covariance is then estimated well enough), else KID. 4 keeps the digits
(300 held-out images, 64-d features: 4.7 per dimension) on the Fréchet distance."""


@dataclass(frozen=True)
class EvalConfig:
    """How every checkpoint of a run is evaluated."""

    samples: int = 1000
    """Samples drawn per checkpoint."""
    sampling_steps: int = 50
    """Sampler steps."""
    sampler: str = "ddim"
    """"ddim" (deterministic, eta = 0) or "ddpm" (ancestral)."""
    k: float = 1 / 3
    """Memorization threshold on the nearest / second-nearest distance ratio."""
    n_boot: int = 1000
    """Bootstrap resamples for the interval of f_mem."""
    loss_t: float = 0.01
    """OU time t at which the train and test losses are measured."""
    loss_draws: int = 5
    """Noise draws per example for those losses."""
    features: str = "auto"
    """Feature space of the quality measure: "auto", "digits", "pixels" or a TorchScript file."""
    quality: Literal["auto", "frechet", "kid"] = "auto"
    """Quality measure: "frechet" (Fréchet distance), "kid" (kernel distance, unbiased on small held-out
    sets) or "auto" (Fréchet with at least 4 held-out images per feature dimension, else KID)."""
    batch: int = 1000
    """Samples per sampler batch (results do not depend on it)."""
    seed: int = 0
    """Seed of the initial noise, the bootstrap and the loss noise."""

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting the evaluation cannot use."""
        check(
            self,
            {
                "sampler": OneOf("ddim", "ddpm"),
                "quality": OneOf("auto", "frechet", "kid"),
                "samples": Integer(min=2),
                "sampling_steps": Integer(min=1),
                "k": Interval(0, 1, hint="the paper uses 1/3"),
                "n_boot": Integer(min=1),
                "loss_t": Interval(0),
                "loss_draws": Integer(min=1),
                "batch": Integer(min=1),
            },
        )


def quality_measure(quality: str, n_heldout: int, dim: int) -> str:
    """The measure ``quality`` stands for on a held-out set of ``n_heldout`` images in a ``dim``-d space.

    Parameters
    ----------
    quality : {"auto", "frechet", "kid"}
        ``EvalConfig.quality``.
    n_heldout : int
        Number of held-out (reference) images.
    dim : int
        Feature dimension D.

    Returns
    -------
    str
        ``"frechet"`` or ``"kid"``: "auto" gives the Fréchet distance when ``n_heldout >=
        FRECHET_MIN_IMAGES_PER_DIM * dim``, else KID.

    Examples
    --------
    >>> quality_measure("auto", 300, 64), quality_measure("auto", 30, 64), quality_measure("kid", 300, 64)
    ('frechet', 'kid', 'kid')
    """
    if quality not in ("auto", "frechet", "kid"):
        raise ValueError(f"quality must be 'auto', 'frechet' or 'kid', got {quality!r}")
    if quality != "auto":
        return quality
    return "frechet" if n_heldout >= FRECHET_MIN_IMAGES_PER_DIM * dim else "kid"


def sample_checkpoint(model: torch.nn.Module, cfg: TrainConfig, ev: EvalConfig, shape) -> torch.Tensor:
    """``ev.samples`` samples of ``model`` (on the model's device), returned on the CPU."""
    sched = cfg.schedule()
    dev = next(model.parameters()).device
    seeds = [ev.seed * 1_000_003 + i for i in range(ev.samples)]
    out = []
    with torch.no_grad():
        for i in range(0, ev.samples, ev.batch):
            x_T = sampling.randn_per_sample(seeds[i : i + ev.batch], shape).to(dev)
            if ev.sampler == "ddim":
                out.append(sampling.ddim(model, x_T, sched, ev.sampling_steps).cpu())
            else:
                g = torch.Generator().manual_seed(ev.seed + i)
                out.append(sampling.ddpm(model, x_T, sched, ev.sampling_steps, generator=g).cpu())
    return torch.cat(out)


def measure(
    cfg: TrainConfig,
    ev: EvalConfig,
    run_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    split: Split | None = None,
    device: str | None = None,
) -> list[dict]:
    """Evaluate the checkpoints of ``run_dir`` not yet in ``metrics.jsonl``; returns all records.

    The model samples and computes its losses on ``device`` (default CPU); the memorization
    statistics and quality (Fréchet distance or KID, see :func:`quality_measure`) are computed on
    the CPU in float64."""
    from ..metrics.frechet import feature_space, frechet
    from ..metrics.kid import kid

    cfg = cfg.resolved()
    ev.validate()
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"{run_dir} has no checkpoints/step_*.safetensors; run `diffmem train` first")
    claim_folder(run_dir, ev, name="eval_config.json")
    sp = split if split is not None else load_split(cfg)
    space = feature_space(ev.features, sp.shape)
    metrics_path = run_dir / "metrics.jsonl"
    done = {r["step"] for r in io.read_jsonl(metrics_path)}
    real = sp.to_pixels(sp.test).clamp(0, 1)
    which = quality_measure(ev.quality, len(real), space(real).shape[1])
    quality_fn = frechet if which == "frechet" else kid
    metric = f"{which}[{space.name}]"
    dev = resolve_device(device)
    train_dev, test_dev = sp.train.to(dev), sp.test.to(dev)
    sched = cfg.schedule()
    todo = [(s, p) for s, p in ckpts if s not in done]
    for j, (step, path) in enumerate(todo):
        model = load_checkpoint(path, cfg, sp.shape, device=dev)
        x = sample_checkpoint(model, cfg, ev, sp.shape)
        mem = memorization_fraction(x, sp.train, ev.k, n_boot=ev.n_boot, seed=ev.seed)
        quality = quality_fn(sp.to_pixels(x).clamp(0, 1), real, space)
        rec = Measurement.of(
            mem,
            n_boot=ev.n_boot,
            step=step,
            quality=quality,
            quality_metric=metric,
            loss_train=loss_at_time(model, train_dev, sched, ev.loss_t, ev.loss_draws, seed=ev.seed),
            loss_test=loss_at_time(model, test_dev, sched, ev.loss_t, ev.loss_draws, seed=ev.seed),
        )
        io.save_npz(
            run_dir / "samples" / f"step_{step:07d}.npz", samples=x.numpy(), nearest=mem.nearest, ratios=mem.ratios
        )
        rec.append_to(metrics_path)
        if progress is not None:
            progress(j + 1, len(todo))
    return sorted(io.read_jsonl(metrics_path), key=lambda r: r["step"])
