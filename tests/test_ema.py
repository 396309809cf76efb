"""The weight average (--ema): checkpoints hold the EMA of the weights, computed as the stated
recursion with diffusers' warm-up, in single runs and in the ensemble, and it resumes exactly."""

import json

import pytest
import torch

from diffmem import io as dio
from diffmem.dynamics.ensemble import train_ensemble
from diffmem.dynamics.training import TrainConfig, build_model, ema_decay, list_checkpoints, load_split, train
from setting_checks import resumes_and_ensembles_alike

KW = dict(n=12, width=32, steps=30, first_checkpoint=1, resume_every=10, log_every=10)


def test_matches_diffusers_ema_model(tmp_path):
    """Checkpoints of an EMA run equal diffusers' EMAModel stepped over the raw run's per-step weights,
    which are those of the run without EMA (the average does not feed back into training)."""
    training_utils = pytest.importorskip("diffusers.training_utils")
    raw = train(TrainConfig(**KW, checkpoints=200), tmp_path / "raw")  # a checkpoint at every step
    assert [s for s, _ in list_checkpoints(raw)] == list(range(1, 31))
    ema_run = train(TrainConfig(**KW, checkpoints=200, ema=0.9), tmp_path / "ema")
    cfg = TrainConfig(**KW).resolved()
    net = build_model(cfg, load_split(cfg).shape)  # the seeded initialisation (step 0)
    ref = training_utils.EMAModel(net.parameters(), decay=0.9)
    names = [k for k, _ in net.named_parameters()]
    for step, path in list_checkpoints(raw):
        w = dio.load_tensors(path)[0]
        net.load_state_dict(w)
        ref.step(net.parameters())
        got = dio.load_tensors(ema_run / "checkpoints" / path.name)[0]
        for k, v in zip(names, ref.shadow_params):
            torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)
        assert ema_decay(0.9, step) == pytest.approx(ref.get_decay(step))
    a, b = dio.load_tensors(raw / "state.safetensors")[0], dio.load_tensors(ema_run / "state.safetensors")[0]
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k
    last_raw = dio.load_tensors(list_checkpoints(raw)[-1][1])[0]
    last_ema = dio.load_tensors(list_checkpoints(ema_run)[-1][1])[0]
    assert any(not torch.allclose(last_raw[k], last_ema[k]) for k in last_raw)


def test_ema_run_resumes_exactly_and_ensemble_matches(tmp_path):
    cfg = TrainConfig(**KW, checkpoints=4, ema=0.95)
    cfgs = [cfg, TrainConfig(**KW, checkpoints=4, ema=0.95, subset_index=1, seed=3)]
    resumes_and_ensembles_alike(cfgs[0], cfgs[1], tmp_path)
    dirs = [tmp_path / "e0", tmp_path / "e1"]
    with pytest.raises(ValueError, match="ema"):
        train_ensemble([cfgs[0], TrainConfig(**KW, checkpoints=4, subset_index=1)], dirs, tmp_path / "g2")


def test_bad_ema_and_folders_from_before_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\)"):
        TrainConfig(ema=1.0).resolved()
    cfg = TrainConfig(**KW, checkpoints=3)
    run = train(cfg, tmp_path / "old")
    # a folder written before the setting existed (no "ema" key) still resumes as ema = 0 ...
    saved = json.loads((run / "config.json").read_text())
    del saved["ema"]
    (run / "config.json").write_text(json.dumps(saved))
    train(cfg, run)
    # ... and is refused, naming the setting, when asked for an average it was not trained with
    with pytest.raises(ValueError, match="differs in: ema"):
        train(TrainConfig(**KW, checkpoints=3, ema=0.9), run)
