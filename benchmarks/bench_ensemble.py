"""Model-steps per second of the vectorized ensemble against the same models trained one after another.

Trains K runs of the default MLP (width 256) on K disjoint digits subsets of size n, once with
``diffmem.dynamics.training.train`` run by run and once with ``diffmem.dynamics.ensemble.train_ensemble``
(one batched step for all K), each for ``--steps`` steps on one torch thread, and reports
model-steps per second and the speed-up. Checkpoint and state writes are kept out of the timing by
a single checkpoint at the end.

    python benchmarks/bench_ensemble.py --n 16 --k 2 4 8

The defaults are the quick study's smallest size and training (n = 16, every example drawn 16 times
per step); ``--draws 1`` gives the one-draw training of ``diffmem train`` (full batches of n rows).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diffmem.dynamics.ensemble import train_ensemble
from diffmem.dynamics.study import QUICK_DRAWS
from diffmem.dynamics.training import TrainConfig, train


def _cfgs(n: int, k: int, steps: int, batch: int | None, replacement: bool, draws: int) -> list[TrainConfig]:
    return [
        TrainConfig(
            n=n,
            subset_index=i,
            seed=i,
            steps=steps,
            checkpoints=1,
            resume_every=10**9,
            log_every=steps,
            batch_size=batch,
            batch_replacement=replacement,
            draws=draws,
        )
        for i in range(k)
    ]


def measure(n: int, k: int, steps: int, batch: int | None, replacement: bool, draws: int = QUICK_DRAWS) -> dict:
    torch.set_num_threads(1)
    cfgs = _cfgs(n, k, steps, batch, replacement, draws)
    with tempfile.TemporaryDirectory() as d:
        warm = _cfgs(n, 2, 20, batch, replacement, draws)  # data loading, torch and vmap start-up out of the timing
        train(warm[0], Path(d) / "warm")
        train_ensemble(warm, [Path(d) / "warm0", Path(d) / "warm1"], Path(d) / "warm_group")
        t = time.perf_counter()
        for i, c in enumerate(cfgs):
            train(c, Path(d) / f"one_{i}")
        seq = time.perf_counter() - t
        t = time.perf_counter()
        train_ensemble(cfgs, [Path(d) / f"ens_{i}" for i in range(k)], Path(d) / "group")
        ens = time.perf_counter() - t
    return {
        "n": n,
        "k": k,
        "batch": batch or n,
        "replacement": replacement,
        "draws": draws,
        "sequential_model_steps_per_s": k * steps / seq,
        "ensemble_model_steps_per_s": k * steps / ens,
        "speedup": seq / ens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[16])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: full batch n)")
    ap.add_argument("--replacement", action="store_true", help="draw batches with replacement")
    ap.add_argument(
        "--draws", type=int, default=QUICK_DRAWS, help="draws per example per step (default: the quick study's)"
    )
    ap.add_argument("--out", default="runs/bench_ensemble.json")
    args = ap.parse_args()
    rows = [measure(n, k, args.steps, args.batch, args.replacement, args.draws) for n in args.n for k in args.k]
    for r in rows:
        print(
            f"n={r['n']:>4} K={r['k']:>2} batch={r['batch']:>4} x{r['draws']}: "
            f"sequential {r['sequential_model_steps_per_s']:7.1f}, "
            f"ensemble {r['ensemble_model_steps_per_s']:7.1f} model-steps/s -> {r['speedup']:.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
