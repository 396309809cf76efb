import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from diffmem import io as dio
from diffmem.dynamics.training import TrainConfig, checkpoint_steps, list_checkpoints, load_checkpoint, train
from diffmem.models import ResidualMLP, mlp_param_count


@pytest.mark.parametrize("d,w", [(8, 128), (64, 256), (3, 7)])
def test_mlp_parameter_count_formula(d, w):
    m = ResidualMLP((d,), width=w)
    p = sum(q.numel() for q in m.parameters())
    assert p == mlp_param_count(d, w) == w * (2 * d + 13) + d + 6 * w * w


def test_mlp_shapes_and_conditioning():
    m = ResidualMLP((1, 8, 8), width=16, num_classes=3)
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1.0, 10, 100, 999])
    assert m(x, t).shape == x.shape
    assert not torch.allclose(m(x, t, torch.tensor([0, 0, 0, 0])), m(x, t, torch.tensor([1, 1, 1, 1])))
    with pytest.raises(ValueError, match="unconditional"):
        ResidualMLP((4,), width=8)(torch.randn(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.long))


def test_checkpoint_grid_is_log_spaced_and_ends_at_steps():
    g = checkpoint_steps(10_000, 9, 10)
    assert g[0] == 10 and g[-1] == 10_000
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert max(ratios) / min(ratios) < 1.05
    assert checkpoint_steps(50, 5, 100) == [50]


def _final_state(run):
    tensors, _ = dio.load_tensors(run / "state.safetensors")
    return tensors


def test_interrupted_run_resumes_exactly(tmp_path, tiny_train_kwargs):
    cfg = TrainConfig(**tiny_train_kwargs)
    full = train(cfg, tmp_path / "full")
    # simulate a run killed after step 20: keep only what an interrupted run would have written
    part = tmp_path / "part"
    # an interruption at step 30, raised from inside the loop by the progress callback
    calls = []

    def stop(step, total):
        calls.append(step)
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, part, progress=stop)
    assert int(_final_state(part)["step"]) == 20  # the last state saved before the stop (resume_every=20)
    train(cfg, part)
    a, b = _final_state(full), _final_state(part)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [s for s, _ in list_checkpoints(full)] == [s for s, _ in list_checkpoints(part)]


@pytest.mark.slow
def test_kill_9_resumes_exactly(tmp_path):
    """A real SIGKILL in the middle of training; the resumed run ends bit-identical to an uninterrupted one."""
    kw = dict(n=32, width=64, steps=3000, checkpoints=6, first_checkpoint=100, resume_every=50, log_every=50)
    args = [
        "--n",
        "32",
        "--width",
        "64",
        "--steps",
        "3000",
        "--checkpoints",
        "6",
        "--first-checkpoint",
        "100",
        "--resume-every",
        "50",
        "--log-every",
        "50",
        "--quiet",
    ]
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffmem.cli", "train", "--out", str(run), *args], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        st = run / "state.safetensors"
        if st.exists():
            try:
                if int(dio.load_tensors(st)[0]["step"]) >= 200:
                    break
            except ValueError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = int(dio.load_tensors(run / "state.safetensors")[0]["step"])
    assert step_at_kill < 3000, "the run finished before it could be killed; make it longer"
    rc = subprocess.run([sys.executable, "-m", "diffmem.cli", "train", "--out", str(run), *args], env=env).returncode
    assert rc == 0
    ref = train(TrainConfig(**kw), tmp_path / "ref")
    a, b = _final_state(ref), _final_state(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_folder_with_another_configuration_is_refused(tmp_path, tiny_train_kwargs):
    train(TrainConfig(**tiny_train_kwargs), tmp_path / "r")
    with pytest.raises(ValueError, match=r"another configuration.*width"):
        train(TrainConfig(**{**tiny_train_kwargs, "width": 48}), tmp_path / "r")
    # the existing run is untouched
    assert json.loads((tmp_path / "r" / "config.json").read_text())["width"] == tiny_train_kwargs["width"]


def test_corrupt_or_missing_checkpoints_give_clear_errors(tmp_path, tiny_train_kwargs):
    cfg = TrainConfig(**tiny_train_kwargs).resolved()
    run = train(cfg, tmp_path / "r")
    (run / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        train(cfg, run)
    _, path = list_checkpoints(run)[-1]
    path.write_bytes(b"{}garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(path, cfg, (1, 8, 8))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(run / "checkpoints" / "step_9999999.safetensors", cfg, (1, 8, 8))


def test_bad_training_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop").resolved()
    with pytest.raises(ValueError, match="use n <="):
        train(TrainConfig(n=5000, steps=10), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written for an impossible run


def test_sgd_recipe_and_loss_decreases(tmp_path):
    run = train(TrainConfig(n=32, width=64, steps=300, optimizer="sgd", checkpoints=3, log_every=50), tmp_path / "sgd")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 0.01 and cfg["momentum"] == 0.95 and cfg["batch_size"] == 32
    log = dio.read_jsonl(run / "train_log.jsonl")
    assert log[-1]["loss"] < log[0]["loss"]


def test_resolve_device_names_and_errors(monkeypatch):
    from diffmem.config import resolve_device

    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'banana'"):
        resolve_device("banana")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    # without a GPU, asking for one is an error that says what to do, never a silent CPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"sees no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    # with one, "auto" picks it and a missing index is refused
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_explicit_cpu_device_is_the_default_run(tmp_path, tiny_train_kwargs):
    from safetensors.torch import load_file

    cfg = TrainConfig(**tiny_train_kwargs)
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b", device="cpu")
    for (_, pa), (_, pb) in zip(list_checkpoints(a), list_checkpoints(b), strict=True):
        ta, tb = load_file(pa), load_file(pb)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cli_refuses_a_missing_gpu_before_any_work(tmp_path):
    from diffmem.cli import main

    for argv in (["train", "--n", "16", "--steps", "10"], ["dynamics", "--sizes", "16", "32"]):
        out = tmp_path / argv[0]
        assert main([*argv, "--out", str(out), "--device", "cuda"]) == 2
        assert not out.exists()
