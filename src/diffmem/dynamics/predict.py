"""Predict when a model trained on N examples starts to memorize, from short pilots at sizes << N.

The pilots are a small study (:func:`~diffmem.dynamics.study.run_study`): nested sizes well below N
(default N/16, N/8, N/4), two disjoint subsets each, the user's data, model and training settings.
Memorization can only start once generation is learned, so the onset is modelled as

    tau_mem(n) = tau_gen(n) + c * n^alpha,

with ``c`` and ``alpha`` fitted by least squares of ``log(tau_mem - tau_gen)`` on ``log n`` over the
pilot runs, and tau_gen(N) from the pilots' tau_gen (a power-law fit over at least three sizes,
their median otherwise). The interval of the prediction is the 95% Student-t *prediction*
interval of the regression at ``log N`` (it includes the run-to-run scatter of the pilots), shifted
by tau_gen(N). Without the tau_gen term, a plain power law through the pilots bends below the true
slope at small n (the offset), and predicts too early at N.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from .study import PRESETS, StudyConfig, StudyResult, run_study
from .timescales import excess_time

__all__ = ["Prediction", "pilot_sizes", "predict", "register"]


def pilot_sizes(n: int, count: int = 3, smallest: int = 8) -> tuple[int, ...]:
    """Default pilot sizes for a target ``n``: n/16, n/8, n/4 (``count`` halvings below n/4), at least
    ``smallest``.

    Examples
    --------
    >>> pilot_sizes(256)
    (16, 32, 64)
    """
    sizes = sorted({max(smallest, round(n / 4 / 2**i)) for i in range(count)})
    if len(sizes) < count or max(sizes) >= n:
        raise ValueError(
            f"n = {n} is too small to run {count} distinct pilot sizes of at least {smallest} below it; "
            f"give --pilot-sizes explicitly or a larger --n"
        )
    return tuple(sizes)


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` found; ``to_dict()`` is the content of ``predict.json``."""

    n: int
    """The target training-set size."""
    tau_mem_pred: float | None
    """Predicted onset of memorization at n (optimizer steps)."""
    tau_mem_ci: tuple[float | None, float | None]
    """95% prediction interval of tau_mem at n."""
    tau_gen_pred: float | None
    """Predicted tau_gen at n (steps)."""
    alpha: float | None
    """Exponent of tau_mem - tau_gen ~ c n^alpha over the pilots."""
    alpha_ci: tuple[float | None, float | None]
    """Its 95% confidence interval."""
    batch_size: int
    """Examples per step at n (to turn steps into epochs)."""
    extrapolation: float
    """n over the largest pilot size."""
    pilots: tuple[dict, ...] = field(repr=False)
    """One entry per pilot run: n, subset, tau_gen, tau_mem, steps, status."""
    pilot_folder: str = ""
    """Where the pilot study lives (resumable)."""
    elapsed_seconds: float | None = None
    """Wall time of the call."""
    law: str = "linear"
    """"linear": tau_mem = tau_gen + c n (alpha = 1, the paper's law); "power": alpha fitted over the pilots."""

    @property
    def tau_mem_epochs(self) -> float | None:
        """The predicted onset in epochs (passes over the n examples)."""
        return None if self.tau_mem_pred is None else self.tau_mem_pred * self.batch_size / self.n

    @property
    def safe_window(self) -> tuple[float | None, float | None]:
        """From tau_gen to the lower end of tau_mem's interval: where the model generates and does not copy yet."""
        return (self.tau_gen_pred, self.tau_mem_ci[0])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tau_mem_ci"] = list(self.tau_mem_ci)
        out["alpha_ci"] = list(self.alpha_ci)
        out["pilots"] = [dict(p) for p in self.pilots]
        out["tau_mem_epochs"] = self.tau_mem_epochs
        out["safe_window"] = list(self.safe_window)
        out["model"] = (
            "tau_mem(n) = tau_gen(n) + c * n" if self.law == "linear" else "tau_mem(n) = tau_gen(n) + c * n^alpha"
        )
        return io.jsonable(out)

    def summary(self) -> str:
        """The prediction in words, with how far it extrapolates and how wide it is."""
        if self.tau_mem_pred is None:
            return (
                f"no prediction for n = {self.n}: fewer than 3 pilot sizes reached tau_mem after tau_gen "
                "(see the pilots' status lines; give them a larger --max-steps-per-n)"
            )
        lo, hi = self.tau_mem_ci
        width = f"{hi / lo:.2g}x" if lo and hi else "unbounded"
        ep = self.tau_mem_epochs or 0.0
        return (
            f"n = {self.n}: memorization predicted to start at about {self.tau_mem_pred:.4g} steps "
            f"({ep:.4g} epochs at batch {self.batch_size}); "
            f"95% interval [{_f(lo)}, {_f(hi)}] steps (hi/lo = {width}).\n"
            f"tau_gen predicted at {_f(self.tau_gen_pred)} steps: safe window from {_f(self.tau_gen_pred)} "
            f"to {_f(lo)} steps.\n"
            f"law: tau_mem = tau_gen + c n{'' if self.law == 'linear' else '^alpha'}; over the pilots "
            f"tau_mem - tau_gen ~ n^{_f(self.alpha)} (95% CI [{_f(self.alpha_ci[0])}, {_f(self.alpha_ci[1])}]) "
            f"from {len(self.pilots)} pilot runs at n <= {max(p['n'] for p in self.pilots)}: "
            f"an extrapolation by {self.extrapolation:.3g}x in n."
        )


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


LAWS = ("linear", "power")


def prediction_from_study(
    n: int, res: StudyResult, batch_size: int, level: float = 0.95, law: str = "linear"
) -> Prediction:
    """Predict tau_mem at ``n`` from the study's runs: ``tau_gen(n) + c n`` (``law="linear"``, the
    paper's tau_mem ~ n) or ``tau_gen(n) + c n^alpha`` with alpha fitted (``law="power"``).

    The linear law estimates log c as the mean of log((tau_mem - tau_gen) / n) over the runs; its
    interval is the Student-t prediction interval of one more run, ``mean +- t s sqrt(1 + 1/m)``.
    The power law regresses log(tau_mem - tau_gen) on log n; its interval is the regression's
    prediction interval at log n. Both report the fitted alpha and its interval as a check of the
    linear law (``alpha``, ``alpha_ci``).
    """
    from scipy import stats

    if law not in LAWS:
        raise ValueError(f"law must be one of {LAWS}, got {law!r}")
    runs = res.runs
    pilots = tuple(
        {"n": r.n, "subset": r.subset, "tau_gen": r.tau_gen, "tau_mem": r.tau_mem, "steps": r.steps, "status": r.status}
        for r in runs
    )
    pts = [(r.n, excess_time(r)) for r in runs]
    pts_ok = [(float(m), float(e)) for m, e in pts if e is not None]
    gens = [(float(r.n), float(r.tau_gen)) for r in runs if r.tau_gen is not None]
    extrap = n / max(r.n for r in runs)
    none = Prediction(n, None, (None, None), None, None, (None, None), batch_size, extrap, pilots, law=law)
    if len({m for m, _ in pts_ok}) < 3 or not gens:
        return none
    x = np.log([m for m, _ in pts_ok])
    y = np.log([e for _, e in pts_ok])
    m = len(x)
    fit = stats.linregress(x, y)
    x0 = math.log(n)
    if law == "power":
        dof = m - 2
        tq = float(stats.t.ppf(0.5 + level / 2, dof))
        resid = y - (fit.intercept + fit.slope * x)
        s = math.sqrt(float((resid**2).sum()) / dof)
        sxx = float(((x - x.mean()) ** 2).sum())
        se_pred = s * math.sqrt(1 + 1 / m + (x0 - x.mean()) ** 2 / sxx)
        y0 = fit.intercept + fit.slope * x0
    else:
        r = y - x  # log((tau_mem - tau_gen) / n)
        tq = float(stats.t.ppf(0.5 + level / 2, m - 1))
        se_pred = float(np.std(r, ddof=1)) * math.sqrt(1 + 1 / m)
        y0 = float(r.mean()) + x0
    if len({k for k, _ in gens}) >= 3:
        g = stats.linregress(np.log([k for k, _ in gens]), np.log([t for _, t in gens]))
        tau_gen_n = float(math.exp(g.intercept + g.slope * x0))
    else:
        tau_gen_n = float(np.median([t for _, t in gens]))
    tq_a = float(stats.t.ppf(0.5 + level / 2, m - 2))
    ci_a = (float(fit.slope - tq_a * fit.stderr), float(fit.slope + tq_a * fit.stderr))
    return Prediction(
        n=n,
        tau_mem_pred=tau_gen_n + math.exp(y0),
        tau_mem_ci=(tau_gen_n + math.exp(y0 - tq * se_pred), tau_gen_n + math.exp(y0 + tq * se_pred)),
        tau_gen_pred=tau_gen_n,
        alpha=float(fit.slope),
        alpha_ci=ci_a,
        batch_size=batch_size,
        extrapolation=extrap,
        pilots=pilots,
        law=law,
    )


def predict(
    n: int,
    study: StudyConfig | None = None,
    out: str | Path = "runs/predict",
    *,
    sizes: tuple[int, ...] | None = None,
    subsets: int = 2,
    law: str = "linear",
    workers: int | None = None,
    show_progress: bool = True,
    device: str = "cpu",
) -> Prediction:
    """Predict when a model trained on ``n`` examples starts to memorize, from pilots at sizes << n.

    Parameters
    ----------
    n : int
        The training-set size to predict for.
    study : StudyConfig, optional
        The data, model, training and evaluation settings of the pilots (default: the quick study's
        on the embedded digits); its ``sizes`` and ``subsets`` are replaced by the pilots'.
    out : str or Path
        Folder: ``pilots/`` (a resumable study) and ``predict.json``.
    sizes : tuple of int, optional
        Pilot sizes (default :func:`pilot_sizes`: n/16, n/8, n/4).
    subsets : int
        Disjoint training subsets per pilot size (each one point of the fit).
    law : {"linear", "power"}
        ``tau_gen + c n`` (default) or ``tau_gen + c n^alpha`` with alpha fitted (see
        :func:`prediction_from_study`).
    workers, show_progress, device
        As for :func:`~diffmem.dynamics.study.run_study`.

    Returns
    -------
    Prediction
        ``tau_mem_pred``, ``tau_mem_ci``, ``tau_gen_pred``, ``safe_window``...; ``to_dict()`` is
        ``predict.json``.

    Examples
    --------
    >>> from diffmem.dynamics.predict import predict
    >>> p = predict(256, out="runs/predict")  # doctest: +SKIP
    >>> print(p.summary())  # doctest: +SKIP
    """
    t0 = time.time()
    if int(n) != n or n < 4:
        raise ValueError(f"n must be an integer >= 4, got {n}")
    sizes = tuple(sorted(int(s) for s in sizes)) if sizes else pilot_sizes(int(n))
    if law not in LAWS:
        raise ValueError(f"law must be one of {LAWS}, got {law!r}")
    if len(set(sizes)) < 3:
        raise ValueError(f"the pilots need at least 3 distinct sizes, got {sizes}")
    if max(sizes) >= n:
        raise ValueError(f"pilot sizes must be smaller than n = {n}, got {sizes}")
    base = study if study is not None else PRESETS["quick"]
    cfg = replace(base, sizes=sizes, subsets=int(subsets))
    out = Path(out)
    res = run_study(cfg, out / "pilots", workers=workers, show_progress=show_progress, device=device)
    batch = int(replace(cfg.train, n=int(n)).resolved().batch_size or n)  # the training rule's batch at n
    pred = prediction_from_study(int(n), res, batch, law=law)
    pred = replace(pred, pilot_folder=str(out / "pilots"), elapsed_seconds=time.time() - t0)
    io.write_json(out / "predict.json", pred.to_dict())
    return pred


# -------------------------------------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    """Add ``diffmem predict`` to the subcommands."""
    from ..cliutils import add_common, add_config_flags
    from .evaluate import EvalConfig
    from .timescales import TimeRules
    from .training import TrainConfig

    p = sub.add_parser(
        "predict", help="predict when memorization starts at --n from short pilot runs at sizes much smaller"
    )
    add_common(p, "runs/predict", seed_help="random seed (training and evaluation)", device=True)
    p.add_argument("--n", type=int, required=True, help="the training-set size to predict for")
    p.add_argument("--pilot-sizes", type=int, nargs="+", default=None, help="pilot sizes (default n/16, n/8, n/4)")
    p.add_argument("--subsets", type=int, default=2, help="disjoint training subsets per pilot size (default 2)")
    p.add_argument(
        "--law",
        choices=LAWS,
        default="linear",
        help="linear: tau_mem = tau_gen + c n (the paper's law, default); power: tau_gen + c n^alpha, alpha fitted",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: number of cores)")
    add_config_flags(
        p, StudyConfig, skip=("sizes", "subsets", "ks", "collapse_levels"), title="pilot study (quick preset's)"
    )
    add_config_flags(p, TrainConfig, skip=("n", "steps", "seed", "budget_base"), title="training (every pilot)")
    add_config_flags(p, EvalConfig, prefix="eval_", skip=("seed",), title="evaluation")
    add_config_flags(p, TimeRules, title="rules for tau_gen / tau_mem")
    p.set_defaults(func=cmd_predict, preset="quick")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..cliutils import print_json
    from ..config import to_dict
    from .cli import _study_config

    cfg = _study_config(args)  # the quick preset's study with the flags given (the pilots' sizes come below)
    if args.dry_run:
        sizes = tuple(args.pilot_sizes) if args.pilot_sizes else pilot_sizes(args.n)
        print_json({"n": args.n, "pilot_sizes": sizes, "subsets": args.subsets, "study": to_dict(cfg)})
        return 0
    pred = predict(
        args.n,
        cfg,
        args.out,
        sizes=tuple(args.pilot_sizes) if args.pilot_sizes else None,
        subsets=args.subsets,
        law=args.law,
        workers=args.workers,
        show_progress=not args.quiet,
        device=args.device,
    )
    print()
    for p in pred.pilots:
        if p["tau_mem"] is None:
            print(f"pilot n = {p['n']}, subset {p['subset']}: {p['status']}")
    print(pred.summary())
    print(f"\nwrote {Path(args.out) / 'predict.json'} in {pred.elapsed_seconds or 0:.0f} s")
    return 0
