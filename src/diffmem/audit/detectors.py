"""Memorization detectors compared on the same prompts: AUROC and TPR at 1% FPR.

Every detector turns one prompt's recorded trajectory into a score, higher = more likely memorized
(the statistics come from :func:`diffmem.audit.analysis.analyze`):

- ``wen_first`` / ``wen_mean`` (Wen et al., ICLR 2024): |eps_c - eps_u|_2 at the first step / averaged
  over the trajectory (mean over seeds). Needs no training image.
- ``seed_collapse`` (after Hintersdorf et al.): mean pairwise cosine similarity across seeds of the
  first-step guided x0 predictions. Needs no training image.
- ``convergence``: 1 - (seed distance of the latents at the convergence step) / (at x_T). No image.
- ``overestimation_a``, ``D1``, ``D2`` (ours, after Kim et al.): need the training image x, so they
  explain and verify a suspected copy rather than find one blind.

Cost = U-Net/MLP evaluations per prompt counted as rows through the network: a guided step costs
2 per seed (conditional and unconditional rows of one batched forward pass).

The main table is memorized prompts (positives) against normal prompts (negatives), partial prompts
excluded; a second table counts partial prompts as positives. TPR at 1% FPR is the largest true
positive rate among ROC points whose false positive rate is at most 0.01 (with fewer than 100
negatives this means no false positive at all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DETECTORS", "auroc", "detector_costs", "roc_table", "tpr_at_fpr"]

#: name -> (description, needs the training image)
DETECTORS: dict[str, tuple[str, bool]] = {
    "wen_first": ("Wen et al.: |eps_c - eps_u| at the first step", False),
    "wen_mean": ("Wen et al.: |eps_c - eps_u| averaged over the trajectory", False),
    "seed_collapse": ("pairwise cosine of first-step x0 predictions across seeds", False),
    "convergence": ("1 - seed distance at the convergence step / at x_T", False),
    "overestimation_a": ("overestimation coefficient a (first steps)", True),
    "D1": ("decomposition deviation D1 (w0 above sqrt(alpha_bar))", True),
    "D2": ("decomposition deviation D2 (wT below sqrt(1 - alpha_bar))", True),
}


def detector_costs(steps: int, seeds: int, first_steps: int, converge_step: int) -> dict[str, int]:
    """Network evaluations per prompt each detector needs (2 rows per seed and guided step)."""
    per = 2 * int(seeds)
    return {
        "wen_first": per,
        "wen_mean": per * int(steps),
        "seed_collapse": per,
        "convergence": per * int(converge_step),
        "overestimation_a": per * int(first_steps),
        "D1": per * int(steps),
        "D2": per * int(steps),
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


def roc_table(
    scores: Mapping[str, Sequence[float | None]],
    labels: Sequence[str | None],
    positive: Sequence[str] = ("memorized",),
    negative: Sequence[str] = ("normal",),
    costs: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """AUROC, TPR@1%FPR and the ROC curve of every detector for ``positive`` vs ``negative`` labels.

    Prompts with other labels (or no label) are left out. Scores that are not finite are left out
    of that detector's row. A detector whose rows lack a class gets ``None`` values."""
    from sklearn.metrics import roc_curve

    labels = list(labels)
    out: dict[str, dict[str, Any]] = {}
    for name, vals in scores.items():
        v = np.asarray(vals, dtype=np.float64)
        keep = np.array([(lab in positive or lab in negative) for lab in labels]) & np.isfinite(v)
        y = np.array([1 if lab in positive else 0 for lab in labels])[keep]
        s = v[keep]
        row: dict[str, Any] = {
            "n_pos": int(y.sum()),
            "n_neg": int((1 - y).sum()),
            "auroc": None,
            "tpr_at_1fpr": None,
            "roc": None,
            "needs_image": DETECTORS.get(name, ("", False))[1],
            "cost": (costs or {}).get(name),
        }
        if row["n_pos"] and row["n_neg"]:
            f, t, _ = roc_curve(y, s)
            row.update(auroc=auroc(y, s), tpr_at_1fpr=tpr_at_fpr(y, s), roc={"fpr": f.tolist(), "tpr": t.tolist()})
        out[name] = row
    return out
