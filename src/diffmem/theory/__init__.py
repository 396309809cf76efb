"""Random-features theory of score learning (Bonnaire et al. 2025, section 3).

* :func:`rf_constants` — Gaussian-equivalent constants a_t, b_t, v_t^2, s_t^2 (Gauss-Hermite quadrature).
* :func:`spectral_density` — eigenvalue density of U from the self-consistent equations (Theorem 3.1),
  :func:`asymptotic_spectrum` — the large-psi law (Theorem 3.2).
* :func:`make_problem`, :func:`exact_matrices`, :func:`population_matrices`, :func:`gaussian_equivalent` — finite-size matrices.
* :func:`closed_form_losses`, :func:`gaussian_equivalent_curves`, :func:`exact_curves`, :func:`simulate_gd`,
  :func:`predicted_times` — training dynamics, tau_gen, tau_mem.
* :func:`phase_diagram` — L_gen over (psi_n, psi_p) at given training times.

Heavy work only runs when called; importing this package costs numpy.
"""

from .constants import RFConstants, rf_constants
from .dynamics import (LossCurves, closed_form_losses, default_taus, eigensystem_dense, eigensystem_gaussian_equivalent, exact_curves,
                       first_bulk_edge, fit_power_law, gaussian_equivalent_curves, predicted_times, simulate_gd)
from .phase import PhaseDiagram, phase_diagram
from .simulation import (RFProblem, eigenvalue_histogram, exact_matrices, gaussian_equivalent, ge_eigenvalues, make_problem, mc_matrices,
                         population_matrices)
from .spectrum import SpectrumResult, asymptotic_spectrum, spectral_density

__all__ = ["RFConstants", "rf_constants", "SpectrumResult", "spectral_density", "asymptotic_spectrum", "RFProblem", "make_problem",
           "exact_matrices", "mc_matrices", "population_matrices", "gaussian_equivalent", "ge_eigenvalues", "eigenvalue_histogram",
           "LossCurves", "closed_form_losses", "eigensystem_dense", "eigensystem_gaussian_equivalent", "gaussian_equivalent_curves",
           "exact_curves", "simulate_gd", "predicted_times", "first_bulk_edge", "fit_power_law", "default_taus", "PhaseDiagram", "phase_diagram"]
