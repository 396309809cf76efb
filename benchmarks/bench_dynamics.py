"""Benchmark: the default `diffmem dynamics` study end to end, and the speed of one training step.

    python benchmarks/bench_dynamics.py --out runs/bench_dynamics [--skip-study]

Prints a table and writes ``bench_dynamics.json`` into --out. Targets (issue 2): the default study
finishes in <= 15 min on 2 cores, finds tau_mem for every size, the exponent of tau_mem against n
lies in [0.75, 1.25] with R^2 >= 0.9, and tau_gen varies by less than 3x across sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def step_speed(threads: int, n: int = 256, width: int = 256, steps: int = 200) -> float:
    """Milliseconds per training step of the default MLP (full batch of n digits)."""
    import tempfile

    from diffmem.dynamics.training import TrainConfig, train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        train(TrainConfig(n=n, width=width, steps=10, checkpoints=1), Path(d) / "warm-up")  # data, torch start-up
        cfg = TrainConfig(n=n, width=width, steps=steps, checkpoints=1, resume_every=10**9, log_every=steps)
        t = time.perf_counter()
        train(cfg, Path(d) / "r")
        return (time.perf_counter() - t) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_dynamics")
    ap.add_argument("--skip-study", action="store_true", help="only time the training step")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}
    rec["ms_per_step_1_thread"] = step_speed(1)
    rec["ms_per_step_2_threads"] = step_speed(2)
    if not args.skip_study:
        from diffmem.dynamics.study import StudyConfig, run_study

        t = time.perf_counter()
        res = run_study(StudyConfig(), out / "study", show_progress=False)
        rec["study_seconds"] = time.perf_counter() - t
        fit = res.fit
        rec["tau_mem"] = {r.n: r.tau_mem for r in res.runs}
        rec["tau_gen"] = {r.n: r.tau_gen for r in res.runs}
        rec["fit"] = {
            k: v for k, v in fit.to_dict().items() if k in ("exponent", "exponent_ci", "r2", "tau_mem_over_n")
        }
        rec["tau_gen_spread"] = res.tau_gen_spread
        rec["collapse_ratio"] = res.collapse.ratio
        rec["targets_met"] = {
            "under_15_min": rec["study_seconds"] <= 900,
            "tau_mem_every_size": all(v is not None for v in rec["tau_mem"].values()),
            "exponent_in_0.75_1.25": fit.exponent is not None and 0.75 <= fit.exponent <= 1.25,
            "r2_at_least_0.9": (fit.r2 or 0) >= 0.9,
            "tau_gen_spread_below_3": (res.tau_gen_spread or 99) < 3,
        }
    (out / "bench_dynamics.json").write_text(json.dumps(rec, indent=2))
    for k, v in rec.items():
        print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
