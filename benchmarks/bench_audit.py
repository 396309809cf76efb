"""Benchmark: the default `diffmem audit --model testbed` run end to end (testbed build + audit).

    flock -x /work/cpu.lock python benchmarks/bench_audit.py --out runs/bench_audit   # or without flock

Runs the CLI in a fresh folder (``--out``/cli, deleted first unless --keep), times it, and prints
the key numbers from ``audit.json``; writes ``bench_audit.json`` into --out. After the timed run it
also measures, on the guidance-created captions, which of a caption's images each sample is closest
to under every guidance schedule (the member-selection diagnostic; not part of the timed audit).

Targets: mean overestimation coefficient a of memorized captions close to g = 7.5 and far below for
normal ones; memorized trajectories collapse across seeds and normal ones do not; Pearson correlation
of a deviation (D1 or D2) with severity >= 0.8; best detector AUROC >= 0.95; the final-sample D1,
which needs no training image, separates memorized from normal captions (lower end of its AUROC
interval above 0.9); total wall time <= 5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

_DETECTORS = (
    "wen_first",
    "wen_early",
    "convergence",
    "overestimation_a",
    "D1",
    "D1_early",
    "D1_final",
    "D1_final_early",
)
_CORRELATED = ("D1", "D1_early", "D1_final", "D1_final_early", "overestimation_a", "q", "wen_first")


def member_selection(run_dir: Path, guided_members: str, seeds: int = 8) -> dict[str, dict[str, float]]:
    """Per schedule, over the guidance-created captions: the mean severity against the reference, the
    fraction of samples whose most similar caption image (pixel cosine) is the reference, and the mean
    similarity of each sample to its most similar caption image (how close a copy of any member it is)."""
    from diffmem.audit.mitigation import SCHEDULES, guidance_schedule, transition_steps
    from diffmem.audit.recorder import model_timesteps, prompt_seeds, sample_final
    from diffmem.audit.run import AuditConfig
    from diffmem.audit.severity import PixelCosine
    from diffmem.audit.testbed import TestbedConfig, build_testbed
    from diffmem.data import digits

    cfg = AuditConfig()
    tb = TestbedConfig(guided_members=guided_members)  # type: ignore[arg-type]
    model, _ = build_testbed(run_dir / "testbed", progress=False, config=tb)
    imgs = digits().pixels
    ks = model_timesteps(model, cfg.steps)
    tr = transition_steps(cfg.steps, cfg.mitigation_transition)
    early = {
        "constant": 0.0,
        "conditional_only": 1.0,
        "no_early_guidance": cfg.mitigation_early_scale,
        "negative_early_guidance": cfg.mitigation_negative_scale,
    }
    sev = PixelCosine()
    caps = [c for c in model.captions if c.group == "guidance_cluster"]
    out = {}
    for sched in SCHEDULES:
        scales = guidance_schedule(sched, cfg.guidance, cfg.steps, tr, early[sched])
        nearest, to_ref, best = [], [], []
        for c in caps:
            px = model.decode(sample_final(model, c.text, prompt_seeds(cfg.seed, seeds), ks, scales).float())
            members = list(dict.fromkeys(c.images))
            sims = np.stack([sev(px, imgs[m]) for m in members], 1)
            nearest.append(float((sims.argmax(1) == 0).mean()))
            to_ref.append(float(sims[:, 0].mean()))
            best.append(float(sims.max(1).mean()))
        out[sched] = {
            "severity": float(np.mean(to_ref)),
            "nearest_is_reference": float(np.mean(nearest)),
            "best_member_similarity": float(np.mean(best)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_audit")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run folder (times only what is left to do)")
    ap.add_argument(
        "--guided-members",
        default="other_digits",
        choices=("other_digits", "same_digit"),
        help="the testbed's design of the guidance-created captions (default: other_digits)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    run_dir = out / "cli"
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    from diffmem.cli import main as cli

    t = time.perf_counter()
    argv = ["audit", "--model", "testbed", "--out", str(run_dir), "--quiet"]
    if args.guided_members != "other_digits":
        argv += ["--testbed-guided-members", args.guided_members]
    rc = cli(argv)
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"diffmem audit failed with exit code {rc}")
    res = json.loads((run_dir / "audit.json").read_text())
    s, det, cor = res["summary"], res["detectors"], res["correlations"]
    best = max((n for n in det if det[n]["auroc"] is not None), key=lambda n: det[n]["auroc"])
    train_s = float(_weights_meta(run_dir / "testbed" / "weights.safetensors").get("seconds", "nan"))
    tables = ("detectors", "detectors_partial_vs_normal", "detectors_memorized_vs_partial")
    rec = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "wall_seconds": wall,
        "testbed_train_seconds": train_s,
        "audit_seconds": res["timings"]["wall_s"],
        "guidance": res["config"]["guidance"],
        "early_steps": res["decomposition"]["early_steps"],
        "a_mean": {lab: s[lab]["overestimation_a"] for lab in s},
        "final_seed_distance": {lab: s[lab]["final_distance"] for lab in s},
        "convergence": {lab: s[lab]["convergence"] for lab in s},
        "severity": {lab: s[lab]["severity"] for lab in s},
        "D1_by_label": {lab: {k: s[lab][k] for k in ("D1", "D2", "D1_final", "D2_final")} for lab in s},
        "severity_by_group": {g: r["severity"] for g, r in res["summary_by_group"].items()},
        "pearson_D1": cor["D1"]["pearson"],
        "pearson_D2": cor["D2"]["pearson"],
        "correlations": {n: cor[n] for n in _CORRELATED},
        "within_label": {
            lab: {n: rows[n] for n in _CORRELATED} for lab, rows in res["correlations_within_label"].items()
        },
        "auroc": {n: det[n]["auroc"] for n in det},
        "tpr_at_1fpr": {n: det[n]["tpr_at_1fpr"] for n in det},
        "auroc_tables": {
            key: {n: {"auroc": res[key][n]["auroc"], "ci": res[key][n]["auroc_ci"]} for n in _DETECTORS}
            for key in tables
        },
        "best_detector": best,
        "reference_curve_max_difference": res["reference_curves"]["max_difference"],
        "mitigation_outcome": res["mitigation_outcome"],
    }
    g = rec["guidance"]
    d1f = det["D1_final"]
    rec["targets_met"] = {
        "a_memorized_within_20pct_of_g": abs(rec["a_mean"]["memorized"] - g) <= 0.2 * g,
        "a_normal_below_g_over_3": rec["a_mean"]["normal"] < g / 3,
        "memorized_collapse_normal_not": rec["final_seed_distance"]["memorized"]
        < 0.25 * rec["final_seed_distance"]["normal"],
        "pearson_deviation_ge_0.8": max(rec["pearson_D1"] or 0, rec["pearson_D2"] or 0) >= 0.8,
        "best_auroc_ge_0.95": det[best]["auroc"] >= 0.95,
        "D1_final_auroc_ci_above_0.9": d1f["auroc_ci"][0] is not None and d1f["auroc_ci"][0] > 0.9,
        "under_5_min": wall <= 300,
    }
    t = time.perf_counter()
    rec["guided_members"] = args.guided_members
    rec["member_selection"] = member_selection(run_dir, args.guided_members)
    rec["member_selection_seconds"] = time.perf_counter() - t
    (out / "bench_audit.json").write_text(json.dumps(rec, indent=2) + "\n")
    print(f"\nbenchmark: wall {wall:.1f} s (testbed training {train_s:.1f} s, audit {rec['audit_seconds']:.1f} s)")
    print("mean a by label:", {k: round(v, 2) for k, v in rec["a_mean"].items()}, f"(g = {g})")
    print("final seed distance by label:", {k: round(v, 3) for k, v in rec["final_seed_distance"].items()})
    print(f"Pearson(D1, severity) = {rec['pearson_D1']:.3f}, Pearson(D2, severity) = {rec['pearson_D2']:.3f}")
    e = cor["D1_early"]
    print(f"Pearson(D1 over the first {rec['early_steps']} steps, severity) = {e['pearson']:.3f} {e['pearson_ci']}")
    print(f"best detector {best}: AUROC {det[best]['auroc']:.3f}, TPR@1%FPR {det[best]['tpr_at_1fpr']:.3f}")
    print(f"D1 against the final sample (no image): AUROC {d1f['auroc']:.3f} {d1f['auroc_ci']}")
    print("member selection on guidance-created captions:", rec["member_selection"])
    print("targets met:", rec["targets_met"])


def _weights_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


if __name__ == "__main__":
    main()
