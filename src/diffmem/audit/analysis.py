"""Statistics of guided-sampling trajectories. Pure functions, float64.

Why they are computed (Kim, Kim & Lee 2025, "How Diffusion Models Memorize"): with classifier-free
guidance the guided estimate of the clean image is ``x0_g = x0_u + g (x0_c - x0_u)``. When the
conditional branch has memorized its training image (x0_c = x), ``x0_g - x0_u = g (x - x0_u)``: the
first steps overshoot towards x by the factor g, the latents take up x faster than the forward process
``sqrt(ab) x + sqrt(1 - ab) x_T`` and the trajectories of different seeds collapse onto x.
The statistics below measure each part of that chain.

Notation: a trajectory has ``steps`` steps i = 0..steps-1 at step indices k_i (descending), S seeds,
latents flattened to d numbers. ``x`` is the prompt's training image in the model's space
(``model.encode``), ``x_T`` the initial noise of each seed, ``ab_i`` = alpha_bar(k_i). The *early*
steps are the first ``early_steps(steps, fraction)`` = ceil(fraction * steps) of them, where the
final sample is not yet formed.

- Loss along the trajectory (:func:`trajectory_loss`): target noise
  ``eps*_i = (x_i - sqrt(ab_i) x) / sqrt(1 - ab_i)`` (the noise that takes x to the current latent);
  loss = mean over seeds and the d coordinates of ``(eps_hat - eps*)^2``, which equals
  ``ab/(1-ab) * mean (x0_hat - x)^2``. "With guidance": eps_hat = eps_u + g (eps_c - eps_u);
  "without": eps_hat = eps_c (g = 1), evaluated on the *same* guided latents, so the difference is
  the guidance alone (no second trajectory is sampled).
- Overestimation coefficient (:func:`overestimation`):
  ``a = argmin_a sum_{seeds, i < first} |(x0_g - mu) - a (x - mu)|^2 = sum <x0_g - mu, x - mu> / sum |x - mu|^2``
  with mu = x0_u (the unconditional estimate of the same seed and step). Because
  ``x0_g - x0_u = g (x0_c - x0_u)`` exactly, this a equals g times the same fit for x0_c
  (``a_cond``) identically: it measures the conditional branch, scaled by g, and cannot tell
  guidance from the conditional branch.
- Revised overestimation quantities (:func:`overestimation_terms`): with
  ``Delta = x0_c - x0_u``, ``J = g Delta`` (the guidance step), ``mu`` = the unconditional estimate
  averaged over the seeds of the step and ``v = x - mu``: ``a_parallel = <J, v>/|v|^2``,
  ``off_target = |J - a_parallel v|/|v|``, ``q = <J, v>/(g |v|^2)``, ``r_perp = |J - g q v|/(g |v|)``,
  ``E_rel = |J - g v|/(g |v|)``; ``E_rel^2 = (q - 1)^2 + r_perp^2`` exactly. Sums run over the rows
  pooled (seeds and steps), as in a least-squares fit.
- Cosines (:func:`cosine_curves`): cos(eps_c, x), cos(eps_u, x), cos(eps_c, x_T), cos(eps_u, x_T) per
  step, averaged over seeds (signed; eps carries x with a negative sign), and cos(eps_u - eps_c, x):
  the direction guidance adds, which equals sqrt(ab/(1-ab)) (x0_c - x0_u).
- Seed distances (:func:`pairwise_distance`): mean over seed pairs of the RMS distance
  ``|x^a - x^b| / sqrt(d)`` per step; convergence = 1 - distance at a chosen step (default: the
  final samples) / distance at x_T.
- Decomposition (:func:`decompose`): per seed and step, least squares ``x_i = w0 r + wT x_T + res``
  with the reference r either the training image x (``"training"``, the paper's definition) or the
  seed's own final sample (``"final"``, the authors' released code: needs no training image);
  residual RMSE = |res| / sqrt(d).
- Reference curves (:func:`reference_curves`): ``"sqrt_ab"`` is the forward process,
  w0 = sqrt(ab_i), wT = sqrt(1 - ab_i); ``"ddim_exact"`` (:func:`ddim_exact_coefficients`) is what
  deterministic DDIM gives exactly when the x0-prediction equals r at every step:
  w0 = sqrt(ab_i) - sqrt(1 - ab_i) sqrt(ab_0)/sqrt(1 - ab_0), wT = sqrt(1 - ab_i)/sqrt(1 - ab_0).
- Deviations (:func:`deviations`): ``D1 = sum_i (mean_seeds w0_i - w0ref_i)`` and
  ``D2 = -sum_i (mean_seeds wT_i - wTref_i)``, summed over the latents the model is evaluated on
  (i = 0..steps-1; the first is x_T itself), or over the early steps only.
- Noise-prediction decomposition (:func:`eps_decomposition`): per seed and step, least squares
  ``eps_i ~ w0 r + wt x_i``; its theory (the exact eps-prediction of a model whose x0-prediction is r)
  is w0 = -sqrt(ab_i)/sqrt(1 - ab_i), wt = 1/sqrt(1 - ab_i). For the guided prediction of a memorizer
  (x0_c = r, x0_u = 0) w0 is g times its theory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "REFERENCE_CURVES",
    "analyze",
    "bootstrap_ci",
    "convergence",
    "correlations",
    "correlations_by_group",
    "cosine_curves",
    "ddim_exact_coefficients",
    "decompose",
    "deviations",
    "early_steps",
    "eps_decomposition",
    "overestimation",
    "overestimation_terms",
    "pairwise_distance",
    "reference_curves",
    "trajectory_loss",
]

#: the theoretical schedules the decomposition weights are compared with
REFERENCE_CURVES = ("sqrt_ab", "ddim_exact")
#: what the latents are decomposed against
DECOMPOSE_AGAINST = ("training", "final")


def early_steps(steps: int, fraction: float) -> int:
    """Number of early steps: ``ceil(fraction * steps)`` (at least 1), for a fraction in (0, 1]."""
    f = float(fraction)
    if not 0 < f <= 1:  # also refuses NaN
        raise ValueError(
            "the early fraction must lie in (0, 1] (the share of the sampling steps that count as early), "
            f"got {fraction}"
        )
    return max(1, min(int(steps), math.ceil(f * int(steps) - 1e-9)))


def _flat(x: torch.Tensor | np.ndarray, lead: int) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return a.reshape(*a.shape[:lead], -1)


def trajectory_loss(xs, eps, x, alpha_bar) -> np.ndarray:
    """Per-step loss ``mean_{seeds, coords} (eps - eps*)^2``; xs, eps: (steps, S, ...), x: (...)."""
    X, E = _flat(xs, 2), _flat(eps, 2)
    x0 = _flat(x, 0).reshape(1, 1, -1)
    ab = np.asarray(alpha_bar, dtype=np.float64).reshape(-1, 1, 1)
    target = (X - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    return ((E - target) ** 2).mean(axis=(1, 2))


def overestimation(x0_g, mu, x) -> float:
    """Least-squares a in ``x0_g - mu ~ a (x - mu)`` over every row given.

    x0_g, mu: (..., *latent) (e.g. (first_steps, S, *latent)); x: the training image (*latent)."""
    xv = _flat(x, 0).reshape(1, -1)
    d = xv.shape[1]
    g = _flat(x0_g, 0).reshape(-1, d)
    m = _flat(mu, 0).reshape(-1, d)
    if g.shape != m.shape:
        raise ValueError(f"x0_g and mu must have the same shape, got {tuple(x0_g.shape)} and {tuple(mu.shape)}")
    num = ((g - m) * (xv - m)).sum()
    den = ((xv - m) ** 2).sum()
    return float(num / den) if den > 0 else float("nan")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    den = na * nb
    return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def cosine_curves(eps_c, eps_u, x, x_T) -> dict[str, np.ndarray]:
    """Per-step mean over seeds of cos(eps_c|eps_u, x|x_T), and of cos(eps_u - eps_c, x) (the guidance
    direction, proportional to x0_c - x0_u); eps: (steps, S, ...), x: (...), x_T: (S, ...)."""
    C, U = _flat(eps_c, 2), _flat(eps_u, 2)
    xv = _flat(x, 0).reshape(1, 1, -1)
    xT = _flat(x_T, 1)[None]
    return {
        "cos_epsc_x": _cos(C, np.broadcast_to(xv, C.shape)).mean(1),
        "cos_epsu_x": _cos(U, np.broadcast_to(xv, U.shape)).mean(1),
        "cos_epsc_xT": _cos(C, np.broadcast_to(xT, C.shape)).mean(1),
        "cos_epsu_xT": _cos(U, np.broadcast_to(xT, U.shape)).mean(1),
        "cos_guidance_x": _cos(U - C, np.broadcast_to(xv, C.shape)).mean(1),
    }


def pairwise_distance(xs) -> np.ndarray:
    """Mean over seed pairs a < b of ``|x^a - x^b| / sqrt(d)`` per step; xs: (steps, S, ...) -> (steps,).
    Needs S >= 2 (pass ``x[None]`` for a single set of seeds)."""
    if xs.ndim < 3:
        raise ValueError(f"pairwise_distance needs (steps, S, *latent), got shape {tuple(xs.shape)}")
    X = _flat(xs, 2)
    S, d = X.shape[1], X.shape[2]
    if S < 2:
        raise ValueError("seed distances need at least 2 seeds")
    sq = (X**2).sum(-1)
    gram = np.einsum("tad,tbd->tab", X, X)
    dist2 = np.maximum(sq[:, :, None] + sq[:, None, :] - 2 * gram, 0.0)
    iu = np.triu_indices(S, 1)
    out = np.sqrt(dist2[:, iu[0], iu[1]] / d).mean(1)
    return out


def pairwise_cosine(xs) -> float:
    """Mean over seed pairs of the cosine similarity of (S, ...) vectors (seed collapse)."""
    X = _flat(xs, 1)
    S = X.shape[0]
    if S < 2:
        raise ValueError("seed collapse needs at least 2 seeds")
    iu = np.triu_indices(S, 1)
    return float(_cos(X[iu[0]], X[iu[1]]).mean())


def _lstsq2(Y: np.ndarray, A: np.ndarray, B: np.ndarray, degenerate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, least squares ``Y ~ c1 A + c2 B`` (last axis = coordinates; A, B broadcast to Y).

    Returns c1, c2 and the residual RMSE, each of Y's shape without its last axis. Rows whose two
    regressors are (nearly) collinear raise (``degenerate="raise"``) or give NaN (``"nan"``)."""
    d = Y.shape[-1]
    a11 = (A * A).sum(-1)
    a12 = (A * B).sum(-1)
    a22 = (B * B).sum(-1)
    b1 = (Y * A).sum(-1)
    b2 = (Y * B).sum(-1)
    shape = np.broadcast_shapes(a11.shape, a22.shape, b1.shape)
    a11, a12, a22 = (np.broadcast_to(v, shape) for v in (a11, a12, a22))
    det = a11 * a22 - a12**2
    bad = ~(det > 1e-12 * a11 * a22) | ~(a11 > 0) | ~(a22 > 0)
    if bad.any() and degenerate == "raise":
        raise ValueError(
            "the training image and the initial noise are (nearly) collinear: the decomposition is undefined"
        )
    safe = np.where(bad, 1.0, det)
    c1 = np.where(bad, np.nan, (a22 * b1 - a12 * b2) / safe)
    c2 = np.where(bad, np.nan, (a11 * b2 - a12 * b1) / safe)
    res = Y - np.nan_to_num(c1)[..., None] * A - np.nan_to_num(c2)[..., None] * B
    rmse = np.where(bad, np.nan, np.sqrt((res**2).sum(-1) / d))
    return c1, c2, rmse


def decompose(xs, x, x_T, degenerate: str = "raise") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares ``x_i^s = w0 r + wT x_T^s`` for every step i and seed s.

    ``x`` is the reference r: one image ``(*latent)`` shared by every seed (the training image) or one
    per seed ``(S, *latent)`` (each seed's own final sample). Returns w0, wT and the residual RMSE,
    each (steps, S), solved from the 2x2 normal equations. A reference (nearly) collinear with the
    noise raises ValueError (``degenerate="raise"``) or gives NaN for that seed (``"nan"``)."""
    X = _flat(xs, 2)
    N = _flat(x_T, 1)
    ref = _flat(x, 1) if np.ndim(x) == np.ndim(x_T) else _flat(x, 0)[None]
    if ref.shape[-1] != X.shape[-1] or ref.shape[0] not in (1, N.shape[0]):
        raise ValueError(
            f"the reference must be one latent or one per seed of the trajectory's shape, got {tuple(np.shape(x))} "
            f"for a trajectory of {N.shape[0]} seeds x {X.shape[-1]} coordinates"
        )
    return _lstsq2(X, ref[None], N[None], degenerate)


def ddim_exact_coefficients(alpha_bar) -> tuple[np.ndarray, np.ndarray]:
    """The weights (w0, wT) of ``x_i = w0 r + wT x_T`` that deterministic DDIM gives exactly when its
    x0-prediction equals r at every step, starting from x_T at the first step's alpha_bar.

    Then the eps-prediction ``(x_i - sqrt(ab_i) r)/sqrt(1 - ab_i)`` is the same at every step (each DDIM
    update keeps it), so ``x_i = sqrt(ab_i) r + sqrt(1 - ab_i) (x_T - sqrt(ab_0) r)/sqrt(1 - ab_0)``:
    ``w0 = sqrt(ab_i) - sqrt(1 - ab_i) sqrt(ab_0)/sqrt(1 - ab_0)``, ``wT = sqrt(1 - ab_i)/sqrt(1 - ab_0)``
    (w0 = 0 and wT = 1 at the first step, where the latent is x_T itself)."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    c = np.sqrt(1 - ab) / np.sqrt(1 - ab[0])
    return np.sqrt(ab) - c * np.sqrt(ab[0]), c


def reference_curves(alpha_bar, kind: str = "sqrt_ab") -> tuple[np.ndarray, np.ndarray]:
    """The theoretical (w0, wT) curves: ``"sqrt_ab"`` (forward process sqrt(ab), sqrt(1 - ab)) or
    ``"ddim_exact"`` (:func:`ddim_exact_coefficients`)."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    if kind == "sqrt_ab":
        return np.sqrt(ab), np.sqrt(1 - ab)
    if kind == "ddim_exact":
        return ddim_exact_coefficients(ab)
    raise ValueError(f"reference curves must be one of {REFERENCE_CURVES}, got {kind!r}")


_reference_curves = reference_curves  # analyze() takes an argument of the same name


def deviations(
    w0: np.ndarray, wT: np.ndarray, alpha_bar, reference: str = "sqrt_ab", steps: int | None = None
) -> tuple[float, float]:
    """D1 = sum_i (mean_s w0 - w0ref_i),  D2 = -sum_i (mean_s wT - wTref_i); w: (steps, S).

    ``reference`` picks the curves (:func:`reference_curves`, computed on the whole trajectory);
    ``steps`` sums over the first ``steps`` steps only (the early deviations). Seeds whose weights are
    NaN (an undefined decomposition) are left out of the mean; NaN if every seed is."""
    r0, rT = reference_curves(alpha_bar, reference)
    w0, wT = np.asarray(w0, dtype=np.float64), np.asarray(wT, dtype=np.float64)
    n = len(r0) if steps is None else int(steps)
    ok = np.isfinite(w0[:n]).all(0) & np.isfinite(wT[:n]).all(0)
    if not ok.any():
        return float("nan"), float("nan")
    d1 = float((w0[:n, ok].mean(1) - r0[:n]).sum())
    d2 = float(-(wT[:n, ok].mean(1) - rT[:n]).sum())
    return d1, d2


def eps_decomposition(eps, xs, x, degenerate: str = "nan") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares ``eps_i^s ~ w0 r + wt x_i^s`` for every step and seed; eps, xs: (steps, S, ...).

    ``x`` is the reference r, ``(*latent)`` or one per seed ``(S, *latent)``. Returns w0, wt and the
    residual RMSE, each (steps, S). Compare with ``eps_theory(alpha_bar)``."""
    E, X = _flat(eps, 2), _flat(xs, 2)
    ref = _flat(x, 1)[None] if np.ndim(x) == np.ndim(xs) - 1 else _flat(x, 0)[None, None]
    return _lstsq2(E, ref, X, degenerate)


def eps_theory(alpha_bar) -> tuple[np.ndarray, np.ndarray]:
    """The exact (w0, wt) of ``eps = w0 x0 + wt x_t`` for a model whose x0-prediction is x0:
    ``w0 = -sqrt(ab)/sqrt(1 - ab)``, ``wt = 1/sqrt(1 - ab)``."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    return -np.sqrt(ab) / np.sqrt(1 - ab), 1 / np.sqrt(1 - ab)


def overestimation_terms(x0_c, x0_u, x, g, mu=None) -> dict[str, float]:
    """The revised overestimation quantities pooled over every row given.

    x0_c, x0_u: (steps, S, *latent) (e.g. the first steps); x: the training image (*latent); g: the
    guidance scale of each step (steps,) or one number; mu: the centre (steps, 1 or S, *latent),
    default the unconditional estimate averaged over the seeds of each step. With Delta = x0_c - x0_u,
    J = g Delta, v = x - mu, sums over the rows:

    ``a_parallel = sum <J, v> / sum |v|^2``, ``off_target = sqrt(sum |J - a_parallel v|^2 / sum |v|^2)``,
    ``q = sum <Delta, v> / sum |v|^2``, ``r_perp = sqrt(sum |Delta - q v|^2 / sum |v|^2)`` and
    ``E_rel = sqrt(sum |Delta - v|^2 / sum |v|^2)``. For one row and g != 0 these are the paper's
    ``<J,v>/|v|^2``, ``|J - a v|/|v|``, ``<J,v>/(g|v|^2)``, ``|J - g q v|/(g|v|)``, ``|J - g v|/(g|v|)``;
    written with Delta they stay defined at g = 0. ``E_rel^2 = (q - 1)^2 + r_perp^2`` exactly."""
    C, U = _flat(x0_c, 2), _flat(x0_u, 2)
    if C.shape != U.shape:
        raise ValueError(f"x0_c and x0_u must have the same shape, got {tuple(x0_c.shape)} and {tuple(x0_u.shape)}")
    xv = _flat(x, 0)[None, None]
    M = U.mean(1, keepdims=True) if mu is None else _flat(mu, 2)
    gs = np.broadcast_to(np.asarray(g, dtype=np.float64).reshape(-1, 1, 1), (C.shape[0], 1, 1))
    delta = C - U
    v = np.broadcast_to(xv - M, C.shape)
    J = gs * delta
    vv = (v * v).sum()
    if not vv > 0:
        return {k: float("nan") for k in ("a_parallel", "off_target", "q", "r_perp", "E_rel")}
    a_par = float((J * v).sum() / vv)
    q = float((delta * v).sum() / vv)
    return {
        "a_parallel": a_par,
        "off_target": float(np.sqrt(((J - a_par * v) ** 2).sum() / vv)),
        "q": q,
        "r_perp": float(np.sqrt(((delta - q * v) ** 2).sum() / vv)),
        "E_rel": float(np.sqrt(((delta - v) ** 2).sum() / vv)),
    }


def convergence(dist: np.ndarray, step: int) -> float:
    """1 - dist[step] / dist[0] for seed distances ``dist`` (x_T first; append the final sample's
    distance to read convergence of the outputs): 0 = no convergence, 1 = all seeds at one latent."""
    dist = np.asarray(dist, dtype=np.float64)
    if not 0 <= step < len(dist):
        raise ValueError(f"convergence step must be in [0, {len(dist) - 1}], got {step}")
    return float(1.0 - dist[step] / dist[0]) if dist[0] > 0 else float("nan")


def _per_step_terms(x0_c: torch.Tensor, x0_u: torch.Tensor, x: torch.Tensor, g: np.ndarray) -> dict[str, np.ndarray]:
    rows = [overestimation_terms(x0_c[i : i + 1], x0_u[i : i + 1], x, g[i : i + 1]) for i in range(len(g))]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _ratio_mean(w: np.ndarray, theory: np.ndarray, n: int) -> float:
    r = w[:n] / theory[:n, None]
    r = r[np.isfinite(r)]
    return float(r.mean()) if len(r) else float("nan")


def analyze(
    traj,
    x: torch.Tensor | None,
    first_steps: int = 1,
    converge_step: int | None = None,
    *,
    early_fraction: float = 0.2,
    reference_curves: str = "sqrt_ab",
    decompose_against: str | None = None,
) -> dict:
    """Every statistic of one recorded :class:`~diffmem.audit.recorder.Trajectory` against image ``x``
    (model space; None when the training image is not known). Returns scalars and per-step curves.

    ``decompose_against`` is the reference of the primary decomposition (``D1``, ``D2``, ``D1_early``,
    ``D2_early``, the noise-prediction fit): ``"training"`` (needs ``x``), ``"final"`` (each seed's
    final sample) or None (training when ``x`` is given, final otherwise). Both decompositions are
    always reported as well, under ``D1_training``/``D1_final`` etc., every combination of reference and
    curves under ``deviations``. Statistics that need ``x`` are None without it. ``early_fraction``
    sets the early steps (:func:`early_steps`); every trajectory statistic has an ``_early`` twin."""
    steps = traj.steps
    if not 1 <= first_steps <= steps:
        raise ValueError(f"first_steps must be in [1, {steps}], got {first_steps}")
    if reference_curves not in REFERENCE_CURVES:
        raise ValueError(f"reference_curves must be one of {REFERENCE_CURVES}, got {reference_curves!r}")
    if decompose_against is not None and decompose_against not in DECOMPOSE_AGAINST:
        raise ValueError(f"decompose_against must be one of {DECOMPOSE_AGAINST} or None, got {decompose_against!r}")
    if decompose_against == "training" and x is None:
        raise ValueError(
            "decompose_against='training' needs the prompt's training image; give it, or decompose against 'final'"
        )
    primary = decompose_against or ("training" if x is not None else "final")
    n_early = early_steps(steps, early_fraction)
    cstep = steps if converge_step is None else int(converge_step)  # default: the final samples
    ab = traj.alpha_bar.double().numpy()
    g = traj.scales.double().numpy()
    xs = traj.x
    eps_c, eps_u = traj.eps_c, traj.eps_u
    x0_c, x0_u, x0_g = traj.x0_c(), traj.x0_u(), traj.x0_g()
    eps_g = traj.eps_g()
    x_final = traj.x_final.double()
    out: dict[str, Any] = {"decomposition_reference": primary, "reference_curves": reference_curves}
    curves: dict[str, Any] = {"k": traj.ks.tolist(), "alpha_bar": ab.tolist()}

    # -- decompositions against both references, deviations from both curves (all steps and early)
    refs: dict[str, Any] = {"final": x_final}
    if x is not None:
        refs["training"] = x
    dev: dict[str, dict[str, dict[str, float | None]]] = {}
    fits = {}
    for name in DECOMPOSE_AGAINST:
        if name not in refs:
            dev[name] = {
                kind: {"D1": None, "D2": None, "D1_early": None, "D2_early": None} for kind in REFERENCE_CURVES
            }
            continue
        w0, wT, rmse = decompose(xs, refs[name], traj.x_T, degenerate="raise" if name == "training" else "nan")
        fits[name] = (w0, wT, rmse)
        dev[name] = {}
        for kind in REFERENCE_CURVES:
            d1, d2 = deviations(w0, wT, ab, kind)
            e1, e2 = deviations(w0, wT, ab, kind, steps=n_early)
            dev[name][kind] = {"D1": d1, "D2": d2, "D1_early": e1, "D2_early": e2}
        suffix = "" if name == "training" else "_final"
        curves[f"w0{suffix}"] = np.nanmean(w0, 1).tolist() if np.isfinite(w0).any() else None
        curves[f"wT{suffix}"] = np.nanmean(wT, 1).tolist() if np.isfinite(wT).any() else None
        curves[f"rmse{suffix}"] = np.nanmean(rmse, 1).tolist() if np.isfinite(rmse).any() else None
    for name in DECOMPOSE_AGAINST:
        for key, v in dev[name][reference_curves].items():
            out[f"{key[:2]}_{name}{key[2:]}"] = v
    for key, v in dev[primary][reference_curves].items():
        out[key] = v
    out["deviations"] = dev
    rm = fits[primary][2]
    out["decomposition_rmse_mean"] = float(np.nanmean(rm)) if np.isfinite(rm).any() else None
    out["decomposition_rmse_early"] = float(np.nanmean(rm[:n_early])) if np.isfinite(rm[:n_early]).any() else None
    for kind in REFERENCE_CURVES:
        r0, rT = _reference_curves(ab, kind)
        curves[f"w0_{kind}"], curves[f"wT_{kind}"] = r0.tolist(), rT.tolist()

    # -- noise-prediction decomposition against the primary reference (guided prediction)
    e0, et, ermse = eps_decomposition(eps_g, xs, refs[primary])
    t0, tt = eps_theory(ab)
    out["eps_w0_ratio_first"] = _ratio_mean(e0, t0, first_steps)
    out["eps_w0_ratio_early"] = _ratio_mean(e0, t0, n_early)
    out["eps_wt_ratio_first"] = _ratio_mean(et, tt, first_steps)
    out["eps_wt_ratio_early"] = _ratio_mean(et, tt, n_early)
    curves.update(
        eps_w0=np.nanmean(e0, 1).tolist() if np.isfinite(e0).any() else None,
        eps_wt=np.nanmean(et, 1).tolist() if np.isfinite(et).any() else None,
        eps_rmse=np.nanmean(ermse, 1).tolist() if np.isfinite(ermse).any() else None,
        eps_w0_theory=t0.tolist(),
        eps_wt_theory=tt.tolist(),
    )

    # -- statistics that need no training image
    dist = pairwise_distance(xs)
    final = pairwise_distance(traj.x_final[None])[0]
    collapse = np.array([pairwise_cosine(x0_g[i]) for i in range(n_early)])
    diff = _flat(eps_c, 2) - _flat(eps_u, 2)
    wen = np.linalg.norm(diff, axis=-1).mean(1)  # (steps,) mean over seeds of |eps_c - eps_u|_2
    out.update(
        convergence=convergence(np.append(dist, final), cstep),
        convergence_step=cstep,
        convergence_early=convergence(dist, n_early) if n_early < steps else convergence(np.append(dist, final), steps),
        seed_collapse=float(collapse[0]),
        seed_collapse_early=float(collapse.mean()),
        wen_first=float(wen[0]),
        wen_mean=float(wen.mean()),
        wen_early=float(wen[:n_early].mean()),
        final_distance=float(final),
        early_steps=n_early,
    )
    curves.update(seed_distance=dist.tolist(), wen=wen.tolist())

    # -- statistics that need the training image
    need_x = (
        "overestimation_a",
        "overestimation_a_cond",
        "overestimation_a_early",
        "overestimation_a_cond_early",
        "cos_guidance_x_first",
        "loss_guided_mean",
        "loss_cond_mean",
        "loss_ratio_first",
        "loss_ratio_early",
    )
    terms = ("a_parallel", "off_target", "q", "r_perp", "E_rel")
    cos_names = ("cos_epsc_x", "cos_epsu_x", "cos_epsc_xT", "cos_epsu_xT", "cos_guidance_x")
    if x is None:
        out.update({k: None for k in need_x})
        out.update({k: None for t in terms for k in (t, f"{t}_early")})
        out.update({f"{c}_early": None for c in cos_names})
        out["overestimation_reference"] = None
    else:
        loss_g = trajectory_loss(xs, eps_g, x, ab)
        loss_c = trajectory_loss(xs, eps_c, x, ab)
        cos = cosine_curves(eps_c, eps_u, x, traj.x_T)

        def ratio(n: int) -> float:
            den = loss_c[:n].mean()
            return float(loss_g[:n].mean() / den) if den > 0 else float("nan")

        out.update(
            overestimation_a=overestimation(x0_g[:first_steps], x0_u[:first_steps], x),
            overestimation_a_cond=overestimation(x0_c[:first_steps], x0_u[:first_steps], x),
            overestimation_a_early=overestimation(x0_g[:n_early], x0_u[:n_early], x),
            overestimation_a_cond_early=overestimation(x0_c[:n_early], x0_u[:n_early], x),
            cos_guidance_x_first=float(cos["cos_guidance_x"][0]),
            loss_guided_mean=float(loss_g.mean()),
            loss_cond_mean=float(loss_c.mean()),
            loss_ratio_first=ratio(first_steps),
            loss_ratio_early=ratio(n_early),
            overestimation_reference="seed mean of the unconditional x0 estimate",
        )
        for c in cos_names:
            out[f"{c}_early"] = float(cos[c][:n_early].mean())
        first = overestimation_terms(x0_c[:first_steps], x0_u[:first_steps], x, g[:first_steps])
        early = overestimation_terms(x0_c[:n_early], x0_u[:n_early], x, g[:n_early])
        for t in terms:
            out[t], out[f"{t}_early"] = first[t], early[t]
        per_step = _per_step_terms(x0_c, x0_u, x, g)
        curves.update(loss_guided=loss_g.tolist(), loss_cond=loss_c.tolist(), **{k: v.tolist() for k, v in cos.items()})
        curves.update({k: v.tolist() for k, v in per_step.items()})
    out["curves"] = curves
    return out


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile interval of ``fn(a[idx], b[idx])`` over ``n_boot`` resamples of the pairs."""
    n = len(a)
    vals = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        if np.ptp(a[idx]) == 0 or np.ptp(b[idx]) == 0:
            continue
        vals.append(fn(a[idx], b[idx]))
    kept = np.asarray([v for v in vals if np.isfinite(v)])
    if len(kept) < 10:
        return None, None
    q = (1 - level) / 2
    return float(np.quantile(kept, q)), float(np.quantile(kept, 1 - q))


def _pearson(u: np.ndarray, w: np.ndarray) -> float:
    from scipy import stats as st

    return float(st.pearsonr(u, w)[0])


def _spearman(u: np.ndarray, w: np.ndarray) -> float:
    from scipy import stats as st

    return float(st.spearmanr(u, w)[0])


def _rank_rows(a: np.ndarray) -> np.ndarray:
    from scipy import stats as st

    return st.rankdata(a, axis=-1)


def _pearson_rows(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of (B, n) arrays (NaN where a row is constant)."""
    u = u - u.mean(-1, keepdims=True)
    w = w - w.mean(-1, keepdims=True)
    den = np.sqrt((u * u).sum(-1) * (w * w).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (u * w).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _boot_interval(vals: np.ndarray, level: float = 0.95) -> list[float | None]:
    kept = vals[np.isfinite(vals)]
    if len(kept) < 10:
        return [None, None]
    q = (1 - level) / 2
    return [float(np.quantile(kept, q)), float(np.quantile(kept, 1 - q))]


def _empty_row(n: int) -> dict[str, Any]:
    return {"n": n, "pearson": None, "pearson_ci": [None, None], "spearman": None, "spearman_ci": [None, None]}


def correlations(
    stats: Mapping[str, Sequence[float | None]], severity: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Pearson and Spearman correlation of every statistic with severity across prompts, with
    bootstrap 95% intervals (percentile intervals over ``n_boot`` resamples of the prompts, the
    same resamples for both coefficients; scipy.stats for the point estimates). A statistic with
    fewer than 3 finite prompts, or constant, gets None values."""
    import warnings

    sev = np.asarray([np.nan if v is None else v for v in severity], dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, vals in stats.items():
        v = np.asarray([np.nan if x is None else x for x in vals], dtype=np.float64)
        ok = np.isfinite(v) & np.isfinite(sev)
        a, b = v[ok], sev[ok]
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            out[name] = _empty_row(len(a))
            continue
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(a), (int(n_boot), len(a)))
        ra, rb = a[idx], b[idx]
        with warnings.catch_warnings():  # resamples may repeat one prompt many times
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*constant.*")  # scipy: nearly constant input
            pb = _pearson_rows(ra, rb)
            sb = _pearson_rows(_rank_rows(ra), _rank_rows(rb))
            out[name] = {
                "n": len(a),
                "pearson": _pearson(a, b),
                "pearson_ci": _boot_interval(pb),
                "spearman": _spearman(a, b),
                "spearman_ci": _boot_interval(sb),
            }
    return out


def correlations_by_group(
    stats: Mapping[str, Sequence[float | None]],
    severity: Sequence[float],
    groups: Sequence[str | None],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`correlations` within each group of prompts (e.g. each label): group -> statistic -> row.
    Prompts whose group is None are left out."""
    names = [gr for gr in dict.fromkeys(groups) if gr is not None]
    out = {}
    for gr in names:
        keep = [i for i, x in enumerate(groups) if x == gr]
        out[gr] = correlations(
            {k: [v[i] for i in keep] for k, v in stats.items()}, [severity[i] for i in keep], n_boot, seed
        )
    return out
