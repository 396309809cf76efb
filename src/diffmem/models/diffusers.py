"""The one diffusers layer: local folders loaded quietly, schedulers as diffmem schedules.

Used by :mod:`diffmem.external` (``diffmem measure --model``: an unconditional ``UNet2DModel`` folder or
pipeline) and by :mod:`diffmem.audit` (a Stable-Diffusion-style pipeline). Everything here reads local
files only; nothing is fetched from a hub. diffusers and transformers are optional dependencies
(``pip install "diffmem[sd]"``): they are imported inside the functions that need them, so importing
this module costs no more than torch.

* :func:`import_diffusers` imports diffusers (and transformers) or says how to install them;
* :func:`quiet_libraries` silences the libraries' info logs, loading progress bars and FutureWarnings;
* :func:`weights_variant` checks a U-Net folder's weight files (safetensors only, unless told otherwise)
  and tells whether only the ``fp16`` variant exists;
* :func:`check_pipeline_folder` checks the layout of a Stable-Diffusion-style folder;
* :func:`schedule_from_scheduler` rebuilds a scheduler's training schedule in float64 and checks it
  against the scheduler's own ``alphas_cumprod``;
* :func:`eps_from_prediction` turns a ``v_prediction`` or ``sample`` output into the predicted noise.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..schedule import Schedule, linear, scaled_linear

__all__ = [
    "NO_PICKLE",
    "PREDICTION_TYPES",
    "REQUIRED_COMPONENTS",
    "SD_LAYOUT",
    "MissingDependencyError",
    "check_pipeline_folder",
    "eps_from_prediction",
    "import_diffusers",
    "quiet_libraries",
    "schedule_from_scheduler",
    "weights_variant",
]

#: components a Stable-Diffusion-style folder must have, with the file that marks each one
REQUIRED_COMPONENTS = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "vocab.json", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}

#: what a Stable-Diffusion-style pipeline folder holds (the end of every layout error)
SD_LAYOUT = (
    "a diffusers pipeline folder (as written by `StableDiffusionPipeline.save_pretrained(folder)` or "
    "downloaded with `huggingface-cli download <repo> --local-dir folder`) holds model_index.json and the "
    "subfolders unet/, vae/, text_encoder/, tokenizer/, scheduler/"
)

#: how to turn pickled weights into safetensors (diffmem never unpickles them)
NO_PICKLE = (
    "diffmem never unpickles weights: convert them once to safetensors, in an environment you trust, e.g. "
    "`UNet2DModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)` (or "
    "`pipeline.save_pretrained(folder, safe_serialization=True)` for a pipeline)"
)

#: the outputs a diffusers model may be trained to predict (``scheduler.config.prediction_type``)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed; the message says how to install it.

    It is an ``ImportError`` (what it is) and a ``ValueError`` (so that the ``diffmem`` command prints
    it as one line, as it does every problem the user can fix)."""


def import_diffusers(purpose: str, *, transformers: bool = False, alternative: str = "") -> Any:
    """The ``diffusers`` module (also checking ``transformers`` when asked), or :class:`MissingDependencyError`.

    Parameters
    ----------
    purpose : str
        What needs the libraries, the start of the message (e.g. ``"measuring a diffusers folder"``).
    transformers : bool
        Also require ``transformers`` (text encoders and tokenizers).
    alternative : str
        Appended to the install advice (e.g. ``", or export the model to TorchScript"``).
    """
    try:
        import diffusers

        if transformers:  # imported only to fail early when it is missing
            importlib.import_module("transformers")
    except ImportError as e:
        if transformers:
            need, it = "diffusers and transformers", "them"
        else:
            need, it = "the diffusers package", "it"
        raise MissingDependencyError(
            f'{purpose} needs {need} ({e}); install {it} with `pip install "diffmem[sd]"`{alternative}'
        ) from e
    return diffusers


@contextlib.contextmanager
def quiet_libraries(*, transformers: bool = False) -> Iterator[None]:
    """Silence diffusers' (and transformers') info logs, loading progress bars and FutureWarnings, then
    restore them."""
    from diffusers.utils import logging as dlog

    mods: list[Any] = [dlog]
    if transformers:
        from transformers.utils import logging as tlog

        mods.append(tlog)
    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in mods]
    for m, _, _ in saved:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for m, level, bar in saved:
            m.set_verbosity(level)
            if bar:
                m.enable_progress_bar()


def weights_variant(unet_dir: str | Path, *, pickled_ok: bool = False, layout: str = "") -> str | None:
    """``"fp16"`` when a U-Net folder's weights exist only as the fp16 variant (``*.fp16.safetensors``), else None.

    Weight files are ``*.safetensors`` (and sharded ``*.safetensors.index.json``). Unless ``pickled_ok``,
    a folder without them is refused (``ValueError``: one holding only pickled weights is told how to
    convert them, see :data:`NO_PICKLE`; ``layout`` ends the message for a folder with no weights at
    all). With ``pickled_ok``, ``*.bin`` files count as weights too and nothing is refused.
    """
    unet_dir = Path(unet_dir)
    files = [p.name for p in unet_dir.iterdir() if p.is_file()]
    suffixes = (".safetensors", ".safetensors.index.json") + ((".bin",) if pickled_ok else ())
    weights = [n for n in files if n.endswith(suffixes)]
    if not weights and not pickled_ok:
        pickled = [n for n in files if n.endswith((".bin", ".bin.index.json", ".ckpt", ".pt", ".pth"))]
        if pickled:
            raise ValueError(
                f"{unet_dir} holds only pickled PyTorch weights ({', '.join(sorted(pickled))}); {NO_PICKLE}"
            )
        raise ValueError(f"{unet_dir} holds no weights (diffusion_pytorch_model.safetensors); {layout}")
    return "fp16" if weights and all(".fp16." in n for n in weights) else None


def check_pipeline_folder(folder: str | Path) -> dict:
    """Check the layout of a local Stable-Diffusion-style pipeline folder; return its ``model_index.json``."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such pipeline folder: {folder}; {SD_LAYOUT}")
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is a file, not a diffusers pipeline folder; {SD_LAYOUT}. A single-file checkpoint "
            "(.ckpt/.safetensors) can be converted with "
            "`StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)`"
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json; {SD_LAYOUT}")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index_path} is not valid JSON ({e}); restore it from the original pipeline") from e
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} must hold a JSON object; {SD_LAYOUT}")
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
            f"{folder} is not a complete diffusers pipeline folder: missing {', '.join(missing)}; {SD_LAYOUT}"
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


def eps_from_prediction(out: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise prediction from a network output ``out`` at ``x``, given alpha_bar ``ab`` (broadcastable).

    ``"epsilon"``: ``out`` itself; ``"v_prediction"`` (``v = sqrt(ab) eps - sqrt(1 - ab) x0``):
    ``eps = sqrt(ab) v + sqrt(1 - ab) x``; ``"sample"`` (the network predicts x0):
    ``eps = (x - sqrt(ab) x0) / sqrt(1 - ab)``. Each is linear in ``out``, so guidance commutes with it.
    """
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return ab.sqrt() * out + (1 - ab).sqrt() * x
    if prediction_type == "sample":
        return (x - ab.sqrt() * out) / (1 - ab).sqrt()
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
