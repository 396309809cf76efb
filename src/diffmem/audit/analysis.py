"""Statistics of guided-sampling trajectories. Pure functions, float64.

Why they are computed (Kim, Kim & Lee 2025, "How Diffusion Models Memorize"): with classifier-free
guidance the guided estimate of the clean image is ``x0_g = x0_u + g (x0_c - x0_u)``. When the
conditional branch has memorized its training image (x0_c = x), ``x0_g - x0_u = g (x - x0_u)``: the
first steps overshoot towards x by the factor g, the latents take up x faster than the forward
process ``sqrt(ab) x + sqrt(1 - ab) x_T`` and the trajectories of different seeds collapse onto x.
The statistics below measure each part of that chain.

Notation: a trajectory has ``steps`` steps i = 0..steps-1 at step indices k_i (descending), S seeds,
latents flattened to d numbers. ``x`` is the prompt's training image in the model's space
(``model.encode``), ``x_T`` the initial noise of each seed, ``ab_i`` = alpha_bar(k_i).

- Loss along the trajectory (:func:`trajectory_loss`): target noise
  ``eps*_i = (x_i - sqrt(ab_i) x) / sqrt(1 - ab_i)`` (the noise that takes x to the current latent);
  loss = mean over seeds and the d coordinates of ``(eps_hat - eps*)^2``, which equals
  ``ab/(1-ab) * mean (x0_hat - x)^2``. "With guidance": eps_hat = eps_u + g (eps_c - eps_u);
  "without": eps_hat = eps_c (g = 1), evaluated on the *same* guided latents, so the difference is
  the guidance alone (no second trajectory is sampled).
- Overestimation coefficient (:func:`overestimation`):
  ``a = argmin_a sum_{seeds, i < first} |(x0_g - mu) - a (x - mu)|^2 = sum <x0_g - mu, x - mu> / sum |x - mu|^2``
  with mu = x0_u (the unconditional estimate of the same seed and step).
- Cosines (:func:`cosine_curves`): cos(eps_c, x), cos(eps_u, x), cos(eps_c, x_T), cos(eps_u, x_T) per
  step, averaged over seeds (signed; eps carries x with a negative sign), and cos(eps_u - eps_c, x):
  the direction guidance adds, which equals sqrt(ab/(1-ab)) (x0_c - x0_u).
- Seed distances (:func:`pairwise_distance`): mean over seed pairs of the RMS distance
  ``|x^a - x^b| / sqrt(d)`` per step; convergence = 1 - distance at a chosen step (default: the
  final samples) / distance at x_T.
- Decomposition (:func:`decompose`): per seed and step, least squares ``x_i = w0 x + wT x_T + r``;
  residual RMSE = |r| / sqrt(d).
- Deviations (:func:`deviations`): the *theoretical* schedule is the forward process,
  w0 = sqrt(ab_i), wT = sqrt(1 - ab_i) (not the exact unrolled DDIM coefficients);
  ``D1 = sum_i (mean_seeds w0_i - sqrt(ab_i))`` and ``D2 = -sum_i (mean_seeds wT_i - sqrt(1 - ab_i))``,
  summed over the latents the model is evaluated on (i = 0..steps-1; the first is x_T itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "analyze",
    "bootstrap_ci",
    "convergence",
    "correlations",
    "cosine_curves",
    "decompose",
    "deviations",
    "overestimation",
    "pairwise_distance",
    "trajectory_loss",
]


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


def decompose(xs, x, x_T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares ``x_i^s = w0 x + wT x_T^s`` for every step i and seed s.

    Returns w0, wT and the residual RMSE, each (steps, S). Solved from the 2x2 normal equations."""
    X = _flat(xs, 2)
    xv = _flat(x, 0)
    N = _flat(x_T, 1)
    d = X.shape[-1]
    a11 = xv @ xv
    a12 = N @ xv  # (S,)
    a22 = (N * N).sum(-1)
    b1 = X @ xv  # (steps, S)
    b2 = np.einsum("tsd,sd->ts", X, N)
    det = a11 * a22 - a12**2
    if np.any(det <= 1e-12 * a11 * a22):
        raise ValueError(
            "the training image and the initial noise are (nearly) collinear: the decomposition is undefined"
        )
    w0 = (a22 * b1 - a12 * b2) / det
    wT = (a11 * b2 - a12 * b1) / det
    res = X - w0[..., None] * xv[None, None] - wT[..., None] * N[None]
    return w0, wT, np.sqrt((res**2).sum(-1) / d)


def deviations(w0: np.ndarray, wT: np.ndarray, alpha_bar) -> tuple[float, float]:
    """D1 = sum_i (mean_s w0 - sqrt(ab_i)),  D2 = -sum_i (mean_s wT - sqrt(1 - ab_i)); w: (steps, S)."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    d1 = float((np.asarray(w0).mean(1) - np.sqrt(ab)).sum())
    d2 = float(-(np.asarray(wT).mean(1) - np.sqrt(1 - ab)).sum())
    return d1, d2


def convergence(dist: np.ndarray, step: int) -> float:
    """1 - dist[step] / dist[0] for seed distances ``dist`` (x_T first; append the final sample's
    distance to read convergence of the outputs): 0 = no convergence, 1 = all seeds at one latent."""
    dist = np.asarray(dist, dtype=np.float64)
    if not 0 <= step < len(dist):
        raise ValueError(f"convergence step must be in [0, {len(dist) - 1}], got {step}")
    return float(1.0 - dist[step] / dist[0]) if dist[0] > 0 else float("nan")


def analyze(traj, x: torch.Tensor, first_steps: int = 1, converge_step: int | None = None) -> dict:
    """Every statistic of one recorded :class:`~diffmem.audit.recorder.Trajectory` against image ``x``
    (model space). Returns scalars and per-step curves (lists)."""
    steps = traj.steps
    if not 1 <= first_steps <= steps:
        raise ValueError(f"first_steps must be in [1, {steps}], got {first_steps}")
    cstep = steps if converge_step is None else int(converge_step)  # default: the final samples
    ab = traj.alpha_bar.double().numpy()
    xs = traj.x
    eps_c, eps_u = traj.eps_c, traj.eps_u
    x0_c, x0_u, x0_g = traj.x0_c(), traj.x0_u(), traj.x0_g()
    loss_g = trajectory_loss(xs, traj.eps_g(), x, ab)
    loss_c = trajectory_loss(xs, eps_c, x, ab)
    a = overestimation(x0_g[:first_steps], x0_u[:first_steps], x)
    a_c = overestimation(x0_c[:first_steps], x0_u[:first_steps], x)
    cos = cosine_curves(eps_c, eps_u, x, traj.x_T)
    dist = pairwise_distance(xs)
    final = pairwise_distance(traj.x_final[None])[0]
    w0, wT, rmse = decompose(xs, x, traj.x_T)
    d1, d2 = deviations(w0, wT, ab)
    diff = _flat(eps_c, 2) - _flat(eps_u, 2)
    wen = np.linalg.norm(diff, axis=-1).mean(1)  # (steps,) mean over seeds of |eps_c - eps_u|_2
    return {
        "overestimation_a": a,
        "overestimation_a_cond": a_c,
        "D1": d1,
        "D2": d2,
        "convergence": convergence(np.append(dist, final), cstep),
        "convergence_step": cstep,
        "seed_collapse": pairwise_cosine(x0_g[0]),
        "cos_guidance_x_first": float(cos["cos_guidance_x"][0]),
        "wen_first": float(wen[0]),
        "wen_mean": float(wen.mean()),
        "loss_guided_mean": float(loss_g.mean()),
        "loss_cond_mean": float(loss_c.mean()),
        "loss_ratio_first": float(loss_g[:first_steps].mean() / loss_c[:first_steps].mean())
        if loss_c[:first_steps].mean() > 0
        else float("nan"),
        "final_distance": float(final),
        "decomposition_rmse_mean": float(rmse.mean()),
        "curves": {
            "k": traj.ks.tolist(),
            "alpha_bar": ab.tolist(),
            "loss_guided": loss_g.tolist(),
            "loss_cond": loss_c.tolist(),
            "seed_distance": dist.tolist(),
            "w0": w0.mean(1).tolist(),
            "wT": wT.mean(1).tolist(),
            "rmse": rmse.mean(1).tolist(),
            "wen": wen.tolist(),
            **{k: v.tolist() for k, v in cos.items()},
        },
    }


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


def correlations(
    stats: Mapping[str, Sequence[float | None]], severity: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Pearson and Spearman correlation of every statistic with severity across prompts, with
    bootstrap 95% intervals (resampling prompts; scipy.stats for the point estimates)."""
    import warnings

    sev = np.asarray(severity, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, vals in stats.items():
        v = np.asarray(vals, dtype=np.float64)
        ok = np.isfinite(v) & np.isfinite(sev)
        a, b = v[ok], sev[ok]
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            out[name] = {
                "n": len(a),
                "pearson": None,
                "pearson_ci": [None, None],
                "spearman": None,
                "spearman_ci": [None, None],
            }
            continue
        rng = np.random.default_rng(seed)
        with warnings.catch_warnings():  # bootstrap resamples may repeat one prompt many times
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*constant.*")
            out[name] = {
                "n": len(a),
                "pearson": _pearson(a, b),
                "pearson_ci": list(bootstrap_ci(_pearson, a, b, n_boot, rng)),
                "spearman": _spearman(a, b),
                "spearman_ci": list(bootstrap_ci(_spearman, a, b, n_boot, rng)),
            }
    return out
