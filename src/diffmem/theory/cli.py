"""``diffmem theory spectrum | dynamics | phase``: thin argparse layer over :mod:`diffmem.theory.run`.

Module-level imports are light (argparse, json, dataclasses); numpy/scipy/matplotlib load inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

__all__ = ["register"]


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    p.add_argument("--seed", type=int, default=None, help="random seed for the simulated matrices (default: 0)")
    p.add_argument("--plot", action="store_true", help="also write PNG figures into OUT/figures/")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    p.add_argument("--t", type=float, default=None, help="diffusion time t (OU time; Delta_t = 1 - e^{-2t})")
    p.add_argument("--sigma-x", type=float, default=None, help="data scale: Sigma = sigma_x^2 I (default 1)")
    p.add_argument(
        "--activation", default=None, choices=["tanh", "relu", "linear"], help="feature non-linearity (default tanh)"
    )


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def _build(cls, args, mapping: dict):
    cfg = cls()
    changes = {}
    names = {f.name for f in fields(cls)}
    for attr, field_name in mapping.items():
        v = getattr(args, attr, None)
        if v is not None and field_name in names:
            changes[field_name] = tuple(v) if isinstance(v, list) else v
    return replace(cfg, **changes)


_MAP = {
    "psi_p": "psi_p",
    "psi_n": "psi_n",
    "t": "t",
    "sigma_x": "sigma_x",
    "activation": "activation",
    "seed": "seed",
    "d": "d",
}


def _finish(args, cfg, runner) -> int:
    from .run import config_dict

    if args.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
    cfg.validate()
    return runner(cfg)


def cmd_spectrum(args) -> int:
    from .run import SpectrumConfig

    m = dict(
        _MAP,
        n_points="n_points",
        sigma_eigs="sigma_eigs",
        sigma_weights="sigma_weights",
        simulate="simulate",
        matrix="matrix",
        bins="bins",
    )
    cfg = _build(SpectrumConfig, args, m)

    def go(cfg) -> int:
        from .run import run_spectrum

        res = run_spectrum(cfg, Path(args.out), plot=args.plot)
        edges = ", ".join(f"[{a:.4g}, {b:.4g}]" for a, b in res["edges"])
        print(
            f"constants: a_t={res['constants']['a']:.6g} b_t={res['constants']['b']:.6g} v_t^2={res['constants']['v2']:.6g} "
            f"s_t^2={res['constants']['s2']:.6g} Delta_t={res['constants']['delta']:.6g}"
        )
        print(
            f"delta peak weight {res['delta_peak_weight']:.6g} (solver {res['delta_peak_weight_solver']:.6g}); bulks {edges}; "
            f"mass {res['mass']:.4f}; solver {res['solver_seconds']:.2f} s; unconverged points: {res['n_unconverged']}"
        )
        if "simulation" in res:
            print(
                f"simulation ({res['simulation']['matrix']} U, p={res['simulation']['p']}): Kolmogorov distance to theory {res['simulation']['ks_distance']:.4f}"
            )
        print(
            f"wrote {Path(args.out) / 'spectrum.json'}"
            + (f" and {', '.join(res.get('figures', []))}" if args.plot else "")
        )
        return 0

    return _finish(args, cfg, go)


def cmd_dynamics(args) -> int:
    from .run import DynamicsConfig

    m = dict(
        _MAP,
        method="method",
        n_taus="n_taus",
        tau_min_ratio="tau_min_ratio",
        tau_max_ratio="tau_max_ratio",
        gd="gd",
        gd_max_steps="gd_max_steps",
        gd_dtau_frac="gd_dtau_frac",
    )
    cfg = _build(DynamicsConfig, args, m)

    def go(cfg) -> int:
        from .run import run_dynamics

        quiet = args.quiet
        res = run_dynamics(
            cfg,
            Path(args.out),
            plot=args.plot,
            progress=None if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)),
        )
        print(
            f"{'psi_n':>6} {'tau_gen':>9} {'tau_mem':>10} {'ratio':>8} {'tau_mem_fin':>11} {'min L_train':>11} {'max L_gen':>9}"
        )
        for r in res["runs"]:
            pr, th = r["predicted"], r["theory"]
            fin = pr.get("tau_mem_finite")
            print(
                f"{r['psi_n']:>6g} {pr['tau_gen']:>9.4g} {pr['tau_mem']:>10.4g} {pr['ratio']:>8.4g} {fin if fin is None else format(fin, '.4g'):>11} "
                f"{min(th['L_train']):>11.4f} {max(th['L_gen']):>9.4f}"
            )
        if res["tau_mem_fit"]:
            print(
                f"tau_mem ~ psi_n^{res['tau_mem_fit']['exponent']:.3f} (Theorem 3.2 edge)"
                + (
                    f", psi_n^{res['tau_mem_finite_fit']['exponent']:.3f} (finite-size edge)"
                    if res["tau_mem_finite_fit"]
                    else ""
                )
            )
        print(
            f"wrote {Path(args.out) / 'dynamics.json'}"
            + (f" and {', '.join(res.get('figures', []))}" if args.plot else "")
        )
        return 0

    return _finish(args, cfg, go)


def cmd_phase(args) -> int:
    from .run import PhaseConfig

    m = dict(_MAP, taus="taus", threshold="threshold")
    cfg = _build(PhaseConfig, args, m)

    def go(cfg) -> int:
        from tqdm import tqdm

        from .run import run_phase

        bar = tqdm(total=len(cfg.psi_n) * len(cfg.psi_p), desc="phase diagram", unit="point", leave=False)
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
        print(
            f"wrote {Path(args.out) / 'phase.json'}"
            + (f" and {', '.join(res.get('figures', []))}" if args.plot else "")
        )
        return 0

    return _finish(args, cfg, go)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``theory`` (with ``spectrum | dynamics | phase``) to an argparse ``subparsers`` object."""
    th = subparsers.add_parser(
        "theory",
        help="random-features theory: spectrum of U, closed-form training dynamics, phase diagram",
        description="Random-features model of score learning (Bonnaire et al. 2025, section 3).",
    )
    tsub = th.add_subparsers(dest="theory_command", metavar="{spectrum,dynamics,phase}")
    th.set_defaults(func=lambda args: (th.print_help(), 2)[1])

    p = tsub.add_parser("spectrum", help="eigenvalue density of U (Theorem 3.1), delta peak, bulk edges, asymptotics")
    _common(p, "runs/theory")
    p.add_argument("--psi-p", type=float, default=None, help="p/d (default 64)")
    p.add_argument("--psi-n", type=float, default=None, help="n/d (default 8)")
    p.add_argument("--n-points", type=int, default=None, help="grid points of the density (default 400)")
    p.add_argument(
        "--sigma-eigs",
        type=_float,
        nargs="+",
        default=None,
        help="eigenvalues of the data covariance (a discrete mixture)",
    )
    p.add_argument("--sigma-weights", type=_float, nargs="+", default=None, help="their weights (default equal)")
    p.add_argument(
        "--simulate",
        action="store_true",
        default=None,
        help="also histogram the eigenvalues of a simulated U at size --d (see --matrix)",
    )
    p.add_argument(
        "--matrix",
        choices=["gaussian_equivalent", "exact"],
        default=None,
        help="simulated U: Gaussian equivalent (default, fast) or the exact tanh U with the noise averaged analytically (O(p^3))",
    )
    p.add_argument("--d", type=int, default=None, help="data dimension of the simulation (default 100)")
    p.add_argument("--bins", type=int, default=None, help="histogram bins (default 120)")
    p.set_defaults(func=cmd_spectrum)

    p = tsub.add_parser("dynamics", help="closed-form L_train, L_test, E_score against training time; tau_gen, tau_mem")
    _common(p, "runs/theory")
    p.add_argument("--psi-p", type=float, default=None, help="p/d (default 64)")
    p.add_argument("--psi-n", type=float, nargs="+", default=None, help="n/d values (default 4 8 16 32)")
    p.add_argument("--d", type=int, default=None, help="data dimension of the finite-size draw (default 100)")
    p.add_argument(
        "--method",
        choices=["gaussian_equivalent", "exact"],
        default=None,
        help="matrices of the closed form (default gaussian_equivalent)",
    )
    p.add_argument("--n-taus", type=int, default=None, help="points of the time grid (default 80)")
    p.add_argument(
        "--tau-min-ratio", type=float, default=None, help="first time as a multiple of tau_mem (default 1e-4)"
    )
    p.add_argument("--tau-max-ratio", type=float, default=None, help="last time as a multiple of tau_mem (default 100)")
    p.add_argument(
        "--gd",
        action="store_true",
        default=None,
        help="also run explicit gradient descent (fresh noise per step) as a check",
    )
    p.add_argument("--gd-max-steps", type=int, default=None, help="cap on GD steps per psi_n (default 3000)")
    p.add_argument(
        "--gd-dtau-frac", type=float, default=None, help="GD step as a fraction of the stability limit (default 0.25)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_dynamics)

    p = tsub.add_parser("phase", help="L_gen = L_test - L_train over (psi_n, psi_p) at several training times")
    _common(p, "runs/theory")
    p.add_argument("--psi-p", type=float, nargs="+", default=None, help="grid of p/d (default 11 values 2..64)")
    p.add_argument(
        "--psi-n", type=float, nargs="+", default=None, help="grid of n/d, increasing (default 15 values 1..128)"
    )
    p.add_argument(
        "--taus",
        type=_float,
        nargs="+",
        default=None,
        help="rescaled training times, 'inf' allowed (default 1e2 1e3 1e4 inf)",
    )
    p.add_argument("--d", type=int, default=None, help="data dimension of each draw (default 32)")
    p.add_argument("--threshold", type=float, default=None, help="L_gen level that defines the boundary (default 0.25)")
    p.set_defaults(func=cmd_phase)
    return th
