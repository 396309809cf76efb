"""Train several runs of the same architecture as one vectorized ensemble.

The K members (for example the disjoint training subsets of one size) have their weights stacked
(``torch.func.stack_module_state``) and run through one batched forward and backward per step, so
the per-step overhead of a small model is paid once instead of K times. The batched forward of the
residual MLP is written out with batched matrix products (``torch.baddbmm``), one kernel per layer
for all members (ensembles are built for the MLP only).
Adam and SGD update every element independently, so one optimizer over the
stacked weights is exactly K independent optimizers: the members do not interact.

Each member draws its batches, steps and noise from its own generator seeded as a single run
(``seed + 1``), in the same order, and writes the same run folder as :func:`~diffmem.dynamics.training.train`
(``config.json``, ``checkpoints/``, ``train_log.jsonl``), so every later stage reads a member's
folder as any other run. Only the resume state differs: the whole ensemble is saved as one file,
``GROUP/state.safetensors`` (member k's tensors under ``mK.``), written atomically, so a killed
ensemble resumes with every member at the same step. The results agree with training the members
one by one up to floating-point rounding of the batched kernels (tested).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import io
from ..config import claim_folder, resolve_device
from ..models import ResidualMLP, sinusoidal
from ..state import load_optimizer_tensors, optimizer_tensors
from .training import (
    ADDED_SETTINGS,
    TrainConfig,
    build_model,
    checkpoint_steps,
    ema_decay,
    ema_update,
    load_split,
    make_optimizer,
    restore_ema,
    sample_step,
    truncate_log,
)

__all__ = ["stacked_mlp", "train_ensemble"]

_SHARED = (
    "model",
    "ema",
    "width",
    "skip",
    "budget_base",
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "batch_replacement",
    "draws",
    "steps",
    "checkpoints",
    "first_checkpoint",
)


def _check_members(cfgs: Sequence[TrainConfig]) -> None:
    if not cfgs:
        raise ValueError("an ensemble needs at least one member")
    first = cfgs[0]
    for c in cfgs[1:]:
        diff = [
            f for f in (*_SHARED, "T", "beta_start", "beta_end", "data", "scale") if getattr(c, f) != getattr(first, f)
        ]
        if diff:
            raise ValueError(f"ensemble members must share {', '.join(diff)}; train them as separate runs instead")
    if first.model != "mlp":
        raise ValueError("ensembles are built for the MLP (model='mlp'); train U-Nets as separate runs")


def train_ensemble(
    cfgs: Sequence[TrainConfig],
    run_dirs: Sequence[str | Path],
    group_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
) -> list[Path]:
    """Train (or resume) K runs of the same architecture at once; returns their folders.

    Parameters
    ----------
    cfgs : sequence of TrainConfig
        The members. They must share the data, model, width, optimizer and its settings, batch size,
        step count and checkpoint grid (so members of different ``n`` need a fixed ``batch_size``);
        they may differ in ``n``, ``subset_index``, ``split_seed`` and ``seed``.
    run_dirs : sequence of path
        One run folder per member (the layout of :func:`~diffmem.dynamics.training.train`).
    group_dir : path
        Folder of the ensemble's resume state.
    progress : callable, optional
        ``progress(step, total)`` every ``log_every`` steps.
    device : str, optional
        Where to train (default CPU).

    Returns
    -------
    list of Path
        The run folders.
    """
    from torch.func import stack_module_state

    cfgs = [c.resolved() for c in cfgs]
    if len(run_dirs) != len(cfgs):
        raise ValueError(f"got {len(cfgs)} configurations but {len(run_dirs)} run folders")
    _check_members(cfgs)
    dev = resolve_device(device)
    dirs = [Path(d) for d in run_dirs]
    group = Path(group_dir)
    splits = [load_split(c) for c in cfgs]
    for c, d in zip(cfgs, dirs):
        claim_folder(d, c, may_grow=("steps",), absent_means=ADDED_SETTINGS)
        (d / "checkpoints").mkdir(exist_ok=True)
    models = [build_model(c, s.shape).to(dev).train() for c, s in zip(cfgs, splits)]
    params, _ = stack_module_state(models)  # the MLP has no buffers
    net = models[0]
    if not isinstance(net, ResidualMLP) or net.cond is not None:
        raise ValueError("ensembles are built for the unconditional residual MLP; train other models as separate runs")
    batched = functools.partial(stacked_mlp, width=net.width, blocks=len(net.blocks))
    stacked = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v) for k, v in params.items()})
    opt = make_optimizer(cfgs[0], list(stacked.values()))
    gens = [torch.Generator().manual_seed(c.seed + 1) for c in cfgs]
    state_path = group / "state.safetensors"
    ema = {k: v.detach().clone() for k, v in stacked.items()} if cfgs[0].ema else None
    start = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfgs[0].seed + 2)
        if state_path.exists():
            start = _restore_state(io.load_tensors(state_path)[0], state_path, stacked, opt, gens, ema)
            for d in dirs:
                truncate_log(d / "train_log.jsonl", start)
        _loop(cfgs, dirs, group, batched, stacked, opt, gens, splits, start, progress, ema)
    return dirs


def stacked_mlp(
    params: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, *, width: int, blocks: int
) -> torch.Tensor:
    """K unconditional :class:`~diffmem.models.ResidualMLP` at once: ``x`` (K, B, ...), ``t`` (K, B).

    ``params`` holds the stacked weights (leading dimension K) under the module's own names. Each
    layer is one batched matrix product for all members; the result equals running every member on
    its own slice, to float rounding.
    """
    k, b = x.shape[0], x.shape[1]
    e = sinusoidal(t.reshape(-1), width).to(x.dtype).reshape(k, b, width)

    def linear(name: str, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))

    x_flat = x.reshape(k, b, -1)
    h = linear("inp", x_flat)
    for i in range(blocks):
        z = torch.nn.functional.layer_norm(h + e, (width,))
        z = z * params[f"blocks.{i}.norm.weight"].unsqueeze(1) + params[f"blocks.{i}.norm.bias"].unsqueeze(1)
        h = h + linear(f"blocks.{i}.fc2", torch.nn.functional.gelu(linear(f"blocks.{i}.fc1", z)))
    out = linear("out", h)
    if "gain.weight" in params:  # the input-to-output skip of wide data
        out = out + linear("gain", e) * x_flat
    return out.reshape(x.shape)


def _restore_state(tensors: dict[str, torch.Tensor], path: Path, stacked, opt, gens, ema=None) -> int:
    if sorted(k for k in tensors if k.startswith("params.")) != sorted(f"params.{k}" for k in stacked):
        raise ValueError(f"{path} holds another ensemble's state; use a new --out folder or delete it to start over")
    if any(f"rng.{i}" not in tensors for i in range(len(gens))) or f"rng.{len(gens)}" in tensors:
        raise ValueError(f"{path} holds an ensemble of another size; use a new --out folder or delete it")
    with torch.no_grad():
        for name, v in stacked.items():
            v.copy_(tensors[f"params.{name}"])
        if ema is not None:
            restore_ema(tensors, ema, path)
    load_optimizer_tensors(opt, tensors)
    for i, g in enumerate(gens):
        g.set_state(tensors[f"rng.{i}"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(tensors["step"])


def _member_tensors(stacked, i: int) -> dict[str, torch.Tensor]:
    return {k.replace("__", "."): v.detach()[i] for k, v in stacked.items()}


def _loop(cfgs, dirs, group, batched, stacked, opt, gens, splits, start, progress, ema=None) -> None:
    cfg = cfgs[0]
    dev = next(iter(stacked.values())).device
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    grid = set(checkpoint_steps(cfg.steps, cfg.checkpoints, cfg.first_checkpoint, cfg.budget_base))
    xs = [s.train.to(dev) for s in splits]
    K = len(cfgs)
    running = [0.0] * K
    t0 = time.time()
    names = list(stacked.keys())
    if ema is not None:
        averaged, tracked = list(ema.values()), [stacked[k] for k in ema]
    for step in range(start + 1, cfg.steps + 1):
        draws = [sample_step(x, c, g) for x, c, g in zip(xs, cfgs, gens)]
        x0, k, eps = (torch.stack(parts) for parts in zip(*draws))
        a = ab[k].to(dev).reshape(*k.shape, *([1] * (x0.ndim - 2)))
        xk = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
        params = {name.replace("__", "."): stacked[name] for name in names}
        pred = batched(params, xk, k.to(dev, torch.float32))
        per_member = ((pred - eps) ** 2).flatten(1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_member.sum().backward()
        opt.step()
        if ema is not None:
            ema_update(averaged, tracked, ema_decay(cfg.ema, step))
        losses = per_member.detach().tolist()
        for i in range(K):
            running[i] += losses[i]
        if not all(math.isfinite(v) for v in running):
            raise FloatingPointError(f"ensemble training diverged at step {step} (loss is not finite); lower --lr")
        if step in grid:
            for i, d in enumerate(dirs):
                io.save_tensors(
                    d / "checkpoints" / f"step_{step:07d}.safetensors",
                    _member_tensors(stacked if ema is None else ema, i),
                    {"step": str(step)},
                )
        if step in grid or step % cfg.resume_every == 0 or step == cfg.steps:
            _save_state(group, step, stacked, opt, gens, ema)
        if step % cfg.log_every == 0:
            for i, d in enumerate(dirs):
                io.append_jsonl(
                    d / "train_log.jsonl", {"step": step, "loss": running[i] / cfg.log_every, "time": time.time() - t0}
                )
            running = [0.0] * K
            if progress is not None:
                progress(step, cfg.steps)


def _save_state(group: Path, step: int, stacked, opt, gens, ema=None) -> None:
    out: dict[str, torch.Tensor] = {}
    for name, v in stacked.items():
        out[f"params.{name}"] = v.detach()
    for name, v in (ema or {}).items():
        out[f"ema.{name}"] = v
    out.update(optimizer_tensors(opt))
    for i, g in enumerate(gens):
        out[f"rng.{i}"] = g.get_state()
    out["rng.torch"] = torch.get_rng_state()
    out["step"] = torch.tensor(step, dtype=torch.int64)
    io.save_tensors(group / "state.safetensors", out)
