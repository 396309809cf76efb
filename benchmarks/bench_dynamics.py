"""Benchmark: a `diffmem dynamics` study end to end, and the speed of one training step.

    python benchmarks/bench_dynamics.py --out runs/bench_dynamics                 # the quick study
    python benchmarks/bench_dynamics.py --out runs/bench_full -- --preset full    # any flags of the study
    python benchmarks/bench_dynamics.py --out runs/bench_glyphs --skip-speed -- --data glyphs12.npz

Runs ``diffmem dynamics --out OUT/study`` with the flags after ``--`` (none: the default quick study),
times it, and prints from its ``results.json`` every statistic that docs/results.md quotes for a
study: per run n, subset, steps, tau_gen, tau_mem, tau_mem/n, the test-loss minimum and the final
f_mem; the tau_mem exponent with its interval and R², the geometric mean of tau_mem/n, the exponents
of tau_mem - tau_gen and of tau_gen (with the max/min of tau_gen), the collapse exponent alpha (and
against (tau - tau_gen)/n^alpha), and the exponent at every ratio threshold k. It also times one
training step of the default MLP (width 256, a full batch of 256 digits) on one and on two threads.
Writes everything to ``OUT/bench_dynamics.json``. Time a study under an exclusive lock on a shared
machine (``flock -x``). The quick study's checks: it finishes in at most 15 minutes on 2 cores, finds
tau_mem for every size, its exponent lies in [0.75, 1.25] with R² >= 0.9, and tau_gen varies by
less than 3x across sizes.
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


def _g(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _fit(d: dict | None) -> str:
    if not d or d.get("exponent") is None:
        return "n/a"
    lo, hi = d.get("exponent_ci") or (None, None)
    ci = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "[n/a]"
    return f"n^{d['exponent']:.3f} {ci}, R² {d['r2']:.3f}, {d.get('points')} runs"


def _alpha(d: dict | None) -> str:
    if not d or d.get("alpha") is None:
        return "n/a"
    lo, hi = d.get("alpha_ci") or (None, None)
    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "[n/a]"
    return f"{d['alpha']:.3f} {ci} over {d.get('levels_used')} shared f_mem levels"


def summarize(results: dict) -> dict:
    """The statistics docs/results.md quotes for a study, from its ``results.json``."""
    runs = [
        {
            "n": r["n"],
            "subset": r.get("subset", 0),
            "steps": r.get("steps"),
            "tau_gen": r["tau_gen"],
            "tau_mem": r["tau_mem"],
            "tau_mem_over_n": None if r["tau_mem"] is None else r["tau_mem"] / r["n"],
            "tau_test_min": r.get("tau_test_min"),
            "f_mem_final": r.get("f_mem_final"),
        }
        for r in results["runs"]
    ]
    collapse = results.get("collapse") or {}
    return {
        "runs": runs,
        "fit": results.get("fit"),
        "excess_fit": results.get("excess_fit"),
        "tau_gen_fit": results.get("tau_gen_fit"),
        "tau_gen_spread": results.get("tau_gen_spread"),
        "collapse": {k: collapse.get(k) for k in ("alpha", "alpha_ci", "levels_used")},
        "collapse_excess": collapse.get("excess"),
        "by_k": {
            k: {"exponent": b.get("exponent"), "exponent_ci": b.get("exponent_ci")}
            for k, b in results.get("by_k", {}).items()
        },
    }


def print_summary(s: dict) -> None:
    cols = ("n", "subset", "steps", "tau_gen", "tau_mem", "tau_mem_over_n", "tau_test_min", "f_mem_final")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in s["runs"]:
        print("  ".join(f"{_g(r[c]) if isinstance(r[c], float) or r[c] is None else r[c]:>14}" for c in cols))
    fit = s["fit"] or {}
    print(f"tau_mem:           {_fit(fit)}; geometric mean tau_mem/n {_g(fit.get('tau_mem_over_n'))}")
    print(f"tau_mem - tau_gen: {_fit(s['excess_fit'])}")
    print(f"tau_gen:           {_fit(s['tau_gen_fit'])}; max/min {_g(s['tau_gen_spread'])}")
    print(f"collapse alpha:    {_alpha(s['collapse'])}")
    print(f"  against (tau - tau_gen)/n^alpha: {_alpha(s['collapse_excess'])}")
    for k, b in s["by_k"].items():
        e = "n/a" if b["exponent"] is None else f"n^{b['exponent']:.3f}"
        print(f"k = {k}: tau_mem {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_dynamics")
    ap.add_argument("--skip-study", action="store_true", help="only time the training step")
    ap.add_argument("--skip-speed", action="store_true", help="only run the study")
    ap.add_argument("flags", nargs=argparse.REMAINDER, help="after --: flags of diffmem dynamics")
    args = ap.parse_args()
    flags = [f for f in args.flags if f != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}
    if not args.skip_speed:
        rec["ms_per_step_1_thread"] = step_speed(1)
        rec["ms_per_step_2_threads"] = step_speed(2)
        print(f"ms per step: {rec['ms_per_step_1_thread']:.1f} (1 thread), {rec['ms_per_step_2_threads']:.1f} (2)")
    if not args.skip_study:
        from diffmem.cli import main as cli

        t = time.perf_counter()
        rc = cli(["dynamics", "--out", str(out / "study"), "--quiet", *flags])
        rec["study_seconds"] = time.perf_counter() - t
        rec["study_flags"] = flags
        if rc != 0:
            raise SystemExit(f"diffmem dynamics exited with status {rc}")
        s = summarize(json.loads((out / "study" / "results.json").read_text()))
        rec.update(s)
        fit = s["fit"] or {}
        rec["checks_quick_study"] = {
            "under_15_min": rec["study_seconds"] <= 900,
            "tau_mem_every_size": all(r["tau_mem"] is not None for r in s["runs"]),
            "exponent_in_0.75_1.25": fit.get("exponent") is not None and 0.75 <= fit["exponent"] <= 1.25,
            "r2_at_least_0.9": (fit.get("r2") or 0) >= 0.9,
            "tau_gen_spread_below_3": (s["tau_gen_spread"] or 99) < 3,
        }
        m, sec = divmod(round(rec["study_seconds"]), 60)
        print(f"\nstudy `diffmem dynamics {' '.join(flags)}`: {m} min {sec} s wall")
        print_summary(s)
        print(f"checks of the quick study: {rec['checks_quick_study']}")
    (out / "bench_dynamics.json").write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
