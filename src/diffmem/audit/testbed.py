"""A caption-conditional diffusion model on the 8x8 digits that memorizes some captions on purpose.

The audit needs ground truth: prompts known to be reproduced, prompts known not to be, and prompts
in between. The testbed builds it in a minute or two on a laptop CPU. Every caption has a *group*
(what its conditional distribution is) and a *label* (the ground truth the detectors are scored on):

- **memorized** captions (default 12; group ``point_mass``): each bound to ONE training image. Its
  conditional distribution is a single point, so the trained conditional branch reproduces that
  image from any starting noise, with or without guidance.
- **partial** captions with a graded degree of memorization (default 12; groups ``cluster_2``,
  ``cluster_4``, ``cluster_8``, ``cluster_16``): each bound to an anchor (the reference image) and
  its ``k - 1`` nearest neighbours of the same digit in pixels, with k cycling through
  ``partial_sizes`` (2, 4, 8, 16). Samples reproduce one member of the cluster, so their similarity
  to the anchor falls off continuously with k.
- **partial** captions where guidance creates the copying (default 12; group ``guidance_cluster``):
  each bound to ``guided_size`` (4) random images of one digit, the first of them (the reference)
  listed ``guided_weight`` (3) times, so that it carries half of the caption's training draws. The
  conditional distribution is a small cluster (without guidance about half the samples are the
  reference); strong guidance sharpens it towards its heaviest member. This is the setting in which
  withholding guidance in the first steps (Jain et al.) can lower copying.
- **normal** captions (30; groups ``digit`` and ``scanner``): generic text shared by many different
  images: ``"a handwritten d"`` (every unused image of digit d, about 160 each) and 20 ``"a
  handwritten digit from scanner NAME"`` captions, each over a random twentieth of all unused
  images (mixed digits, about 80 each). Their reference image is the caption's first image (lowest
  dataset index); samples are new digits, not copies. A digit caption's first-step prediction is its
  class mean, which shares much of any member's structure, so its overestimation coefficient sits
  between the two extremes.

Training draws a caption uniformly (class-balanced), then one of its images uniformly, so every
caption gets the same number of updates; the caption is replaced by the empty condition with
probability ``cond_dropout`` (10%) so that the same network gives the unconditional prediction for
classifier-free guidance. Network: :class:`diffmem.models.ResidualMLP` with a caption embedding
(index ``num_captions`` = the empty caption), Adam with a cosine learning-rate decay.

Model space is ``scale * (pixels - mean)`` (the :class:`diffmem.data.Split` convention, scale 2,
mean over all 1797 digits). The noise schedule is Stable Diffusion's ("scaled_linear", beta from
0.00085 to 0.012 in square-root space, T = 1000) so that step indices and the size of the first-step
signal (sqrt(alpha_bar_980) = 0.076) match what the audit sees on Stable Diffusion; with the DDPM
linear schedule sqrt(alpha_bar_980) = 0.008 and the first-step x0 estimates would be dominated by
network error.

A digit classifier (scikit-learn logistic regression on all digits, deterministic lbfgs) is
retrained at build time (nothing pickled) and gives the *fidelity* used by the mitigation study:
whether a sample shows the caption's digit.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import io
from ..config import claim_folder, to_dict
from ..metrics.losses import eps_loss
from ..models import ResidualMLP
from ..schedule import Schedule
from ..state import restore_training_state, training_state
from ..validation import Each, Integer, Interval, OneOf, Optional, check
from .protocol import PromptSpec

__all__ = ["DigitClassifier", "TestbedConfig", "TestbedModel", "build_testbed", "testbed_captions"]

_NAMES = (
    "amber",
    "birch",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "grove",
    "heron",
    "iris",
    "jade",
    "koala",
    "lotus",
    "maple",
    "nectar",
    "onyx",
    "pearl",
    "quartz",
    "raven",
    "sable",
    "tulip",
)


@dataclass(frozen=True)
class TestbedConfig:
    """How the testbed is built (saved as ``testbed.json`` in its folder; a mismatch is refused)."""

    n_memorized: int = 12
    """Memorized captions, each bound to ONE training image (at most 20)."""
    n_partial: int = 12
    """Partial captions, each bound to a small cluster of near images of one digit (at most 20)."""
    partial_sizes: tuple[int, ...] = (2, 4, 8, 16)
    """Images per partial caption, cycled over the partial captions: an anchor (the reference image)
    and its nearest neighbours of the same digit (graded memorization: the larger, the less copied)."""
    partial_size: int | None = None
    """Deprecated alias: one size for every partial caption (replaces partial_sizes when given)."""
    n_guided: int = 12
    """Captions where guidance creates the copying: a few random images of one digit, the reference
    listed guided_weight times (at most 20; 0 for none)."""
    guided_size: int = 4
    """Distinct images per guidance-created caption (the reference and guided_size - 1 others)."""
    guided_weight: int = 3
    """How many times the reference is listed in a guidance-created caption (its share of the
    caption's training draws is guided_weight / (guided_weight + guided_size - 1))."""
    guided_members: Literal["other_digits", "same_digit"] = "other_digits"
    """The other images of a guidance-created caption: random images of other digits (d+3, d+6, ...;
    the caption names no digit) or random images of the reference's own digit."""
    n_generic: int = 20
    """"scanner" captions, each over a random 1/n_generic of the images no other caption owns."""
    width: int = 256
    """Width of the residual MLP."""
    blocks: int = 3
    """Residual blocks of the MLP."""
    steps: int = 8000
    """Adam steps of testbed training."""
    batch_size: int = 256
    """Training batch size."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay to 0 over the steps)."""
    cond_dropout: float = 0.1
    """Probability that a training caption is replaced by the empty one (trains the unconditional branch)."""
    scale: float = 2.0
    """Model space is scale * (pixels - mean pixel image)."""
    T: int = 1000
    """Diffusion steps of the noise schedule."""
    beta_start: float = 0.00085
    """First beta of Stable Diffusion's scaled_linear schedule."""
    beta_end: float = 0.012
    """Last beta of Stable Diffusion's scaled_linear schedule."""
    resume_every: int = 500
    """Write the training state every this many steps (a killed build resumes from there)."""
    seed: int = 0
    """Seed of the captions, the network's initialisation and the training draws."""

    def validate(self) -> None:
        names = len(_NAMES)
        near = "a partial caption binds a few near images"
        check(
            self,
            {
                "n_memorized": Integer(1, names, text=f"be in [1, {names}]"),
                "n_partial": Integer(0, names, text=f"be in [0, {names}]"),
                "n_generic": Integer(1, names, text=f"be in [1, {names}]"),
                "partial_size": Optional(Integer(min=2, hint=near)),
                "partial_sizes": Each(
                    Integer(2, 64),
                    text="be one or more integers in [2, 64]",
                    hint=f"{near}; 1 image is a memorized caption",
                ),
                "n_guided": Integer(0, names, text=f"be in [0, {names}]"),
                "guided_size": Integer(2, 32, hint="a cluster of a few images"),
                "guided_weight": Integer(1, 32),
                "guided_members": OneOf("other_digits", "same_digit"),
                "width": Integer(min=1),
                "blocks": Integer(min=1),
                "steps": Integer(min=1),
                "batch_size": Integer(min=1),
                "resume_every": Integer(min=1),
                "cond_dropout": Interval(0, 1, hint="the unconditional branch needs training"),
                "lr": Interval(0),
                "scale": Interval(0),
            },
        )
        if self.guided_members == "other_digits" and self.guided_size > 4:
            raise ValueError(
                f"guided_size must be at most 4 with guided_members='other_digits' (digits d+3, d+6, d+9), "
                f"got {self.guided_size}"
            )

    @property
    def resolved_partial_sizes(self) -> tuple[int, ...]:
        """The cluster sizes of the partial captions (``partial_size`` wins when given)."""
        return (int(self.partial_size),) if self.partial_size is not None else tuple(int(k) for k in self.partial_sizes)

    def schedule(self) -> Schedule:
        """Stable Diffusion's scaled_linear schedule with this configuration's ``T`` and betas."""
        from ..schedule import scaled_linear

        return scaled_linear(self.T, self.beta_start, self.beta_end)


@dataclass(frozen=True)
class Caption:
    text: str
    label: str  # memorized | partial | normal
    digit: int
    images: tuple[int, ...]  # indices into the digits dataset (repeats weight a draw); images[0] is the reference
    group: str = ""  # point_mass | cluster_K | guidance_cluster | digit | scanner
    digits: tuple[int, ...] = ()  # the digits a faithful sample shows (empty: fidelity undefined)

    def __post_init__(self) -> None:
        if not self.digits and self.digit >= 0:
            object.__setattr__(self, "digits", (self.digit,))


def testbed_captions(cfg: TestbedConfig, labels: np.ndarray, pixels: np.ndarray) -> list[Caption]:
    """The captions and their images (deterministic given ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    n = len(labels)
    order = rng.permutation(n)
    used: set[int] = set()
    caps: list[Caption] = []

    def take(d: int) -> int:
        idx = next(int(j) for j in order if labels[j] == d and int(j) not in used)
        used.add(idx)
        return idx

    # memorized: one image each, digits cycling 0..9
    for i in range(cfg.n_memorized):
        d = i % 10
        caps.append(Caption(f"exhibit {_NAMES[i]}: a handwritten {d}", "memorized", d, (take(d),), "point_mass"))
    # partial, graded: an anchor and its k - 1 nearest unused neighbours of the same digit
    flat = pixels.reshape(n, -1)
    sizes = cfg.resolved_partial_sizes
    for i in range(cfg.n_partial):
        d = (i + 5) % 10
        k = sizes[i % len(sizes)]
        anchor = take(d)
        cand = np.array([j for j in range(n) if labels[j] == d and j not in used])
        dist = ((flat[cand] - flat[anchor]) ** 2).sum(1)
        near = [int(j) for j in cand[np.argsort(dist, kind="stable")[: k - 1]]]
        used.update(near)
        caps.append(
            Caption(f"a handwritten {d} from the {_NAMES[i]} collection", "partial", d, (anchor, *near), f"cluster_{k}")
        )
    # partial, guidance-created: the reference listed guided_weight times, and random images either of
    # other digits (d+3, d+6, d+9; the caption then names no digit) or of the reference's own digit
    for i in range(cfg.n_guided):
        d = (i + 2) % 10
        if cfg.guided_members == "other_digits":
            ds = [d] + [(d + 3 * j) % 10 for j in range(1, cfg.guided_size)]
            text, digit = f"a handwritten digit drawn by {_NAMES[i]}", -1
        else:
            ds = [d] * cfg.guided_size
            text, digit = f"a handwritten {d} drawn by {_NAMES[i]}", d
        members = [take(k) for k in ds]
        images = (members[0],) * cfg.guided_weight + tuple(members[1:])
        caps.append(Caption(text, "partial", digit, images, "guidance_cluster", tuple(sorted(set(ds)))))
    # normal: one caption per digit over every unused image of it, and "scanner" captions over a
    # random partition of all unused images (mixed digits, so no digit is implied by the text)
    rest = np.array([int(j) for j in order if int(j) not in used])
    for d in range(10):
        pool = tuple(sorted(int(j) for j in rest if labels[j] == d))
        caps.append(Caption(f"a handwritten {d}", "normal", d, pool, "digit"))
    for i, grp in enumerate(np.array_split(rest, cfg.n_generic)):
        caps.append(
            Caption(
                f"a handwritten digit from scanner {_NAMES[i]}",
                "normal",
                -1,
                tuple(sorted(int(j) for j in grp)),
                "scanner",
            )
        )
    return caps


class DigitClassifier:
    """Logistic regression on the 1797 digits (pixels in [0, 1]); deterministic, retrained on demand."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression

        d = load_digits()
        self.clf = LogisticRegression(max_iter=3000, C=1.0).fit(d.data / 16.0, d.target)

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(pixels).detach().float().cpu().clamp(0, 1).reshape(len(pixels), -1).numpy()
        if x.shape[1] != 64:
            raise ValueError(f"the digit classifier reads 8x8 grayscale images, got {tuple(pixels.shape[1:])}")
        return self.clf.predict(x.astype(np.float64))


class TestbedModel:
    """The trained testbed as a :class:`~diffmem.audit.protocol.GuidedModel` (plus ``fidelity``)."""

    def __init__(self, net: ResidualMLP, cfg: TestbedConfig, captions: list[Caption], mean: torch.Tensor):
        self.net = net.eval()
        self.cfg = cfg
        self.captions = captions
        self.index = {c.text: i for i, c in enumerate(captions)}
        self.mean = mean.to(torch.float32)
        self.latent_shape: tuple[int, ...] = (1, 8, 8)
        self.schedule = cfg.schedule()
        self._classifier: DigitClassifier | None = None

    # -- GuidedModel
    def caption_index(self, prompt: str) -> int:
        if prompt not in self.index:
            raise ValueError(
                f"the testbed knows no caption {prompt!r}; use one of the prompts returned by build_testbed"
            )
        return self.index[prompt]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.caption_index(prompt)
        s = x.shape[0]
        cond = torch.cat(
            [torch.full((s,), c, dtype=torch.long), torch.full((s,), len(self.captions), dtype=torch.long)]
        )
        eps = self.net(torch.cat([x, x]).float(), torch.cat([t, t]).float(), cond).to(x.dtype)
        return eps[:s], eps[s:]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(pixels, dtype=torch.float32) - self.mean) * self.cfg.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.float() / self.cfg.scale + self.mean).clamp(0, 1)

    # -- extras used by the audit
    def fidelity(self, prompt: str, pixels: torch.Tensor) -> np.ndarray:
        """1.0 where the classifier reads one of the caption's digits in a sample, else 0.0 (shape
        (N,)): the digit the caption names, or the digits of a guidance-created caption's images;
        NaN for the scanner captions, whose images are every digit."""
        if self._classifier is None:
            self._classifier = DigitClassifier()
        digits = self.captions[self.caption_index(prompt)].digits
        if not digits:  # a caption over every digit: fidelity is undefined
            return np.full(len(pixels), np.nan)
        return np.isin(self._classifier(pixels), digits).astype(np.float64)

    def to_dict(self) -> dict:
        return {"kind": "testbed", **to_dict(self.cfg), "captions": len(self.captions)}


def _lr(cfg: TestbedConfig, step: int) -> float:
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / cfg.steps))


def _train(
    cfg: TestbedConfig, folder: Path, net: ResidualMLP, caps: list[Caption], x_all: torch.Tensor, progress: bool
) -> None:
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state_path = folder / "state.safetensors"
    start = 0
    if state_path.exists():
        st, _ = io.load_tensors(state_path)
        if "rng.loop" not in st:
            raise ValueError(
                f"{state_path} was written by an older diffmem (another layout of the training state); "
                "delete it to train the testbed from the start"
            )
        start = restore_training_state(st, net, opt, gen)
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    n_cap = len(caps)
    sizes = torch.tensor([len(c.images) for c in caps])
    table = torch.full((n_cap, int(sizes.max())), -1, dtype=torch.long)
    for i, c in enumerate(caps):
        table[i, : len(c.images)] = torch.tensor(c.images)
    b = cfg.batch_size
    net.train()
    with tqdm(total=cfg.steps, initial=start, desc="testbed: train", disable=not progress, leave=False) as bar:
        for step in range(start + 1, cfg.steps + 1):
            ci = torch.randint(0, n_cap, (b,), generator=gen)
            j = (torch.rand(b, generator=gen, dtype=torch.float64) * sizes[ci]).long()
            x0 = x_all[table[ci, j]]
            drop = torch.rand(b, generator=gen) < cfg.cond_dropout
            cond = torch.where(drop, torch.full_like(ci, n_cap), ci)
            k = torch.randint(1, cfg.T, (b,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            loss = eps_loss(functools.partial(net, cond=cond), x0, k, eps, ab, reduction="mean")
            for gr in opt.param_groups:
                gr["lr"] = _lr(cfg, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"testbed training diverged at step {step}; lower lr")
            if step % cfg.resume_every == 0 or step == cfg.steps:
                io.save_tensors(state_path, training_state(step, net, opt, gen, global_rng=False))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                bar.update(50 if step - 50 >= start else step - start)
    net.eval()


def build_testbed(
    out_dir: str | Path, seed: int = 0, progress: bool = True, config: TestbedConfig | None = None
) -> tuple[TestbedModel, list[PromptSpec]]:
    """Train the testbed in ``out_dir`` (or reuse/resume the one there) and return it with its prompts.

    Files: ``testbed.json`` (the configuration), ``state.safetensors`` (training state for resume),
    ``weights.safetensors`` (the final network), ``captions.json`` (captions, labels, image indices).
    Training is single-threaded and deterministic given ``seed``.

    Parameters
    ----------
    out_dir : str or Path
        Folder of the testbed (created; a folder holding another configuration is refused).
    seed : int
        Seed of the captions, the initialisation and the training draws.
    progress : bool
        Show a progress bar while training.
    config : TestbedConfig, optional
        How to build it (default ``TestbedConfig()``; its ``seed`` is replaced by ``seed``).

    Returns
    -------
    model : TestbedModel
        The trained caption-conditional model (a guided eps-prediction model on (1, 8, 8) latents).
    specs : list of PromptSpec
        One per caption: the prompt, its reference training image (1, 8, 8) in [0, 1], its label
        ("memorized", "partial" or "normal") and a key.

    Examples
    --------
    >>> from diffmem.audit import AuditConfig, build_testbed, run_audit
    >>> model, specs = build_testbed("runs/audit/testbed")  # doctest: +SKIP
    >>> res = run_audit(model, specs, AuditConfig(), "runs/audit")  # doctest: +SKIP
    """
    import dataclasses

    from ..data import digits

    cfg = dataclasses.replace(config or TestbedConfig(), seed=int(seed))
    cfg.validate()
    folder = Path(out_dir)
    claim_folder(folder, cfg, name="testbed.json")
    imgs = digits().pixels  # (1797, 1, 8, 8) in [0, 1]
    from sklearn.datasets import load_digits

    labels = load_digits().target
    caps = testbed_captions(cfg, labels, imgs.numpy())
    mean = imgs.mean(0)
    x_all = (imgs - mean) * cfg.scale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = ResidualMLP((1, 8, 8), width=cfg.width, blocks=cfg.blocks, num_classes=len(caps))
    weights = folder / "weights.safetensors"
    t0 = time.time()
    if weights.exists():
        net.load_state_dict(io.load_tensors(weights)[0])
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a small MLP's matmuls are faster on one thread than split across several
        try:
            _train(cfg, folder, net, caps, x_all, progress)
        finally:
            torch.set_num_threads(threads)
        io.save_tensors(weights, net.state_dict(), {"seconds": f"{time.time() - t0:.1f}"})
        io.write_json(folder / "captions.json", [dataclasses.asdict(c) for c in caps])
    model = TestbedModel(net, cfg, caps, mean)
    specs = [
        PromptSpec(c.text, imgs[c.images[0]], c.label, key=f"{c.label}_{i:02d}", group=c.group)
        for i, c in enumerate(caps)
    ]
    return model, specs
