"""The onset rule of the monitor: the ratio quantile q it tracks and the step at which q reaches k.

The test counts a sample as copied when its ratio ``|x - a1| / |x - a2|`` is below ``k``, so the
fraction of copies f_mem reaches ``threshold`` exactly when the ``threshold``-quantile ``q`` of the
ratios reaches ``k`` (:func:`ratio_quantile`); ``log q`` is fitted against ``log step`` over the last
checks and the fit is solved for ``q = k`` (:func:`predict_onset`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["predict_onset", "ratio_quantile"]


def ratio_quantile(ratios, p: float) -> float:
    """The p-quantile of the distance ratios, estimated without bias in probability.

    The estimate is the order statistic at position ``p (N + 1)`` (interpolated; numpy's
    ``method="weibull"``), whose expected CDF value is exactly p. With few samples this matters: of
    200 ratios, numpy's default (position ``p (N - 1) + 1``) gives for p = 0.01 the 3rd smallest
    ratio, an estimate of the 1.5% quantile, and so would see the onset of memorization late.

    Parameters
    ----------
    ratios : array_like
        Nearest / second-nearest distance ratios, one per sample.
    p : float
        The quantile, in (0, 1).

    Returns
    -------
    float
        The estimated p-quantile.

    Examples
    --------
    >>> ratio_quantile([0.1, 0.2, 0.3, 0.4], 0.2)  # position 0.2 * 5 = 1: the smallest ratio
    0.1
    """
    return float(np.quantile(np.asarray(ratios, dtype=np.float64), p, method="weibull"))


def predict_onset(steps, q, k: float, window: int = 5) -> float | None:
    """The step at which the ratio quantile q is expected to reach k, from a log-log line.

    ``log q = a + b log step`` is fitted by least squares over the last ``window`` points with
    ``step > 0`` and finite ``q > 0``; when it falls (``b < 0``) the onset is
    ``exp((log k - a) / b)``. It may lie before the last step (the fit has already crossed k).

    Parameters
    ----------
    steps : sequence of float
        Training steps of the checks, increasing.
    q : sequence of float
        The ``threshold``-quantile of the distance ratios at those checks.
    k : float
        The ratio threshold of the memorization test, in (0, 1).
    window : int
        Number of most recent usable checks to fit (>= 3).

    Returns
    -------
    float or None
        The predicted onset step, or None with fewer than 3 usable checks or when q is not falling.

    Examples
    --------
    >>> steps = [100, 200, 400, 800]
    >>> q = [0.9 * (s / 100) ** -0.5 for s in steps]  # q falls like step^-1/2 and reaches 0.3 at 900
    >>> round(predict_onset(steps, q, k=0.3))
    900
    >>> predict_onset(steps, q[::-1], k=0.3) is None  # rising q: no onset in sight
    True
    """
    pts = [(float(s), float(v)) for s, v in zip(steps, q) if s > 0 and v is not None and math.isfinite(v) and v > 0]
    pts = pts[-int(window) :]
    if len(pts) < 3:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0:
        return None
    b = float(((x - xm) * (y - ym)).sum()) / sxx
    if not b < 0:
        return None
    a = ym - b * xm
    log_onset = (math.log(k) - a) / b
    return float(math.exp(min(log_onset, 700.0)))
