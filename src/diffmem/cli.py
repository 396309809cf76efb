"""Command line: parse, build a configuration, call the library. ``diffmem --help`` lists the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (
        args[0]
        if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args
        else tp
    )


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: Sequence[str] = (), title: str | None = None
) -> None:
    """One ``--flag`` per field of a frozen config dataclass (defaults shown in --help)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + (prefix + f.name).replace("_", "-")
        dest = prefix + f.name
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            group.add_argument(
                flag, dest=dest, type=inner, nargs="+", default=None, help=f"default: {' '.join(map(str, default))}"
            )
        elif tp is bool:
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=f"default: {default}"
            )
        else:
            group.add_argument(
                flag, dest=dest, type=tp if tp in (int, float, str) else str, default=None, help=f"default: {default}"
            )


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = "", base: Any = None, **fixed: Any) -> Any:
    """Build ``cls`` from parsed flags: flags given override ``base`` (or the defaults)."""
    obj = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    changes.update(fixed)
    return dataclasses.replace(obj, **changes)


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    p.add_argument("--seed", type=int, default=None, help="random seed (training and evaluation)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    p.add_argument(
        "--device",
        default="cpu",
        help="where models train and sample: cpu (default), cuda, cuda:N, mps, or auto (a GPU if torch sees one)",
    )


def _print_json(obj: Any) -> None:
    from .io import jsonable

    print(json.dumps(jsonable(obj), indent=2))


def _table(rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- dynamics
def _study_config(args):
    from .dynamics import TimeRules
    from .measure import EvalConfig
    from .study import StudyConfig
    from .training import TrainConfig

    seed = {} if args.seed is None else {"seed": args.seed}
    cfg = StudyConfig()
    cfg = dataclasses.replace(
        cfg,
        sizes=tuple(args.sizes) if args.sizes else cfg.sizes,
        steps_per_n=args.steps_per_n if args.steps_per_n is not None else cfg.steps_per_n,
        min_steps=args.min_steps if args.min_steps is not None else cfg.min_steps,
        train=dataclass_from_args(TrainConfig, args, **seed),
        eval=dataclass_from_args(EvalConfig, args, prefix="eval_", **seed),
        rules=dataclass_from_args(TimeRules, args),
    )
    cfg.validate()
    return cfg


def cmd_dynamics(args) -> int:
    from .report import summary_table
    from .study import run_study

    cfg = _study_config(args)
    if args.dry_run:
        from .config import to_dict

        _print_json({**to_dict(cfg), "runs": {n: to_dict(cfg.run_config(n)) for n in cfg.sizes}})
        return 0
    res = run_study(cfg, args.out, workers=args.workers, show_progress=not args.quiet, device=args.device)
    fit = res["fit"]
    print()
    print(_table(summary_table(res)))
    ci = fit.get("exponent_ci") or [None, None]
    if fit.get("exponent") is not None:
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else "n/a"
        print(
            f"\ntau_mem ~ n^{fit['exponent']:.3f}  (95% CI {ci_s}, R^2 = {fit['r2']:.3f}); tau_mem/n = {fit['tau_mem_over_n']:.1f}"
        )
    else:
        print("\ntau_mem was reached for fewer than two sizes: no scaling fit (train longer: --steps-per-n)")
    if res.get("tau_gen_spread") is not None:
        print(f"tau_gen max/min across sizes = {res['tau_gen_spread']:.2f}")
    col = res.get("collapse") or {}
    if col.get("ratio") is not None:
        print(f"collapse: spread of f_mem/f_mem(max) against tau/n is {col['ratio']:.2f}x its spread against tau")
    print(
        f"\nwrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'report.html'} and figures/ in {res.get('elapsed_seconds', 0):.0f} s"
    )
    return 0


# ----------------------------------------------------------------------------------------- stages
def _train_config(args, **fixed):
    from .training import TrainConfig

    seed = {} if args.seed is None else {"seed": args.seed}
    return dataclass_from_args(TrainConfig, args, **seed, **fixed).resolved()


def _run_configs(run_dir: Path):
    from .io import read_json
    from .config import from_dict
    from .training import TrainConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no config.json); train one with `diffmem train --out {run_dir}`"
        )
    return from_dict(TrainConfig, read_json(path))


def cmd_train(args) -> int:
    from tqdm.auto import tqdm

    from .training import train

    cfg = _train_config(args)
    if args.dry_run:
        from .config import to_dict

        _print_json(to_dict(cfg))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    with tqdm(total=cfg.steps, desc="train", disable=args.quiet) as bar:
        train(cfg, args.out, progress=lambda s, t: (setattr(bar, "n", s), bar.refresh()), device=args.device)
    print(f"trained {cfg.steps} steps; checkpoints in {Path(args.out) / 'checkpoints'}")
    return 0


def cmd_sample(args) -> int:
    from . import io
    from .measure import EvalConfig, sample_checkpoint
    from .training import list_checkpoints, load_checkpoint, load_split

    cfg = _run_configs(args.out)
    ckpts = dict(list_checkpoints(args.out))
    if not ckpts:
        raise FileNotFoundError(f"{args.out} has no checkpoints; run `diffmem train --out {args.out}` first")
    step = args.step if args.step is not None else max(ckpts)
    if step not in ckpts:
        raise ValueError(f"no checkpoint at step {step}; available: {sorted(ckpts)}")
    ev = dataclass_from_args(EvalConfig, args, prefix="eval_", **({} if args.seed is None else {"seed": args.seed}))
    ev.validate()
    if args.dry_run:
        from .config import to_dict

        _print_json({"run": to_dict(cfg), "eval": to_dict(ev), "step": step})
        return 0
    sp = load_split(cfg)
    x = sample_checkpoint(load_checkpoint(ckpts[step], cfg, sp.shape, device=args.device), cfg, ev, sp.shape)
    path = Path(args.out) / "samples" / f"sampled_step_{step:07d}.npz"
    io.save_npz(path, samples=x.numpy(), pixels=sp.to_pixels(x).clamp(0, 1).numpy())
    print(f"wrote {len(x)} samples (model space and pixels) to {path}")
    return 0


def cmd_measure(args) -> int:
    from tqdm.auto import tqdm

    from .measure import EvalConfig, measure

    cfg = _run_configs(args.out)
    ev = dataclass_from_args(EvalConfig, args, prefix="eval_", **({} if args.seed is None else {"seed": args.seed}))
    ev.validate()
    if args.dry_run:
        from .config import to_dict

        _print_json({"run": to_dict(cfg), "eval": to_dict(ev)})
        return 0
    bar = tqdm(desc="measure", disable=args.quiet)

    def prog(i, total):
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
    print(_table(rows))
    return 0


# ----------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .dynamics import TimeRules
    from .measure import EvalConfig
    from .training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="diffmem", description="Measure, explain and predict memorization in diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"diffmem {__import__('diffmem').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "dynamics", help="the main job: train over a range of n, extract tau_gen and tau_mem, fit the scaling"
    )
    _common(p, "runs/dynamics")
    p.add_argument("--sizes", type=int, nargs="+", help="training set sizes (default: 32 64 128 256)")
    p.add_argument(
        "--steps-per-n", type=float, help="each run trains max(min_steps, steps_per_n * n) steps (default: 120)"
    )
    p.add_argument("--min-steps", type=int, help="default: 4000")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: number of cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(p, TrainConfig, skip=("n", "steps", "seed"), title="training (every size)")
    add_dataclass_args(p, EvalConfig, prefix="eval_", skip=("seed",), title="evaluation")
    add_dataclass_args(p, TimeRules, title="rules for tau_gen / tau_mem")
    p.set_defaults(func=cmd_dynamics)

    p = sub.add_parser("train", help="train one configuration (resumes if --out holds the same run)")
    _common(p, "runs/train")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: small models are fastest single-threaded)"
    )
    p.add_argument("--quiet", action="store_true")
    add_dataclass_args(p, TrainConfig, skip=("seed",), title="training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from one checkpoint of a run folder (--out)")
    _common(p, "runs/train")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    add_dataclass_args(p, EvalConfig, prefix="eval_", skip=("seed",), title="sampling")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("measure", help="evaluate every checkpoint of a run folder (--out) into metrics.jsonl")
    _common(p, "runs/train")
    p.add_argument("--quiet", action="store_true")
    add_dataclass_args(p, EvalConfig, prefix="eval_", skip=("seed",), title="evaluation")
    p.set_defaults(func=cmd_measure)

    for mod in ("diffmem.theory.cli", "diffmem.audit.cli"):
        try:
            register = __import__(mod, fromlist=["register"]).register
        except ImportError:  # a part that is not installed in this checkout
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None and argv is not None and len(argv) else 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"diffmem {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndiffmem {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
