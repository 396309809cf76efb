"""Save and restore a training loop's full state as flat tensors (for ``safetensors``), so a run that is
killed resumes exactly where it stopped.

Layout of the tensors (one dictionary, written with :func:`diffmem.io.save_tensors`):

* ``model.NAME`` — every entry of the model's ``state_dict``;
* ``optim.I.KEY`` — the per-parameter state of the optimizer (``exp_avg``, ``momentum_buffer``, ...;
  scalars such as Adam's ``step`` stored as 0-d tensors); hyper-parameters are not stored, they
  come from the run's configuration;
* ``rng.loop`` — the loop's own ``torch.Generator`` (batches, diffusion steps, noise);
* ``rng.torch`` (and ``rng.cuda`` when CUDA is in use) — torch's global generators, which dropout
  draws from, when the loop asks for them;
* ``step`` — the last completed step.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_optimizer_tensors", "optimizer_tensors", "restore_training_state", "training_state"]


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as ``optim.I.KEY`` tensors (I: the parameter's index)."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"optim.{i}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Load what :func:`optimizer_tensors` saved (hyper-parameters stay as configured)."""
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            state.setdefault(int(i), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def training_state(
    step: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    *,
    global_rng: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors that let :func:`restore_training_state` continue after ``step`` exactly.

    Parameters
    ----------
    step : int
        The last completed optimizer step.
    model, opt : the network and its optimizer.
    gen : torch.Generator
        The loop's generator.
    global_rng : bool
        Also save torch's global CPU (and, if initialised, CUDA) generator state.
    """
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    out.update(optimizer_tensors(opt))
    out["rng.loop"] = gen.get_state()
    if global_rng:
        out["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():  # dropout on a GPU draws from the CUDA generator
            out["rng.cuda"] = torch.cuda.get_rng_state()
    out["step"] = torch.tensor(step, dtype=torch.int64)
    return out


def restore_training_state(
    tensors: dict[str, torch.Tensor], model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator
) -> int:
    """Load what :func:`training_state` saved into ``model``, ``opt`` and ``gen`` (and torch's global
    generators where they were saved); returns the step to continue after."""
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    load_optimizer_tensors(opt, tensors)
    gen.set_state(tensors["rng.loop"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(tensors["step"])
