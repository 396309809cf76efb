"""The three theory jobs (spectrum, dynamics, phase): a frozen configuration in, a JSON-able result out, files
written atomically into an output folder. The CLI (:mod:`diffmem.theory.cli`) is a thin layer over these."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DynamicsConfig",
    "PhaseConfig",
    "SpectrumConfig",
    "run_dynamics",
    "run_phase",
    "run_spectrum",
]


def _positive(name, v):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0 (got {v!r})")


@dataclass(frozen=True)
class SpectrumConfig:
    psi_p: float = 64.0
    psi_n: float = 8.0
    t: float = 0.01
    sigma_x: float = 1.0
    activation: str = "tanh"
    n_points: int = 400
    sigma_eigs: tuple | None = None
    sigma_weights: tuple | None = None
    simulate: bool = False  # also draw a finite-size U and histogram its eigenvalues
    matrix: str = (
        "gaussian_equivalent"  # which U to simulate: "gaussian_equivalent" (low rank, fast) or "exact" (tanh U, O(p^3))
    )
    d: int = 100  # size of the simulation
    bins: int = 120
    seed: int = 0

    def validate(self) -> None:
        for k in ("psi_p", "psi_n", "t", "sigma_x"):
            _positive(k, getattr(self, k))
        if self.n_points < 10:
            raise ValueError(f"--n-points must be >= 10 (got {self.n_points})")
        if self.matrix not in ("gaussian_equivalent", "exact"):
            raise ValueError(f"--matrix must be 'gaussian_equivalent' or 'exact' (got {self.matrix!r})")
        if self.simulate and self.d < 2:
            raise ValueError(f"--d must be >= 2 (got {self.d})")


@dataclass(frozen=True)
class DynamicsConfig:
    psi_p: float = 64.0
    psi_n: tuple = (4.0, 8.0, 16.0, 32.0)
    t: float = 0.1
    d: int = 100
    sigma_x: float = 1.0
    activation: str = "tanh"
    method: str = "gaussian_equivalent"  # or "exact" (dense p x p, for p up to a few thousand)
    n_taus: int = 80
    tau_min_ratio: float = 1e-4  # tau grid from tau_min_ratio * tau_mem ...
    tau_max_ratio: float = 100.0  # ... to tau_max_ratio * tau_mem
    gd: bool = False  # also run the explicit gradient-descent check
    gd_max_steps: int = 3000
    gd_dtau_frac: float = 0.25  # GD step as a fraction of the stability limit psi_p / (Delta lam_max)
    seed: int = 0

    def validate(self) -> None:
        for k in ("psi_p", "t", "sigma_x", "tau_min_ratio", "tau_max_ratio", "gd_dtau_frac"):
            _positive(k, getattr(self, k))
        if not self.psi_n or any(not (math.isfinite(x) and x > 0) for x in self.psi_n):
            raise ValueError("--psi-n must be one or more numbers > 0")
        if self.method not in ("gaussian_equivalent", "exact"):
            raise ValueError(f"--method must be 'gaussian_equivalent' or 'exact' (got {self.method!r})")
        if self.d < 2 or self.n_taus < 2 or self.gd_max_steps < 1:
            raise ValueError("--d and --n-taus must be >= 2, --gd-max-steps >= 1")
        if self.tau_min_ratio >= self.tau_max_ratio:
            raise ValueError("--tau-min-ratio must be smaller than --tau-max-ratio")


@dataclass(frozen=True)
class PhaseConfig:
    t: float = 0.1
    psi_n: tuple = tuple(float(x) for x in np.geomspace(1, 128, 15))
    psi_p: tuple = tuple(float(x) for x in np.geomspace(2, 64, 11))
    taus: tuple = (100.0, 1000.0, 10000.0, math.inf)
    d: int = 32
    sigma_x: float = 1.0
    activation: str = "tanh"
    threshold: float = 0.25  # L_gen level of the boundary (losses are 1 - O(Delta_t); see docs/theory.md)
    seed: int = 0

    def validate(self) -> None:
        for k in ("t", "sigma_x", "threshold"):
            _positive(k, getattr(self, k))
        if len(self.psi_n) < 2 or any(x <= 0 for x in self.psi_n) or list(self.psi_n) != sorted(set(self.psi_n)):
            raise ValueError("--psi-n must be at least two increasing numbers > 0")
        if not self.psi_p or any(x <= 0 for x in self.psi_p):
            raise ValueError("--psi-p must be numbers > 0")
        if not self.taus or any(not (x >= 0) for x in self.taus):
            raise ValueError("--taus must be numbers >= 0 (inf for the end of training)")
        if self.d < 2:
            raise ValueError(f"--d must be >= 2 (got {self.d})")


def config_dict(cfg) -> dict:
    from ..io import jsonable

    return jsonable(asdict(cfg))


# --------------------------------------------------------------------------------------------------- spectrum
def run_spectrum(cfg: SpectrumConfig, out: Path | None = None, plot: bool = False) -> dict:
    from .simulation import eigenvalue_histogram, gaussian_equivalent, ge_eigenvalues, make_problem
    from .spectrum import spectral_density

    cfg.validate()
    t0 = time.perf_counter()
    res = spectral_density(
        cfg.t,
        cfg.psi_p,
        cfg.psi_n,
        sigma_x=None if cfg.sigma_eigs else cfg.sigma_x,
        activation=cfg.activation,
        sigma_eigs=cfg.sigma_eigs,
        sigma_weights=cfg.sigma_weights,
        n_points=cfg.n_points,
    )
    solve_s = time.perf_counter() - t0
    d = res.to_dict()
    result = {
        "config": config_dict(cfg),
        "constants": d["constants"],
        "lambda": d["lambda"],
        "density": d["density"],
        "converged": d["converged"],
        "n_unconverged": d["n_unconverged"],
        "delta_peak_weight": d["delta_peak_weight"],
        "delta_peak_weight_solver": d["delta_peak_weight_solver"],
        "edges": d["edges"],
        "lambda_min": d["lambda_min"],
        "mass": d["mass"],
        "mass_expected": d["mass_expected"],
        "asymptotic": d["asymptotic"],
        "asymptotic_density": d["asymptotic_density"],
        "solver_seconds": solve_s,
    }
    if cfg.simulate:
        if cfg.sigma_eigs:
            raise ValueError("--simulate supports Sigma = sigma_x^2 I only; drop --sigma-eigs")
        prob = make_problem(
            cfg.d, cfg.psi_p, cfg.psi_n, cfg.t, sigma_x=cfg.sigma_x, activation=cfg.activation, seed=cfg.seed
        )
        if cfg.matrix == "exact":
            from .simulation import exact_matrices

            U, _ = exact_matrices(prob)
            eigs = np.linalg.eigvalsh(U)
            del U
            # the delta peak is smeared at finite d: take the p - n - d smallest eigenvalues as the peak (rank count)
            k = min(prob.n + prob.d, prob.p)
            rest = eigs[-k:]
        else:
            rng = np.random.default_rng([cfg.seed, 1])
            eigs = ge_eigenvalues(gaussian_equivalent(prob, res.constants, rng))
            rest = eigs[np.abs(eigs - res.constants.s2) > 1e-8 * max(res.constants.s2, 1e-300) + 1e-12]
        hist = eigenvalue_histogram(rest, None, bins=cfg.bins)
        scale = rest.size / eigs.size
        hist["density"] = [x * scale for x in hist["density"]]
        hist.update(n_eigs=int(eigs.size), delta_count=int(eigs.size - rest.size), delta_fraction=float(1 - scale))
        result["simulation"] = {
            "p": prob.p,
            "n": prob.n,
            "d": prob.d,
            "matrix": cfg.matrix,
            "histogram": hist,
            "ks_distance": _ks(res, rest),
        }
    if out is not None:
        from ..io import write_json

        write_json(Path(out) / "spectrum.json", result)
        if plot:
            from .plots import plot_spectrum

            result["figures"] = [plot_spectrum(result, Path(out) / "figures" / "spectrum.png")]
    return result


def _ks(res, rest) -> float:
    """Kolmogorov distance between the theory's continuous part (normalised) and the eigenvalues outside the delta peak."""
    rest = np.sort(rest)
    F = res.cdf()
    F = F / F[-1]
    emp = np.searchsorted(rest, res.lambdas, side="right") / max(rest.size, 1)
    emp_left = np.searchsorted(rest, res.lambdas, side="left") / max(rest.size, 1)
    return float(max(np.abs(F - emp).max(), np.abs(F - emp_left).max()))


# --------------------------------------------------------------------------------------------------- dynamics
def run_dynamics(
    cfg: DynamicsConfig,
    out: Path | None = None,
    plot: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    from .constants import rf_constants
    from .dynamics import (
        default_taus,
        eigensystem_gaussian_equivalent,
        exact_curves,
        fit_power_law,
        gaussian_equivalent_curves,
        predicted_times,
        simulate_gd,
    )
    from .simulation import make_problem
    from .spectrum import spectral_density

    cfg.validate()
    c = rf_constants(cfg.t, cfg.sigma_x, cfg.activation)
    runs = []
    for i, pn in enumerate(cfg.psi_n):
        spec = spectral_density(constants=c, psi_p=cfg.psi_p, psi_n=pn, n_points=300)
        pred = predicted_times(c, cfg.psi_p, pn, spectrum=spec)
        taus = default_taus(pred["tau_mem"], cfg.n_taus, cfg.tau_min_ratio, cfg.tau_max_ratio)
        prob = make_problem(
            cfg.d, cfg.psi_p, pn, cfg.t, sigma_x=cfg.sigma_x, activation=cfg.activation, seed=[cfg.seed, i]
        )
        rng = np.random.default_rng([cfg.seed, i, 1])
        if cfg.method == "exact":
            cur = exact_curves(prob, taus)
        else:
            cur = gaussian_equivalent_curves(prob, taus, constants=c, seed=rng)
        run = {"psi_n": pn, "p": prob.p, "n": prob.n, "predicted": pred, "theory": cur.to_dict()}
        if cfg.gd:
            es = eigensystem_gaussian_equivalent(prob, c, rng)
            lam_max = float(es.lam.max())
            dtau = cfg.gd_dtau_frac * cfg.psi_p / (c.delta * lam_max)
            t_hi = min(taus[-1], dtau * cfg.gd_max_steps)
            gtaus = np.geomspace(max(taus[0], dtau), t_hi, 16)
            gd = simulate_gd(
                prob,
                gtaus,
                dtau=dtau,
                seed=np.random.default_rng([cfg.seed, i, 2]),
                dtype=np.float32,
                progress=(lambda k, n, pn=pn: progress(f"GD psi_n={pn:g}: step {k}/{n}")) if progress else None,
            )
            ref = exact_curves(prob, gd.tau)
            ge = gaussian_equivalent_curves(prob, gd.tau, constants=c, seed=np.random.default_rng([cfg.seed, i, 1]))
            run["gd"] = gd.to_dict()
            run["gd_reference_exact"] = ref.to_dict()
            run["gd_relative_error"] = _rel_errors(gd, ref, ge)
        runs.append(run)
        if progress:
            progress(f"psi_n={pn:g} done")
    fit = fit_power_law(cfg.psi_n, [r["predicted"]["tau_mem"] for r in runs]) if len(runs) > 1 else None
    for r in runs:
        r["E_score_min"] = float(min(r["theory"]["E_score"]))
    esc_fit = fit_power_law(cfg.psi_n, [r["E_score_min"] for r in runs]) if len(runs) > 1 else None
    fit_f = None
    if len(runs) > 1 and all(r["predicted"].get("tau_mem_finite") for r in runs):
        fit_f = fit_power_law(cfg.psi_n, [r["predicted"]["tau_mem_finite"] for r in runs])
    result = {
        "config": config_dict(cfg),
        "constants": c.to_dict(),
        "runs": runs,
        "tau_mem_fit": fit,
        "tau_mem_finite_fit": fit_f,
        "E_score_min_fit": esc_fit,
        "conventions": {
            "time": "tau = k eta / d^2",
            "tau_gen": "1/Delta_t",
            "tau_mem": "psi_p/(Delta_t lambda_min), lambda_min of Theorem 3.2",
            "tau_mem_finite": "psi_p/(Delta_t lambda_min) with the left edge of the first bulk from the Theorem 3.1 solver",
            "population": "Gaussian-equivalent U, V" if cfg.method != "exact" else "exact for Gaussian data",
        },
    }
    if out is not None:
        from ..io import write_json

        write_json(Path(out) / "dynamics.json", result)
        if plot:
            from .plots import plot_dynamics

            result["figures"] = [plot_dynamics(result, Path(out) / "figures" / "dynamics.png")]
    return result


def _rel_errors(gd, ref, ge) -> dict:
    out = {}
    for name, other in (("vs_exact", ref), ("vs_gaussian_equivalent", ge)):
        out[name] = {
            k: float(np.max(np.abs(getattr(gd, k) - getattr(other, k)) / np.abs(getattr(other, k))))
            for k in ("L_train", "L_test", "E_score")
        }
    return out


# --------------------------------------------------------------------------------------------------- phase
def run_phase(
    cfg: PhaseConfig,
    out: Path | None = None,
    plot: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    from .dynamics import fit_power_law
    from .phase import phase_diagram

    cfg.validate()
    pdg = phase_diagram(
        cfg.t,
        cfg.psi_n,
        cfg.psi_p,
        cfg.taus,
        d=cfg.d,
        sigma_x=cfg.sigma_x,
        activation=cfg.activation,
        threshold=cfg.threshold,
        seed=cfg.seed,
        progress=progress,
    )
    result = {"config": config_dict(cfg), **pdg.to_dict()}
    bnd = pdg.boundary()
    fits = []
    for i in range(len(cfg.taus)):
        ok = np.isfinite(bnd[i])
        fits.append(fit_power_law(np.asarray(cfg.psi_p)[ok], bnd[i][ok]) if ok.sum() >= 2 else None)
    result["boundary_fit_vs_psi_p"] = fits
    if out is not None:
        from ..io import write_json

        write_json(Path(out) / "phase.json", result)
        if plot:
            from .plots import plot_phase

            result["figures"] = [plot_phase(result, Path(out) / "figures" / "phase.png")]
    return result
