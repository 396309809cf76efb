"""Benchmark: the default `diffmem audit --model testbed` run end to end (testbed build + audit).

    python benchmarks/bench_audit.py --out runs/bench_audit

Runs the CLI in a fresh folder (``--out``/cli, deleted first unless --keep), times it, and prints
the key numbers from ``audit.json``; writes ``bench_audit.json`` into --out. Targets: mean
overestimation coefficient a of memorized captions close to g = 7.5 and far below for normal ones;
memorized trajectories collapse across seeds and normal ones do not; Pearson correlation of a
deviation (D1 or D2) with severity >= 0.8; best detector AUROC >= 0.95; total wall time <= ~6 min
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_audit")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run folder (times only what is left to do)")
    args = ap.parse_args()
    out = Path(args.out)
    run_dir = out / "cli"
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    from diffmem.cli import main as cli

    t = time.perf_counter()
    rc = cli(["audit", "--model", "testbed", "--out", str(run_dir), "--quiet"])
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"diffmem audit failed with exit code {rc}")
    res = json.loads((run_dir / "audit.json").read_text())
    s, det, cor = res["summary"], res["detectors"], res["correlations"]
    best = max((n for n in det if det[n]["auroc"] is not None), key=lambda n: det[n]["auroc"])
    train_s = float(_weights_meta(run_dir / "testbed" / "weights.safetensors").get("seconds", "nan"))
    rec = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "wall_seconds": wall,
        "testbed_train_seconds": train_s,
        "audit_seconds": res["timings"]["wall_s"],
        "guidance": res["config"]["guidance"],
        "a_mean": {lab: s[lab]["overestimation_a"] for lab in s},
        "final_seed_distance": {lab: s[lab]["final_distance"] for lab in s},
        "convergence": {lab: s[lab]["convergence"] for lab in s},
        "severity": {lab: s[lab]["severity"] for lab in s},
        "pearson_D1": cor["D1"]["pearson"],
        "pearson_D2": cor["D2"]["pearson"],
        "auroc": {n: det[n]["auroc"] for n in det},
        "tpr_at_1fpr": {n: det[n]["tpr_at_1fpr"] for n in det},
        "best_detector": best,
    }
    g = rec["guidance"]
    rec["targets_met"] = {
        "a_memorized_within_20pct_of_g": abs(rec["a_mean"]["memorized"] - g) <= 0.2 * g,
        "a_normal_below_g_over_3": rec["a_mean"]["normal"] < g / 3,
        "memorized_collapse_normal_not": rec["final_seed_distance"]["memorized"]
        < 0.25 * rec["final_seed_distance"]["normal"],
        "pearson_deviation_ge_0.8": max(rec["pearson_D1"] or 0, rec["pearson_D2"] or 0) >= 0.8,
        "best_auroc_ge_0.95": det[best]["auroc"] >= 0.95,
        "under_6_min": wall <= 360,
    }
    (out / "bench_audit.json").write_text(json.dumps(rec, indent=2) + "\n")
    print(f"\nbenchmark: wall {wall:.1f} s (testbed training {train_s:.1f} s, audit {rec['audit_seconds']:.1f} s)")
    print("mean a by label:", {k: round(v, 2) for k, v in rec["a_mean"].items()}, f"(g = {g})")
    print("final seed distance by label:", {k: round(v, 3) for k, v in rec["final_seed_distance"].items()})
    print(f"Pearson(D1, severity) = {rec['pearson_D1']:.3f}, Pearson(D2, severity) = {rec['pearson_D2']:.3f}")
    print(f"best detector {best}: AUROC {det[best]['auroc']:.3f}, TPR@1%FPR {det[best]['tpr_at_1fpr']:.3f}")
    print("targets met:", rec["targets_met"])


def _weights_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


if __name__ == "__main__":
    main()
