"""diffmem.monitor: the onset extrapolation, the alarm and its actions, the log, bad input, the
Lightning callback, and the stop-in-time criterion on a real digits run."""

import dataclasses
import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

import diffmem
from diffmem import io
from diffmem.cliutils import field_docs
from diffmem.monitor import MAX_SAMPLES, MemorizationMonitor, MonitorConfig, predict_onset

K = 1 / 3


# -- planted ratios ---------------------------------------------------------------------------------

TRAIN2 = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # two training points one unit apart


def at_ratio(r: float, num: int) -> torch.Tensor:
    """``num`` samples on the segment between the two training points with |x - a1| / |x - a2| = r."""
    assert 0 <= r <= 1, r
    p = r / (1 + r)
    return torch.tensor([[p, 0.0]]).repeat(num, 1)


class Planted:
    """A sample_fn whose samples all have the ratio q(step) = k (step / onset)^slope."""

    def __init__(self, onset: float, slope: float = -0.3):  # q < 1 from step 100 on
        self.onset, self.slope, self.now = onset, slope, 1

    def q(self, step: int) -> float:
        return K * (step / self.onset) ** self.slope

    def __call__(self, num: int, generator: torch.Generator) -> torch.Tensor:
        return at_ratio(self.q(self.now), num)


def run_planted(planted: Planted, steps: int, model=None, **kwargs):
    mon = MemorizationMonitor(TRAIN2, sample_fn=planted, model=model, **kwargs)
    for step in range(1, steps + 1):
        planted.now = step
        if model is not None:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float(step))  # the weights "train": they hold the step
        mon.step(step)
        if mon.should_stop:
            break
    return mon


def test_predict_onset_recovers_a_planted_log_linear_onset():
    steps = [200, 300, 400, 500, 600]
    for onset, slope in [(1050.0, -0.5), (5000.0, -0.2), (650.0, -1.3)]:
        q = [K * (s / onset) ** slope for s in steps]
        assert predict_onset(steps, q, K) == pytest.approx(onset, rel=1e-9)
    # only the last `window` checks count: an earlier flat stretch does not bias the fit
    q = [0.9, 0.9, 0.9] + [K * (s / 1000) ** -0.5 for s in steps]
    assert predict_onset([10, 20, 30, *steps], q, K, window=5) == pytest.approx(1000, rel=1e-9)
    assert predict_onset(steps[:2], q[-5:-3], K) is None  # fewer than 3 checks
    assert predict_onset(steps, [0.5] * 5, K) is None  # flat q: no onset in sight
    assert predict_onset(steps, [0.4, 0.45, 0.5, 0.55, 0.6], K) is None  # rising q


@pytest.mark.filterwarnings("ignore:memorization onset")
def test_alarm_fires_when_the_onset_is_due_before_the_next_check():
    # q reaches k at step 1050: the fit says so from the third check on; the check at 1000 is the
    # last one before the onset, 900 + 100 < 1050 must not alarm
    mon = run_planted(Planted(1050), 1200, config=MonitorConfig(every=100, samples=20, action="warn"))
    recs = {r["step"]: r for r in mon.records}
    assert recs[100]["predicted_onset"] is None and recs[200]["predicted_onset"] is None
    assert recs[300]["predicted_onset"] == pytest.approx(1050, rel=1e-6)
    assert recs[500]["q_low"] == pytest.approx(Planted(1050).q(500), rel=1e-6)
    assert [s for s, r in recs.items() if r["alarm"]] == [1000, 1100, 1200]
    assert mon.alarm_step == 1000 and recs[1000]["action"] == "warn" and recs[900]["action"] is None
    # no copy among the samples (every ratio is above k until 1050): the alarm came from the extrapolation
    assert recs[1000]["f_mem"] == 0.0 and recs[1000]["f_mem_ci"] == [0.0, 0.0]


def test_alarm_fires_on_the_lower_bound_alone():
    # every sample is a copy from the first check on: no fit yet, but the lower bound is 1
    mon = MemorizationMonitor(TRAIN2, sample_fn=lambda num, g: at_ratio(0.01, num), config=MonitorConfig(every=5))
    with pytest.warns(UserWarning, match="memorization onset at step 5"):
        rec = mon.step(5)
    assert rec["f_mem_ci"][0] == 1.0 and rec["predicted_onset"] is None and rec["alarm"]


def test_checkpoint_keeps_the_last_check_before_the_alarm(tmp_path):
    path = tmp_path / "safe.safetensors"
    model = torch.nn.Linear(2, 2)
    cfg = MonitorConfig(every=100, samples=10, action="checkpoint")
    mon = run_planted(Planted(1050), 1400, model=model, config=cfg, checkpoint_path=path)
    assert mon.alarm_step == 1000 and not mon.should_stop  # "checkpoint" does not stop the loop
    tensors, meta = io.load_tensors(path)
    assert meta["step"] == "900" and mon.checkpoint_step == 900
    for name, v in model.state_dict().items():
        assert torch.equal(tensors[name], torch.full_like(v, 900.0)), name  # the weights at step 900
    assert [r["checkpoint"] for r in mon.records[7:]] == [800, 900, None, None, None, None, None]


def test_stop_sets_should_stop_and_keeps_the_safe_checkpoint(tmp_path):
    path = tmp_path / "safe.safetensors"
    model = torch.nn.Linear(2, 1)
    mon = run_planted(
        Planted(1050),
        5000,
        model=model,
        config=MonitorConfig(every=100, samples=10, action="stop"),
        checkpoint_path=path,
    )
    assert mon.should_stop and mon.stopped_at == 1000 and mon.records[-1]["step"] == 1000
    assert mon.records[-1]["action"] == "stop"
    assert io.load_tensors(path)[1]["step"] == "900"


def test_warn_warns_once(recwarn):
    mon = run_planted(Planted(1050), 1500, config=MonitorConfig(every=100, samples=10, action="warn"))
    msgs = [str(w.message) for w in recwarn if "memorization onset" in str(w.message)]
    assert len(msgs) == 1 and "step 1000" in msgs[0]
    assert sum(r["alarm"] for r in mon.records) == 6 and mon.stopped_at is None and not mon.should_stop


@pytest.mark.filterwarnings("ignore:memorization onset")
def test_log_lines_match_the_records(tmp_path):
    log = tmp_path / "sub" / "monitor.jsonl"
    mon = run_planted(Planted(1050), 1100, config=MonitorConfig(every=100, samples=10), log_path=log)
    lines = io.read_jsonl(log)
    assert lines == json.loads(json.dumps(io.jsonable(mon.records)))
    assert len(lines) == 11
    need = {"step", "f_mem", "f_mem_ci", "q_low", "predicted_onset", "loss_train", "loss_test", "loss_gap"}
    need |= {"quality", "alarm", "action"}
    assert need <= set(lines[0])
    # without a model and held-out data the losses and quality are null, not missing
    assert lines[-1]["loss_train"] is None and lines[-1]["loss_gap"] is None and lines[-1]["quality"] is None


def test_step_is_a_no_op_between_checks_and_never_repeats_a_step():
    mon = MemorizationMonitor(TRAIN2, sample_fn=lambda num, g: at_ratio(0.9, num), config=MonitorConfig(every=10))
    assert [mon.step(s) for s in (1, 7, 13)] == [None, None, None]
    assert mon.step(10) is not None
    assert mon.step(10) is None  # the same global step again (gradient accumulation)
    assert len(mon.records) == 1


# -- bad input --------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=f"more than the monitor's budget of {MAX_SAMPLES}"):
        MonitorConfig(samples=MAX_SAMPLES + 1).validate()
    with pytest.raises(ValueError, match="20000 samples per check"):
        MemorizationMonitor(TRAIN2, sample_fn=Planted(1), config=MonitorConfig(samples=50_000))
    with pytest.raises(ValueError, match=r"cannot sample: give sample_fn\(num, generator\), or a denoiser"):
        MemorizationMonitor(TRAIN2, model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"loss_gap=True needs held-out data .* pass heldout="):
        MemorizationMonitor(
            TRAIN2, model=torch.nn.Linear(2, 2), schedule=diffmem.linear(), config=MonitorConfig(loss_gap=True)
        )
    with pytest.raises(ValueError, match="pass heldout= and schedule="):
        MemorizationMonitor(TRAIN2, sample_fn=Planted(1), config=MonitorConfig(loss_gap=True))
    with pytest.raises(ValueError, match="checkpoint_path"):
        MemorizationMonitor(TRAIN2, sample_fn=Planted(1), config=MonitorConfig(action="checkpoint"))
    with pytest.raises(ValueError, match="window must be an integer >= 3"):
        MonitorConfig(window=2).validate()
    with pytest.raises(ValueError, match="action must be"):
        MonitorConfig(action="halt").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heldout examples have shape"):
        MemorizationMonitor(TRAIN2, sample_fn=Planted(1), heldout=torch.zeros(5, 3))
    mon = MemorizationMonitor(TRAIN2, sample_fn=lambda num, g: torch.zeros(num, 3), config=MonitorConfig(every=1))
    with pytest.raises(ValueError, match=r"returned shape \(200, 3\); expected \(200, 2\)"):
        mon.step(1)
    mon = MemorizationMonitor(TRAIN2, schedule=diffmem.linear(), config=MonitorConfig(every=1))
    with pytest.raises(ValueError, match="no model to sample from"):
        mon.step(1)


def test_monitor_config_is_documented_field_by_field():
    docs = field_docs(MonitorConfig)
    assert [f.name for f in dataclasses.fields(MonitorConfig) if not docs.get(f.name)] == []
    assert diffmem.MonitorConfig is MonitorConfig and diffmem.MemorizationMonitor is MemorizationMonitor


# -- sampling from a model --------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A linear denoiser that records the mode and grad state it is called in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.drop = torch.nn.Dropout(0.5)
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x, t):
        self.seen.add((self.training, torch.is_grad_enabled()))
        return self.drop(self.lin(x.reshape(x.shape[0], -1))).reshape(x.shape)


def test_model_sampling_is_seeded_in_eval_mode_and_restores_the_modes():
    torch.manual_seed(0)
    model = Recorder()
    model.train()
    model.lin.eval()  # a submodule kept in eval mode by the user must stay so
    train, held = torch.randn(16, 1, 2, 2), torch.randn(40, 1, 2, 2)
    cfg = MonitorConfig(every=1, samples=30, sampling_steps=5, loss_draws=2)
    a = MemorizationMonitor(train, model=model, schedule=diffmem.linear(), heldout=held, config=cfg)
    ra = a.step(1)
    assert model.seen == {(False, False)}  # eval mode, no grad
    assert model.training and not model.lin.training and model.drop.training
    rb = MemorizationMonitor(train, schedule=diffmem.linear(), heldout=held, config=cfg).step(1, model)
    for key in ("f_mem", "q_low", "loss_train", "loss_test", "loss_gap", "quality"):
        assert ra[key] == rb[key], key  # the same noise at every check
    assert ra["loss_gap"] == pytest.approx(ra["loss_test"] - ra["loss_train"])
    assert math.isfinite(ra["quality"]) and ra["quality"] >= 0
    # loss_gap=False skips the losses
    rc = MemorizationMonitor(
        train, model=model, schedule=diffmem.linear(), heldout=held, config=dataclasses.replace(cfg, loss_gap=False)
    ).step(1)
    assert rc["loss_train"] is None and rc["loss_gap"] is None and rc["q_low"] == ra["q_low"]


# -- Lightning ---------------------------------------------------------------------------------------


def test_importing_the_monitor_needs_no_lightning_and_the_callback_says_how_to_get_it():
    code = (
        "import sys\n"
        "for m in ('lightning', 'lightning.pytorch', 'pytorch_lightning'): sys.modules[m] = None\n"
        "import diffmem.monitor\n"
        "try:\n"
        "    import diffmem.monitor.lightning\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ImportError:" in out and "pip install diffmem[lightning]" in out
    code = "import sys, diffmem.monitor; print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lightning_callback_stops_the_trainer(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from diffmem.monitor.lightning import MemorizationCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            planted.now = self.global_step + 1  # the step the monitor will see after this batch
            (x,) = batch
            return self(x, None).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    planted = Planted(1050 / 100)  # the planted onset in optimizer steps: 10.5
    monitor = MemorizationMonitor(TRAIN2, sample_fn=planted, config=MonitorConfig(every=1, samples=10, action="stop"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[MemorizationCallback(monitor)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and logging intervals
        trainer.fit(Module(), loader)
    assert monitor.stopped_at == 10 and trainer.global_step == 10  # stopped at the alarm, not after 32 steps
    assert monitor.model is not None and isinstance(monitor.model, pl.LightningModule)
    with pytest.raises(TypeError, match="MemorizationMonitor"):
        MemorizationCallback(object())  # type: ignore[arg-type]


# -- the stop-in-time criterion on a real digits run ------------------------------------------------


def test_the_monitor_leaves_the_training_randomness_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    model = Recorder()
    mon = MemorizationMonitor(
        torch.randn(8, 1, 2, 2),
        model=model,
        schedule=diffmem.linear(),
        heldout=torch.randn(8, 1, 2, 2),
        config=MonitorConfig(every=1, samples=20, sampling_steps=3),
    )
    torch.random.set_rng_state(before)
    mon.step(1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_stops_a_digits_run_before_memorization_while_quality_is_near_its_best(tmp_path):
    """Stop in time: with a small budget (200 samples of 25 DDIM steps per check), the
    monitor stops a digits run (n = 32, the default MLP, Adam 1e-3, full batch) before the lower
    bootstrap bound of f_mem reaches 0.01 (by an independent measurement: 1000 other samples of 50
    steps), while the quality is within 20% of its best value so far; trained on, the same run
    memorizes, so the test can fail."""
    from diffmem.dynamics.evaluate import EvalConfig, sample_checkpoint
    from diffmem.dynamics.training import TrainConfig, build_model, draw_batch, load_split, make_optimizer
    from diffmem.metrics import eps_loss, memorization_fraction

    cfg = TrainConfig(n=32).resolved()
    sp = load_split(cfg)
    model = build_model(cfg, sp.shape).train()
    opt = make_optimizer(cfg, list(model.parameters()))
    ab = cfg.schedule().alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    done = [0]  # steps trained so far

    def train_to(last: int, monitor=None) -> int:
        while done[0] < last:
            done[0] += 1
            x0 = draw_batch(sp.train, int(cfg.batch_size or 32), False, gen)
            k = torch.randint(1, cfg.T, (x0.shape[0],), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            loss = eps_loss(model, x0, k, eps, ab, reduction="mean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(done[0], model)
                if monitor.should_stop:
                    break
        return done[0]

    monitor = MemorizationMonitor(
        sp.train,
        model=model,
        schedule=cfg.schedule(),
        heldout=sp.test,
        config=MonitorConfig(every=50, samples=200, sampling_steps=25, action="stop"),
        checkpoint_path=tmp_path / "safe.safetensors",
        log_path=tmp_path / "monitor.jsonl",
    )
    stop = train_to(3000, monitor)
    assert monitor.should_stop and monitor.stopped_at == stop < 3000

    def reference() -> tuple[float, float]:
        model.eval()
        x = sample_checkpoint(model, cfg, EvalConfig(samples=1000, sampling_steps=50, seed=1), sp.shape)
        model.train()
        return memorization_fraction(x, sp.train).ci

    lo, _ = reference()
    rec = monitor.records[-1]
    assert lo < 0.01, f"stopped at {stop} but the lower bound of f_mem is already {lo}"
    assert rec["quality_smooth"] <= 1.2 * rec["quality_best"], rec
    assert rec["loss_gap"] > 0  # the held-out loss at small t is above the training loss by then
    assert monitor.checkpoint_step == stop - 50

    train_to(2 * stop)  # the same run, trained on without the monitor
    lo_later, _ = reference()
    assert lo_later > 0.01, f"the run does not memorize by step {2 * stop} (lower bound {lo_later})"
    print(
        f"stop {stop}: lower bound {lo:.4f}, quality {rec['quality_smooth']:.1f} (best {rec['quality_best']:.1f});"
        f" step {2 * stop}: lower bound {lo_later:.4f}"
    )


def test_documented_examples_run():
    import doctest
    import importlib

    failed = attempted = 0
    for name in ("config", "onset", "check", "monitor"):
        res = doctest.testmod(importlib.import_module(f"diffmem.monitor.{name}"), optionflags=doctest.ELLIPSIS)
        failed, attempted = failed + res.failed, attempted + res.attempted
    assert failed == 0 and attempted >= 8


def test_diffusers_example_runs(tmp_path):
    pytest.importorskip("diffusers")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "diffusers_loop.py"
    spec = importlib.util.spec_from_file_location("diffusers_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--steps", "20", "--every", "10", "--samples", "20", "--n", "8", "--out", str(tmp_path)]
    assert mod.main(args) == 0
    lines = io.read_jsonl(tmp_path / "monitor.jsonl")
    assert [r["step"] for r in lines] == [10, 20] and lines[0]["loss_gap"] is not None
    assert lines[0]["quality"] is not None and (tmp_path / "safe.safetensors").is_file()
