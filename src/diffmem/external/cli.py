"""``diffmem measure --model PATH``: the flags and the command for a model diffmem did not train.

:func:`add_model_flags` adds ``--model``, ``--data``, ``--heldout`` and one flag per field of
:class:`~diffmem.external.config.MeasureConfig` to the existing ``measure`` parser; every new flag
defaults to ``None`` so :func:`model_flags_given` can tell whether the external mode was asked for.
Without ``--model`` the ``measure`` command keeps evaluating a run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from ..cliutils import add_config_flags, config_from_flags, print_json, table
from .config import MAX_SAMPLES, MeasureConfig

__all__ = ["add_model_flags", "cmd_measure_model", "model_flags_given"]

_PATHS = ("model", "data", "heldout")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of ``diffmem measure --model`` to the ``measure`` parser ``p``."""
    g = p.add_argument_group(
        "measure any model (--model; see docs/measure.md)",
        f"With --model, --out is the folder for measure.json, samples.npz, ratios.npz, the figures and report.html, "
        f"the --eval-* flags do not apply, and at most {MAX_SAMPLES} samples are drawn. --seed sets the noise "
        "and the bootstrap; --device where the model runs.",
    )
    g.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="a local diffusers folder (UNet2DModel, or a DDPM/DDIM pipeline saved with save_pretrained; safetensors "
        "weights only) or a TorchScript file whose forward(x, t) returns the predicted noise (t: int64 steps)",
    )
    g.add_argument(
        "--data",
        default=None,
        metavar="TRAIN",
        help="the model's training images: 'digits', a .npz file or an image folder (pixels in [0, 1])",
    )
    g.add_argument(
        "--heldout",
        default=None,
        metavar="HELD",
        help="images the model did not train on, for the quality (Fréchet distance, KID) and --loss-gap",
    )
    add_config_flags(g, MeasureConfig, skip=("seed",))
    # let "--pixel-range -1,1" through: argparse takes "-1,1" for a flag unless it looks like a negative
    # number (its matcher knows "-1" and "-.5", not pairs); "--pixel-range=-1,1" works in any case
    matcher = getattr(p, "_negative_number_matcher", None)
    if matcher is not None:
        p._negative_number_matcher = re.compile(f"(?:{matcher.pattern})|^-[0-9.]+,[-+0-9.eE]+$")


def model_flags_given(args: argparse.Namespace) -> list[str]:
    """The flags of the external mode present in ``args`` (``--model`` and the others), as written."""
    names = [*_PATHS, *(f.name for f in dataclasses.fields(MeasureConfig) if f.name != "seed")]
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None]


def _config(args: argparse.Namespace) -> MeasureConfig:
    fixed: dict[str, Any] = {} if args.seed is None else {"seed": args.seed}
    cfg = config_from_flags(MeasureConfig, args, **fixed)
    cfg.validate()
    return cfg


def cmd_measure_model(args: argparse.Namespace) -> int:
    """Run ``diffmem measure --model ...``: check the flags, measure, print a summary."""
    given = model_flags_given(args)
    if args.model is None:
        raise ValueError(
            f"{', '.join(given)} only apply with --model PATH (measuring a model diffmem did not train); "
            "a run folder is measured with the --eval-* flags"
        )
    evals = sorted(k for k, v in vars(args).items() if k.startswith("eval_") and v is not None)
    if evals:
        flags = ", ".join("--" + k.replace("_", "-") for k in evals)
        raise ValueError(
            f"{flags} apply to run folders; with --model use --samples, --sampling-steps, --k, --batch ..."
        )
    if args.data is None:
        raise ValueError(
            "--model needs --data TRAIN: the training images to test the samples against "
            "('digits', a .npz or an image folder)"
        )
    cfg = _config(args)
    if args.dry_run:
        from ..config import to_dict

        print_json(
            {"model": args.model, "data": args.data, "heldout": args.heldout, "out": args.out, "config": to_dict(cfg)}
        )
        return 0
    from .measure import measure_model

    res = measure_model(
        args.model,
        args.data,
        heldout=args.heldout,
        out=args.out,
        config=cfg,
        device=args.device,
        progress=not args.quiet,
    )
    lo, hi = res.f_mem_ci
    rows = [
        ["samples", "k", "f_mem", "95% CI", "median ratio", "quality"],
        [
            str(res.samples),
            f"{res.k:.3g}",
            f"{res.f_mem:.3f}",
            f"[{lo:.3f}, {hi:.3f}]",
            f"{res.ratios['median']:.3f}",
            f"{res.quality['metric']} = {res.quality['value']:.4g}" if res.quality else "no --heldout",
        ],
    ]
    print(table(rows))
    out = Path(args.out)
    print(f"wrote {out / 'measure.json'} and {out / 'report.html'} in {res.elapsed_seconds:.0f} s ({res.space} space)")
    return 0
