"""``diffmem dynamics | train | sample`` and ``diffmem measure`` on a run folder: the study and its stages.

A thin argparse layer over :mod:`diffmem.dynamics`: the flags are the fields of :class:`TrainConfig`,
:class:`EvalConfig` and :class:`TimeRules` (built by :mod:`diffmem.cliutils`). Module-level imports
are light; torch loads inside the commands. The ``measure`` command spans two parts (a run folder
here, any model in :mod:`diffmem.external`), so :mod:`diffmem.cli` registers it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutils import add_common, add_config_flags, config_from_flags, print_json, table

__all__ = ["add_measure_flags", "cmd_measure", "register"]


# ----------------------------------------------------------------------------------------- dynamics
def _seed(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.seed is None else {"seed": args.seed}


def _study_config(args: argparse.Namespace) -> Any:
    from .evaluate import EvalConfig
    from .study import PRESETS, StudyConfig
    from .timescales import TimeRules
    from .training import TrainConfig

    base = PRESETS[args.preset]
    cfg = config_from_flags(
        StudyConfig,
        args,
        base=base,
        train=config_from_flags(TrainConfig, args, base=base.train, **_seed(args)),
        eval=config_from_flags(EvalConfig, args, prefix="eval_", base=base.eval, **_seed(args)),
        rules=config_from_flags(TimeRules, args, base=base.rules),
    )
    cfg.validate()
    return cfg


def cmd_dynamics(args: argparse.Namespace) -> int:
    from ..config import to_dict
    from .report import summary_table
    from .study import run_study

    cfg = _study_config(args)
    if args.dry_run:
        print_json({**to_dict(cfg), "runs": {n: to_dict(cfg.run_config(n)) for n in cfg.sizes}})
        return 0
    res = run_study(cfg, args.out, workers=args.workers, show_progress=not args.quiet, device=args.device)
    fit = res.fit
    print()
    print(table(summary_table(res.to_dict())))
    short = [r for r in res.runs if r.tau_mem is None or r.tau_gen is None]
    for r in short:
        print(f"n = {r.n}, subset {r.subset}: {r.status}")
    reached = sorted({r.n for r in res.runs if r.tau_mem is not None})
    if fit.exponent is not None:
        lo, hi = fit.exponent_ci
        ci_s = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "n/a"
        print(
            f"\ntau_mem ~ n^{fit.exponent:.3f}  (95% CI {ci_s}, R^2 = {fit.r2:.3f}); "
            f"tau_mem/n = {fit.tau_mem_over_n:.1f}"
        )
    else:
        print(
            f"\ntau_mem was reached at {len(reached)} size(s){' ' + str(reached) if reached else ''}: "
            "no scaling exponent "
            "(it needs 3 sizes; see the lines above for what to change)"
        )
    ef = res.analysis.excess_fit
    if ef is not None and ef.exponent is not None:
        lo, hi = ef.exponent_ci
        ci_s = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "n/a"
        print(f"tau_mem - tau_gen ~ n^{ef.exponent:.3f}  (95% CI {ci_s}, R^2 = {ef.r2:.3f}; {ef.points} runs)")
    gf = res.tau_gen_fit
    if gf.exponent is not None:
        lo, hi = gf.exponent_ci
        ci_s = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "n/a"
        print(f"tau_gen ~ n^{gf.exponent:.3f}  (95% CI {ci_s}); max/min across runs = {res.tau_gen_spread:.2f}")
    cf = res.collapse_fit
    if cf is not None and cf.alpha is not None:
        lo, hi = cf.alpha_ci
        ci_s = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "n/a"
        print(
            f"collapse: f_mem curves coincide against tau/n^alpha at alpha = {cf.alpha:.3f} (95% CI {ci_s}; "
            f"{cf.levels_used} shared f_mem levels)"
        )
    elif cf is not None:
        print("collapse: no f_mem level was reached by every run; no collapse exponent")
    ce = res.collapse_excess
    if ce is not None and ce.alpha is not None:
        lo, hi = ce.alpha_ci
        ci_s = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "n/a"
        print(f"collapse against (tau - tau_gen)/n^alpha: alpha = {ce.alpha:.3f} (95% CI {ci_s})")
    for b in res.by_k:
        e = f"{b.fit.exponent:.3f}" if b.fit.exponent is not None else "n/a"
        print(f"k = {b.k:.3g}: tau_mem ~ n^{e} ({sum(t is not None for t in b.tau_mem)}/{len(b.tau_mem)} runs reached)")
    out = Path(args.out)
    print(f"\nwrote {out / 'results.json'}, {out / 'report.html'} and figures/ in {res.elapsed_seconds or 0:.0f} s")
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from .training import TrainConfig

    return config_from_flags(TrainConfig, args, **_seed(args)).resolved()


def _eval_config(args: argparse.Namespace) -> Any:
    from .evaluate import EvalConfig

    ev = config_from_flags(EvalConfig, args, prefix="eval_", **_seed(args))
    ev.validate()
    return ev


def _run_config(run_dir: Path) -> Any:
    from ..config import from_dict
    from ..io import read_json
    from .training import TrainConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no config.json); train one with `diffmem train --out {run_dir}`"
        )
    return from_dict(TrainConfig, read_json(path))


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .training import train

    cfg = _train_config(args)
    if args.dry_run:
        from ..config import to_dict

        print_json(to_dict(cfg))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    with tqdm(total=cfg.steps, desc="train", disable=args.quiet) as bar:

        def progress(step: int, total: int) -> None:
            bar.n = step
            bar.refresh()

        train(cfg, args.out, progress=progress, device=args.device)
    print(f"trained {cfg.steps} steps; checkpoints in {Path(args.out) / 'checkpoints'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .. import io
    from .evaluate import sample_checkpoint
    from .training import list_checkpoints, load_checkpoint, load_split

    cfg = _run_config(args.out)
    ckpts = dict(list_checkpoints(args.out))
    if not ckpts:
        raise FileNotFoundError(f"{args.out} has no checkpoints; run `diffmem train --out {args.out}` first")
    step = args.step if args.step is not None else max(ckpts)
    if step not in ckpts:
        raise ValueError(f"no checkpoint at step {step}; available: {sorted(ckpts)}")
    ev = _eval_config(args)
    if args.dry_run:
        from ..config import to_dict

        print_json({"run": to_dict(cfg), "eval": to_dict(ev), "step": step})
        return 0
    sp = load_split(cfg)
    x = sample_checkpoint(load_checkpoint(ckpts[step], cfg, sp.shape, device=args.device), cfg, ev, sp.shape)
    path = Path(args.out) / "samples" / f"sampled_step_{step:07d}.npz"
    io.save_npz(path, samples=x.numpy(), pixels=sp.to_pixels(x).clamp(0, 1).numpy())
    print(f"wrote {len(x)} samples (model space and pixels) to {path}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """``diffmem measure`` on a run folder (``--out``): evaluate every checkpoint into metrics.jsonl."""
    from tqdm.auto import tqdm

    from .evaluate import measure

    cfg = _run_config(args.out)
    ev = _eval_config(args)
    if args.dry_run:
        from ..config import to_dict

        print_json({"run": to_dict(cfg), "eval": to_dict(ev)})
        return 0
    bar = tqdm(desc="measure", disable=args.quiet)

    def prog(i: int, total: int) -> None:
        bar.total = total
        bar.n = i
        bar.refresh()

    recs = measure(cfg, ev, args.out, progress=prog, device=args.device)
    bar.close()
    rows = [["step", "f_mem", "f_mem CI", "quality", "loss_train", "loss_test"]]
    for r in recs:
        rows.append(
            [
                str(r["step"]),
                f"{r['f_mem']:.3f}",
                f"[{r['f_mem_ci'][0]:.3f}, {r['f_mem_ci'][1]:.3f}]",
                f"{r['quality']:.4g}",
                f"{r['loss_train']:.4f}",
                f"{r['loss_test']:.4f}",
            ]
        )
    print(table(rows))
    return 0


def register(sub: Any) -> None:
    """Add ``dynamics``, ``train`` and ``sample`` to an argparse ``subparsers`` object (``measure``, which
    also measures models diffmem did not train, is registered by :mod:`diffmem.cli` with
    :func:`add_measure_flags`)."""
    from .evaluate import EvalConfig
    from .study import PRESETS, StudyConfig
    from .timescales import TimeRules
    from .training import TrainConfig

    p = sub.add_parser(
        "dynamics", help="the main job: train over a range of n, extract tau_gen and tau_mem, fit the scaling"
    )
    add_common(p, "runs/dynamics", seed_help="random seed (training and evaluation)", device=True)
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: number of cores)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="quick: the onset of memorization at 4 sizes (default); full: into the memorization regime, "
        "2 subsets per size. Flags given override the preset's values",
    )
    add_config_flags(p, StudyConfig, title="study (defaults shown are the quick preset's)")
    add_config_flags(p, TrainConfig, skip=("n", "steps", "seed", "budget_base"), title="training (every size)")
    add_config_flags(p, EvalConfig, prefix="eval_", skip=("seed",), title="evaluation")
    add_config_flags(p, TimeRules, title="rules for tau_gen / tau_mem")
    p.set_defaults(func=cmd_dynamics)

    p = sub.add_parser("train", help="train one configuration (resumes if --out holds the same run)")
    add_common(p, "runs/train", seed_help="random seed (initialisation, batches, noise)", device=True)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: small models are fastest single-threaded)"
    )
    add_config_flags(p, TrainConfig, skip=("seed",), title="training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from one checkpoint of a run folder (--out)")
    add_common(p, "runs/train", seed_help="random seed of the initial noise", device=True, quiet=False)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    add_config_flags(p, EvalConfig, prefix="eval_", skip=("seed",), title="sampling")
    p.set_defaults(func=cmd_sample)


def add_measure_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``diffmem measure`` on a run folder: the common ones and the ``--eval-*`` settings.

    The ``measure`` command itself is registered by :mod:`diffmem.cli`, which adds the flags of
    ``measure --model`` (:mod:`diffmem.external.cli`) to the same parser and dispatches between the two.
    """
    from .evaluate import EvalConfig

    add_common(p, "runs/train", seed_help="random seed of samples, bootstrap and loss noise", device=True)
    add_config_flags(p, EvalConfig, prefix="eval_", skip=("seed",), title="evaluation")
