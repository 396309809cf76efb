"""Checks shared by the tests of training settings (--ema, --draws): a run with the setting resumes
bit-identically after an interruption, and ensemble members trained with it equal single runs."""

from pathlib import Path

import pytest
import torch

from diffmem import io as dio
from diffmem.dynamics.ensemble import train_ensemble
from diffmem.dynamics.training import TrainConfig, list_checkpoints, train


def resumes_and_ensembles_alike(cfg: TrainConfig, other: TrainConfig, tmp: Path) -> Path:
    """Train ``cfg`` whole and interrupted at step 20 (same checkpoint bytes), then ``cfg`` and ``other``
    as an ensemble (members equal their single runs to float rounding). Returns the whole run's folder."""
    full = train(cfg, tmp / "full")

    def stop(step, total):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp / "part", progress=stop)
    train(cfg, tmp / "part")
    for (_, a), (_, b) in zip(list_checkpoints(full), list_checkpoints(tmp / "part")):
        assert a.read_bytes() == b.read_bytes()
    dirs = [tmp / "e0", tmp / "e1"]
    train_ensemble([cfg, other], dirs, tmp / "group")
    alone = train(other, tmp / "alone1")
    for d, ref in zip(dirs, [full, alone]):
        same_checkpoints(d, ref)
    return full


def same_checkpoints(run: Path, ref: Path) -> None:
    """The two run folders hold checkpoints at the same steps (at least one) with equal weights to float
    rounding (a vectorized ensemble and single runs differ only there)."""
    got, want = list_checkpoints(run), list_checkpoints(ref)
    assert [s for s, _ in got] == [s for s, _ in want] and got
    for (_, a), (_, b) in zip(got, want):
        ta, tb = dio.load_tensors(a)[0], dio.load_tensors(b)[0]
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], atol=2e-5, rtol=1e-4)
