"""Training loop: eps-prediction loss, the paper's optimizers, log-spaced checkpoints, exact resume.

Run folder: ``config.json``; ``checkpoints/step_XXXXXXX.safetensors`` (model weights on a
log-spaced grid of steps); ``state.safetensors`` (model + optimizer + RNG state of the latest step
saved, for resuming); ``train_log.jsonl`` (training loss every ``log_every`` steps).

All randomness of the loop (batches, diffusion steps, noise) comes from one ``torch.Generator``
whose state is saved with the optimizer, together with torch's global RNG (dropout), so a run that
is killed (even with ``kill -9``) resumes from ``state.safetensors`` and continues exactly as if it
had never stopped.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import data, io, models
from ..config import claim_folder, resolve_device
from ..metrics.losses import eps_loss
from ..schedule import Schedule, linear
from ..state import restore_training_state, training_state
from ..validation import Integer, Interval, OneOf, Optional, check

__all__ = [
    "TrainConfig",
    "build_model",
    "checkpoint_steps",
    "draw_batch",
    "ema_decay",
    "ema_update",
    "list_checkpoints",
    "load_checkpoint",
    "load_split",
    "restore_ema",
    "sample_step",
    "train",
    "truncate_log",
]


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` fields are resolved by :meth:`resolved` and saved resolved."""

    data: str = "digits"
    """The data: "digits" (scikit-learn's 8x8 digits, embedded), a .npz file or an image folder."""
    data_key: str | None = None
    """The array to read from a .npz file with several arrays."""
    image_size: int = 32
    """Image folders: resize the short side to this and centre-crop to a square."""
    n: int = 64
    """Training-set size."""
    subset_index: int = 0
    """Which disjoint subset of n training examples to use (subset i is pool[i n : (i+1) n])."""
    n_test: int | None = None
    """Held-out examples for the test loss and quality (default: a sixth of the data, at most 2048)."""
    scale: float | None = None
    """Model space = scale * (pixels - training mean); default 1 / RMS(pixels - mean) of the data (unit variance)."""
    split_seed: int = 0
    """Seed of the shuffle that assigns examples to training subsets and the held-out set."""
    model: str = "mlp"
    """Denoiser: "mlp" (residual MLP) or "unet" (the paper's U-Net; needs a GPU for real sizes)."""
    width: int = 256
    """Hidden width of the MLP, or base channel count W of the U-Net."""
    skip: str = "auto"
    """MLP input-to-output skip eps += g(t) x: "on", "off", or "auto" (on when d = pixels per example > width)."""
    optimizer: str = "adam"
    """"adam" or "sgd" (the paper's recipe: lr 0.01, momentum 0.95)."""
    lr: float | None = None
    """Learning rate; default 1e-3 for adam, 0.01 for sgd."""
    momentum: float = 0.95
    """SGD momentum."""
    batch_size: int | None = None
    """Examples per step; default min(n, 512), the paper's recipe (full batch for n <= 512)."""
    batch_replacement: bool = False
    """Draw each step's batch with replacement (then batch_size may exceed n): every n sees the same batch size."""
    draws: int = 1
    """Noise draws per batch example per step: each example enters the step this many times, each copy with its
    own diffusion step and noise (the gradient then approaches that of the loss's expectation over the noise)."""
    steps: int = 10_000
    """Optimizer steps."""
    checkpoints: int = 32
    """Number of log-spaced checkpoints from first_checkpoint to steps (to budget_base when that is set)."""
    budget_base: int | None = None
    """A run extended past its first budget: the grid up to this step, then the same density beyond it."""
    first_checkpoint: int = 10
    """First checkpoint step (early enough to see the quality fall from noise)."""
    resume_every: int = 1000
    """Save the full training state every this many steps (a killed run loses at most this much)."""
    log_every: int = 100
    """Log the mean training loss every this many steps."""
    T: int = 1000
    """Diffusion steps of the linear noise schedule."""
    beta_start: float = 1e-4
    """First beta of the linear schedule."""
    beta_end: float = 2e-2
    """Last beta of the linear schedule."""
    seed: int = 0
    """Seed of the initialisation and of the loop's random draws (batches, steps, noise)."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights (0: off); checkpoints then hold the average."""

    def resolved(self) -> TrainConfig:
        scale = self.scale if self.scale is not None else unit_scale(self.data, self.data_key, self.image_size)
        lr = self.lr if self.lr is not None else {"adam": 1e-3, "sgd": 0.01}.get(self.optimizer, 0.0)
        batch = self.batch_size if self.batch_size is not None else min(self.n, 512)
        cfg = TrainConfig(**{**self.__dict__, "scale": scale, "lr": lr, "batch_size": batch})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting the training loop cannot use."""
        positive = Integer(min=1)
        check(
            self,
            {
                "optimizer": OneOf("adam", "sgd"),
                "model": OneOf(*models.MODELS),
                "skip": OneOf(*models.SKIPS),
                **dict.fromkeys(
                    ("n", "steps", "width", "checkpoints", "first_checkpoint", "resume_every", "log_every", "draws"),
                    positive,
                ),
                "ema": Interval(0, 1, closed="left", what="a decay", hint="0 turns it off; 0.999 is common"),
                "lr": Optional(Interval(0)),
            },
        )
        if self.batch_size is not None and not 1 <= self.batch_size <= (
            self.n if not self.batch_replacement else 10**7
        ):
            raise ValueError(
                f"batch_size must be in [1, n={self.n}] (or any positive size with --batch-replacement), "
                f"got {self.batch_size}"
            )
        if self.budget_base is not None and not 1 <= self.budget_base <= self.steps:
            raise ValueError(f"budget_base must lie in [1, steps={self.steps}], got {self.budget_base}")

    def schedule(self) -> Schedule:
        return linear(self.T, self.beta_start, self.beta_end)


#: Settings added to TrainConfig after run folders existed, and the value that reproduces the older code.
ADDED_SETTINGS: dict[str, object] = {"ema": 0.0, "draws": 1}


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay used after optimizer step ``step`` (1, 2, ...): 0 at step 1 (the average starts
    as the weights), then min(decay, step / (step + 9)).

    This is diffusers' ``EMAModel`` without ``update_after_step`` or power warm-up
    ((1 + t) / (10 + t) with t = step - 1; tested against it): early on the average lags the weights
    by a fixed fraction of the elapsed time (about a tenth) rather than by a fixed number of steps,
    until 1 / (1 - decay) steps are averaged. A lag of a fixed number of steps would add the same
    delay to every run's times.
    """
    return 0.0 if step <= 1 else min(decay, step / (step + 9.0))


@torch.no_grad()
def ema_update(avg: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * params, in place."""
    for a, p in zip(avg, params):
        a.lerp_(p.detach(), 1.0 - decay)


def checkpoint_steps(steps: int, count: int, first: int = 100, base: int | None = None) -> list[int]:
    """About ``count`` distinct integer steps log-spaced from ``first`` to ``steps`` (always included).

    With ``base`` < ``steps`` (a run extended past its first budget ``base``): the grid of ``base``,
    then points at the same density in log steps beyond it, every doubling ``base * 2^i`` and
    ``steps``. The grid of a budget is part of the grid of every larger budget of the same base, so
    extending a run keeps the checkpoints it has.
    """
    if base is not None and base < steps:
        ext = set(checkpoint_steps(base, count, first))
        first = max(1, min(first, base))
        per_log = (count - 1) / math.log(base / first) if count > 1 and base > first else 8.0
        j = 1
        while (v := round(base * math.exp(j / per_log))) <= steps:
            ext.add(v)
            j += 1
        i = 1
        while (v := base * 2**i) <= steps:
            ext.add(v)
            i += 1
        return sorted(ext | {steps})
    first = max(1, min(first, steps))
    if count <= 1 or first == steps:
        return [steps]
    grid = torch.logspace(math.log10(first), math.log10(steps), count, dtype=torch.float64).round().long()
    return sorted(set(grid.tolist()) | {steps})


@functools.lru_cache(maxsize=32)
def unit_scale(source: str, key: str | None = None, size: int = 32) -> float:
    """The default model-space scale of a data set: 1 / RMS of (pixels - per-pixel mean) over all its
    images, to 3 significant digits, so that the model sees data of unit variance per value
    (the embedded digits: 3.69)."""
    images = data.load(source, key=key, size=size)
    x = images.pixels.double()
    rms = float((x - x.mean(0)).pow(2).mean().sqrt())
    if not rms > 0:
        raise ValueError(f"the data {source!r} are constant (RMS 0 about their mean); give --scale explicitly")
    return float(f"{1.0 / rms:.3g}")


def draw_batch(x: torch.Tensor, b: int, replacement: bool, gen: torch.Generator, draws: int = 1) -> torch.Tensor:
    """One step's batch of ``b`` rows of ``x``: all of them (b = n, without replacement), a random
    subset without replacement, or ``b`` independent uniform draws with replacement; with ``draws`` > 1
    each chosen row is repeated that many times in a row (``b * draws`` rows; each copy then gets its
    own diffusion step and noise)."""
    n = x.shape[0]
    if replacement:
        batch = x[torch.randint(0, n, (b,), generator=gen).to(x.device)]
    else:
        batch = x if b == n else x[torch.randperm(n, generator=gen)[:b].to(x.device)]
    return batch if draws == 1 else batch.repeat_interleave(draws, dim=0)


def sample_step(
    x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's random draws from the training set ``x``: the clean examples x0 (``batch_size`` of them,
    each repeated ``draws`` times), a diffusion step k in [1, T) and a standard normal noise for every row.
    k stays on the CPU (it indexes the schedule); x0 and the noise are on ``x``'s device."""
    x0 = draw_batch(x, int(cfg.batch_size or x.shape[0]), cfg.batch_replacement, gen, cfg.draws)
    k = torch.randint(1, cfg.T, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen).to(x.device)
    return x0, k, eps


def load_split(cfg: TrainConfig) -> data.Split:
    images = data.load(cfg.data, key=cfg.data_key, size=cfg.image_size)
    return data.split(
        images,
        cfg.n,
        subset_index=cfg.subset_index,
        n_test=cfg.n_test,
        scale=cfg.scale or 1.0,
        split_seed=cfg.split_seed,
    )


def build_model(cfg: TrainConfig, shape) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return models.build(cfg.model, shape, cfg.width, cfg.skip)


def make_optimizer(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """The configured optimizer (Adam, or SGD with momentum) over ``params``.

    On CPU and CUDA the fused implementations are used: the same update, computed in one kernel per
    step (on the CPU about 10x faster than the per-tensor one for the default MLP, where the optimizer
    step otherwise costs as much as the forward and backward pass of a small batch).
    """
    params = [p for p in params if p.requires_grad]
    if cfg.lr is None:
        raise ValueError("the configuration is not resolved (lr is None); call cfg.resolved() first")
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    return torch.optim.Adam(params, lr=cfg.lr, fused=fused or None)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in sorted((Path(run_dir) / "checkpoints").glob("step_*.safetensors")):
        try:
            out.append((int(p.stem.split("_")[1]), p))
        except ValueError:
            continue
    return out


def load_checkpoint(path: Path, cfg: TrainConfig, shape, device: str | torch.device | None = None) -> nn.Module:
    tensors, _ = io.load_tensors(path)
    model = models.build(cfg.model, shape, cfg.width, cfg.skip)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path} does not match the configured model ({cfg.model}, width {cfg.width}): {e}") from e
    return model.to(resolve_device(device)).eval()


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    split: data.Split | None = None,
    device: str | None = None,
) -> Path:
    """Train (or resume) the run in ``run_dir``; returns the folder. ``progress(step, total)`` is called
    every ``log_every`` steps.

    ``device`` (default CPU; see :func:`diffmem.config.resolve_device`) is where the model trains. All
    random draws (batches, steps, noise) come from a CPU generator whatever the device, so a run sees
    the same data on every device; bit-identical resumes are guaranteed on the CPU (a GPU's
    kernels may round differently from run to run)."""
    cfg = cfg.resolved()
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    sp = split if split is not None else load_split(cfg)
    claim_folder(run_dir, cfg, may_grow=("steps",), absent_means=ADDED_SETTINGS)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    model = build_model(cfg, sp.shape).to(dev).train()
    opt = make_optimizer(cfg, list(model.parameters()))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state_path = run_dir / "state.safetensors"
    # the weight average (cfg.ema > 0) starts at the initial weights and is part of the resume state
    ema = {k: v.detach().clone() for k, v in model.named_parameters()} if cfg.ema else None
    # torch's global RNG (dropout) is seeded here and saved/restored with the state, inside fork_rng
    # so that the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        start = 0
        if state_path.exists():
            tensors = io.load_tensors(state_path)[0]
            start = restore_training_state(tensors, model, opt, gen)
            if ema is not None:
                restore_ema(tensors, ema, state_path)
        truncate_log(run_dir / "train_log.jsonl", start)
        _loop(cfg, run_dir, model, opt, gen, sp, start, progress, ema)
    return run_dir


def restore_ema(tensors: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], path: Path) -> None:
    """Load the weight average ``ema.*`` of a resume state into ``ema`` (refused if it holds none)."""
    missing = [k for k in ema if f"ema.{k}" not in tensors]
    if missing:
        raise ValueError(f"{path} holds no weight average (ema.{missing[0]}); use a new --out folder for --ema")
    for k, v in ema.items():
        v.copy_(tensors[f"ema.{k}"])


def _checkpoint_tensors(model: nn.Module, ema: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The weights a checkpoint holds: the model's, or with an EMA its average (buffers as they are)."""
    sd = model.state_dict()
    return sd if ema is None else {k: ema.get(k, v) for k, v in sd.items()}


def truncate_log(log: Path, step: int) -> None:
    """Drop the lines of a ``train_log.jsonl`` logged after ``step`` (the state a run resumes from)."""
    if step and log.exists():
        io.atomic_write_bytes(
            log, "".join(json.dumps(r) + "\n" for r in io.read_jsonl(log) if r["step"] <= step).encode()
        )


def _loop(cfg, run_dir, model, opt, gen, sp, start, progress, ema=None) -> None:
    dev = next(model.parameters()).device
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    state_path = run_dir / "state.safetensors"
    grid = set(checkpoint_steps(cfg.steps, cfg.checkpoints, cfg.first_checkpoint, cfg.budget_base))
    x_train = sp.train.to(dev)
    log_path = run_dir / "train_log.jsonl"
    if ema is not None:
        params = dict(model.named_parameters())
        averaged, tracked = list(ema.values()), [params[k] for k in ema]
    running, t0 = 0.0, time.time()
    for step in range(start + 1, cfg.steps + 1):
        x0, k, eps = sample_step(x_train, cfg, gen)
        loss = eps_loss(model, x0, k, eps, ab, reduction="mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema_update(averaged, tracked, ema_decay(cfg.ema, step))
        running += loss.item()
        if not math.isfinite(running):
            raise FloatingPointError(f"training diverged at step {step} (loss is not finite); lower --lr")
        if step in grid:
            io.save_tensors(
                run_dir / "checkpoints" / f"step_{step:07d}.safetensors",
                _checkpoint_tensors(model, ema),
                {"step": str(step)},
            )
        if step in grid or step % cfg.resume_every == 0 or step == cfg.steps:
            st = training_state(step, model, opt, gen)
            if ema is not None:
                st.update({f"ema.{k}": v for k, v in ema.items()})
            io.save_tensors(state_path, st)
        if step % cfg.log_every == 0:
            io.append_jsonl(log_path, {"step": step, "loss": running / cfg.log_every, "time": time.time() - t0})
            running = 0.0
            if progress is not None:
                progress(step, cfg.steps)
