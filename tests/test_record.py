"""The measurement record and the one nearest-neighbour routine behind every ratio test.

The record is checked against what each producer writes (a run's metrics.jsonl, the monitor's records,
measure.json); the ratio conventions and the cosine test against brute force with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffmem import io
from diffmem.external import MeasureConfig, cosine_ratio_test, measure_model
from diffmem.metrics import (
    Measurement,
    distance_ratios,
    fraction_from_ratios,
    memorization_fraction,
)
from diffmem.monitor import MemorizationMonitor, MonitorCheck, MonitorConfig

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def _mem(seed: int = 0, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(12, 6, generator=g, dtype=torch.float64)
    near = train[torch.randint(0, 12, (n // 2,), generator=g)] + 0.01 * torch.randn(n // 2, 6, generator=g)
    samples = torch.cat([near, torch.randn(n - n // 2, 6, generator=g, dtype=torch.float64)])
    return memorization_fraction(samples, train, 1 / 3, n_boot=200, seed=seed)


def test_record_holds_the_memorization_result_and_writes_one_line(tmp_path):
    mem = _mem()
    m = Measurement.of(mem, n_boot=200, step=7, quality=1.5, quality_metric="frechet[pixels]", loss_train=0.25)
    assert m.f_mem == mem.value and m.f_mem_ci == mem.ci and m.k == pytest.approx(1 / 3)
    assert m.samples == 40 and m.memorized == int((mem.ratios < 1 / 3).sum()) == round(mem.value * 40)
    assert m.median_ratio == float(np.median(mem.ratios)) and m.loss_test is None and m.loss_gap is None
    d = m.to_dict()
    assert list(d) == list(Measurement.KEYS) and d["f_mem_ci"] == list(mem.ci) and d["loss_test"] is None
    m.append_to(tmp_path / "metrics.jsonl")
    m.append_to(tmp_path / "metrics.jsonl")
    assert io.read_jsonl(tmp_path / "metrics.jsonl") == [json.loads(json.dumps(d))] * 2
    assert m.f_mem_dict() == {"value": mem.value, "ci": list(mem.ci), "level": 0.95, "n_boot": 200, "memorized": 20}
    with pytest.raises(AttributeError):
        m.f_mem = 0.0  # type: ignore[misc]  # frozen


@pytest.mark.filterwarnings("ignore:memorization onset")
def test_monitor_records_are_the_monitor_check_record():
    train = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    mon = MemorizationMonitor(
        train, sample_fn=lambda num, g: torch.tensor([[0.1, 0.0]]).repeat(num, 1), config=MonitorConfig(every=1)
    )
    rec = mon.step(1)
    assert list(rec) == list(MonitorCheck.KEYS)
    assert "median_ratio" not in rec and "quality_metric" not in rec  # the monitor's lines keep their keys
    assert rec["f_mem"] == 1.0 and rec["q_low"] == pytest.approx(0.1 / 0.9) and rec["alarm"]


def test_a_run_folder_writes_the_record(tmp_path, tiny_train_kwargs):
    from diffmem.dynamics.evaluate import EvalConfig, measure
    from diffmem.dynamics.training import TrainConfig, train

    cfg = TrainConfig(**{**tiny_train_kwargs, "checkpoints": 2})
    train(cfg, tmp_path / "r")
    recs = measure(cfg, EvalConfig(samples=20, sampling_steps=5, n_boot=50), tmp_path / "r")
    assert recs and all(list(r) == list(Measurement.KEYS) for r in recs)


def test_measure_json_f_mem_is_the_record_and_the_result_gives_it_back(tmp_path):
    from diffmem.data import digits

    class NoNoise(torch.nn.Module):  # predicts no noise: DDIM keeps x_T, which copies no digit
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    path = tmp_path / "zero.pt"
    torch.jit.save(torch.jit.script(NoNoise()), str(path))
    res = measure_model(str(path), digits().pixels[:30], out=tmp_path / "m", config=MeasureConfig(samples=8, n_boot=20))
    saved = json.loads((tmp_path / "m" / "measure.json").read_text())
    m = res.measurement()
    assert saved["f_mem"] == m.f_mem_dict() and list(saved["f_mem"]) == ["value", "ci", "level", "n_boot", "memorized"]
    assert "f_mem_ci" not in saved and "measurement" not in saved
    assert list(m.to_dict()) == list(Measurement.KEYS) and m.quality is None and m.step is None
    with np.load(tmp_path / "m" / "ratios.npz") as f:
        assert m.memorized == int(f["memorized"].sum()) and m.samples == 8


def test_distance_ratios_conventions_and_fraction_from_ratios():
    r = distance_ratios([0.0, 1.0, 2.0, 1.0], [0.0, 0.0, 4.0, 3.0])
    assert r.tolist() == [0.0, np.inf, 0.5, pytest.approx(1 / 3)]
    mem = _mem(3)
    again = fraction_from_ratios(mem.ratios, mem.nearest, 1 / 3, n_boot=200, seed=3)
    assert again.value == mem.value and again.ci == mem.ci and (again.nearest == mem.nearest).all()


def test_cosine_test_goes_through_the_euclidean_search_and_keeps_its_conventions():
    g = np.random.default_rng(4)
    train = g.normal(size=(9, 7))
    train[5] = 2.5 * train[2]  # the same direction twice: a sample on it has 0 / 0 = 0
    samples = np.vstack([g.normal(size=(20, 7)), 0.3 * train[2:3], -train[0:1]])
    r, idx, d1, d2 = cosine_ratio_test(samples, train, chunk=4)  # chunks smaller than the sample set
    an = samples / np.linalg.norm(samples, axis=1, keepdims=True)
    bn = train / np.linalg.norm(train, axis=1, keepdims=True)
    d = np.sort(1 - an @ bn.T, axis=1)
    np.testing.assert_allclose(d1, d[:, 0], atol=1e-12)
    np.testing.assert_allclose(d2, d[:, 1], atol=1e-12)
    assert (d1 >= 0).all() and idx.dtype == np.int64
    assert r[20] == 0.0 and idx[20] in (2, 5)  # the duplicated direction
    np.testing.assert_allclose(r[:20], d[:20, 0] / d[:20, 1], rtol=1e-9)
    with pytest.raises(ValueError, match="same D"):
        cosine_ratio_test(samples[:, :3], train)
