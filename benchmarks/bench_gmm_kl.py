"""Benchmark: the cost and the Monte Carlo error of KL(P_model || P0) on the paper's Gaussian mixture.

    flock -x /work/cpu.lock python benchmarks/bench_gmm_kl.py --out runs/bench_gmm_kl   # or without flock

For the paper's score model (ResidualMLP, W = 128, d = 8, p = 102 024) it measures

1. the wall time of one KL evaluation (default: 1000 samples, 50 DDIM steps) with the exact Jacobian
   log-determinants and with Hutchinson's estimator, beside plain DDIM sampling of the same samples;
2. the standard error of the KL against the number of samples, for the exact mixture denoiser (the
   sampler's own floor) and for the MLP after ``--train-steps`` Adam steps on n = 256 mixture samples;
3. the exact denoiser's KL at 20, 50, 100 and 250 steps (the sampler's discretisation floor), and the
   Hutchinson form's value on the same samples (its bias), with ``--floor-samples`` samples.

Prints a table and writes ``bench_gmm_kl.json`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import diffmem
from diffmem import sampling, schedule
from diffmem.data.gmm import GaussianMixture
from diffmem.metrics.kl import kl_divergence
from diffmem.metrics.losses import eps_loss
from diffmem.models import ResidualMLP


def _timed(fn, repeat: int):
    fn()  # warm-up
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _train(net: ResidualMLP, x: torch.Tensor, s: schedule.Schedule, steps: int) -> float:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        k = torch.randint(1, s.T, (x.shape[0],), generator=g)
        loss = eps_loss(net, x, k, torch.randn(x.shape, generator=g), s, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_gmm_kl")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--time-only", action="store_true", help="only part 1 (the wall times)")
    ap.add_argument("--floor-only", action="store_true", help="only part 3 (the sampler's floor)")
    ap.add_argument("--floor-samples", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = schedule.linear()
    P = GaussianMixture()
    torch.manual_seed(0)
    net = ResidualMLP((P.d,), width=args.width).eval()
    res: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "diffmem": diffmem.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "params": sum(p.numel() for p in net.parameters()),
        "args": vars(args),
    }
    try:
        res["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        res["commit"] = None

    if args.floor_only:
        _floor(P, s, args.floor_samples, res)
        (out / "bench_gmm_kl.json").write_text(json.dumps(res, indent=2))
        return

    # 1. time of one evaluation
    seeds = list(range(args.samples))
    x_T = sampling.randn_per_sample(seeds, (P.d,))
    t_ddim, _ = _timed(lambda: sampling.ddim(net, x_T, s, args.steps), args.repeat)
    t_exact, _ = _timed(lambda: kl_divergence(net, P, s, samples=args.samples, steps=args.steps), args.repeat)
    t_hutch, _ = _timed(
        lambda: kl_divergence(net, P, s, samples=args.samples, steps=args.steps, method="hutchinson"), args.repeat
    )
    res["time_s"] = {"ddim_only": t_ddim, "kl_exact": t_exact, "kl_hutchinson": t_hutch}
    print(f"W={args.width} p={res['params']} samples={args.samples} steps={args.steps} threads={args.threads}")
    print(f"  DDIM alone {t_ddim:.2f} s | KL exact {t_exact:.2f} s | KL Hutchinson {t_hutch:.2f} s")

    if args.time_only:
        (out / "bench_gmm_kl.json").write_text(json.dumps(res, indent=2))
        return

    # 2. standard error against samples
    x = P.sample(256, seed=0, dtype=torch.float32)
    res["train_loss"] = _train(net, x, s, args.train_steps)
    rows = []
    for n in (250, 500, 1000, 2000, 4000):
        ex = kl_divergence(P.denoiser(s), P, s, samples=n, steps=args.steps, seed=1)
        ml = kl_divergence(net, P, s, samples=n, steps=args.steps, seed=1)
        mh = kl_divergence(net, P, s, samples=n, steps=args.steps, seed=1, method="hutchinson")
        rows.append(
            {
                "samples": n,
                "exact_denoiser": [ex.kl, ex.kl_se],
                "mlp_exact": [ml.kl, ml.kl_se],
                "mlp_hutchinson": [mh.kl, mh.kl_se],
            }
        )
        print(
            f"  n={n:5d}  exact denoiser {ex.kl:+.4f} ± {ex.kl_se:.4f} | MLP ({args.train_steps} Adam steps) "
            f"exact {ml.kl:.4f} ± {ml.kl_se:.4f}, Hutchinson {mh.kl:.4f} ± {mh.kl_se:.4f}"
        )
    res["se_vs_samples"] = rows

    _floor(P, s, args.floor_samples, res)
    (out / "bench_gmm_kl.json").write_text(json.dumps(res, indent=2))


def _floor(P: GaussianMixture, s: schedule.Schedule, samples: int, res: dict) -> None:
    """3. the exact denoiser's KL (the sampler's floor), and the Hutchinson form's value on the same samples."""
    floor = []
    for steps in (20, 50, 100, 250):
        r = kl_divergence(P.denoiser(s), P, s, samples=samples, steps=steps, seed=2, batch=4000)
        h = kl_divergence(P.denoiser(s), P, s, samples=samples, steps=steps, seed=2, batch=4000, method="hutchinson")
        floor.append({"steps": steps, "kl": r.kl, "kl_se": r.kl_se, "hutchinson": h.kl, "hutchinson_se": h.kl_se})
        print(
            f"  exact denoiser, {steps:4d} steps, {samples} samples: KL {r.kl:+.5f} ± {r.kl_se:.5f}; "
            f"Hutchinson {h.kl:+.5f} ± {h.kl_se:.5f}"
        )
    res["floor"] = floor


if __name__ == "__main__":
    main()
