"""A local Stable-Diffusion-style diffusers pipeline as a :class:`~diffmem.audit.protocol.GuidedModel`.

Everything is loaded from a folder on disk (``save_pretrained`` layout: ``model_index.json`` plus
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, every weight file as safetensors:
nothing is unpickled); nothing is fetched from a hub. The audit works in the pipeline's latent space:

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
import warnings
from pathlib import Path
from typing import Any

import torch

from ..models.diffusers import (
    NO_PICKLE,
    REQUIRED_COMPONENTS,
    SD_LAYOUT,
    check_pipeline_folder,
    eps_from_prediction,
    import_diffusers,
    quiet_libraries,
    schedule_from_scheduler,
    weights_variant,
)
from ..schedule import Schedule

__all__ = [
    "REQUIRED_COMPONENTS",
    "DiffusersModel",
    "check_pipeline_folder",
    "load_pipeline_model",
    "schedule_from_scheduler",
]


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
        return eps_from_prediction(out, x, ab, self.prediction_type)

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
    diffusers = import_diffusers("auditing a Stable Diffusion pipeline", transformers=True)
    extra: dict[str, Any] = {name: None for name in ("feature_extractor", "image_encoder") if name in index}
    variant = weights_variant(Path(folder) / "unet", layout=SD_LAYOUT)
    if variant is not None:
        extra["variant"] = variant
    try:
        with warnings.catch_warnings(), quiet_libraries(transformers=True) if quiet else contextlib.nullcontext():
            warnings.simplefilter("ignore", FutureWarning)
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=True,  # never unpickle: a component without safetensors weights is refused
                safety_checker=None,
                requires_safety_checker=False,
                torch_dtype=dtype,
                **extra,
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(
            f"could not load the diffusers pipeline in {folder} ({type(e).__name__}: {e}); {SD_LAYOUT}, "
            f"each with its weights as safetensors ({NO_PICKLE})"
        ) from e
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return DiffusersModel(pipe, device=device, dtype=dtype, folder=folder, batch_size=batch_size)
