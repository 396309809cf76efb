"""Memorization detectors compared on the same prompts: AUROC (with a bootstrap interval) and TPR at 1% FPR.

Every detector turns one prompt's recorded trajectory into a score, higher = more likely memorized
(the statistics come from :func:`diffmem.audit.analysis.analyze`). Each trajectory statistic comes
twice: over the whole trajectory (or its first step) and over the early steps only (``_early``: the
first ``early_fraction`` of the steps, before the final sample has formed).

Need no training image:

- ``wen_first`` / ``wen_mean`` / ``wen_early`` (Wen et al., ICLR 2024): |eps_c - eps_u|_2 at the first
  step / averaged over the trajectory / over the early steps (mean over seeds).
- ``seed_collapse`` (after Hintersdorf et al.): mean pairwise cosine similarity across seeds of the
  first-step guided x0 predictions; ``seed_collapse_early``: averaged over the early steps.
- ``convergence``: 1 - (seed distance of the latents at the convergence step) / (at x_T);
  ``convergence_early``: at the end of the early steps.
- ``D1_final``, ``D2_final`` and their ``_early`` twins: the decomposition deviations against each
  seed's own final sample (the authors' released code). They read the trajectory only.

Need the training image x (they explain and verify a suspected copy rather than find one blind):

- ``overestimation_a`` / ``_early`` (Kim et al.): the overestimation coefficient a;
  ``q`` / ``q_early``: the revised alignment of the guidance step with x - mu, divided by g.
- ``D1``, ``D2`` and their ``_early`` twins: the deviations against the configured reference
  (the training image by default; with ``decompose_against="final"`` they need no image either,
  and the table says so).

Cost = U-Net/MLP evaluations per prompt counted as rows through the network: a guided step costs
2 per seed (conditional and unconditional rows of one batched forward pass). A statistic against the
final sample needs the whole trajectory, even over the early steps.

Tables: memorized prompts (positives) against normal prompts (negatives), partial prompts excluded
(``detectors``); partial counted as positives (``detectors_with_partial``); partial against normal
(``detectors_partial_vs_normal``) and memorized against partial (``detectors_memorized_vs_partial``).
TPR at 1% FPR is the largest true positive rate among ROC points whose false positive rate is at
most 0.01 (with fewer than 100 negatives this means no false positive at all). The AUROC interval is
a percentile bootstrap over prompts, resampling positives and negatives separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DETECTORS", "auroc", "auroc_interval", "detector_costs", "roc_table", "tpr_at_fpr"]

#: name -> (description, needs the training image)
DETECTORS: dict[str, tuple[str, bool]] = {
    "wen_first": ("Wen et al.: |eps_c - eps_u| at the first step", False),
    "wen_mean": ("Wen et al.: |eps_c - eps_u| averaged over the trajectory", False),
    "wen_early": ("Wen et al.: |eps_c - eps_u| averaged over the early steps", False),
    "seed_collapse": ("pairwise cosine of first-step x0 predictions across seeds", False),
    "seed_collapse_early": ("pairwise cosine of x0 predictions across seeds, early steps", False),
    "convergence": ("1 - seed distance at the convergence step / at x_T", False),
    "convergence_early": ("1 - seed distance after the early steps / at x_T", False),
    "D1_final": ("D1 against each seed's final sample", False),
    "D2_final": ("D2 against each seed's final sample", False),
    "D1_final_early": ("D1 against each seed's final sample, early steps", False),
    "D2_final_early": ("D2 against each seed's final sample, early steps", False),
    "overestimation_a": ("overestimation coefficient a (first steps)", True),
    "overestimation_a_early": ("overestimation coefficient a (early steps)", True),
    "q": ("revised overestimation q = <g Delta, v>/(g |v|^2) (first steps)", True),
    "q_early": ("revised overestimation q (early steps)", True),
    "D1": ("decomposition deviation D1 (w0 above its reference curve)", True),
    "D2": ("decomposition deviation D2 (wT below its reference curve)", True),
    "D1_early": ("D1 over the early steps", True),
    "D2_early": ("D2 over the early steps", True),
}


def detector_costs(
    steps: int,
    seeds: int,
    first_steps: int,
    converge_step: int,
    early_steps: int | None = None,
    final_reference: bool = False,
) -> dict[str, int]:
    """Network evaluations per prompt each detector needs (2 rows per seed and guided step).

    ``early_steps`` defaults to ``steps``; ``final_reference`` says that ``D1``/``D2`` are made against
    the final sample (so their early twins need the whole trajectory too)."""
    per = 2 * int(seeds)
    n = int(steps)
    e = n if early_steps is None else int(early_steps)
    return {
        "wen_first": per,
        "wen_mean": per * n,
        "wen_early": per * e,
        "seed_collapse": per,
        "seed_collapse_early": per * e,
        "convergence": per * int(converge_step),
        "convergence_early": per * e,
        "D1_final": per * n,
        "D2_final": per * n,
        "D1_final_early": per * n,
        "D2_final_early": per * n,
        "overestimation_a": per * int(first_steps),
        "overestimation_a_early": per * e,
        "q": per * int(first_steps),
        "q_early": per * e,
        "D1": per * n,
        "D2": per * n,
        "D1_early": per * (n if final_reference else e),
        "D2_early": per * (n if final_reference else e),
    }


def auroc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve of scores ``s`` for binary labels ``y`` (1 = positive)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y), np.asarray(s, dtype=np.float64)))


def tpr_at_fpr(y: ArrayLike, s: ArrayLike, fpr: float = 0.01) -> float:
    """Largest TPR on the ROC curve with FPR <= ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(np.asarray(y), np.asarray(s, dtype=np.float64))
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def auroc_interval(
    pos: ArrayLike, neg: ArrayLike, n_boot: int, rng: np.random.Generator, level: float = 0.95
) -> list[float | None]:
    """Percentile bootstrap interval of the AUROC of scores ``pos`` (positives) against ``neg``,
    resampling each class separately (Mann-Whitney form: ties count one half)."""
    p, q = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if int(n_boot) < 10 or not len(p) or not len(q):
        return [None, None]
    M = (p[:, None] > q[None]).astype(np.float64) + 0.5 * (p[:, None] == q[None])
    B = int(n_boot)
    cp = np.zeros((B, len(p)))
    cq = np.zeros((B, len(q)))
    rows = np.arange(B)[:, None]
    np.add.at(cp, (rows, rng.integers(0, len(p), (B, len(p)))), 1.0)
    np.add.at(cq, (rows, rng.integers(0, len(q), (B, len(q)))), 1.0)
    vals = np.einsum("bi,ij,bj->b", cp, M, cq) / (len(p) * len(q))
    a = (1 - level) / 2
    return [float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))]


def roc_table(
    scores: Mapping[str, Sequence[float | None]],
    labels: Sequence[str | None],
    positive: Sequence[str] = ("memorized",),
    negative: Sequence[str] = ("normal",),
    costs: Mapping[str, int] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    needs_image: Mapping[str, bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """AUROC (with a bootstrap interval when ``n_boot`` >= 10), TPR@1%FPR and the ROC curve of every
    detector for ``positive`` vs ``negative`` labels.

    Prompts with other labels (or no label) are left out. Scores that are not finite are left out
    of that detector's row. A detector whose rows lack a class gets ``None`` values. ``needs_image``
    overrides :data:`DETECTORS`' flag per detector."""
    from sklearn.metrics import roc_curve

    labels = list(labels)
    out: dict[str, dict[str, Any]] = {}
    for name, vals in scores.items():
        v = np.asarray([np.nan if x is None else x for x in vals], dtype=np.float64)
        keep = np.array([(lab in positive or lab in negative) for lab in labels], dtype=bool) & np.isfinite(v)
        y = np.array([1 if lab in positive else 0 for lab in labels])[keep]
        s = v[keep]
        flag = (needs_image or {}).get(name, DETECTORS.get(name, ("", False))[1])
        row: dict[str, Any] = {
            "n_pos": int(y.sum()),
            "n_neg": int((1 - y).sum()),
            "auroc": None,
            "auroc_ci": [None, None],
            "tpr_at_1fpr": None,
            "roc": None,
            "needs_image": bool(flag),
            "cost": (costs or {}).get(name),
        }
        if row["n_pos"] and row["n_neg"]:
            f, t, _ = roc_curve(y, s)
            row.update(auroc=auroc(y, s), tpr_at_1fpr=tpr_at_fpr(y, s), roc={"fpr": f.tolist(), "tpr": t.tolist()})
            row["auroc_ci"] = auroc_interval(s[y == 1], s[y == 0], n_boot, np.random.default_rng(seed))
        out[name] = row
    return out
