"""Denoisers diffmem did not train, as eps-predictors on a known schedule, sampled as diffusers would.

Two kinds of model are read, both from local files only (nothing is downloaded, nothing unpickled):

* a **diffusers folder**: a pipeline saved with ``save_pretrained`` (``model_index.json``, ``unet/``
  holding an ``UNet2DModel``, ``scheduler/``; e.g. ``DDPMPipeline``, ``DDIMPipeline``), or a bare
  ``UNet2DModel`` folder (``config.json`` and its weights). Weights must be safetensors
  (``use_safetensors=True``, ``local_files_only=True``); a folder with only ``.bin`` files is refused.
  A pipeline's schedule, prediction type, timestep spacing and clipping come from its scheduler config.
* a **TorchScript file** (``torch.jit.save``) whose ``forward(x, t)`` returns the predicted noise, with
  ``t`` a 1-D int64 tensor of training step indices (one per sample). Its schedule is given by flags.

Sampling is :func:`diffmem.sampling.ddim` (eta = 0) on the step indices diffusers' ``DDIMScheduler``
would use (``from_config`` of the folder's scheduler; for TorchScript the defaults: "leading" spacing,
no offset, ``set_alpha_to_one``). Where diffusers' step differs from the plain DDIM update — x0 clipped
(``clip_sample``), a previous step ``k - T // steps`` that is not the next step in the list
("trailing" spacing), a final alpha_bar below 1 — the noise prediction handed to ``ddim`` is replaced
by the one whose plain DDIM update lands exactly where diffusers' step does (:class:`SchedulerMatch`).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import sampling
from ..models.diffusers import (
    NO_PICKLE,
    PREDICTION_TYPES,
    eps_from_prediction,
    import_diffusers,
    quiet_libraries,
    schedule_from_scheduler,
    weights_variant,
)
from ..schedule import Schedule, linear, scaled_linear
from .config import MeasureConfig, parse_pixel_range

__all__ = ["ExternalModel", "SchedulerMatch", "load_model", "sample"]

_LAYOUT = (
    "give a diffusers folder (a pipeline saved with DDPMPipeline/DDIMPipeline.save_pretrained: model_index.json, "
    "unet/ and scheduler/; or a UNet2DModel folder: config.json and diffusion_pytorch_model.safetensors) or a "
    "TorchScript file (torch.jit.save) whose forward(x, t) returns the predicted noise"
)


def _schedule_from_flags(cfg: MeasureConfig) -> tuple[Schedule, dict]:
    kind, T, b0, b1 = cfg.schedule_args()
    sched = (linear if kind == "linear" else scaled_linear)(T, b0, b1)
    return sched, {"source": "flags", "kind": kind, "T": T, "beta_start": b0, "beta_end": b1}


class ExternalModel:
    """An eps-predicting denoiser on a known schedule, with diffusers' DDIM step semantics.

    Attributes
    ----------
    kind : str
        ``"torchscript"``, ``"diffusers-unet"`` (a bare ``UNet2DModel`` folder) or ``"diffusers-pipeline"``.
    path : str
        Where it was loaded from.
    schedule : Schedule
        The training schedule (float64).
    shape : tuple of int or None
        ``(C, H, W)`` of the images it generates (``None`` for TorchScript until :meth:`check_input`).
    pixel_range : tuple of float
        The model's values of pixels 0 and 1.
    clip : tuple of float or None
        Bounds x0 is clipped to at every DDIM step, or ``None``.
    """

    def __init__(
        self,
        net: Any,
        *,
        kind: str,
        path: str,
        schedule: Schedule,
        schedule_info: dict,
        pixel_range: tuple[float, float],
        shape: tuple[int, int, int] | None = None,
        prediction_type: str = "epsilon",
        clip: tuple[float, float] | None = None,
        scheduler: Any = None,
        info: dict | None = None,
        device: torch.device | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unsupported prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'"
            )
        self.net = net
        self.kind = kind
        self.path = path
        self.schedule = schedule
        self.schedule_info = schedule_info
        self.pixel_range = pixel_range
        self.shape = shape
        self.prediction_type = prediction_type
        self.clip = clip
        self.scheduler = scheduler  # a diffusers DDIMScheduler built from the folder's config, or None
        self.info = dict(info or {})
        self.device = device or torch.device("cpu")
        self._ab = schedule.alphas_cumprod.to(torch.float32)

    # ------------------------------------------------------------------------------------ steps
    def timesteps(self, steps: int) -> list[int]:
        """Descending step indices of a ``steps``-step DDIM run, as diffusers' ``DDIMScheduler`` sets them."""
        T = self.schedule.T
        if int(steps) != steps or not 1 <= steps <= T:
            raise ValueError(f"sampling steps must be an integer in [1, {T}] (the model's T), got {steps}")
        if self.scheduler is None:
            return sampling.timesteps(self.schedule, int(steps), "leading")
        self.scheduler.set_timesteps(int(steps))
        ks = [int(v) for v in self.scheduler.timesteps]
        if ks[0] >= T or ks[-1] < 0:
            raise ValueError(f"the scheduler's timesteps {ks[0]}..{ks[-1]} fall outside [0, {T})")
        return ks

    def prev_step(self, k: int, steps: int) -> int:
        """The step diffusers' DDIM step goes to from ``k``: ``k - T // steps`` (negative: the end)."""
        return int(k) - self.schedule.T // int(steps)

    @property
    def final_alpha_bar(self) -> float:
        """alpha_bar after the last step: 1, or ``alphas_cumprod[0]`` when ``set_alpha_to_one`` is false."""
        if self.scheduler is None:
            return 1.0
        return float(self.scheduler.final_alpha_cumprod)

    # --------------------------------------------------------------------------------- denoising
    def to_eps(self, out: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The network output converted to a noise prediction, by ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return out
        ab = self._ab.to(out.device)[k].to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
        return eps_from_prediction(out, x, ab, self.prediction_type)

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise at ``x`` (B, C, H, W) in the model's range and steps ``t`` (B,) (rounded to int64)."""
        k = t.round().long().to(x.device)
        if self.kind == "torchscript":
            out = self.net(x, k)
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"the TorchScript model returned {got} for x of shape {tuple(x.shape)}; forward(x, t) must "
                    "return the predicted noise, one tensor of x's shape"
                )
        else:
            out = self.net(x, k, return_dict=False)[0]
            C = x.shape[1]
            if out.shape[1] == 2 * C:  # learned variance: the noise is the first half (as DDPMScheduler splits it)
                out = out[:, :C]
        return self.to_eps(out, x, k)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps(x, t)

    # ------------------------------------------------------------------------------------ data
    @torch.no_grad()
    def check_input(self, example: torch.Tensor, what: str = "the training data") -> None:
        """Check that images of ``example``'s shape (1, C, H, W, model range) can be denoised.

        A diffusers U-Net is checked against its config; a TorchScript model by one forward pass at
        step T // 2 (which also fixes :attr:`shape`). Errors name the problem and the fix.
        """
        shape = tuple(int(s) for s in example.shape[1:])
        if self.kind != "torchscript":
            if shape != self.shape:
                c, h, w = self.shape or (0, 0, 0)
                how = "in colour with --no-grayscale" if c == 3 else "as grayscale"
                raise ValueError(
                    f"{what} have shape {shape} but the model generates {self.shape} images (unet config: "
                    f"in_channels={c}, sample_size={h if h == w else (h, w)}); give data of that shape (an image "
                    f"folder is resized with --image-size {h} and read {how})"
                )
            return
        x = example[:1].to(self.device, torch.float32)
        t = torch.full((1,), self.schedule.T // 2, dtype=torch.long, device=self.device)
        hint = (
            "the model must be a TorchScript module whose forward(x, t) takes x of shape (B, C, H, W) in the "
            "model's pixel range and t a 1-D int64 tensor of B step indices, and returns the predicted noise of "
            "x's shape"
        )
        try:
            out = self.net(x, t)
        except Exception as e:  # TorchScript raises RuntimeError for both signature and shape errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"the TorchScript model {self.path} failed on one image of {what} (shape {shape}): {first}; {hint}. "
                "If the signature is right, the data's shape may not be the model's: give images of the shape it "
                "was trained on"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"the TorchScript model {self.path} returned a {type(out).__name__}, not a tensor; {hint} "
                "(wrap it so that forward returns only the noise)"
            )
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(
                f"the TorchScript model {self.path} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)} "
                f"({what}); {hint}. A model trained on other images needs data of its own shape"
            )
        if not torch.isfinite(out).all():
            raise ValueError(
                f"the TorchScript model {self.path} returned NaN or inf on {what}; check --pixel-range and the schedule"
            )
        self.shape = shape  # type: ignore[assignment]

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the model's range ``LO + (HI - LO) * pixels``."""
        lo, hi = self.pixel_range
        return lo + (hi - lo) * pixels

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The model's range -> pixels (not clamped)."""
        lo, hi = self.pixel_range
        return (x - lo) / (hi - lo)

    def to_dict(self) -> dict:
        """What was loaded (for measure.json)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "shape": list(self.shape) if self.shape else None,
            "prediction_type": self.prediction_type,
            **self.info,
        }


class SchedulerMatch:
    """A noise prediction for :func:`diffmem.sampling.ddim` that reproduces diffusers' DDIM step.

    diffusers' step from k goes to ``k_d = k - T // steps`` (``final_alpha_bar`` past the end) with x0
    clipped to ``clip``: ``x_d = sqrt(ab_d) clip(x0) + sqrt(1 - ab_d) eps``. ``ddim`` goes to the next index
    in its list, k_n, with ``x_n = sqrt(ab_n / ab_k) x + c eps'``, ``c = sqrt(1 - ab_n) - sqrt(ab_n (1 - ab_k) / ab_k)``
    (never 0, since ab_n > ab_k). Returning ``eps' = (x_d - sqrt(ab_n / ab_k) x) / c`` makes the two updates equal.
    """

    def __init__(
        self,
        model: ExternalModel,
        ks: list[int],
        steps: int,
        clip: tuple[float, float] | None,
    ):
        self.model = model
        self.clip = clip
        ab = model.schedule.alphas_cumprod
        final = model.final_alpha_bar
        self.coef: dict[int, tuple[float, float, float, float]] = {}
        for k, k_next in zip(ks, ks[1:] + [-1]):
            a = float(ab[k])
            k_d = model.prev_step(k, steps)
            a_d = float(ab[k_d]) if k_d >= 0 else final
            a_n = float(ab[k_next]) if k_next >= 0 else 1.0
            c = math.sqrt(1 - a_n) - math.sqrt(a_n * (1 - a) / a)
            self.coef[k] = (a, a_d, a_n, c)

    def needed(self) -> bool:
        """Whether the plain DDIM update differs from diffusers' step (else use the model directly)."""
        return self.clip is not None or any(a_d != a_n for _, a_d, a_n, _ in self.coef.values())

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model.eps(x, t)
        k = int(t[0].round())
        a, a_d, a_n, c = self.coef[k]
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
        target = math.sqrt(a_d) * x0 + math.sqrt(1 - a_d) * eps
        return (target - math.sqrt(a_n / a) * x) / c


@torch.no_grad()
def sample(
    model: ExternalModel,
    x_T: torch.Tensor,
    steps: int,
    observer: Any = None,
) -> torch.Tensor:
    """DDIM (eta = 0) samples of ``model`` from ``x_T`` (model range), as diffusers' DDIMScheduler steps them."""
    ks = model.timesteps(steps)
    match = SchedulerMatch(model, ks, int(steps), model.clip)
    den = match if match.needed() else model.eps
    return sampling.ddim(den, x_T, model.schedule, ks=ks, observer=observer)


# ------------------------------------------------------------------------------------------ loading
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the original model") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object; {_LAYOUT}")
    return obj


def _check_unet_config(ucfg: dict, where: Path) -> None:
    cls = ucfg.get("_class_name", "")
    if cls == "UNet2DConditionModel":
        raise ValueError(
            f"{where} holds a text-conditional UNet2DConditionModel (e.g. Stable Diffusion); measure takes "
            "unconditional pixel-space models (UNet2DModel): audit a text-to-image pipeline with `diffmem audit`"
        )
    if cls != "UNet2DModel":
        raise ValueError(f"{where} holds a {cls or 'model without _class_name'}, not a UNet2DModel; {_LAYOUT}")
    if ucfg.get("class_embed_type") is not None or ucfg.get("num_class_embeds") is not None:
        raise ValueError(
            f"{where}: the U-Net is class-conditional (class_embed_type/num_class_embeds); measure samples "
            "unconditional models only"
        )


def _load_diffusers(folder: Path, cfg: MeasureConfig, pixel_range: tuple[float, float], device: torch.device):
    diffusers = import_diffusers("measuring a diffusers folder", alternative=", or export the model to TorchScript")
    ucfg, sch_cfg, unet_dir, kind, sub = _read_folder(folder)
    _check_unet_config(ucfg, unet_dir)
    unet = _load_unet(diffusers, folder, unet_dir, sub, device)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    C = int(unet.config.in_channels)
    out_c = int(unet.config.out_channels)
    info: dict[str, Any] = {"class": "UNet2DModel", "parameters": sum(p.numel() for p in unet.parameters())}
    if sch_cfg is not None:
        st = _scheduler_settings(diffusers, folder, sch_cfg, cfg)
    else:
        sched, schedule_info = _schedule_from_flags(cfg)
        st = _Sampling(sched, schedule_info, "epsilon", pixel_range if cfg.clip_sample == "on" else None, None, "")
    if out_c != C and not (out_c == 2 * C and "learned" in st.variance):
        raise ValueError(
            f"{unet_dir}: the U-Net maps {C} channels to {out_c}; measure needs a noise prediction of the input's "
            "shape (or twice its channels with variance_type learned/learned_range in the scheduler config)"
        )
    return ExternalModel(
        unet,
        kind=kind,
        path=str(folder),
        schedule=st.schedule,
        schedule_info=st.schedule_info,
        pixel_range=pixel_range,
        shape=(C, h, w),
        prediction_type=st.prediction,
        clip=st.clip,
        scheduler=st.ddim,
        info=info,
        device=device,
    )


def _read_folder(folder: Path) -> tuple[dict, dict | None, Path, str, str | None]:
    """``(unet config, scheduler config or None, unet folder, kind, subfolder)`` of a pipeline or U-Net folder."""
    index_path, config_path = folder / "model_index.json", folder / "config.json"
    if index_path.is_file():
        index = _read_json(index_path)
        latent = [c for c in ("vqvae", "vae") if index.get(c) not in (None, [None, None])]
        if latent:
            raise ValueError(
                f"{folder} is a latent-diffusion pipeline (it has {latent[0]}/); measure takes pixel-space models "
                "(DDPMPipeline, DDIMPipeline)"
            )
        unet_dir, sch_dir = folder / "unet", folder / "scheduler"
        for name, d, marker in (("unet", unet_dir, "config.json"), ("scheduler", sch_dir, "scheduler_config.json")):
            if not (d / marker).is_file():
                raise ValueError(f"{folder} is not a complete diffusers pipeline folder: no {name}/{marker}; {_LAYOUT}")
        ucfg = _read_json(unet_dir / "config.json")
        return ucfg, _read_json(sch_dir / "scheduler_config.json"), unet_dir, "diffusers-pipeline", "unet"
    if config_path.is_file():
        return _read_json(config_path), None, folder, "diffusers-unet", None
    raise ValueError(f"{folder} is not a diffusers model folder (no model_index.json or config.json); {_LAYOUT}")


def _load_unet(diffusers: Any, folder: Path, unet_dir: Path, sub: str | None, device: torch.device) -> Any:
    """The UNet2DModel of the folder: local files, safetensors weights only, quietly; in eval mode on ``device``."""
    variant = weights_variant(unet_dir, layout=_LAYOUT)
    kw: dict[str, Any] = {
        "local_files_only": True,
        "use_safetensors": True,
        "low_cpu_mem_usage": False,
        "torch_dtype": torch.float32,
    }
    if sub:
        kw["subfolder"] = sub
    if variant:
        kw["variant"] = variant
    try:
        with quiet_libraries():
            unet = diffusers.UNet2DModel.from_pretrained(str(folder), **kw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(f"could not load the UNet2DModel in {unet_dir} ({type(e).__name__}: {e}); {_LAYOUT}") from None
    return unet.to(device).eval().requires_grad_(False)


class _Sampling(NamedTuple):
    schedule: Schedule
    schedule_info: dict
    prediction: str
    clip: tuple[float, float] | None
    ddim: Any  # a diffusers DDIMScheduler, or None
    variance: str


def _scheduler_settings(diffusers: Any, folder: Path, sch_cfg: dict, cfg: MeasureConfig) -> _Sampling:
    """The schedule, prediction type, clipping and DDIM step semantics a pipeline's scheduler config defines."""
    sch_cls = str(sch_cfg.get("_class_name", "DDPMScheduler"))
    klass: Any = getattr(diffusers, sch_cls, None)
    if not (isinstance(klass, type) and issubclass(klass, diffusers.SchedulerMixin)):
        klass = diffusers.DDPMScheduler
    with quiet_libraries():
        scheduler = klass.from_config(sch_cfg)
        ddim_sch = diffusers.DDIMScheduler.from_config(sch_cfg)
    sched = schedule_from_scheduler(scheduler)
    sc = scheduler.config
    schedule_info = {
        "source": "scheduler/scheduler_config.json",
        "scheduler": sch_cls,
        "kind": sc.get("beta_schedule", "linear") if sc.get("trained_betas") is None else "trained_betas",
        "T": sched.T,
        "beta_start": sc.get("beta_start"),
        "beta_end": sc.get("beta_end"),
        "timestep_spacing": ddim_sch.config.timestep_spacing,
        "steps_offset": int(ddim_sch.config.steps_offset),
        "set_alpha_to_one": bool(ddim_sch.config.set_alpha_to_one),
    }
    if cfg.schedule_flags_given():
        flagged, _ = _schedule_from_flags(cfg)
        if flagged.T != sched.T or not torch.allclose(flagged.alphas_cumprod, sched.alphas_cumprod, rtol=1e-5):
            raise ValueError(
                f"--schedule/--T/--beta-start/--beta-end disagree with {folder}/scheduler/scheduler_config.json "
                f"({schedule_info['kind']}, T = {sched.T}); the folder's scheduler defines the schedule: "
                "drop the flags"
            )
    use_clip = bool(sc.get("clip_sample", False)) if cfg.clip_sample == "auto" else cfg.clip_sample == "on"
    if use_clip and sc.get("thresholding", False):
        raise ValueError(
            f"{folder}/scheduler/scheduler_config.json asks for dynamic thresholding, which measure does not "
            "implement; pass --clip-sample off to sample without it (or on to clip x0 instead)"
        )
    clip = None
    if use_clip:
        r = float(sc.get("clip_sample_range", 1.0))
        clip = (-r, r)
    prediction = str(sc.get("prediction_type", "epsilon"))
    return _Sampling(sched, schedule_info, prediction, clip, ddim_sch, str(sc.get("variance_type", "")))


def _load_torchscript(path: Path, cfg: MeasureConfig, pixel_range: tuple[float, float], device: torch.device):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 nudges towards torch.export
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # RuntimeError for a zip without TorchScript code, ValueError/OSError otherwise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a TorchScript file ({first}); {_LAYOUT}") from None
    schema = getattr(getattr(net, "forward", None), "schema", None)
    if schema is not None:
        names = [a.name for a in schema.arguments][1:]  # without self
        if len(names) != 2:
            raise ValueError(
                f"the TorchScript model {path} has forward({', '.join(names)}); measure calls forward(x, t) with x the "
                "noisy images (B, C, H, W) and t a 1-D int64 tensor of B step indices: export a wrapper module with "
                "that signature that returns the predicted noise"
            )
    net = net.to(device).eval()
    sched, schedule_info = _schedule_from_flags(cfg)
    clip = pixel_range if cfg.clip_sample == "on" else None
    return ExternalModel(
        net,
        kind="torchscript",
        path=str(path),
        schedule=sched,
        schedule_info=schedule_info,
        pixel_range=pixel_range,
        clip=clip,
        info={"class": "TorchScript", "parameters": sum(p.numel() for p in net.parameters())},
        device=device,
    )


def load_model(
    path: str | Path, cfg: MeasureConfig | None = None, device: str | torch.device | None = None
) -> ExternalModel:
    """Load a local diffusers folder or TorchScript file as an :class:`ExternalModel`.

    Parameters
    ----------
    path : str or Path
        A diffusers pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``), a ``UNet2DModel``
        folder (``config.json`` + safetensors weights) or a TorchScript file.
    cfg : MeasureConfig, optional
        Supplies the pixel range, clipping and, for TorchScript and bare U-Nets, the schedule.
    device : str or torch.device, optional
        Where the network runs (``"cpu"`` by default; ``"auto"``, ``"cuda"``, ...).

    Returns
    -------
    ExternalModel
        The network with its schedule, DDIM step semantics and pixel range.

    Examples
    --------
    >>> m = load_model("ddpm-folder")  # doctest: +SKIP
    >>> m.kind, m.shape, m.schedule.T  # doctest: +SKIP
    ('diffusers-pipeline', (3, 32, 32), 1000)
    """
    from ..config import resolve_device

    cfg = cfg or MeasureConfig()
    pixel_range = parse_pixel_range(cfg.pixel_range)
    dev = resolve_device(device)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model: {p}; {_LAYOUT}")
    if p.is_dir():
        return _load_diffusers(p, cfg, pixel_range, dev)
    if p.suffix in (".bin", ".ckpt", ".pkl", ".pickle"):
        raise ValueError(f"{p} is a pickled checkpoint; {NO_PICKLE}, and pass its diffusers folder")
    if p.suffix == ".safetensors":
        raise ValueError(
            f"{p} holds weights without an architecture; pass the diffusers folder it belongs to (with its "
            "config.json), or export the model to TorchScript"
        )
    return _load_torchscript(p, cfg, pixel_range, dev)
