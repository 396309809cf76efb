"""A local Stable-Diffusion-style diffusers pipeline as a :class:`~diffmem.audit.protocol.GuidedModel`.

Everything is loaded from a folder on disk (``save_pretrained`` layout: ``model_index.json`` plus
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``); nothing is fetched from a
hub. The audit works in the pipeline's latent space:

- ``latent_shape`` is ``(unet.config.in_channels, sample_size, sample_size)``: the latent of one
  image at the pipeline's default resolution ``sample_size * vae_scale_factor`` (512 px for SD 1.x).
- ``schedule`` is the training schedule of the pipeline's scheduler, rebuilt in float64 from its
  configuration (``linear`` / ``scaled_linear`` / ``trained_betas``; other beta schedules take the
  scheduler's own betas) and checked against ``scheduler.alphas_cumprod``.
- ``predict`` runs the U-Net once on the stacked batch ``[x, x]`` with the empty-prompt and the
  prompt embeddings (the order the pipeline uses), so ``eps_u + g (eps_c - eps_u)`` is exactly the
  pipeline's guided prediction. Text is encoded as ``StableDiffusionPipeline.encode_prompt`` does
  (pad to ``tokenizer.model_max_length``, truncate, last hidden state) and cached per prompt.
  ``v_prediction`` and ``sample`` models are converted to eps with the schedule (a linear map, so
  guidance commutes with it).
- ``encode``: pixels in [0, 1] -> [-1, 1]; grayscale is repeated to 3 channels; an image whose
  aspect ratio differs from the pipeline's is centre-cropped to it, then resized (bilinear,
  antialiased) to the pipeline resolution; the latent is the *mean* of the VAE posterior times
  ``vae.config.scaling_factor`` (deterministic, no sampling).
- ``decode``: latents / scaling_factor -> VAE decoder -> [0, 1].
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..schedule import Schedule, linear, scaled_linear

__all__ = ["REQUIRED_COMPONENTS", "DiffusersModel", "load_pipeline_model", "schedule_from_scheduler"]

#: components a Stable-Diffusion-style folder must have, with the file that marks each one
REQUIRED_COMPONENTS = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "vocab.json", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}

_LAYOUT = (
    "a diffusers pipeline folder (as written by `StableDiffusionPipeline.save_pretrained(folder)` or "
    "downloaded with `huggingface-cli download <repo> --local-dir folder`) holds model_index.json and the "
    "subfolders unet/, vae/, text_encoder/, tokenizer/, scheduler/"
)


def _import_diffusers():
    try:
        import diffusers
        import transformers  # noqa: F401 - imported only to fail early when it is missing
    except ImportError as e:
        raise ImportError(
            f"auditing a Stable Diffusion pipeline needs diffusers and transformers ({e}); "
            'install them with `pip install "diffmem[sd]"`'
        ) from e
    return diffusers


def check_pipeline_folder(folder: str | Path) -> dict:
    """Check the layout of a local pipeline folder; return its ``model_index.json``."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such pipeline folder: {folder}; {_LAYOUT}")
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is a file, not a diffusers pipeline folder; {_LAYOUT}. A single-file checkpoint "
            "(.ckpt/.safetensors) can be converted with "
            "`StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)`"
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json; {_LAYOUT}")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index_path} is not valid JSON ({e}); restore it from the original pipeline") from e
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} must hold a JSON object; {_LAYOUT}")
    cls = str(index.get("_class_name", ""))
    if "XL" in cls or "StableDiffusion3" in cls or "Flux" in cls:
        raise ValueError(
            f"{folder} holds a {cls}; only Stable-Diffusion-1.x/2.x-style pipelines "
            "(one CLIP text encoder) are supported"
        )
    missing = []
    for name, markers in REQUIRED_COMPONENTS.items():
        entry = index.get(name)
        sub = folder / name
        if not entry or entry == [None, None] or not sub.is_dir() or not any((sub / m).is_file() for m in markers):
            missing.append(f"{name}/ (with {' or '.join(markers)})")
    if missing:
        raise ValueError(
            f"{folder} is not a complete diffusers pipeline folder: missing {', '.join(missing)}; {_LAYOUT}"
        )
    return index


def schedule_from_scheduler(scheduler: Any) -> Schedule:
    """The float64 training schedule of a diffusers scheduler, checked against its ``alphas_cumprod``.

    ``scaled_linear`` (Stable Diffusion): ``betas = linspace(sqrt(b0), sqrt(b1), T)^2``; ``linear``:
    ``linspace(b0, b1, T)``; ``trained_betas`` are used as given; any other beta schedule takes the
    scheduler's own betas (float32) in float64.
    """
    cfg = scheduler.config
    if cfg.get("rescale_betas_zero_snr", False):
        raise ValueError(
            "the scheduler rescales betas to zero terminal SNR (alpha_bar = 0 at the last step), which has no "
            "eps-prediction at t = T; set rescale_betas_zero_snr to false in scheduler/scheduler_config.json"
        )
    T = int(cfg.get("num_train_timesteps", 1000))
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 2e-2))
    trained = cfg.get("trained_betas", None)
    if trained is not None:
        sched = Schedule(torch.as_tensor(list(trained), dtype=torch.float64))
    elif kind == "linear":
        sched = linear(T, b0, b1)
    elif kind == "scaled_linear":
        sched = scaled_linear(T, b0, b1)
    elif getattr(scheduler, "betas", None) is not None:
        sched = Schedule(torch.as_tensor(scheduler.betas).to(torch.float64))
    else:
        raise ValueError(
            f"cannot rebuild the beta schedule {kind!r} of {type(scheduler).__name__}: it exposes no betas"
        )
    ref = getattr(scheduler, "alphas_cumprod", None)
    if ref is not None:
        ref = torch.as_tensor(ref).to(torch.float64)
        if ref.shape != sched.alphas_cumprod.shape or not torch.allclose(
            sched.alphas_cumprod, ref, rtol=1e-4, atol=1e-7
        ):
            raise ValueError(
                f"the rebuilt {kind!r} schedule disagrees with {type(scheduler).__name__}.alphas_cumprod; "
                "check beta_start/beta_end/beta_schedule in scheduler/scheduler_config.json"
            )
    return sched


class DiffusersModel:
    """A Stable-Diffusion-style pipeline as a guided eps-prediction model (see the module docstring).

    ``t`` passed to :meth:`predict` are training step indices in ``[0, T)`` (the diffusers timestep).
    ``batch_size`` (optional) splits the U-Net forward pass into chunks of that many samples
    (cond and uncond still share each chunk) when the whole batch does not fit in memory.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        folder: str | Path | None = None,
        batch_size: int | None = None,
    ):
        for name in REQUIRED_COMPONENTS:
            if getattr(pipeline, name, None) is None:
                raise ValueError(
                    f"the pipeline has no {name}; a Stable-Diffusion-style pipeline needs "
                    f"{', '.join(REQUIRED_COMPONENTS)}"
                )
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
        self.pipeline = pipeline
        self.folder = str(folder) if folder is not None else None
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = None if batch_size is None else int(batch_size)
        self.unet, self.vae = pipeline.unet, pipeline.vae
        self.text_encoder, self.tokenizer, self.scheduler = (
            pipeline.text_encoder,
            pipeline.tokenizer,
            pipeline.scheduler,
        )
        ucfg = self.unet.config
        if ucfg.get("addition_embed_type") is not None or ucfg.get("class_embed_type") is not None:
            raise ValueError(
                "the U-Net needs extra conditioning (addition/class embeddings, e.g. SDXL or upscalers); "
                "only text-conditioned Stable-Diffusion-1.x/2.x U-Nets are supported"
            )
        if ucfg.get("time_cond_proj_dim") is not None:
            raise ValueError(
                "the U-Net takes a guidance embedding (LCM-style time_cond_proj_dim); "
                "it is not a classifier-free-guidance model"
            )
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unsupported prediction_type {self.prediction_type!r} in scheduler/scheduler_config.json; "
                "expected 'epsilon', 'v_prediction' or 'sample'"
            )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = ucfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.latent_shape: tuple[int, ...] = (int(ucfg.in_channels), int(h), int(w))
        self.resolution: tuple[int, int] = (int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor)
        self.scaling_factor = float(self.vae.config.get("scaling_factor", 0.18215))
        shift = self.vae.config.get("shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.schedule: Schedule = schedule_from_scheduler(self.scheduler)
        for m in (self.unet, self.vae, self.text_encoder):
            if m.dtype != dtype:
                m.to(dtype=dtype)
            m.to(self.device)
            m.eval()
            m.requires_grad_(False)
        self._ab = self.schedule.alphas_cumprod.to(self.device)
        self._embeddings: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def embed(self, prompt: str) -> torch.Tensor:
        """Text-encoder hidden states (1, L, D) of ``prompt``, as ``StableDiffusionPipeline.encode_prompt`` (cached)."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
        hit = self._embeddings.get(prompt)
        if hit is not None:
            return hit
        tok = self.tokenizer
        inputs = tok(
            prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        )
        ids = inputs.input_ids
        full = tok(prompt, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            warnings.warn(
                f"prompt {prompt[:60]!r}... is longer than the text encoder's {tok.model_max_length} tokens and was "
                "truncated, as the pipeline does",
                stacklevel=2,
            )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = inputs.attention_mask.to(self.device)
        emb = self.text_encoder(ids.to(self.device), attention_mask=mask)[0].to(self.dtype)
        self._embeddings[prompt] = emb
        return emb

    # ------------------------------------------------------------------------------- denoising
    def _check_x(self, x: torch.Tensor, what: str = "x") -> None:
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 1 + len(self.latent_shape)
            or tuple(x.shape[1:]) != self.latent_shape
        ):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must have shape (S, {', '.join(map(str, self.latent_shape))}), got {shape}")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_c, eps_u) at latents ``x`` (S, *latent_shape) and step indices ``t`` (S,), one U-Net pass."""
        self._check_x(x)
        S = x.shape[0]
        t = torch.as_tensor(t)
        if t.ndim == 0:
            t = t.expand(S)
        if t.shape != (S,):
            raise ValueError(f"t must have shape ({S},) (one step index per sample), got {tuple(t.shape)}")
        k = t.round().long().to(self.device)
        if int(k.min()) < 0 or int(k.max()) >= self.schedule.T:
            raise ValueError(f"step indices must lie in [0, {self.schedule.T}), got {int(k.min())}..{int(k.max())}")
        cond, uncond = self.embed(prompt), self.embed("")
        xm = x.to(self.device, self.dtype)
        chunk = self.batch_size or S
        eps_c, eps_u = [], []
        for lo in range(0, S, chunk):
            xs, ks = xm[lo : lo + chunk], k[lo : lo + chunk]
            n = xs.shape[0]
            hidden = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
            out = self.unet(torch.cat([xs, xs]), torch.cat([ks, ks]), encoder_hidden_states=hidden, return_dict=False)[
                0
            ]
            out = self._to_eps(out, torch.cat([xs, xs]), torch.cat([ks, ks]))
            u, c = out.chunk(2)
            eps_c.append(c)
            eps_u.append(u)
        return torch.cat(eps_c).to(x.device, x.dtype), torch.cat(eps_u).to(x.device, x.dtype)

    def _to_eps(self, out: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        ab = self._ab[k].to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
        if (
            self.prediction_type == "v_prediction"
        ):  # v = sqrt(ab) eps - sqrt(1-ab) x0  =>  eps = sqrt(ab) v + sqrt(1-ab) x
            return ab.sqrt() * out + (1 - ab).sqrt() * x
        return (x - ab.sqrt() * out) / (1 - ab).sqrt()  # "sample": the model predicts x0

    def timesteps(self, steps: int) -> list[int]:
        """Descending DDIM step indices for ``steps`` steps as the pipeline would use them.

        That is ``DDIMScheduler.from_config(pipeline.scheduler.config)`` (its ``timestep_spacing`` and
        ``steps_offset``; ``StableDiffusionPipeline`` forces ``steps_offset = 1``, so SD's 50 steps are
        981, 961, ..., 1). Pass them as ``ks`` to :func:`diffmem.sampling.ddim`.
        """
        if int(steps) != steps or not 1 <= steps <= self.schedule.T:
            raise ValueError(f"steps must be an integer in [1, {self.schedule.T}], got {steps}")
        from diffusers import DDIMScheduler

        sch = DDIMScheduler.from_config(self.scheduler.config)
        sch.set_timesteps(int(steps))
        return [int(v) for v in sch.timesteps]

    # ------------------------------------------------------------------------------- pixels
    def _to_resolution(self, img: torch.Tensor) -> torch.Tensor:
        H, W = self.resolution
        h, w = img.shape[-2:]
        if (h, w) == (H, W):
            return img
        if h * W != w * H:  # centre-crop to the target aspect ratio first
            if h * W > w * H:
                nh = max(1, round(w * H / W))
                top = (h - nh) // 2
                img = img[..., top : top + nh, :]
            else:
                nw = max(1, round(h * W / H))
                left = (w - nw) // 2
                img = img[..., :, left : left + nw]
        return torch.nn.functional.interpolate(
            img,
            size=(H, W),
            mode="bilinear",
            align_corners=False,
            antialias=bool(img.shape[-2] > H or img.shape[-1] > W),
        ).clamp(0, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] (C = 1 or 3) -> latents (N, *latent_shape).

        The latent is the VAE posterior mean times ``scaling_factor``."""
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"pixels must have shape (N, 1 or 3, H, W), got {shape}")
        if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError("pixels must be finite and lie in [0, 1]")
        out = []
        for lo in range(0, pixels.shape[0], batch_size):
            p = pixels[lo : lo + batch_size].to(torch.float32)
            if p.shape[1] == 1:
                p = p.repeat(1, 3, 1, 1)
            p = self._to_resolution(p)
            z = self.vae.encode((2 * p - 1).to(self.device, self.dtype)).latent_dist.mean
            out.append(((z - self.shift_factor) * self.scaling_factor).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Latents (N, *latent_shape) -> images (N, 3, H, W) in [0, 1] (float32, CPU)."""
        self._check_x(latents, "latents")
        out = []
        for lo in range(0, latents.shape[0], batch_size):
            z = latents[lo : lo + batch_size].to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
            img = self.vae.decode(z, return_dict=False)[0]
            out.append(((img.float() + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(out)

    def to_dict(self) -> dict:
        """What was loaded, for the audit's saved configuration."""
        return {
            "kind": "diffusers",
            "folder": self.folder,
            "pipeline": type(self.pipeline).__name__,
            "scheduler": type(self.scheduler).__name__,
            "beta_schedule": self.scheduler.config.get("beta_schedule"),
            "T": self.schedule.T,
            "prediction_type": self.prediction_type,
            "resolution": list(self.resolution),
            "latent_shape": list(self.latent_shape),
            "vae_scaling_factor": self.scaling_factor,
            "text_max_length": int(self.tokenizer.model_max_length),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


@contextlib.contextmanager
def _quiet_libraries():
    """Silence diffusers/transformers info logs and their loading progress bars, then restore them."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, level, bar in saved:
            m.set_verbosity(level)
            if bar:
                m.enable_progress_bar()


def _weights_variant(folder: Path) -> str | None:
    """ "fp16" when the U-Net's weights exist only as the fp16 variant (``*.fp16.safetensors``), else None."""
    names = [p.name for p in (folder / "unet").iterdir() if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if ".fp16." not in n and not n.endswith(".fp16.safetensors")]
    return "fp16" if names and not plain and any(".fp16." in n for n in names) else None


def load_pipeline_model(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    quiet: bool = True,
) -> DiffusersModel:
    """Load a Stable-Diffusion-style pipeline from a local folder (never from a hub) as a :class:`DiffusersModel`.

    The safety checker, feature extractor and image encoder are not loaded (the audit does not use them).
    A folder that holds only fp16-variant weights (``*.fp16.safetensors``) is loaded with ``variant="fp16"``
    (and cast to ``dtype``). ``quiet`` silences the libraries' own loading logs and progress bars.
    """
    index = check_pipeline_folder(folder)
    diffusers = _import_diffusers()
    extra: dict[str, Any] = {name: None for name in ("feature_extractor", "image_encoder") if name in index}
    variant = _weights_variant(Path(folder))
    if variant is not None:
        extra["variant"] = variant
    try:
        with warnings.catch_warnings(), _quiet_libraries() if quiet else contextlib.nullcontext():
            warnings.simplefilter("ignore", FutureWarning)
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(
                str(folder),
                local_files_only=True,
                safety_checker=None,
                requires_safety_checker=False,
                torch_dtype=dtype,
                **extra,
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(
            f"could not load the diffusers pipeline in {folder} ({type(e).__name__}: {e}); {_LAYOUT}, "
            "each with its weights (*.safetensors or *.bin)"
        ) from e
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return DiffusersModel(pipe, device=device, dtype=dtype, folder=folder, batch_size=batch_size)
