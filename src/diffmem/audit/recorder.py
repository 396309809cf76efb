"""Record guided DDIM trajectories: per step the latent x_k and both noise predictions.

For one prompt and S seeds, sampling runs :func:`diffmem.sampling.ddim` (eta = 0) with the guided
prediction ``eps_g = eps_u + g_i (eps_c - eps_u)`` (:func:`diffmem.sampling.cfg_mix`), where ``g_i``
is the guidance scale of step i (a constant g by default; the mitigation schedules change it per
step). The model is called ONCE per step (``model.predict`` returns both branches from one batched
forward pass of 2S rows).

What is stored per step i (sampling order, step index k_i): ``x`` = x_{k_i} (the latent the model
sees), ``eps_c``, ``eps_u``; plus the final output ``x_final`` = x_0. The three x0 estimates
(conditional, unconditional, guided) are exact functions of these, ``(x - sqrt(1-ab) eps)/sqrt(ab)``,
and :class:`Trajectory` computes them on demand in float64 rather than storing three more copies
(for Stable Diffusion latents one prompt already takes S x steps x 3 x 16384 floats).

On disk: one safetensors file per prompt, written atomically once the prompt is finished, so
memory is bounded by one prompt and a killed run never leaves half a trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch

from .. import io
from ..sampling import Step, cfg_mix, ddim, randn_per_sample
from ..sampling import timesteps as _timesteps
from .protocol import GuidedModel

__all__ = ["Trajectory", "model_timesteps", "prompt_seeds", "record", "sample_final"]


def model_timesteps(model: GuidedModel, steps: int, spacing: str = "leading") -> list[int]:
    """The model's own inference step indices when it defines ``timesteps(steps)`` (diffusers pipelines
    do: their scheduler's spacing and offset), otherwise :func:`diffmem.sampling.timesteps`."""
    own = getattr(model, "timesteps", None)
    ks = [int(k) for k in own(int(steps))] if callable(own) else _timesteps(model.schedule, int(steps), spacing)
    if len(ks) != int(steps) or any(a <= b for a, b in pairwise(ks)) or not 0 <= ks[-1] <= ks[0] < model.schedule.T:
        raise ValueError(
            f"the model's timesteps must be {steps} strictly decreasing indices in [0, {model.schedule.T}), got {ks}"
        )
    return ks


def prompt_seeds(seed: int, n: int) -> list[int]:
    """The noise seeds of every prompt: ``seed * 100003 + j`` for j < n (the same x_T for every prompt,
    so prompts are compared on identical starting noise)."""
    return [int(seed) * 100_003 + j for j in range(int(n))]


class Trajectory:
    """One prompt's recorded trajectory, read lazily from a safetensors file (or held in memory).

    Shapes: ``x``, ``eps_c``, ``eps_u``: (steps, S, *latent); ``x_final``: (S, *latent);
    ``ks``: step indices (steps,); ``alpha_bar``/``alpha_bar_prev``: float64 (steps,);
    ``scales``: the guidance scale used at each step (steps,).
    """

    _KEYS = ("x", "eps_c", "eps_u", "x_final", "ks", "alpha_bar", "alpha_bar_prev", "scales", "seeds")

    def __init__(
        self, tensors: dict[str, torch.Tensor] | None = None, path: Path | None = None, prompt: str = ""
    ) -> None:
        self._t = dict(tensors or {})
        self.path = Path(path) if path is not None else None
        self.prompt = prompt
        if tensors is None and self.path is None:
            raise ValueError("a Trajectory needs tensors or a file path")
        if self.path is not None and tensors is None and not self.path.is_file():
            raise FileNotFoundError(f"no recorded trajectory at {self.path}; run the audit to record it")

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no recorded trajectory at {path}; run the audit to record it")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
        missing = [k for k in cls._KEYS if k not in names]
        if missing:
            raise ValueError(f"{path} is not a diffmem trajectory (missing {missing}); delete it and re-run the audit")
        return cls(path=path, prompt=meta.get("prompt", ""))

    def _get(self, key: str) -> torch.Tensor:
        if key not in self._t:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                self._t[key] = f.get_tensor(key)
        return self._t[key]

    def __getattr__(self, key: str) -> torch.Tensor:
        if key in Trajectory._KEYS:
            return self._get(key)
        raise AttributeError(key)

    @property
    def steps(self) -> int:
        return int(self._get("ks").numel())

    @property
    def x_T(self) -> torch.Tensor:
        return self._get("x")[0]

    def _ab(self) -> torch.Tensor:
        ab = self._get("alpha_bar").to(torch.float64)
        return ab.reshape(-1, *([1] * (self._get("x").ndim - 1)))

    def _x0(self, eps: torch.Tensor) -> torch.Tensor:
        ab = self._ab()
        return (self._get("x").double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()

    def eps_g(self) -> torch.Tensor:
        """Guided noise predictions ``eps_u + g_i (eps_c - eps_u)`` (steps, S, *latent), float64."""
        g = self._get("scales").double().reshape(self._ab().shape)
        return cfg_mix(self._get("eps_u").double(), self._get("eps_c").double(), g)

    def x0_c(self) -> torch.Tensor:
        """Conditional x0 estimates (steps, S, *latent), float64."""
        return self._x0(self._get("eps_c"))

    def x0_u(self) -> torch.Tensor:
        """Unconditional x0 estimates (steps, S, *latent), float64."""
        return self._x0(self._get("eps_u"))

    def x0_g(self) -> torch.Tensor:
        """Guided x0 estimates ``x0_u + g (x0_c - x0_u)`` (steps, S, *latent), float64."""
        return self._x0(self.eps_g())

    def save(self, path: str | Path) -> Trajectory:
        io.save_tensors(path, {k: self._get(k) for k in self._KEYS}, {"prompt": self.prompt})
        return Trajectory.load(path)


def _scales(guidance: float | Sequence[float], steps: int) -> list[float]:
    if isinstance(guidance, (int, float)):
        return [float(guidance)] * steps
    g = [float(v) for v in guidance]
    if len(g) != steps:
        raise ValueError(f"a guidance schedule needs one scale per step ({steps}), got {len(g)}")
    return g


@torch.no_grad()
def record(
    model: GuidedModel,
    prompt: str,
    seeds: Sequence[int],
    ks: Sequence[int],
    guidance: float | Sequence[float] = 7.5,
    path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Trajectory:
    """Sample ``len(seeds)`` guided DDIM trajectories of ``prompt`` at step indices ``ks`` and record them.

    The initial noise of seed s is :func:`diffmem.sampling.randn_per_sample` (independent of batching).
    With ``path`` the trajectory is written there (atomically) and returned as a lazy file view.
    """
    if not seeds:
        raise ValueError("record needs at least one seed")
    ks = [int(k) for k in ks]
    scales = _scales(guidance, len(ks))
    x_T = randn_per_sample(list(seeds), model.latent_shape, dtype=dtype)
    xs, ecs, eus = [], [], []
    calls = [0]

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = model.predict(x, t, prompt)
        i = calls[0]
        calls[0] += 1
        xs.append(x.detach().cpu().to(dtype))
        ecs.append(eps_c.detach().cpu().to(dtype))
        eus.append(eps_u.detach().cpu().to(dtype))
        return cfg_mix(eps_u, eps_c, scales[i])

    abs_, abps = [], []

    def observer(step: Step) -> None:
        abs_.append(step.alpha_bar)
        abps.append(step.alpha_bar_prev)

    x0 = ddim(denoiser, x_T, model.schedule, ks=ks, observer=observer)
    tens = {
        "x": torch.stack(xs),
        "eps_c": torch.stack(ecs),
        "eps_u": torch.stack(eus),
        "x_final": x0.detach().cpu().to(dtype),
        "ks": torch.tensor(ks, dtype=torch.int64),
        "alpha_bar": torch.tensor(abs_, dtype=torch.float64),
        "alpha_bar_prev": torch.tensor(abps, dtype=torch.float64),
        "scales": torch.tensor(scales, dtype=torch.float64),
        "seeds": torch.tensor(list(seeds), dtype=torch.int64),
    }
    traj = Trajectory(tens, prompt=prompt)
    return traj.save(path) if path is not None else traj


@torch.no_grad()
def sample_final(
    model: GuidedModel, prompt: str, seeds: Sequence[int], ks: Sequence[int], guidance: float | Sequence[float]
) -> torch.Tensor:
    """Only the final latents of guided DDIM (nothing recorded): for the mitigation schedules."""
    scales = _scales(guidance, len(ks))
    x_T = randn_per_sample(list(seeds), model.latent_shape)
    calls = [0]

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = model.predict(x, t, prompt)
        g = scales[calls[0]]
        calls[0] += 1
        return cfg_mix(eps_u, eps_c, g)

    return ddim(denoiser, x_T, model.schedule, ks=[int(k) for k in ks]).cpu()
