"""The memorization monitor on a digits run, watched past its alarm: the figure of docs/monitor.md.

Trains diffmem's default denoiser (residual MLP, width 256) on n = 32 digits in model space (Adam,
lr 1e-3, full batch), with :class:`diffmem.monitor.MemorizationMonitor` in ``"warn"`` mode checking
every 50 steps with 200 samples of 25 DDIM steps (the setting of the done-criterion test in
tests/test_monitor.py). Training goes on to ``--factor`` times the alarm step, and at
every check an independent reference measurement (1000 DDIM samples of 50 steps from other noise,
as ``diffmem measure`` takes them) tells when f_mem really crosses 0.01. The figure shows the
monitor's f_mem with its bootstrap interval, the reference, the ratio quantile q with the test's
threshold k, the quality and the alarm step against the training step.

Run (CPU, about two minutes)::

    python examples/monitor_digits.py --out docs/img/monitor_digits.png
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32, help="training-set size (default 32)")
    p.add_argument("--every", type=int, default=50, help="steps between checks (default 50)")
    p.add_argument("--factor", type=float, default=3.0, help="train to this many times the alarm step (default 3)")
    p.add_argument("--max-steps", type=int, default=6000, help="stop here even without an alarm (default 6000)")
    p.add_argument("--reference-samples", type=int, default=1000, help="samples of the reference measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the training draws")
    p.add_argument("--out", default="docs/img/monitor_digits.png", help="the figure (PNG)")
    p.add_argument("--log", default=None, help="also write the monitor's records here (JSON lines)")
    args = p.parse_args(argv)

    from diffmem.dynamics.evaluate import EvalConfig, sample_checkpoint
    from diffmem.dynamics.training import TrainConfig, build_model, draw_batch, load_split, make_optimizer
    from diffmem.figures import pyplot, save_png
    from diffmem.metrics import eps_loss, memorization_fraction
    from diffmem.monitor import MemorizationMonitor, MonitorConfig

    torch.set_num_threads(1)
    cfg = TrainConfig(n=args.n, seed=args.seed).resolved()
    sp = load_split(cfg)
    model = build_model(cfg, sp.shape).train()
    opt = make_optimizer(cfg, list(model.parameters()))
    sched = cfg.schedule()
    ab = sched.alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if args.log:
        Path(args.log).unlink(missing_ok=True)
    mcfg = MonitorConfig(every=args.every, action="warn")
    monitor = MemorizationMonitor(
        sp.train, model=model, schedule=sched, heldout=sp.test, config=mcfg, log_path=args.log
    )
    ref_cfg = EvalConfig(samples=args.reference_samples, seed=1)  # other noise than the monitor's (seed 0)
    refs: list[dict] = []
    t0, train_s = time.time(), 0.0
    end = args.max_steps
    step = 0
    while step < end:
        step += 1
        ts = time.perf_counter()
        x0 = draw_batch(sp.train, int(cfg.batch_size or args.n), False, gen)
        k = torch.randint(1, cfg.T, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        loss = eps_loss(model, x0, k, eps, ab, reduction="mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_s += time.perf_counter() - ts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the alarm is reported below
            rec = monitor.step(step)
        if rec is None:
            continue
        model.eval()
        ref = memorization_fraction(sample_checkpoint(model, cfg, ref_cfg, sp.shape), sp.train)
        model.train()
        refs.append({"step": step, "f_mem": ref.value, "f_mem_ci": list(ref.ci)})
        if monitor.alarm_step is not None:
            end = min(end, round(args.factor * monitor.alarm_step))

    recs = monitor.records
    a = monitor.alarm_step
    summary: dict = {"alarm_step": a, "steps": step, "seconds": round(time.time() - t0, 1)}
    summary["monitor_seconds"] = round(sum(r["seconds"] for r in recs), 1)
    summary["train_seconds"] = round(train_s, 1)
    crossing = next((r["step"] for r in refs if r["f_mem_ci"][0] >= mcfg.threshold), None)
    summary["reference_lower_bound_crosses_0.01_at"] = crossing
    if a is not None:
        ra = next(r for r in recs if r["step"] == a)
        ref_a = next(r for r in refs if r["step"] == a)
        summary.update(
            {
                "monitor_at_alarm": {k: ra[k] for k in ("f_mem", "f_mem_ci", "q_low", "predicted_onset")},
                "reference_at_alarm": {"f_mem": ref_a["f_mem"], "f_mem_ci": ref_a["f_mem_ci"]},
                "quality_at_alarm": ra["quality"],
                "quality_smooth_at_alarm": ra["quality_smooth"],
                "quality_best_so_far": ra["quality_best"],
                "quality_best_of_run": min(r["quality_smooth"] for r in recs),
                "quality_best_of_run_step": min(recs, key=lambda r: r["quality_smooth"])["step"],
            }
        )
    print(json.dumps(summary, indent=2))

    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True)
    s = [r["step"] for r in recs]
    ax = axes[0]
    ax.plot(s, [r["f_mem"] for r in recs], "o-", ms=3, label=f"monitor ({mcfg.samples} samples, 95% CI)")
    ax.fill_between(s, [r["f_mem_ci"][0] for r in recs], [r["f_mem_ci"][1] for r in recs], alpha=0.25)
    ax.plot(
        [r["step"] for r in refs],
        [r["f_mem_ci"][0] for r in refs],
        "k--",
        lw=1,
        label=f"reference lower bound ({args.reference_samples} samples)",
    )
    ax.axhline(mcfg.threshold, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("f_mem")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    ax.plot(s, [r["q_low"] for r in recs], "o-", ms=3, color="C2", label=f"q: {mcfg.threshold:g}-quantile of ratios")
    ax.axhline(mcfg.k, color="gray", lw=0.8, ls=":", label=f"k = {mcfg.k:.3g}")
    ax.set_ylabel("ratio quantile q")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(s, [r["quality"] for r in recs], ".", ms=4, color="C1", alpha=0.6, label="Fréchet distance to held-out")
    ax.plot(s, [r["quality_smooth"] for r in recs], "-", color="C1", label="running median of 3 checks")
    ax.plot(s, [r["quality_best"] for r in recs], "--", lw=1, color="C1", label="its best so far")
    ax.set_yscale("log")
    ax.set_ylabel("quality (lower is better)")
    ax.set_xlabel("training step")
    ax.legend(fontsize=8)
    for ax in axes:
        if a is not None:
            ax.axvline(a, color="red", lw=1)
        if crossing is not None:
            ax.axvline(crossing, color="black", lw=1, ls="--")
    axes[0].set_title(
        f"digits, n = {args.n}: alarm at step {a} (red); reference lower bound of f_mem reaches "
        f"{mcfg.threshold:g} at {crossing} (dashed)",
        fontsize=9,
    )
    save_png(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
