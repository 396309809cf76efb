"""The vectorized ensemble trains each member as a single run would, and resumes exactly."""

import pytest

from diffmem import io as dio
from diffmem.dynamics.ensemble import train_ensemble
from diffmem.dynamics.training import TrainConfig, list_checkpoints, train
from setting_checks import same_checkpoints

KW = dict(n=12, width=32, steps=40, checkpoints=3, first_checkpoint=10, resume_every=10, log_every=10)


def _members():
    return [TrainConfig(subset_index=0, **KW), TrainConfig(subset_index=1, seed=5, **KW)]


def test_members_match_separate_runs(tmp_path):
    cfgs = _members()
    dirs = [tmp_path / "e0", tmp_path / "e1"]
    train_ensemble(cfgs, dirs, tmp_path / "group")
    for cfg, d in zip(cfgs, dirs):
        alone = train(cfg, tmp_path / f"alone_{d.name}")
        assert [s for s, _ in list_checkpoints(d)] == [10, 20, 40]
        same_checkpoints(d, alone)
        la = [r["loss"] for r in dio.read_jsonl(d / "train_log.jsonl")]
        lb = [r["loss"] for r in dio.read_jsonl(alone / "train_log.jsonl")]
        assert la == pytest.approx(lb, rel=1e-4)


def test_interrupted_ensemble_resumes_bit_identically(tmp_path):
    cfgs = _members()
    straight = [tmp_path / "s0", tmp_path / "s1"]
    train_ensemble(cfgs, straight, tmp_path / "gs")

    class StopTrainingError(Exception):
        pass

    def stop_at_20(step, total):
        if step == 20:
            raise StopTrainingError

    resumed = [tmp_path / "r0", tmp_path / "r1"]
    with pytest.raises(StopTrainingError):
        train_ensemble(cfgs, resumed, tmp_path / "gr", progress=stop_at_20)
    assert int(dio.load_tensors(tmp_path / "gr" / "state.safetensors")[0]["step"]) == 20
    train_ensemble(cfgs, resumed, tmp_path / "gr")
    for a, b in zip(straight, resumed):
        for (_, pa), (_, pb) in zip(list_checkpoints(a), list_checkpoints(b)):
            assert pa.read_bytes() == pb.read_bytes()


def test_members_must_share_the_architecture(tmp_path):
    cfgs = [TrainConfig(**KW), TrainConfig(**{**KW, "width": 16})]
    with pytest.raises(ValueError, match="must share width"):
        train_ensemble(cfgs, [tmp_path / "a", tmp_path / "b"], tmp_path / "g")
    with pytest.raises(ValueError, match="2 configurations but 1 run folders"):
        train_ensemble(_members(), [tmp_path / "a"], tmp_path / "g")
