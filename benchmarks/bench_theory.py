"""Benchmark: the random-features theory at the paper's sizes (results in docs/theory.md).

    OMP_NUM_THREADS=2 python benchmarks/bench_theory.py --out runs/bench_theory

Checks, at full size, what the unit tests check at small d:

1. spectrum at psi_p = 64, psi_n = 8, t = 0.01, d = 100: Kolmogorov distance between the Theorem 3.1 density
   and the eigenvalues outside the delta peak, for the Gaussian-equivalent matrix and for the exact U (noise
   expectation analytic); delta-peak weight (exact count) against 1 - (1 + psi_n)/psi_p;
2. solver speed: a 400-point density, and the same solve for d = 1000 (p = 64 000, out of reach of a dense
   eigendecomposition: the matrix alone would take 33 GB); ratio against numpy.linalg.eigvalsh of the
   p x p matrix at the largest d both can do here (--eig-d);
3. closed-form L_train, L_test against explicit full-batch gradient descent (fresh noise per step, tanh),
   psi_p = 64, psi_n in {4, 8, 16, 32}, t = 0.1, d = 100;
4. the fitted exponent of the predicted tau_mem against psi_n over {4, ..., 32};
5. which bulk carries memorization: the generalization gap L_gen at the end of training (Gaussian-equivalent
   closed form, d = 100) with the directions of each bulk left out, and each bulk's share of the drop of L_train,
   at psi_p = 64, psi_n in {4, 8}, t in {0.01, 0.1}.

Prints a table and writes ``bench_theory.json`` into --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def _ks(spec, eigs) -> float:
    """Kolmogorov distance between the normalised continuous part of the theory and sorted ``eigs``."""
    eigs = np.sort(eigs)
    F = spec.cdf()
    F = F / F[-1]
    hi = np.searchsorted(eigs, spec.lambdas, side="right") / eigs.size
    lo = np.searchsorted(eigs, spec.lambdas, side="left") / eigs.size
    return float(max(np.abs(F - hi).max(), np.abs(F - lo).max()))


def bench_spectrum(d: int, seed: int) -> dict:
    from diffmem.theory import exact_matrices, gaussian_equivalent, ge_eigenvalues, make_problem, spectral_density

    psi_p, psi_n, t = 64.0, 8.0, 0.01
    spec = spectral_density(t, psi_p, psi_n)
    c = spec.constants
    prob = make_problem(d, psi_p, psi_n, t, seed=seed)
    p, n = prob.p, prob.n
    k = n + d  # rank of U - s_t^2 I
    ge = ge_eigenvalues(gaussian_equivalent(prob, c, seed=np.random.default_rng([seed, 1])))
    at_s2 = np.abs(ge - c.s2) <= 1e-9 * c.s2
    t0 = time.perf_counter()
    U, _ = exact_matrices(prob)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex = np.linalg.eigvalsh(U)
    t_eig = time.perf_counter() - t0
    return {
        "d": d,
        "p": p,
        "n": n,
        "delta_peak_weight_theory": spec.delta_peak_weight,
        "delta_peak_weight_solver": spec.delta_peak_weight_solver,
        "delta_peak_weight_floor": spec.delta_peak_weight_floor,
        "delta_peak_weight_ge_count": float(at_s2.mean()),
        "bulk_roles": spec.bulk_roles,
        "bulk_weights": spec.bulk_weights,
        "memorization_bulk_weight": spec.memorization_bulk_weight,
        "population_bulk_weight": spec.population_bulk_weight,
        # Gaussian-equivalent eigenvalues in the gap-separated bulks: n in the memorization bulk, d in the population
        "ge_count_memorization": _count_in(ge[~at_s2], spec.memorization_bulk, spec.population_bulk),
        "ks_ge": _ks(spec, ge[~at_s2]),
        "ks_exact_top": _ks(spec, np.sort(ex)[-k:]),
        "edges": spec.edges,
        "exact_build_s": t_build,
        "exact_eigvalsh_s": t_eig,
        "exact_quantiles": {str(q): float(np.quantile(np.sort(ex)[-k:], q)) for q in (0.05, 0.5, 0.95)},
        "ge_quantiles": {str(q): float(np.quantile(np.sort(ge)[-k:], q)) for q in (0.05, 0.5, 0.95)},
    }


def _count_in(eigs: np.ndarray, bulk: list | None, above: list | None) -> int | None:
    """Eigenvalues from the bottom of ``bulk`` to the middle (geometric) of the gap below the bulk ``above``."""
    if bulk is None or above is None:
        return None
    return int(np.sum((eigs >= 0.5 * bulk[0]) & (eigs < np.sqrt(bulk[1] * above[0]))))


def bench_large_ge(d: int, seed: int) -> dict:
    """Theory vs the Gaussian-equivalent eigenvalues at a d where the dense p x p eigendecomposition is out of reach
    (only the (n + d) x (n + d) Gram matrix is decomposed)."""
    from diffmem.theory import gaussian_equivalent, ge_eigenvalues, make_problem, spectral_density

    spec = spectral_density(0.01, 64.0, 8.0)
    c = spec.constants
    prob = make_problem(d, 64.0, 8.0, 0.01, seed=seed)
    t0 = time.perf_counter()
    e = ge_eigenvalues(gaussian_equivalent(prob, c, seed=np.random.default_rng([seed, 1])))
    t_ge = time.perf_counter() - t0
    at = np.abs(e - c.s2) <= 1e-9 * c.s2
    return {
        "d": d,
        "p": prob.p,
        "n": prob.n,
        "ks_ge": _ks(spec, e[~at]),
        "delta_count": float(at.mean()),
        "ge_eigs_s": t_ge,
        "dense_matrix_gb": prob.p**2 * 8 / 1e9,
    }


def bench_speed(eig_ds, seed: int) -> dict:
    from diffmem.theory import gaussian_equivalent, make_problem, rf_constants, spectral_density

    c = rf_constants(0.01)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        spec = spectral_density(constants=c, psi_p=64.0, psi_n=8.0, n_points=400)
        times.append(time.perf_counter() - t0)
    solve = min(times)
    # d = 1000: the equations do not depend on d; what changes is that nothing else can do it.
    t0 = time.perf_counter()
    big = spectral_density(constants=c, psi_p=64.0, psi_n=8.0, n_points=400)
    solve_1000 = time.perf_counter() - t0
    eig = []
    for d in eig_ds:
        prob = make_problem(d, 64.0, 8.0, 0.01, seed=seed)
        U = gaussian_equivalent(prob, c, seed=seed + 1).dense_U()
        t0 = time.perf_counter()
        np.linalg.eigvalsh(U)
        eig.append({"d": d, "p": prob.p, "eigvalsh_s": time.perf_counter() - t0})
        del U
    return {
        "solver_400_s": solve,
        "solver_400_all_s": times,
        "unconverged": int((~spec.converged).sum()),
        "mass": spec.mass,
        "d1000": {
            "p": 64000,
            "solver_s": solve_1000,
            "unconverged": int((~big.converged).sum()),
            "dense_matrix_gb": 64000**2 * 8 / 1e9,
        },
        "eigvalsh": eig,
        "speed_ratio_at_largest": eig[-1]["eigvalsh_s"] / solve,
    }


def bench_dynamics(d: int, psi_ns, max_steps: int, seed: int) -> dict:
    from diffmem.theory import (
        exact_curves,
        exact_matrices,
        fit_power_law,
        gaussian_equivalent_curves,
        make_problem,
        population_matrices,
        predicted_times,
        rf_constants,
        simulate_gd,
    )

    psi_p, t = 64.0, 0.1
    c = rf_constants(t)
    runs = []
    for i, pn in enumerate(psi_ns):
        pred = predicted_times(c, psi_p, pn)
        prob = make_problem(d, psi_p, pn, t, seed=[seed, i])
        t0 = time.perf_counter()
        U, V = exact_matrices(prob)
        pop = population_matrices(prob)
        lam_max = float(np.linalg.eigvalsh(U)[-1])
        t_mat = time.perf_counter() - t0
        frac = min(0.25, 0.03 * pn)  # the fluctuation excess scales like frac / psi_n: keep it ~1-2%
        dtau = frac * psi_p / (c.delta * lam_max)
        tau_hi = min(2.0 * pred["tau_mem"], max_steps * dtau)
        taus = np.geomspace(20 * dtau, tau_hi, 10)
        last = [0.0]

        def progress(k, n, pn=pn, last=last):
            if time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                print(f"  psi_n={pn:g}: GD step {k}/{n}", flush=True)

        gd = simulate_gd(
            prob,
            taus,
            dtau=dtau,
            seed=np.random.default_rng([seed, i, 2]),
            dtype=np.float32,
            matrices=(U, V, pop),
            progress=progress,
        )
        t0 = time.perf_counter()
        ref = exact_curves(prob, gd.tau, matrices=(U, V, pop))
        t_cf = time.perf_counter() - t0
        ge = gaussian_equivalent_curves(prob, gd.tau, constants=c, seed=np.random.default_rng([seed, i, 1]))
        err = {}
        for name, other in (("exact", ref), ("ge", ge)):
            for k in ("L_train", "L_test"):
                err[f"{k}_vs_{name}"] = float(np.max(np.abs(getattr(gd, k) / getattr(other, k) - 1.0)))
        runs.append(
            {
                "psi_n": pn,
                "p": prob.p,
                "n": prob.n,
                "dtau": dtau,
                "steps": gd.meta["n_steps"],
                "gd_s": gd.meta["seconds"],
                "matrices_s": t_mat,
                "closed_form_s": t_cf,
                "tau_max_over_tau_mem": float(gd.tau[-1] / pred["tau_mem"]),
                "tau": gd.tau.tolist(),
                "gd": {"L_train": gd.L_train.tolist(), "L_test": gd.L_test.tolist()},
                "exact": {"L_train": ref.L_train.tolist(), "L_test": ref.L_test.tolist()},
                "ge": {"L_train": ge.L_train.tolist(), "L_test": ge.L_test.tolist()},
                "max_rel_err": err,
            }
        )
        print(
            f"  psi_n={pn:g}: {gd.meta['n_steps']} GD steps in {gd.meta['seconds']:.0f} s, max rel err {err}",
            flush=True,
        )
    grid = [4.0, 8.0, 16.0, 32.0]
    fit = fit_power_law(grid, [predicted_times(c, psi_p, pn)["tau_mem"] for pn in grid])
    return {"runs": runs, "tau_mem_fit": fit, "predicted": {str(pn): predicted_times(c, psi_p, pn) for pn in grid}}


def _gap_without(es, mask: np.ndarray) -> float:
    """L_gen at the end of training of the closed form with the directions in ``mask`` left out."""
    import dataclasses

    from diffmem.theory import closed_form_losses

    keep = ~mask
    sub = dataclasses.replace(es, lam=es.lam[keep], P=es.P[keep], Q=es.Q[np.ix_(keep, keep)], R=es.R[keep])
    return float(closed_form_losses(sub, [np.inf]).L_gen[0])


def bench_bulks(d: int, seed: int) -> dict:
    from diffmem.theory import eigensystem_gaussian_equivalent, make_problem, rf_constants, spectral_density

    rows = []
    for t in (0.01, 0.1):
        c = rf_constants(t)
        for psi_n in (4.0, 8.0):
            spec = spectral_density(constants=c, psi_p=64.0, psi_n=psi_n)
            es = eigensystem_gaussian_equivalent(make_problem(d, 64.0, psi_n, t, seed=seed), c, seed=seed + 1)
            # each eigenvalue goes to the bulk whose gap-midpoints (geometric) enclose it
            cuts = [np.sqrt(a[1] * b[0]) for a, b in zip(spec.edges[:-1], spec.edges[1:])]
            which = np.searchsorted(cuts, es.lam)
            drop = np.sum(es.P**2, axis=1) / es.lam / es.d  # L_train(0) - L_train(inf), per direction

            rows.append(
                {
                    "t": t,
                    "psi_n": psi_n,
                    "L_gen_end": _gap_without(es, np.zeros(es.lam.size, bool)),
                    "bulks": [
                        {
                            "edges": e,
                            "role": r,
                            "weight": w,
                            "n_directions": int(np.sum(which == i)),
                            "L_train_drop": float(drop[which == i].sum()),
                            "L_gen_end_without": _gap_without(es, which == i),
                            "tau_left_edge": 64.0 / (c.delta * e[0]),
                        }
                        for i, (e, r, w) in enumerate(zip(spec.edges, spec.bulk_roles, spec.bulk_weights))
                    ],
                }
            )
    return {"d": d, "psi_p": 64.0, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_theory")
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--psi-n", type=float, nargs="+", default=[4.0, 8.0, 16.0, 32.0])
    ap.add_argument("--gd-max-steps", type=int, default=2000, help="cap on GD steps per psi_n")
    ap.add_argument(
        "--eig-d", type=int, nargs="+", default=[50, 100, 150], help="d of the dense eigvalsh timings (p = 64 d)"
    )
    ap.add_argument("--large-d", type=int, default=400, help="d of the large Gaussian-equivalent check (p = 64 d)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["spectrum", "speed", "dynamics", "large", "bulks"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from diffmem.io import write_json

    out = Path(args.out)
    res = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        }
    }
    t_all = time.perf_counter()
    if "speed" not in args.skip:
        print("solver speed ...", flush=True)
        res["speed"] = s = bench_speed(args.eig_d, args.seed)
        big = s["d1000"]
        print(
            f"  400-point density: {s['solver_400_s']:.3f} s ({s['unconverged']} unconverged, mass {s['mass']:.4f}); "
            f"d=1000 (p=64000): {big['solver_s']:.3f} s, dense matrix would be {big['dense_matrix_gb']:.0f} GB"
        )
        for e in s["eigvalsh"]:
            ratio = e["eigvalsh_s"] / s["solver_400_s"]
            print(f"  eigvalsh p={e['p']}: {e['eigvalsh_s']:.2f} s  (ratio to solver {ratio:.0f}x)")
        write_json(out / "bench_theory.json", res)
    if "spectrum" not in args.skip:
        print("spectrum vs simulation ...", flush=True)
        res["spectrum"] = s = bench_spectrum(args.d, args.seed)
        print(
            f"  d={s['d']} p={s['p']} n={s['n']}: KS(GE)={s['ks_ge']:.4f} KS(exact, top n+d)={s['ks_exact_top']:.4f}; "
            f"delta weight theory {s['delta_peak_weight_theory']:.6f} solver {s['delta_peak_weight_solver']:.6f} "
            f"(floor {s['delta_peak_weight_floor']:.2g}) GE count {s['delta_peak_weight_ge_count']:.6f}; "
            f"bulks {s['bulk_roles']}; GE eigenvalues in the memorization bulk {s['ge_count_memorization']} "
            f"(n={s['n']})"
        )
        write_json(out / "bench_theory.json", res)
    if "large" not in args.skip:
        print(f"spectrum vs Gaussian-equivalent eigenvalues at d={args.large_d} ...", flush=True)
        res["large"] = s = bench_large_ge(args.large_d, args.seed)
        print(f"  p={s['p']}: KS={s['ks_ge']:.4f}, delta count {s['delta_count']:.6f}, {s['ge_eigs_s']:.1f} s")
        write_json(out / "bench_theory.json", res)
    if "bulks" not in args.skip:
        print("which bulk carries memorization ...", flush=True)
        res["bulks"] = bulks = bench_bulks(args.d, args.seed)
        write_json(out / "bench_theory.json", res)
        for row in bulks["rows"]:
            parts = "; ".join(
                f"[{b['edges'][0]:.3g}, {b['edges'][1]:.3g}] {b['role']} ({b['n_directions']} directions): "
                f"L_train drop {b['L_train_drop']:.3f}, L_gen without it {b['L_gen_end_without']:.3g}"
                for b in row["bulks"]
            )
            print(f"  t={row['t']} psi_n={row['psi_n']:g}: L_gen at the end {row['L_gen_end']:.3g}; {parts}")
    if "dynamics" not in args.skip:
        print("closed form vs gradient descent ...", flush=True)
        res["dynamics"] = dyn = bench_dynamics(args.d, args.psi_n, args.gd_max_steps, args.seed)
        print(f"  tau_mem ~ psi_n^{dyn['tau_mem_fit']['exponent']:.3f} (r2 {dyn['tau_mem_fit']['r2']:.4f})")
    res["total_s"] = time.perf_counter() - t_all
    write_json(out / "bench_theory.json", res)

    print("\n| check | value |\n|---|---|")
    if "speed" in res:
        s = res["speed"]
        print(f"| 400-point density (psi_p=64, psi_n=8, t=0.01) | {s['solver_400_s']:.3f} s |")
        big = s["d1000"]
        print(
            f"| same at d=1000, p=64000 | {big['solver_s']:.3f} s "
            f"(eigvalsh impossible: {big['dense_matrix_gb']:.0f} GB) |"
        )
        e = s["eigvalsh"][-1]
        print(
            f"| eigvalsh at p={e['p']} (d={e['d']}) | {e['eigvalsh_s']:.2f} s, "
            f"{s['speed_ratio_at_largest']:.0f}x the solver |"
        )
    if "spectrum" in res:
        s = res["spectrum"]
        print(f"| KS distance, theory vs Gaussian-equivalent eigenvalues (d={s['d']}) | {s['ks_ge']:.4f} |")
        print(f"| KS distance, theory vs exact-U eigenvalues, top n+d (d={s['d']}) | {s['ks_exact_top']:.4f} |")
        print(
            f"| delta weight: 1-(1+psi_n)/psi_p / solver / count | {s['delta_peak_weight_theory']:.6f} / "
            f"{s['delta_peak_weight_solver']:.6f} / {s['delta_peak_weight_ge_count']:.6f} |"
        )
    if "large" in res:
        s = res["large"]
        print(
            f"| KS distance, theory vs Gaussian-equivalent eigenvalues at d={s['d']} (p={s['p']}, dense would be "
            f"{s['dense_matrix_gb']:.1f} GB) | {s['ks_ge']:.4f} ({s['ge_eigs_s']:.1f} s) |"
        )
    if "dynamics" in res:
        for r in res["dynamics"]["runs"]:
            e = r["max_rel_err"]
            print(
                f"| GD vs closed form, psi_n={r['psi_n']:g} ({r['steps']} steps, "
                f"tau up to {r['tau_max_over_tau_mem']:.2f} tau_mem) | "
                f"exact U: L_train {100 * e['L_train_vs_exact']:.2f}%, L_test {100 * e['L_test_vs_exact']:.2f}%; "
                f"GE: L_train {100 * e['L_train_vs_ge']:.2f}%, L_test {100 * e['L_test_vs_ge']:.2f}% |"
            )
        f = res["dynamics"]["tau_mem_fit"]
        print(f"| tau_mem exponent vs psi_n (4..32) | {f['exponent']:.3f} (r2 {f['r2']:.4f}) |")
    print(f"| total | {res['total_s']:.0f} s |")


if __name__ == "__main__":
    main()
