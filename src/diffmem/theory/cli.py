"""``diffmem theory spectrum | dynamics | phase``: thin argparse layer over :mod:`diffmem.theory.run`.

Each command's options are the fields of its configuration dataclass (:class:`~diffmem.theory.run.SpectrumConfig`,
:class:`~diffmem.theory.run.DynamicsConfig`, :class:`~diffmem.theory.run.PhaseConfig`), built by
:func:`diffmem.cliutils.add_config_flags`; the help text of a flag is its field's docstring.

Imports are light: :mod:`diffmem.theory.run` (the configurations) imports numpy, scipy and matplotlib only
inside its jobs, so building the parser of ``diffmem --help`` loads none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cliutils import add_common, add_config_flags, config_from_flags, field_docs, print_json

__all__ = ["register"]

_OUT = "runs/theory"


def _finish(args: argparse.Namespace, cfg: Any, runner: Callable[[Any], int]) -> int:
    from .run import config_dict

    if args.dry_run:
        print_json(config_dict(cfg))
        return 0
    cfg.validate()
    return runner(cfg)


def _wrote(args: argparse.Namespace, name: str, res: dict) -> str:
    return f"wrote {Path(args.out) / name}" + (f" and {', '.join(res.get('figures', []))}" if args.plot else "")


def cmd_spectrum(args: argparse.Namespace) -> int:
    from .run import SpectrumConfig

    cfg = config_from_flags(SpectrumConfig, args)

    def go(cfg: Any) -> int:
        from .run import run_spectrum

        res = run_spectrum(cfg, Path(args.out), plot=args.plot)
        c = res["constants"]
        edges = ", ".join(f"[{a:.4g}, {b:.4g}] {role}" for (a, b), role in zip(res["edges"], res["bulk_roles"]))
        seen = "" if res["delta_peak_resolved"] else ", below its floor"
        print(
            f"constants: a_t={c['a']:.6g} b_t={c['b']:.6g} v_t^2={c['v2']:.6g} "
            f"s_t^2={c['s2']:.6g} Delta_t={c['delta']:.6g}"
        )
        print(
            f"delta peak weight {res['delta_peak_weight']:.6g} (solver {res['delta_peak_weight_solver']:.6g}, "
            f"floor {res['delta_peak_weight_floor']:.2g}{seen}); "
            f"bulks {edges}; mass {res['mass']:.4f}; solver {res['solver_seconds']:.2f} s; "
            f"unconverged points: {res['n_unconverged']}"
        )
        if "simulation" in res:
            sim = res["simulation"]
            print(
                f"simulation ({sim['matrix']} U, p={sim['p']}): Kolmogorov distance to theory {sim['ks_distance']:.4f}"
            )
        print(_wrote(args, "spectrum.json", res))
        return 0

    return _finish(args, cfg, go)


def cmd_dynamics(args: argparse.Namespace) -> int:
    from .run import DynamicsConfig

    cfg = config_from_flags(DynamicsConfig, args)

    def go(cfg: Any) -> int:
        from .run import run_dynamics

        res = run_dynamics(
            cfg,
            Path(args.out),
            plot=args.plot,
            progress=None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)),
        )
        print(
            f"{'psi_n':>6} {'tau_gen':>9} {'tau_mem':>10} {'ratio':>8} {'tau_mem_fin':>11} "
            f"{'min L_train':>11} {'max L_gen':>9}"
        )
        for r in res["runs"]:
            pr, th = r["predicted"], r["theory"]
            fin = pr.get("tau_mem_finite")
            fin_s = fin if fin is None else format(fin, ".4g")
            print(
                f"{r['psi_n']:>6g} {pr['tau_gen']:>9.4g} {pr['tau_mem']:>10.4g} {pr['ratio']:>8.4g} {fin_s:>11} "
                f"{min(th['L_train']):>11.4f} {max(th['L_gen']):>9.4f}"
            )
        if res["tau_mem_fit"]:
            finite = res["tau_mem_finite_fit"]
            print(
                f"tau_mem ~ psi_n^{res['tau_mem_fit']['exponent']:.3f} (Theorem 3.2 edge)"
                + (f", psi_n^{finite['exponent']:.3f} (finite-size edge)" if finite else "")
            )
        print(_wrote(args, "dynamics.json", res))
        return 0

    return _finish(args, cfg, go)


def cmd_phase(args: argparse.Namespace) -> int:
    from .run import PhaseConfig

    cfg = config_from_flags(PhaseConfig, args)

    def go(cfg: Any) -> int:
        from tqdm import tqdm

        from .run import run_phase

        bar = tqdm(
            total=len(cfg.psi_n) * len(cfg.psi_p), desc="phase diagram", unit="point", leave=False, disable=args.quiet
        )
        try:
            res = run_phase(cfg, Path(args.out), plot=args.plot, progress=lambda k, n: bar.update(k - bar.n))
        finally:
            bar.close()
        for tau, fit, b in zip(res["tau"], res["boundary_fit_vs_psi_p"], res["boundary_psi_n"]):
            bs = " ".join("-" if v is None else f"{v:.3g}" for v in b)
            print(
                f"tau={tau}: boundary psi_n at psi_p={res['psi_p']}: {bs}"
                + (f"  (~ psi_p^{fit['exponent']:.2f})" if fit else "")
            )
        print(_wrote(args, "phase.json", res))
        return 0

    return _finish(args, cfg, go)


def _command(
    tsub: Any, name: str, summary: str, cls: type, func: Callable[[argparse.Namespace], int], *, quiet: bool
) -> argparse.ArgumentParser:
    """One ``theory`` subcommand: the common flags, then one flag per field of ``cls`` (the seed is common)."""
    p = tsub.add_parser(name, help=summary, description=summary)
    seed = {f.name: f.default for f in dataclasses.fields(cls)}["seed"]
    add_common(p, _OUT, seed_help=f"{field_docs(cls)['seed']} (default: {seed})", quiet=quiet)
    p.add_argument("--plot", action="store_true", help="also write PNG figures into OUT/figures/")
    add_config_flags(p, cls, skip=("seed",))
    p.set_defaults(func=func)
    return p


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``theory`` (with ``spectrum | dynamics | phase``) to an argparse ``subparsers`` object."""
    from .run import DynamicsConfig, PhaseConfig, SpectrumConfig

    th = subparsers.add_parser(
        "theory",
        help="random-features theory: spectrum of U, closed-form training dynamics, phase diagram",
        description="Random-features model of score learning (Bonnaire et al. 2025, section 3).",
    )
    tsub = th.add_subparsers(dest="theory_command", metavar="{spectrum,dynamics,phase}")
    th.set_defaults(func=lambda args: (th.print_help(), 2)[1])
    _command(
        tsub,
        "spectrum",
        "eigenvalue density of U (Theorem 3.1), delta peak, bulk edges, asymptotics",
        SpectrumConfig,
        cmd_spectrum,
        quiet=False,
    )
    _command(
        tsub,
        "dynamics",
        "closed-form L_train, L_test, E_score against training time; tau_gen, tau_mem",
        DynamicsConfig,
        cmd_dynamics,
        quiet=True,
    )
    _command(
        tsub,
        "phase",
        "L_gen = L_test - L_train over (psi_n, psi_p) at several training times",
        PhaseConfig,
        cmd_phase,
        quiet=True,
    )
    return th
