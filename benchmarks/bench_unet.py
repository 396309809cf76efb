"""Benchmark: milliseconds per training step of the paper's U-Net on this CPU.

    python benchmarks/bench_unet.py [--widths 8 16 32] [--sizes 8 32] [--threads 1 2] [--batch 128]
                                    [--min-seconds 3] [--json runs/bench_unet.json]

One step = draw steps k and noise, eps-prediction MSE, backward, Adam update (the loop of
``diffmem.dynamics.training``), on random 1-channel images of the given size. Each configuration runs two
warm-up steps, then steps until ``--min-seconds`` have passed (at least 3 steps) and reports the
median step time (robust to other processes sharing the CPU). Prints a table (and writes it as JSON
with ``--json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from tqdm.auto import tqdm

from diffmem.models.unet import UNet, unet_param_count
from diffmem.schedule import linear, noise


def ms_per_step(
    width: int, size: int, threads: int, batch: int = 128, min_seconds: float = 3.0, seed: int = 0
) -> float:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet(in_channels=1, width=width).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ab = linear(1000, 1e-4, 2e-2).alphas_cumprod.to(torch.float32)
    x0 = torch.randn(batch, 1, size, size, generator=gen)

    def step() -> None:
        k = torch.randint(1, 1000, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        loss = ((model(noise(x0, eps, ab[k]), k.float()) - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    configs = [(w, s, th) for w in args.widths for s in args.sizes for th in args.threads]
    rows = []
    for w, s, th in tqdm(configs, desc="bench_unet"):
        rows.append(
            {
                "width": w,
                "params": unet_param_count(w),
                "size": s,
                "threads": th,
                "batch": args.batch,
                "ms_per_step": ms_per_step(w, s, th, args.batch, args.min_seconds),
            }
        )
    print(f"\nU-Net training step (Adam), batch {args.batch}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'W':>4} {'params':>10} {'image':>7} {'threads':>8} {'ms/step':>9}")
    for r in rows:
        print(
            f"{r['width']:>4} {r['params']:>10,} {r['size']:>4}x{r['size']:<2} "
            f"{r['threads']:>8} {r['ms_per_step']:>9.1f}"
        )
    if args.json:
        from diffmem.io import write_json

        write_json(
            args.json,
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
