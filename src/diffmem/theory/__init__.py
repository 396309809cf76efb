"""Random-features theory of score learning (Bonnaire et al. 2025, section 3).

* :func:`rf_constants` — Gaussian-equivalent constants a_t, b_t, v_t^2, s_t^2 (Gauss-Hermite quadrature).
* :func:`spectral_density` — eigenvalue density of U from the self-consistent equations (Theorem 3.1),
  :func:`asymptotic_spectrum` — the large-psi law (Theorem 3.2).
* :func:`make_problem`, :func:`exact_matrices`, :func:`population_matrices`, :func:`gaussian_equivalent`
  — finite-size matrices.
* :func:`closed_form_losses`, :func:`gaussian_equivalent_curves`, :func:`exact_curves`, :func:`simulate_gd`,
  :func:`predicted_times` — training dynamics (gradient flow of the loss), tau_gen, tau_mem.
* :func:`phase_diagram` — L_gen over (psi_n, psi_p) at given training times.
* :func:`tau_from_paper_code_time`, :func:`paper_code_time_from_tau` — diffmem's tau against the time axis of the
  paper's public training script.
* :mod:`diffmem.theory.run` — the three jobs behind ``diffmem theory spectrum | dynamics | phase``.

The equations, conventions and file formats are in docs/theory.md.

Names load lazily (PEP 562), so ``import diffmem.theory.cli`` does not import numpy.
"""

from ..lazy import lazy_exports

_WHERE = {
    ".constants": ["RFConstants", "rf_constants"],
    ".gradient_flow": [
        "LossCurves",
        "closed_form_losses",
        "default_taus",
        "eigensystem_dense",
        "eigensystem_gaussian_equivalent",
        "exact_curves",
        "first_bulk_edge",
        "fit_power_law",
        "gaussian_equivalent_curves",
        "predicted_times",
        "simulate_gd",
    ],
    ".phase": ["PhaseDiagram", "phase_diagram"],
    ".simulation": [
        "RFProblem",
        "eigenvalue_histogram",
        "exact_matrices",
        "gaussian_equivalent",
        "ge_eigenvalues",
        "make_problem",
        "mc_matrices",
        "population_matrices",
    ],
    ".spectrum": ["SpectrumResult", "asymptotic_spectrum", "spectral_density"],
    ".time_axis": ["paper_code_learning_rate", "paper_code_time_from_tau", "tau_from_paper_code_time"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
