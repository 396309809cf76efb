"""A PyTorch Lightning callback around :class:`~diffmem.monitor.MemorizationMonitor`.

Needs Lightning (``pip install diffmem[lightning]``); ``lightning.pytorch`` is used when it is
installed, else the older ``pytorch_lightning`` package.
"""

from __future__ import annotations

from typing import Any

from . import MemorizationMonitor

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError(
            "diffmem.monitor.lightning needs PyTorch Lightning: pip install diffmem[lightning] "
            "(or pip install lightning)"
        ) from e

__all__ = ["MemorizationCallback"]


class MemorizationCallback(pl.Callback):
    """Run a :class:`~diffmem.monitor.MemorizationMonitor` after every training batch.

    ``on_train_batch_end`` calls ``monitor.step(trainer.global_step, model)``; the monitor checks
    only every ``config.every`` optimizer steps (and once per step under gradient accumulation).
    The model is the monitor's own (``model=`` at construction) when it has one, else the
    LightningModule itself, whose ``forward(x, t)`` must then return the predicted noise. After
    an alarm with ``action="stop"`` the callback sets ``trainer.should_stop``.

    Parameters
    ----------
    monitor : MemorizationMonitor
        The configured monitor (data, schedule or ``sample_fn``, action, log and checkpoint paths).

    Examples
    --------
    >>> from diffmem.monitor import MemorizationMonitor, MonitorConfig  # doctest: +SKIP
    >>> from diffmem.monitor.lightning import MemorizationCallback  # doctest: +SKIP
    >>> monitor = MemorizationMonitor(x_train, schedule=diffmem.linear(), heldout=x_test,
    ...                               config=MonitorConfig(every=200, action="stop"))  # doctest: +SKIP
    >>> trainer = lightning.pytorch.Trainer(callbacks=[MemorizationCallback(monitor)])  # doctest: +SKIP
    >>> trainer.fit(module, loader)  # doctest: +SKIP
    >>> monitor.stopped_at  # doctest: +SKIP
    """

    def __init__(self, monitor: MemorizationMonitor) -> None:
        super().__init__()
        if not isinstance(monitor, MemorizationMonitor):
            raise TypeError(f"monitor must be a MemorizationMonitor, got {type(monitor).__name__}")
        self.monitor = monitor

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        model = None if self.monitor.model is not None else pl_module
        self.monitor.step(int(trainer.global_step), model)
        if self.monitor.should_stop:
            trainer.should_stop = True
