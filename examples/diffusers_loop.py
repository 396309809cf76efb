"""A diffusers-style training loop with diffmem's memorization monitor attached.

A tiny ``UNet2DModel`` learns a few 8x8 digits with the usual diffusers recipe (``DDPMScheduler``
adds the noise, the network predicts it, MSE loss). :class:`diffmem.monitor.MemorizationMonitor`
checks the run every ``--every`` steps: it samples with DDIM through a thin wrapper
``(x, t) -> unet(x, t).sample`` and diffmem's linear schedule with the same betas as the
scheduler, runs the nearest / second-nearest ratio test against the training images and stops the
loop when memorization is about to set in. The records are printed and written to
``OUT/monitor.jsonl``; the last checkpoint before the alarm is ``OUT/safe.safetensors``.

Run (CPU, under a minute with the defaults)::

    python examples/diffusers_loop.py --steps 1000 --n 16 --every 50 --out runs/diffusers_monitor
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--n", type=int, default=16, help="training images (default 16)")
    p.add_argument("--every", type=int, default=50, help="steps between monitor checks (default 50)")
    p.add_argument("--samples", type=int, default=100, help="samples per check (default 100)")
    p.add_argument("--out", default="runs/diffusers_monitor", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for a tiny net)")
    args = p.parse_args(argv)

    from diffusers import DDPMScheduler, UNet2DModel

    import diffmem
    from diffmem.data import load, split
    from diffmem.monitor import MemorizationMonitor, MonitorConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "monitor.jsonl"
    log.unlink(missing_ok=True)  # one run per folder: start a fresh log

    # data: digits in [-1, 1], the diffusers convention (the ratio test does not care about the scale)
    sp = split(load("digits"), args.n, split_seed=args.seed)
    x_train = sp.to_pixels(sp.train) * 2 - 1
    x_test = sp.to_pixels(sp.test) * 2 - 1

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")
    schedule = diffmem.linear(scheduler.config.num_train_timesteps, 1e-4, 2e-2)  # the scheduler's betas

    class Denoiser(torch.nn.Module):
        """diffmem's denoiser convention (x, t) -> eps over the U-Net (its parameters, its modes)."""

        def __init__(self, unet: UNet2DModel) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t).sample

    denoiser = Denoiser(unet)
    monitor = MemorizationMonitor(
        x_train,
        model=denoiser,
        schedule=schedule,
        heldout=x_test,
        config=MonitorConfig(every=args.every, samples=args.samples, sampling_steps=10, action="stop"),
        log_path=log,
        checkpoint_path=out / "safe.safetensors",
    )

    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed + 1)
    unet.train()
    for step in range(1, args.steps + 1):
        noise = torch.randn(x_train.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x_train.shape[0],), generator=gen)
        noisy = scheduler.add_noise(x_train, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = monitor.step(step, denoiser)
        if rec is not None:
            print(
                json.dumps(
                    {
                        k: rec[k]
                        for k in (
                            "step",
                            "f_mem",
                            "f_mem_ci",
                            "q_low",
                            "predicted_onset",
                            "loss_gap",
                            "quality",
                            "alarm",
                        )
                    },
                    default=str,
                ),
                flush=True,
            )
        if monitor.should_stop:
            break

    if monitor.should_stop:
        print(f"stopped at step {monitor.stopped_at}; last checkpoint before the alarm: step {monitor.checkpoint_step}")
    else:
        last = monitor.records[-1]["step"] if monitor.records else None
        print(f"no alarm in {args.steps} steps (last check: step {last})")
    print(f"records: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
