"""Stop in time: watch memorization while a diffusion model trains, and act before it sets in.

:class:`MemorizationMonitor` plugs into any PyTorch training loop. Every ``every`` steps it draws a
small, seeded set of samples (the same initial noise at every check), runs the nearest /
second-nearest ratio test of Bonnaire et al. (2025) against the training data, and extrapolates
when memorization will start:

* the test counts a sample as copied when its ratio ``|x - a1| / |x - a2|`` is below ``k``, so the
  fraction of copies f_mem reaches ``threshold`` exactly when the ``threshold``-quantile ``q`` of
  the ratios reaches ``k`` (estimated without bias in probability, :func:`ratio_quantile`);
* ``log q`` is fitted against ``log step`` over the last ``window`` checks (least squares) and the
  fit is solved for ``q = k``: that step is the predicted onset;
* the monitor raises an alarm when the lower bootstrap bound of f_mem already reaches ``threshold``
  or the predicted onset falls before the next check, and then warns, freezes the last safe
  checkpoint, or asks the loop to stop (``action``).

Modules: :mod:`~diffmem.monitor.config` (:class:`MonitorConfig`, :data:`MAX_SAMPLES`),
:mod:`~diffmem.monitor.onset` (:func:`ratio_quantile`, :func:`predict_onset`),
:mod:`~diffmem.monitor.check` (:class:`MonitorCheck`, the record of one check) and
:mod:`~diffmem.monitor.monitor` (:class:`MemorizationMonitor`). Names load lazily: importing this
package imports neither torch nor numpy. The optional PyTorch Lightning callback lives in
:mod:`diffmem.monitor.lightning` (``pip install diffmem[lightning]``); importing this package does not
need Lightning. ``docs/monitor.md`` describes
the rule and the measurements behind its defaults.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_WHERE = {
    ".config": ["MAX_SAMPLES", "MonitorConfig"],
    ".onset": ["predict_onset", "ratio_quantile"],
    ".check": ["MonitorCheck"],
    ".monitor": ["MemorizationMonitor"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
