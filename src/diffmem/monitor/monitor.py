"""The monitor: :class:`MemorizationMonitor` measures a training run every ``every`` steps and acts on an alarm."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io, sampling
from ..metrics.frechet import frechet_distance, gaussian_stats
from ..metrics.losses import loss_at_time
from ..metrics.memorization import memorization_fraction
from ..schedule import Schedule
from .check import MonitorCheck
from .config import MonitorConfig
from .onset import predict_onset, ratio_quantile

__all__ = ["MemorizationMonitor"]

_QUALITY_MAX_DIM = 1024  # the default quality (Fréchet in the loop's space) is skipped above this dimension

SampleFn = Callable[[int, torch.Generator], torch.Tensor]
QualityFn = Callable[[torch.Tensor, "torch.Tensor | None"], float]


def _module_of(model: Any) -> torch.nn.Module | None:
    return model if isinstance(model, torch.nn.Module) else None


def _device_dtype(model: Any, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    mod = _module_of(model)
    if mod is not None:
        for p in mod.parameters():
            dtype = p.dtype if p.is_floating_point() else fallback.dtype
            return p.device, dtype
    return fallback.device, fallback.dtype


class _EvalMode:
    """Eval mode and no_grad for the duration of a check; every submodule's own mode is restored."""

    def __init__(self, model: Any) -> None:
        self.mod = _module_of(model)
        self.modes: list[tuple[torch.nn.Module, bool]] = []
        self.grad = torch.no_grad()

    def __enter__(self) -> None:
        if self.mod is not None:
            self.modes = [(m, m.training) for m in self.mod.modules()]
            self.mod.eval()
        self.grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(None, None, None)
        for m, mode in self.modes:
            m.training = mode


class MemorizationMonitor:
    """Watch a training run for the onset of memorization and warn, checkpoint or stop in time.

    Every ``config.every`` steps, :meth:`step` draws ``config.samples`` samples from the same
    initial noise, measures the fraction f_mem of samples that copy a training example (ratio test,
    with a 95% bootstrap interval), the ``threshold``-quantile ``q_low`` of the distance ratios,
    the losses at OU time ``loss_t`` and a quality number, and extrapolates the step at which
    ``q_low`` reaches ``k`` (:func:`predict_onset`). An alarm is raised when the lower bootstrap
    bound of f_mem reaches ``threshold`` or the predicted onset is at most one check away.

    Parameters
    ----------
    train_data : torch.Tensor, shape (N, ...)
        The training examples, in the space the loop trains in (any global scale: the ratio test
        does not depend on it), N >= 2.
    model : callable, optional
        The denoiser ``model(x, t) -> eps`` (eps-prediction, ``t`` a float tensor of integer steps
        in ``[0, T)``). Needed to sample without ``sample_fn``, for the losses and for checkpoints;
        may instead be passed to :meth:`step` at every call.
    schedule : Schedule, optional
        The diffmem noise schedule the model is trained with (e.g. ``diffmem.linear()``); with
        ``model`` it gives DDIM sampling and the losses.
    sample_fn : callable, optional
        ``sample_fn(num, generator) -> samples (num, ...)`` in the training data's space, replacing
        DDIM. ``generator`` is a CPU ``torch.Generator`` re-seeded with ``config.seed`` at every
        check: draw the initial noise from it so that every check starts from the same noise.
    heldout : torch.Tensor, shape (M, ...), optional
        Held-out examples in the same space: the held-out loss, the loss gap and the quality.
    config : MonitorConfig
        When to check, the sample budget, the rule's constants and the action.
    log_path : str or Path, optional
        A JSON-lines file that receives one record per check (appended).
    checkpoint_path : str or Path, optional
        Where the model's ``state_dict`` is saved (safetensors, atomically) at every check without
        an alarm, until the first alarm: the file then holds the last checkpoint before the onset.
        Required for ``action="checkpoint"``, optional for ``"stop"``.
    quality_fn : callable, optional
        ``quality_fn(samples, heldout) -> float``, lower is better (e.g. a Fréchet distance in a
        feature space you trust). Default: the Fréchet distance between the samples and
        ``heldout`` in the loop's own space (flattened), when ``heldout`` is given and an example
        has at most 1024 values; otherwise no quality is recorded.

    Attributes
    ----------
    records : list of dict
        One record per check (the fields of the JSON lines, see :meth:`step`).
    alarm_step : int or None
        The step of the first alarm.
    should_stop : bool
        True after an alarm with ``action="stop"``: the training loop should end.
    stopped_at : int or None
        The step at which the stop was requested.
    checkpoint_step : int or None
        The step of the checkpoint held in ``checkpoint_path``.

    Examples
    --------
    >>> import torch, diffmem
    >>> from diffmem.monitor import MemorizationMonitor, MonitorConfig
    >>> train = torch.randn(32, 1, 8, 8)
    >>> model = lambda x, t: torch.zeros_like(x)  # a denoiser that predicts no noise
    >>> mon = MemorizationMonitor(train, model=model, schedule=diffmem.linear(),
    ...                           config=MonitorConfig(every=10, samples=50, sampling_steps=5))
    >>> mon.step(3) is None  # not a check step: nothing happens
    True
    >>> rec = mon.step(10)
    >>> rec["step"], rec["f_mem"], rec["alarm"]
    (10, 0.0, False)

    In a loop (``action="stop"``)::

        for step in range(1, steps + 1):
            ...  # one optimizer step
            monitor.step(step, model)
            if monitor.should_stop:
                break
    """

    def __init__(
        self,
        train_data: torch.Tensor,
        *,
        model: Any = None,
        schedule: Schedule | None = None,
        sample_fn: SampleFn | None = None,
        heldout: torch.Tensor | None = None,
        config: MonitorConfig | None = None,
        log_path: str | Path | None = None,
        checkpoint_path: str | Path | None = None,
        quality_fn: QualityFn | None = None,
    ) -> None:
        self.config = config if config is not None else MonitorConfig()
        if not isinstance(self.config, MonitorConfig):
            raise TypeError(f"config must be a MonitorConfig, got {type(self.config).__name__}")
        self.config.validate()
        self.train = self._data(train_data, "train_data")
        if self.train.shape[0] < 2:
            raise ValueError("train_data needs at least 2 examples for the nearest / second-nearest ratio test")
        self.heldout = self._data(heldout, "heldout") if heldout is not None else None
        if self.heldout is not None and self.heldout.shape[1:] != self.train.shape[1:]:
            raise ValueError(
                f"heldout examples have shape {tuple(self.heldout.shape[1:])} but train_data "
                f"{tuple(self.train.shape[1:])}; give both in the loop's space"
            )
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError("schedule must be a diffmem Schedule (e.g. diffmem.linear(1000, 1e-4, 2e-2))")
        if sample_fn is None and schedule is None:
            raise ValueError(
                "the monitor cannot sample: give sample_fn(num, generator), or a denoiser model(x, t) with its "
                "schedule (a diffmem Schedule) for DDIM sampling"
            )
        if sample_fn is not None and not callable(sample_fn):
            raise TypeError("sample_fn must be callable as sample_fn(num, generator) -> samples")
        if self.config.loss_gap and (self.heldout is None or schedule is None):
            missing = " and ".join(
                s for s, ok in (("heldout=", self.heldout is not None), ("schedule=", schedule is not None)) if not ok
            )
            raise ValueError(
                f"MonitorConfig.loss_gap=True needs held-out data and the model's schedule to measure the "
                f"held-out minus training loss; pass {missing} (or leave loss_gap=None to skip it)"
            )
        if self.config.action == "checkpoint" and checkpoint_path is None:
            raise ValueError('action="checkpoint" needs checkpoint_path= (where the last safe checkpoint is kept)')
        self.model = model
        self.schedule = schedule
        self.sample_fn = sample_fn
        self.quality_fn = quality_fn
        self.log_path = Path(log_path) if log_path is not None else None
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.records: list[dict] = []
        self.alarm_step: int | None = None
        self.should_stop = False
        self.stopped_at: int | None = None
        self.checkpoint_step: int | None = None
        self._warned = False
        self._heldout_stats: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _data(x: Any, name: str) -> torch.Tensor:
        t = torch.as_tensor(x).detach()
        if t.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with one example per row, got {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            t = t.float()
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf values")
        return t.cpu()

    # -- measurements -----------------------------------------------------------------------------

    def _samples(self, model: Any) -> torch.Tensor:
        cfg = self.config
        if self.sample_fn is not None:
            gen = torch.Generator().manual_seed(int(cfg.seed))
            out = torch.as_tensor(self.sample_fn(cfg.samples, gen)).detach()
            if tuple(out.shape) != (cfg.samples, *self.train.shape[1:]):
                raise ValueError(
                    f"sample_fn({cfg.samples}, generator) returned shape {tuple(out.shape)}; expected "
                    f"{(cfg.samples, *tuple(self.train.shape[1:]))} (samples in the training data's space)"
                )
            return out.cpu()
        if model is None:
            raise ValueError("no model to sample from: pass model= to MemorizationMonitor or to step()")
        assert self.schedule is not None
        device, dtype = _device_dtype(model, self.train)
        seeds = [cfg.seed * 1_000_003 + i for i in range(cfg.samples)]  # as diffmem's evaluation
        chunks: list[torch.Tensor] = []
        for i in range(0, cfg.samples, cfg.batch):
            x_T = sampling.randn_per_sample(seeds[i : i + cfg.batch], self.train.shape[1:]).to(device, dtype)
            chunks.append(sampling.ddim(model, x_T, self.schedule, cfg.sampling_steps).float().cpu())
        return torch.cat(chunks)

    def _losses(self, model: Any) -> tuple[float | None, float | None]:
        cfg, schedule = self.config, self.schedule
        if model is None or schedule is None or cfg.loss_gap is False:
            return None, None
        device, dtype = _device_dtype(model, self.train)

        def loss(x: torch.Tensor) -> float:
            x = x[: cfg.loss_examples].to(device, dtype)
            return loss_at_time(model, x, schedule, cfg.loss_t, cfg.loss_draws, seed=cfg.seed, batch=cfg.batch)

        return loss(self.train), (loss(self.heldout) if self.heldout is not None else None)

    def _quality(self, samples: torch.Tensor) -> float | None:
        if self.quality_fn is not None:
            return float(self.quality_fn(samples, self.heldout))
        if self.heldout is None or self.heldout.shape[0] < 2:
            return None
        d = int(math.prod(self.train.shape[1:]))
        if d > _QUALITY_MAX_DIM:
            return None
        if self._heldout_stats is None:
            self._heldout_stats = gaussian_stats(self.heldout.reshape(self.heldout.shape[0], -1).double().numpy())
        s = samples.reshape(samples.shape[0], -1).double()
        if not torch.isfinite(s).all():
            return math.inf
        return frechet_distance(*gaussian_stats(s.numpy()), *self._heldout_stats)

    # -- the check --------------------------------------------------------------------------------

    def step(self, step: int, model: Any = None) -> dict | None:
        """Check the run at ``step`` if it is a check step; returns the record, else None.

        A no-op (one modulo) unless ``step % config.every == 0``; a step already checked is not
        checked again. The model is put in eval mode under ``torch.no_grad()`` while it is measured
        and every submodule's training mode is restored afterwards.

        Parameters
        ----------
        step : int
            The training step just completed (e.g. the number of optimizer steps).
        model : callable, optional
            The denoiser now (replaces the one given at construction for this and later checks).

        Returns
        -------
        dict or None
            None when nothing was measured; else the record: ``step``, ``f_mem``, ``f_mem_ci``
            (95% bootstrap interval), ``q_low`` (the ``threshold``-quantile of the ratios,
            :func:`ratio_quantile`), ``predicted_onset`` (step or None), ``loss_train``,
            ``loss_test``, ``loss_gap`` (None when not measured), ``quality`` (this check's),
            ``quality_smooth`` (its running median over ``quality_window`` checks) and
            ``quality_best`` (the lowest smoothed value so far; lower is better, all None without a
            quality), ``alarm``, ``action`` (what was done about an alarm, None without one),
            ``checkpoint`` (the step saved at this check, else None) and ``seconds``.
        """
        cfg = self.config
        step = int(step)
        if step % cfg.every != 0 or (self.records and self.records[-1]["step"] == step):
            return None
        if model is not None:
            self.model = model
        model = self.model
        t0 = time.perf_counter()
        with _EvalMode(model):
            samples = self._samples(model)
            loss_train, loss_test = self._losses(model)
        if not torch.isfinite(samples).all():
            warnings.warn(f"MemorizationMonitor: non-finite samples at step {step}", RuntimeWarning, stacklevel=2)
        samples = torch.nan_to_num(samples.float(), nan=0.0, posinf=1e30, neginf=-1e30)
        mem = memorization_fraction(samples, self.train, cfg.k, n_boot=cfg.n_boot, seed=cfg.seed)
        q_low = ratio_quantile(mem.ratios, cfg.threshold)
        quality = self._quality(samples)
        smooth = best = None
        if quality is not None:  # running median of the last quality_window checks, and its best so far
            past = [r["quality"] for r in self.records if r["quality"] is not None]
            smooth = float(np.median((past + [quality])[-cfg.quality_window :]))
            bests = [r["quality_best"] for r in self.records if r["quality_best"] is not None]
            best = min(bests[-1:] + [smooth])
        steps = [r["step"] for r in self.records] + [step]
        qs = [r["q_low"] for r in self.records] + [q_low]
        onset = predict_onset(steps, qs, cfg.k, cfg.window)
        alarm = bool(mem.ci[0] >= cfg.threshold or (onset is not None and onset <= step + cfg.every))
        check = MonitorCheck.of(
            mem,
            n_boot=cfg.n_boot,
            step=step,
            quality=quality,
            loss_train=loss_train,
            loss_test=loss_test,
            q_low=q_low,
            predicted_onset=onset,
            quality_smooth=smooth,
            quality_best=best,
            alarm=alarm,
        )
        if alarm:
            check = replace(check, action=self._act(check))
        elif self.checkpoint_path is not None and self.alarm_step is None:
            self._save_checkpoint(model, step)
            check = replace(check, checkpoint=step)
        check = replace(check, seconds=time.perf_counter() - t0)
        rec = check.to_dict()
        self.records.append(rec)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            check.append_to(self.log_path)
        return rec

    def _act(self, check: MonitorCheck) -> str:
        step = check.step
        if self.alarm_step is None:
            self.alarm_step = step
        action = self.config.action
        if action == "stop" and not self.should_stop:
            self.should_stop = True
            self.stopped_at = step
        if action == "warn" and not self._warned:
            self._warned = True
            lo, hi = check.f_mem_ci
            onset = check.predicted_onset
            warnings.warn(
                f"memorization onset at step {step}: f_mem = {check.f_mem:.3g} [{lo:.3g}, {hi:.3g}], the "
                f"{self.config.threshold:g}-quantile of the distance ratios is {check.q_low:.3g} (copies below "
                f"{self.config.k:.3g}), predicted onset "
                + (f"step {onset:.0f}" if onset is not None else "not extrapolated")
                + (f"; the last checkpoint before it is step {self.checkpoint_step}" if self.checkpoint_step else ""),
                UserWarning,
                stacklevel=3,
            )
        return action

    def _save_checkpoint(self, model: Any, step: int) -> None:
        mod = _module_of(model)
        if mod is None:
            raise ValueError(
                "checkpoint_path is set but the monitor has no torch.nn.Module to save: pass model= (an nn.Module)"
            )
        assert self.checkpoint_path is not None
        state = {name: v.detach().clone() for name, v in mod.state_dict().items()}  # clones: tied weights share memory
        io.save_tensors(self.checkpoint_path, state, {"step": str(step)})
        self.checkpoint_step = step

    @property
    def predicted_onset(self) -> float | None:
        """The predicted onset step of the latest check (None before any check or without a fit)."""
        return self.records[-1]["predicted_onset"] if self.records else None

    def __repr__(self) -> str:
        last = self.records[-1]["step"] if self.records else None
        return (
            f"MemorizationMonitor(every={self.config.every}, samples={self.config.samples}, "
            f"action={self.config.action!r}, checks={len(self.records)}, last_step={last}, "
            f"alarm_step={self.alarm_step})"
        )
