"""Measure any model: f_mem (the ratio test), quality against held-out images, files and a report.

:func:`measure_model` draws seeded DDIM samples from an :class:`~diffmem.external.models.ExternalModel`,
maps them to pixels in [0, 1] (clamped, as a diffusers pipeline outputs them) and applies the
nearest / second-nearest ratio test against the training images: in pixel space with Euclidean
distances (:func:`diffmem.metrics.memorization_fraction`), or on the outputs of an embedding network
with cosine distances ``1 - cos`` (:func:`cosine_ratio_test`). With held-out images it also reports
the Fréchet distance and KID in a stated feature space.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io, sampling
from ..data import Images, load
from ..metrics import Measurement, distance_ratios, fraction_from_ratios, memorization_fraction, nearest_two
from ..metrics.frechet import TorchScriptFeatures, feature_space, frechet_distance, gaussian_stats
from .config import MeasureConfig
from .models import ExternalModel, load_model, sample

__all__ = ["MeasureResult", "cosine_ratio_test", "measure_model"]

#: refuse sample sets larger than this in memory (float32 model outputs plus their pixels)
MAX_SAMPLE_BYTES = 8 * 2**30


@dataclass(frozen=True)
class MeasureResult:
    """What :func:`measure_model` measured; ``to_dict()`` is the content of ``measure.json``."""

    f_mem: float
    """Fraction of samples whose nearest / second-nearest distance ratio is below k."""
    f_mem_ci: tuple[float, float]
    """95% percentile bootstrap interval of f_mem (resampling samples)."""
    k: float
    """The threshold of the ratio test."""
    samples: int
    """Number of samples drawn."""
    ratios: dict
    """Summary of the per-sample ratios: min, quantiles 5/25/50/75/95%, max, mean, memorized count."""
    space: str
    """Space of the ratio test: "pixels", "torchscript:NAME" or "sscd:NAME"."""
    distance: str
    """"euclidean" (pixels) or "cosine" (1 - cos of embeddings)."""
    quality: dict | None
    """``{"metric": "frechet[...]", "value", "heldout"}``, or None without held-out images."""
    kid: dict | None
    """``{"metric": "kid[...]", "value"}`` with held-out images, else None."""
    loss_gap: dict | None
    """eps-loss at OU time t on training and held-out images (``--loss-gap``), or None."""
    model: dict
    """The model: path, kind, shape, prediction type, class, parameters."""
    schedule: dict
    """Where the schedule came from and its parameters."""
    sampler: dict
    """DDIM settings: steps, eta, the step indices used, clipping, final alpha_bar, seed."""
    pixel_range: tuple[float, float]
    """The model's values for pixels 0 and 1."""
    data: dict
    """Training data: source, number of images, shape."""
    heldout: dict | None
    """Held-out data (source, number, shape), or None."""
    config: dict
    """The resolved MeasureConfig."""
    device: str
    """Where the model ran."""
    elapsed_seconds: float
    """Wall time of the whole measurement."""
    files: dict
    """Files written (names relative to the output folder); empty without an output folder."""

    def measurement(self) -> Measurement:
        """The measurement record of this result, as a diffmem run writes one per checkpoint.

        f_mem, its interval and the quality as :class:`~diffmem.metrics.Measurement` (the losses are
        those of ``--loss-gap``; ``step`` and ``median_ratio`` are None), e.g. to set a model measured
        here beside the checkpoints of a run: ``res.measurement().to_dict()`` has the keys of a line of
        ``metrics.jsonl``.
        """
        q, g = self.quality or {}, self.loss_gap or {}
        return Measurement(
            f_mem=self.f_mem,
            f_mem_ci=self.f_mem_ci,
            k=self.k,
            samples=self.samples,
            memorized=int(self.ratios["memorized"]),
            n_boot=int(self.config["n_boot"]),
            quality=q.get("value"),
            quality_metric=q.get("metric"),
            loss_train=g.get("train"),
            loss_test=g.get("heldout"),
        )

    def to_dict(self) -> dict:
        """The JSON of ``measure.json`` (f_mem nested as ``{"value", "ci", "level", ...}``,
        :meth:`Measurement.f_mem_dict <diffmem.metrics.Measurement.f_mem_dict>`)."""
        d = asdict(self)
        d["f_mem"] = self.measurement().f_mem_dict()
        del d["f_mem_ci"]
        return io.jsonable(d)


def cosine_ratio_test(
    emb_samples: np.ndarray, emb_train: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest / second-nearest ratio of cosine distances ``1 - cos(e_s, e_i)`` of embeddings.

    Parameters
    ----------
    emb_samples : numpy.ndarray, shape (N, D)
        Embeddings of the samples (any norm: they are L2-normalised here).
    emb_train : numpy.ndarray, shape (M, D)
        Embeddings of the training images, M >= 2.
    chunk : int
        Samples per block of the distance matrix (passed to :func:`diffmem.metrics.nearest_two`).

    Returns
    -------
    ratios, nearest, d1, d2 : numpy.ndarray
        Per sample: ``d1 / d2`` (0/0 = 0), the index of the nearest training image, and the cosine
        distances (never below 0) to the nearest and second-nearest.

    Notes
    -----
    On unit vectors the Euclidean distance is ``sqrt(2 (1 - cos))``, so the two nearest training
    embeddings are found by :func:`diffmem.metrics.nearest_two` on the normalised embeddings (the one
    nearest-neighbour search of diffmem), their cosine distances are half the squared Euclidean ones,
    and this ratio is the square of the Euclidean ratio: the test ``ratio < k`` equals a Euclidean test
    at ``sqrt(k)``.

    Examples
    --------
    >>> import numpy as np
    >>> train = np.eye(3)
    >>> r, idx, d1, d2 = cosine_ratio_test(np.array([[1.0, 0.05, 0.0]]), train)
    >>> idx.tolist(), bool(r[0] < 0.01)
    ([0], True)
    """
    a = np.asarray(emb_samples, dtype=np.float64)
    b = np.asarray(emb_train, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    if b.shape[0] < 2:
        raise ValueError("need at least 2 training images for the nearest/second-nearest ratio")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the embedding network returned NaN or inf values")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    e1, e2, idx = nearest_two(a, b, chunk=chunk)  # Euclidean distances of the unit vectors
    d1, d2 = e1**2 / 2, e2**2 / 2  # |a - b|^2 = 2 (1 - cos) on the unit sphere
    return distance_ratios(d1, d2), np.asarray(idx).astype(np.int64), d1, d2


class _Embedder:
    """Images (N, C, H, W) in [0, 1] -> embeddings (N, D) float64, from a TorchScript network or SSCD."""

    def __init__(self, spec: str, device: torch.device):
        if spec.startswith("sscd:"):
            from ..audit.sscd import SSCDSeverity

            self.sscd: Any = SSCDSeverity(spec[5:], device=device)
            self.net: Any = None
            self.name = f"sscd:{Path(spec[5:]).name}"
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(
                    f"--space {spec!r}: no such embedding network; use 'pixels', the path of a TorchScript file "
                    "mapping images (B, C, H, W) in [0, 1] to embeddings (B, D), or sscd:PATH"
                )
            self.sscd, self.net = None, TorchScriptFeatures(path)
            self.name = f"torchscript:{path.name}"

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        if self.sscd is not None:
            return self.sscd.descriptors(pixels).numpy()
        try:
            return self.net(pixels)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"the embedding network {self.name} failed on images of shape {tuple(pixels.shape[1:])} ({first}); "
                "it must map (B, C, H, W) pixels in [0, 1] to (B, D)"
            ) from None


def _ratio_summary(ratios: np.ndarray, k: float) -> dict:
    finite = ratios[np.isfinite(ratios)]
    q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95]) if finite.size else [np.nan] * 5
    return {
        "min": float(ratios.min()),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "max": float(ratios.max()),
        "mean": float(finite.mean()) if finite.size else None,
        "memorized": int((ratios < k).sum()),
    }


def _as_images(data: Any, cfg: MeasureConfig, model: ExternalModel, what: str) -> Images:
    if isinstance(data, Images):
        return data
    if isinstance(data, torch.Tensor):
        return Images(data.float(), what)
    if isinstance(data, np.ndarray):
        return Images(torch.from_numpy(np.asarray(data, dtype=np.float32)), what)
    size = cfg.image_size
    if size is None:
        size = model.shape[1] if model.shape is not None else 32
    gray = cfg.grayscale
    if gray is None:
        gray = model.shape is None or model.shape[0] == 1
    return load(str(data), key=cfg.data_key, size=int(size), grayscale=bool(gray))


def _check_pixels01(imgs: Images, what: str) -> None:
    x = imgs.pixels
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"{what} must be pixels in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def measure_model(
    model_path: str | Path,
    data: Any,
    *,
    heldout: Any = None,
    out: str | Path | None = None,
    config: MeasureConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> MeasureResult:
    """Measure memorization (f_mem) and quality of a denoiser diffmem did not train.

    Draws ``config.samples`` DDIM samples (eta = 0, seeded per sample), maps them to pixels in [0, 1]
    (clamped) and applies the ratio test of Bonnaire et al. (2025) against ``data``: a sample is
    memorized when its distance to the nearest training image is below ``k`` times its distance to the
    second-nearest. With ``heldout`` it adds the Fréchet distance (and KID, where available) in a
    stated feature space, and, with ``config.loss_gap``, the eps-loss gap between training and held-out
    images.

    Parameters
    ----------
    model_path : str or Path
        A local diffusers folder (a ``DDPMPipeline``/``DDIMPipeline`` saved with ``save_pretrained``, or a
        ``UNet2DModel`` folder; safetensors weights only) or a TorchScript file with ``forward(x, t) -> eps``.
    data : str, Path, Images, torch.Tensor or numpy.ndarray
        The training images the model may have copied: anything :func:`diffmem.data.load` accepts
        (``"digits"``, a ``.npz``, an image folder), or pixels (N, C, H, W) in [0, 1].
    heldout : same types as ``data``, optional
        Images the model did not see, for the quality numbers and the loss gap.
    out : str or Path, optional
        Folder for ``measure.json``, ``samples.npz``, ``ratios.npz``, the figures and ``report.html``
        (written atomically); ``None`` writes nothing.
    config : MeasureConfig, optional
        Sampling and measurement settings (defaults: 500 samples, 50 steps, k = 1/3, pixel space).
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``.
    progress : bool
        Show a progress bar over the samples.

    Returns
    -------
    MeasureResult
        f_mem with its 95% bootstrap interval, the ratio summary, quality, and what was measured how.

    Examples
    --------
    >>> from diffmem.external import MeasureConfig, measure_model
    >>> res = measure_model("ddpm-folder", "train.npz", heldout="test.npz", out="runs/measure",
    ...                     config=MeasureConfig(samples=1000))  # doctest: +SKIP
    >>> res.f_mem, res.f_mem_ci, res.quality["metric"]  # doctest: +SKIP
    (0.012, (0.006, 0.019), 'frechet[pixels]')
    """
    from ..config import resolve_device

    t0 = time.perf_counter()
    cfg = config or MeasureConfig()
    cfg.validate()
    _check_request(cfg, heldout, out)
    dev = resolve_device(device)
    model = load_model(model_path, cfg, dev)
    if cfg.sampling_steps > model.schedule.T:
        raise ValueError(f"--sampling-steps {cfg.sampling_steps} exceeds the model's T = {model.schedule.T}")
    train, held = _load_images(data, heldout, cfg, model)
    # everything that can fail on the data fails before the sampling: the embedding and feature networks
    space = None if cfg.space == "pixels" else _Embedder(cfg.space, dev)
    emb_train = space(train.pixels) if space is not None else np.zeros((0, 0))
    fs = feature_space(cfg.features or "auto", train.shape) if held is not None else None
    f_real = fs(held.pixels) if fs is not None and held is not None else None

    seeds = [cfg.seed * 1_000_003 + i for i in range(cfg.samples)]
    ks = model.timesteps(cfg.sampling_steps)
    raw = _draw(model, seeds, ks, train.shape, cfg, dev, progress)
    pixels = model.to_pixels(raw).clamp(0, 1)

    if space is None:
        mem = memorization_fraction(pixels, train.pixels, cfg.k, n_boot=cfg.n_boot, seed=cfg.seed)
        space_name, distance = "pixels", "euclidean"
    else:
        r, idx, _, _ = cosine_ratio_test(space(pixels), emb_train)
        mem = fraction_from_ratios(r, idx, cfg.k, n_boot=cfg.n_boot, seed=cfg.seed)
        space_name, distance = space.name, "cosine"

    quality = kid_rec = loss_rec = None
    if held is not None and fs is not None and f_real is not None:
        quality, kid_rec = _quality(fs, fs(pixels), f_real, len(held))
        if cfg.loss_gap:
            loss_rec = _loss_gap(model, train, held, cfg, dev)
    m = Measurement.of(mem, n_boot=cfg.n_boot)
    res = MeasureResult(
        f_mem=m.f_mem,
        f_mem_ci=m.f_mem_ci,
        k=m.k,
        samples=m.samples,
        ratios=_ratio_summary(mem.ratios, cfg.k),
        space=space_name,
        distance=distance,
        quality=quality,
        kid=kid_rec,
        loss_gap=loss_rec,
        model=model.to_dict(),
        schedule=model.schedule_info,
        sampler=_sampler_info(model, ks, cfg),
        pixel_range=model.pixel_range,
        data={"source": _source(data), "n": len(train), "shape": list(train.shape)},
        heldout=None if held is None else {"source": _source(heldout), "n": len(held), "shape": list(held.shape)},
        config=asdict(cfg),
        device=str(dev),
        elapsed_seconds=0.0,
        files={},
    )
    if out is not None:
        return _write(Path(out), res, raw, pixels, mem.ratios, mem.nearest, train, seeds, cfg, t0)
    return _replace(res, elapsed_seconds=time.perf_counter() - t0)


def _check_request(cfg: MeasureConfig, heldout: Any, out: str | Path | None) -> None:
    """Refuse flags that need held-out images without them, and an output folder that holds a diffmem run."""
    if heldout is None:
        if cfg.features is not None:
            raise ValueError(
                f"--features {cfg.features!r} chooses the space of the quality against held-out images, but no "
                "--heldout was given; add --heldout HELD (images the model did not train on) or drop --features"
            )
        if cfg.loss_gap:
            raise ValueError(
                "--loss-gap compares the loss on training and held-out images, but no --heldout was given; "
                "add --heldout HELD or drop --loss-gap"
            )
    if out is not None and (Path(out) / "config.json").is_file():
        raise ValueError(
            f"{out} holds a diffmem run (config.json); write the measurement of an external model to another --out"
        )


def _load_images(data: Any, heldout: Any, cfg: MeasureConfig, model: ExternalModel) -> tuple[Images, Images | None]:
    """The training and held-out images as pixels in [0, 1], checked against the model and the memory limit."""
    train = _as_images(data, cfg, model, "training data")
    _check_pixels01(train, "training data")
    model.check_input(model.to_model(train.pixels[:1]), "the training data")
    held = None
    if heldout is not None:
        held = _as_images(heldout, cfg, model, "held-out data")
        _check_pixels01(held, "held-out data")
        if held.shape != train.shape:
            raise ValueError(
                f"held-out images have shape {held.shape} but training images {train.shape}; use one shape"
            )
    shape = train.shape
    need = cfg.samples * int(np.prod(shape)) * 4 * 2
    if need > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"{cfg.samples} samples of shape {shape} need {need / 2**30:.1f} GiB in memory (limit "
            f"{MAX_SAMPLE_BYTES / 2**30:.0f} GiB); ask for fewer --samples and measure in several runs "
            "with other --seed"
        )
    return train, held


def _draw(
    model: ExternalModel,
    seeds: list[int],
    ks: list[int],
    shape: tuple[int, ...],
    cfg: MeasureConfig,
    dev: torch.device,
    progress: bool,
) -> torch.Tensor:
    """The DDIM samples (model range, CPU) from the per-sample seeds, in batches, with a progress bar."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        fmt = "{l_bar}{bar}| {n:.0f}/{total} samples [{elapsed}<{remaining}]"
        bar = tqdm(total=cfg.samples, desc="measure", bar_format=fmt)
    chunks = []
    for lo in range(0, cfg.samples, cfg.batch):
        x_T = sampling.randn_per_sample(seeds[lo : lo + cfg.batch], shape).to(dev)
        nb = x_T.shape[0]

        def tick(step: sampling.Step, nb: int = nb) -> None:
            if bar is not None:
                bar.update(nb / len(ks))

        x = sample(model, x_T, cfg.sampling_steps, observer=tick if bar is not None else None).float().cpu()
        chunks.append(x)
        if bar is not None:
            bar.n = lo + nb
            bar.refresh()
    if bar is not None:
        bar.close()
    raw = torch.cat(chunks)
    bad = int((~torch.isfinite(raw)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(
            f"{bad} of {cfg.samples} samples contain NaN or inf; check the schedule (--schedule, --T, --beta-*), "
            "--pixel-range and that the model predicts noise"
        )
    return raw


def _quality(fs: Any, f_fake: np.ndarray, f_real: np.ndarray, heldout: int) -> tuple[dict, dict]:
    """The Fréchet distance and KID of the samples' features against the held-out ones (feature space ``fs``)."""
    from ..metrics.kid import kid_from_features

    fd = frechet_distance(*gaussian_stats(f_fake), *gaussian_stats(f_real))
    quality = {"metric": f"frechet[{fs.name}]", "value": fd, "heldout": heldout}
    return quality, {"metric": f"kid[{fs.name}]", "value": float(kid_from_features(f_fake, f_real))}


def _sampler_info(model: ExternalModel, ks: list[int], cfg: MeasureConfig) -> dict:
    return {
        "name": "ddim",
        "eta": 0.0,
        "steps": cfg.sampling_steps,
        "timesteps": ks,
        "clip_x0": list(model.clip) if model.clip else None,
        "final_alpha_bar": model.final_alpha_bar,
        "seed": cfg.seed,
        "noise": "sample i starts from N(0, I) drawn with seed * 1000003 + i",
    }


def _replace(res: MeasureResult, **kw: Any) -> MeasureResult:
    from dataclasses import replace

    return replace(res, **kw)


def _source(d: Any) -> str:
    if isinstance(d, (str, Path)):
        return str(d)
    if isinstance(d, Images):
        return d.name
    return f"array {tuple(getattr(d, 'shape', ()))}"


@torch.no_grad()
def _loss_gap(model: ExternalModel, train: Images, held: Images, cfg: MeasureConfig, dev: torch.device) -> dict:
    from ..metrics import loss_at_time

    n = cfg.loss_examples
    k = model.schedule.step_for_ou_time(cfg.loss_t)

    def loss(imgs: Images) -> float:
        x0 = model.to_model(imgs.pixels[:n]).to(dev)
        return loss_at_time(model, x0, model.schedule, cfg.loss_t, 5, seed=cfg.seed, batch=cfg.batch)

    lt, lh = loss(train), loss(held)
    return {
        "t": cfg.loss_t,
        "step": k,
        "draws": 5,
        "examples": [min(n, len(train)), min(n, len(held))],
        "train": lt,
        "heldout": lh,
        "gap": lh - lt,
    }


# ---------------------------------------------------------------------------------------- files
def _write(
    out: Path,
    res: MeasureResult,
    raw: torch.Tensor,
    pixels: torch.Tensor,
    ratios: np.ndarray,
    nearest: np.ndarray,
    train: Images,
    seeds: list[int],
    cfg: MeasureConfig,
    t0: float,
) -> MeasureResult:
    from ..figures import sample_grid

    out.mkdir(parents=True, exist_ok=True)
    io.save_npz(
        out / "samples.npz",
        samples=raw.numpy(),
        pixels=pixels.numpy(),
        seeds=np.asarray(seeds, dtype=np.int64),
    )
    io.save_npz(out / "ratios.npz", ratios=ratios, nearest=nearest, memorized=ratios < cfg.k)
    order = np.argsort(ratios, kind="stable")
    top = order[: cfg.grid]
    rng = np.random.default_rng(cfg.seed)
    rand = rng.choice(len(ratios), size=min(cfg.grid, len(ratios)), replace=False)
    grid = sample_grid(
        [
            ("most copied", pixels[top].numpy(), train.pixels[nearest[top]].numpy()),
            ("random", pixels[rand].numpy(), train.pixels[nearest[rand]].numpy()),
        ],
        out / "most_copied.png",
        title=f"top: the {len(top)} samples with the smallest ratio; bottom: {len(rand)} random samples "
        f"(each above its nearest training image, {res.space})",
    )
    hist = _ratio_histogram(ratios, cfg.k, res.space, out / "ratios.png")
    files = {
        "measure": "measure.json",
        "samples": "samples.npz",
        "ratios": "ratios.npz",
        "grid": grid.name,
        "histogram": hist.name,
        "report": "report.html",
    }
    res = _replace(res, files=files, elapsed_seconds=time.perf_counter() - t0)
    shown = [(int(i), float(ratios[i]), int(nearest[i])) for i in top]
    io.atomic_write_bytes(out / "report.html", _report_html(res, shown, {"grid": grid, "hist": hist}).encode())
    res = _replace(res, elapsed_seconds=time.perf_counter() - t0)
    io.write_json(out / "measure.json", res)
    return res


def _ratio_histogram(ratios: np.ndarray, k: float, space: str, path: Path) -> Path:
    from ..figures import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    finite = np.clip(ratios[np.isfinite(ratios)], 0, 1)
    ax.hist(finite, bins=np.linspace(0, 1, 41), color="#3b6ea5")
    ax.axvline(k, color="#c0392b", ls="--", label=f"k = {k:.3g}")
    ax.set_xlabel(f"nearest / second-nearest distance ({space})")
    ax.set_ylabel("samples")
    ax.legend(frameon=False)
    return save_png(fig, path)


def _report_html(res: MeasureResult, shown: list[tuple[int, float, int]], figs: dict[str, Path]) -> str:
    from ..figures import fmt, html_page, html_table

    d = res.to_dict()
    lo, hi = res.f_mem_ci
    rows = [
        ["quantity", "value"],
        ["f_mem (ratio < k)", f"{res.f_mem:.4g}  [95% CI {lo:.4g}, {hi:.4g}]"],
        ["memorized samples", f"{res.ratios['memorized']} of {res.samples}"],
        ["k", f"{res.k:.4g}"],
        ["space / distance", f"{res.space} / {res.distance}"],
        ["median ratio", fmt(res.ratios["median"], 4)],
    ]
    if res.quality:
        rows.append([res.quality["metric"] + f" vs {res.quality['heldout']} held-out", fmt(res.quality["value"], 4)])
    else:
        rows.append(["quality", "not measured (no held-out images)"])
    if res.kid:
        rows.append([res.kid["metric"], fmt(res.kid["value"], 4)])
    if res.loss_gap:
        g = res.loss_gap
        rows.append(
            [
                f"eps-loss at t = {g['t']} (train / held-out / gap)",
                f"{g['train']:.4g} / {g['heldout']:.4g} / {g['gap']:.4g}",
            ]
        )
    rows += [
        ["model", f"{res.model['kind']}: {res.model['path']}"],
        ["image shape, pixel range", f"{tuple(res.model['shape'] or ())}, {res.pixel_range}"],
        ["schedule", ", ".join(f"{k}={v}" for k, v in res.schedule.items())],
        [
            "sampler",
            f"DDIM eta 0, {res.sampler['steps']} steps, clip x0 {res.sampler['clip_x0']}, seed {res.sampler['seed']}",
        ],
        ["training data", f"{res.data['source']} ({res.data['n']} images)"],
        ["elapsed", f"{res.elapsed_seconds:.1f} s on {res.device}"],
    ]
    copied = [["sample", "ratio", "nearest training image"]] + [[str(i), f"{r:.4g}", str(j)] for i, r, j in shown]
    body = (
        "<p>A sample is <b>memorized</b> when its distance to the nearest training image is below k times its "
        "distance to the second-nearest (Bonnaire et al. 2025); f_mem is the fraction of such samples, with a 95% "
        "percentile bootstrap interval over samples. See docs/measure.md.</p>"
        + html_table(rows)
        + "<h2>The most-copied samples</h2>"
        + html_table(copied)
        + "<h2>All ratios</h2>"
        + html_table([list(d["ratios"]), [fmt(v, 4) for v in d["ratios"].values()]])
    )
    return html_page(
        f"diffmem measure: {Path(res.model['path']).name}",
        body,
        {
            "most-copied samples (top) and random samples (bottom), each above its nearest training image": figs[
                "grid"
            ],
            "distribution of the nearest / second-nearest distance ratios; the dashed line is k": figs["hist"],
        },
    )
