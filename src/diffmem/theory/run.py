"""The three theory jobs (spectrum, dynamics, phase): a frozen configuration in, a JSON-able result out, files
written atomically into an output folder. The CLI (:mod:`diffmem.theory.cli`) is a thin layer over these: each
field of a configuration is one command-line flag, and its docstring is the flag's help.

Files are written with :func:`diffmem.io.write_json`: ``+inf`` becomes the string ``"inf"``, ``-inf`` ``"-inf"``
and NaN ``null`` (the contents of spectrum.json, dynamics.json and phase.json are listed in docs/theory.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..validation import Constraint, Each, Integer, Interval, OneOf, check

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DynamicsConfig",
    "PhaseConfig",
    "SpectrumConfig",
    "config_dict",
    "run_dynamics",
    "run_phase",
    "run_spectrum",
]

ActivationName = Literal["tanh", "relu", "linear"]
MatrixKind = Literal["gaussian_equivalent", "exact"]


_FLAG = {"label": "--{flag}", "got": " (got {value})"}  # the messages name the command-line flags
_POSITIVE = Interval(0, finite=True)


@dataclass(frozen=True)
class SpectrumConfig:
    """Configuration of :func:`run_spectrum` (``diffmem theory spectrum``)."""

    psi_p: float = 64.0
    """p/d, the number of random features per data dimension."""
    psi_n: float = 8.0
    """n/d, the number of training points per data dimension."""
    t: float = 0.01
    """Diffusion time t (OU time; Delta_t = 1 - e^{-2t})."""
    sigma_x: float = 1.0
    """Data scale: Sigma = sigma_x^2 I."""
    activation: ActivationName = "tanh"
    """Feature non-linearity."""
    n_points: int = 400
    """Grid points of the density."""
    sigma_eigs: tuple[float, ...] | None = None
    """Eigenvalues of the data covariance (a discrete mixture); replaces sigma_x."""
    sigma_weights: tuple[float, ...] | None = None
    """Weights of sigma_eigs (default equal)."""
    simulate: bool = False
    """Also histogram the eigenvalues of a simulated U at size d (see matrix)."""
    matrix: MatrixKind = "gaussian_equivalent"
    """Simulated U: Gaussian equivalent (low rank, fast) or the exact U with the noise averaged analytically
    (O(p^3))."""
    d: int = 100
    """Data dimension of the simulation."""
    bins: int = 120
    """Histogram bins."""
    seed: int = 0
    """Random seed for the simulated matrices."""

    def validate(self) -> None:
        """Raise ``ValueError`` (naming the flag) on a setting the solver cannot use."""
        fields: dict[str, Constraint] = dict.fromkeys(("psi_p", "psi_n", "t", "sigma_x"), _POSITIVE)
        fields.update(n_points=Integer(min=10), matrix=OneOf("gaussian_equivalent", "exact"), bins=Integer(min=1))
        if self.simulate:
            fields["d"] = Integer(min=2)
        check(self, fields, **_FLAG)


@dataclass(frozen=True)
class DynamicsConfig:
    """Configuration of :func:`run_dynamics` (``diffmem theory dynamics``)."""

    psi_p: float = 64.0
    """p/d, the number of random features per data dimension."""
    psi_n: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    """n/d values, one run each."""
    t: float = 0.1
    """Diffusion time t (OU time; Delta_t = 1 - e^{-2t})."""
    d: int = 100
    """Data dimension of the finite-size draw."""
    sigma_x: float = 1.0
    """Data scale: Sigma = sigma_x^2 I."""
    activation: ActivationName = "tanh"
    """Feature non-linearity."""
    method: MatrixKind = "gaussian_equivalent"
    """Matrices of the closed form: Gaussian equivalent (fast) or exact (dense p x p, for p up to a few
    thousand)."""
    n_taus: int = 80
    """Points of the time grid."""
    tau_min_ratio: float = 1e-4
    """First time of the grid as a multiple of tau_mem."""
    tau_max_ratio: float = 100.0
    """Last time of the grid as a multiple of tau_mem."""
    gd: bool = False
    """Also run explicit gradient descent (fresh noise per step) as a check."""
    gd_max_steps: int = 3000
    """Cap on gradient-descent steps per psi_n."""
    gd_dtau_frac: float = 0.25
    """Gradient-descent step as a fraction of the stability limit psi_p / (Delta_t lam_max)."""
    seed: int = 0
    """Random seed for the simulated matrices."""

    def validate(self) -> None:
        """Raise ``ValueError`` (naming the flag) on a setting the closed form cannot use."""
        positive = ("psi_p", "t", "sigma_x", "tau_min_ratio", "tau_max_ratio", "gd_dtau_frac")
        fields: dict[str, Constraint] = dict.fromkeys(positive, _POSITIVE)
        fields.update(
            psi_n=Each(_POSITIVE, text="be one or more numbers > 0"),
            method=OneOf("gaussian_equivalent", "exact"),
            d=Integer(min=2),
            n_taus=Integer(min=2),
            gd_max_steps=Integer(min=1),
        )
        check(self, fields, **_FLAG)
        if self.tau_min_ratio >= self.tau_max_ratio:
            raise ValueError("--tau-min-ratio must be smaller than --tau-max-ratio")


# numpy.geomspace(1, 128, 15) and numpy.geomspace(2, 64, 11), written out to the last bit so that building the
# command line does not import numpy (tests/test_theory.py checks they are equal)
_GEOM_1_128_15 = (
    1.0, 1.4142135623730951, 2.0, 2.82842712474619, 4.0, 5.656854249492381, 7.999999999999999, 11.31370849898476,
    16.0, 22.627416997969522, 32.00000000000001, 45.25483399593905, 63.999999999999986, 90.50966799187808, 128.0,
)  # fmt: skip
_GEOM_2_64_11 = (
    2.0, 2.82842712474619, 3.999999999999999, 5.656854249492379, 7.999999999999999, 11.31370849898476,
    15.999999999999993, 22.62741699796951, 31.99999999999999, 45.25483399593903, 64.0,
)  # fmt: skip


@dataclass(frozen=True)
class PhaseConfig:
    """Configuration of :func:`run_phase` (``diffmem theory phase``)."""

    t: float = 0.1
    """Diffusion time t (OU time; Delta_t = 1 - e^{-2t})."""
    psi_n: tuple[float, ...] = _GEOM_1_128_15
    """Grid of n/d, increasing; by default 15 values geometric from 1 to 128."""
    psi_p: tuple[float, ...] = _GEOM_2_64_11
    """Grid of p/d; by default 11 values geometric from 2 to 64."""
    taus: tuple[float, ...] = (100.0, 1000.0, 10000.0, math.inf)
    """Rescaled training times tau = k eta / d^2; 'inf' is the end of training."""
    d: int = 32
    """Data dimension of each draw."""
    sigma_x: float = 1.0
    """Data scale: Sigma = sigma_x^2 I."""
    activation: ActivationName = "tanh"
    """Feature non-linearity."""
    threshold: float = 0.25
    """L_gen level that defines the boundary (losses are 1 - O(Delta_t); see docs/theory.md)."""
    seed: int = 0
    """Random seed for the simulated matrices."""

    def validate(self) -> None:
        """Raise ``ValueError`` (naming the flag) on a grid the phase diagram cannot use."""
        fields: dict[str, Constraint] = dict.fromkeys(("t", "sigma_x", "threshold"), _POSITIVE)
        fields.update(
            psi_n=Each(Interval(0), min_len=2, increasing=True, text="be at least two increasing numbers > 0"),
            psi_p=Each(Interval(0), text="be numbers > 0"),
            taus=Each(Interval(0, closed="left"), text="be numbers >= 0", hint="inf for the end of training"),
            d=Integer(min=2),
        )
        check(self, fields, **_FLAG)


def config_dict(cfg: SpectrumConfig | DynamicsConfig | PhaseConfig) -> dict:
    """The configuration as plain JSON types (``math.inf`` written as ``"inf"``)."""
    from ..io import jsonable

    return jsonable(asdict(cfg))


# --------------------------------------------------------------------------------------------------- spectrum
def run_spectrum(cfg: SpectrumConfig, out: str | Path | None = None, plot: bool = False) -> dict[str, Any]:
    """Solve the spectrum equations (Theorem 3.1) for one configuration; optionally simulate a finite U.

    Parameters
    ----------
    cfg : SpectrumConfig
        The configuration; validated first (``ValueError`` naming the flag if it is not valid).
    out : str or Path, optional
        Folder to write ``spectrum.json`` into (created if needed); ``None`` writes nothing.
    plot : bool, default False
        Also draw ``figures/spectrum.png`` under ``out`` (needs ``out``).

    Returns
    -------
    dict
        Plain JSON types, as written to spectrum.json: ``config``; ``constants`` (a_t, b_t, v_t2, s_t2,
        delta_t, gamma_t, alpha, ...); ``lambda`` and ``density`` (lists of ``cfg.n_points`` floats: the grid
        and the continuous part of the eigenvalue density of U); ``converged`` (list of bool) and
        ``n_unconverged``; ``delta_peak_weight`` (exact, max(0, 1 - (1 + psi_n)/psi_p)) and
        ``delta_peak_weight_solver`` with ``delta_peak_weight_floor`` (its resolution) and ``delta_peak_resolved``;
        ``edges`` ([[lo, hi], ...] of the bulks) with ``bulk_weights`` and ``bulk_roles``; ``memorization_bulk``,
        ``population_bulk`` ([lo, hi] or None) and their ``..._weight``; ``lambda_min`` (the left edge of the
        memorization bulk, None if there is none); ``mass`` and
        ``mass_expected``; ``asymptotic`` and ``asymptotic_density`` (Theorem 3.2, ``None`` for a mixture
        covariance); ``solver_seconds``; with ``cfg.simulate`` also ``simulation`` (p, n, d, matrix,
        histogram, ks_distance); with ``plot`` also ``figures`` (list of paths, not in the file).

    Examples
    --------
    >>> res = run_spectrum(SpectrumConfig(n_points=50))
    >>> len(res["density"]), res["n_unconverged"], round(res["delta_peak_weight"], 6)
    (50, 0, 0.859375)
    """
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
    result: dict[str, Any] = {
        "config": config_dict(cfg),
        "constants": d["constants"],
        "lambda": d["lambda"],
        "density": d["density"],
        "converged": d["converged"],
        "n_unconverged": d["n_unconverged"],
        "delta_peak_weight": d["delta_peak_weight"],
        "delta_peak_weight_solver": d["delta_peak_weight_solver"],
        "delta_peak_weight_floor": d["delta_peak_weight_floor"],
        "delta_peak_resolved": d["delta_peak_resolved"],
        "edges": d["edges"],
        "bulk_weights": d["bulk_weights"],
        "bulk_roles": d["bulk_roles"],
        "memorization_bulk": d["memorization_bulk"],
        "memorization_bulk_weight": d["memorization_bulk_weight"],
        "population_bulk": d["population_bulk"],
        "population_bulk_weight": d["population_bulk_weight"],
        "lambda_min": d["lambda_min"],
        "mass": d["mass"],
        "mass_expected": d["mass_expected"],
        "asymptotic": d["asymptotic"],
        "asymptotic_density": d["asymptotic_density"],
        "solver_seconds": solve_s,
    }
    if cfg.simulate:
        result["simulation"] = _simulated_spectrum(cfg, res)
    if out is not None:
        from ..io import write_json

        write_json(Path(out) / "spectrum.json", result)
        if plot:
            from .plots import plot_spectrum

            result["figures"] = [plot_spectrum(result, Path(out) / "figures" / "spectrum.png")]
    return result


def _simulated_spectrum(cfg: SpectrumConfig, res: Any) -> dict[str, Any]:
    """Histogram of the eigenvalues of one finite U (Gaussian equivalent or exact) outside the delta peak, and its
    Kolmogorov distance to the theory ``res``."""
    import numpy as np

    from .simulation import eigenvalue_histogram, gaussian_equivalent, ge_eigenvalues, make_problem

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
    ks = _ks(res, rest)
    return {"p": prob.p, "n": prob.n, "d": prob.d, "matrix": cfg.matrix, "histogram": hist, "ks_distance": ks}


def _ks(res: Any, rest: np.ndarray) -> float:
    """Kolmogorov distance between the theory's continuous part (normalised) and the eigenvalues outside the
    delta peak."""
    import numpy as np

    rest = np.sort(rest)
    F = res.cdf()
    F = F / F[-1]
    emp = np.searchsorted(rest, res.lambdas, side="right") / max(rest.size, 1)
    emp_left = np.searchsorted(rest, res.lambdas, side="left") / max(rest.size, 1)
    return float(max(np.abs(F - emp).max(), np.abs(F - emp_left).max()))


# --------------------------------------------------------------------------------------------------- dynamics
def run_dynamics(
    cfg: DynamicsConfig,
    out: str | Path | None = None,
    plot: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Closed-form training curves, tau_gen and tau_mem for each psi_n of one configuration.

    For each psi_n: the spectrum (300 points) and the predicted times, a log-spaced grid of ``cfg.n_taus``
    times from ``tau_min_ratio`` to ``tau_max_ratio`` times tau_mem, one draw of W, X at dimension ``cfg.d``
    (seed ``[cfg.seed, i]``) and the closed-form L_train, L_test, L_gen, E_score on that grid; with ``cfg.gd``
    also explicit gradient descent and its relative error to the closed forms.

    Parameters
    ----------
    cfg : DynamicsConfig
        The configuration; validated first (``ValueError`` naming the flag if it is not valid).
    out : str or Path, optional
        Folder to write ``dynamics.json`` into; ``None`` writes nothing.
    plot : bool, default False
        Also draw ``figures/dynamics.png`` under ``out``.
    progress : callable (str) -> None, optional
        Receives one-line progress messages.

    Returns
    -------
    dict
        Plain JSON types, as written to dynamics.json: ``config``, ``constants``, ``runs`` (one dict per psi_n:
        ``psi_n``, ``p``, ``n``, ``predicted`` (tau_gen, tau_mem, ratio, lambda_min, tau_mem_finite, ...),
        ``theory`` (lists tau, L_train, L_test, L_gen, E_score of length ``cfg.n_taus``), ``E_score_min``, and
        with ``cfg.gd`` ``gd``, ``gd_reference_exact``, ``gd_relative_error``), ``tau_mem_fit``,
        ``tau_mem_finite_fit``, ``E_score_min_fit`` (power laws against psi_n, ``None`` for one psi_n) and
        ``conventions``.

    Examples
    --------
    >>> res = run_dynamics(DynamicsConfig(psi_n=(4.0, 8.0), d=8, n_taus=12))
    >>> [r["psi_n"] for r in res["runs"]], len(res["runs"][0]["theory"]["L_train"])
    ([4.0, 8.0], 12)
    >>> round(res["runs"][0]["predicted"]["tau_gen"], 4)  # 1 / Delta_t at t = 0.1
    5.5167
    """
    import numpy as np

    from .constants import rf_constants
    from .gradient_flow import default_taus, exact_curves, fit_power_law, gaussian_equivalent_curves, predicted_times
    from .simulation import make_problem
    from .spectrum import spectral_density

    cfg.validate()
    c = rf_constants(cfg.t, cfg.sigma_x, cfg.activation)
    runs: list[dict[str, Any]] = []
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
        run: dict[str, Any] = {"psi_n": pn, "p": prob.p, "n": prob.n, "predicted": pred, "theory": cur.to_dict()}
        if cfg.gd:
            run.update(_gd_check(cfg, prob, c, taus, rng, i, _gd_progress(progress, pn)))
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
    result: dict[str, Any] = {
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
            "tau_mem_finite": (
                "psi_p/(Delta_t lambda_min) with the left edge of the first bulk from the Theorem 3.1 solver"
            ),
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


def _gd_check(
    cfg: DynamicsConfig,
    prob: Any,
    c: Any,
    taus: np.ndarray,
    rng: np.random.Generator,
    i: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Explicit gradient descent for one psi_n against the exact and the Gaussian-equivalent closed forms.

    ``rng`` is the generator the closed-form curves drew from (its next draw sets the step from lam_max).
    """
    import numpy as np

    from .gradient_flow import eigensystem_gaussian_equivalent, exact_curves, gaussian_equivalent_curves, simulate_gd

    es = eigensystem_gaussian_equivalent(prob, c, rng)
    lam_max = float(es.lam.max())
    dtau = cfg.gd_dtau_frac * cfg.psi_p / (c.delta * lam_max)
    t_hi = min(taus[-1], dtau * cfg.gd_max_steps)
    gtaus = np.geomspace(max(taus[0], dtau), t_hi, 16)
    gd = simulate_gd(
        prob, gtaus, dtau=dtau, seed=np.random.default_rng([cfg.seed, i, 2]), dtype=np.float32, progress=progress
    )
    ref = exact_curves(prob, gd.tau)
    ge = gaussian_equivalent_curves(prob, gd.tau, constants=c, seed=np.random.default_rng([cfg.seed, i, 1]))
    return {"gd": gd.to_dict(), "gd_reference_exact": ref.to_dict(), "gd_relative_error": _rel_errors(gd, ref, ge)}


def _gd_progress(progress: Callable[[str], None] | None, pn: float) -> Callable[[int, int], None] | None:
    if progress is None:
        return None

    def report(k: int, n: int) -> None:
        progress(f"GD psi_n={pn:g}: step {k}/{n}")

    return report


def _rel_errors(gd: Any, ref: Any, ge: Any) -> dict:
    import numpy as np

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
    out: str | Path | None = None,
    plot: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """L_gen over the (psi_n, psi_p) grid at each training time, the memorisation boundary and its fit.

    Parameters
    ----------
    cfg : PhaseConfig
        The configuration; validated first (``ValueError`` naming the flag if it is not valid).
    out : str or Path, optional
        Folder to write ``phase.json`` into; ``None`` writes nothing.
    plot : bool, default False
        Also draw ``figures/phase.png`` under ``out``.
    progress : callable (done, total) -> None, optional
        Called after each grid point.

    Returns
    -------
    dict
        Plain JSON types, as written to phase.json: ``config``; ``psi_n`` (N floats), ``psi_p`` (P floats),
        ``tau`` (T floats, ``"inf"`` for an infinite time); ``L_gen``, ``L_train``, ``L_test`` (nested lists of
        shape (T, N, P)); ``threshold``; ``boundary_psi_n`` ((T, P), ``None`` where L_gen never crosses the
        threshold); ``n_star_psi_n`` (= psi_p, the line n = p); ``t``, ``d``, ``constants``, ``method``;
        ``boundary_fit_vs_psi_p`` (T power-law fits of the boundary against psi_p, ``None`` with fewer than two
        finite points); with ``plot`` also ``figures``.

    Examples
    --------
    >>> cfg = PhaseConfig(psi_n=(1.0, 4.0, 16.0), psi_p=(4.0,), taus=(100.0, math.inf), d=6)
    >>> res = run_phase(cfg)
    >>> res["tau"], len(res["L_gen"]), len(res["L_gen"][0]), len(res["L_gen"][0][0])
    ([100.0, 'inf'], 2, 3, 1)
    """
    import numpy as np

    from .gradient_flow import fit_power_law
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
    result: dict[str, Any] = {"config": config_dict(cfg), **pdg.to_dict()}
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
