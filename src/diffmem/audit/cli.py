"""``diffmem audit``: record guided trajectories, score memorization per prompt, compare detectors.

``--model testbed`` (default) trains the built-in caption-conditional digits testbed in
``OUT/testbed`` (or reuses it) and audits its prompts; ``--model PIPELINE_DIR`` audits a local
Stable-Diffusion-style diffusers folder on the prompts of ``--manifest FILE``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["audit_config", "cmd_audit", "register"]


def audit_config(args: argparse.Namespace):
    """The :class:`~diffmem.audit.run.AuditConfig` of the parsed flags (validated)."""
    import dataclasses

    from .run import AuditConfig

    cfg = AuditConfig()
    changes = {}
    for flag, field in (
        ("seed", "seed"),
        ("guidance", "guidance"),
        ("steps", "steps"),
        ("seeds", "seeds"),
        ("first_steps", "first_steps"),
        ("converge_step", "converge_step"),
        ("n_boot", "n_boot"),
        ("transition", "mitigation_transition"),
        ("early_scale", "mitigation_early_scale"),
        ("negative_scale", "mitigation_negative_scale"),
    ):
        v = getattr(args, flag, None)
        if v is not None:
            changes[field] = v
    if args.no_mitigation:
        changes["mitigation"] = False
    if args.no_trajectories:
        changes["save_trajectories"] = False
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return cfg


def _testbed_config(args: argparse.Namespace):
    import dataclasses

    from .testbed import TestbedConfig

    tc = TestbedConfig()
    changes = {
        k: getattr(args, "testbed_" + k) for k in ("steps", "width") if getattr(args, "testbed_" + k, None) is not None
    }
    tc = dataclasses.replace(tc, **changes, seed=args.seed if args.seed is not None else tc.seed)
    tc.validate()
    return tc


def _load(args: argparse.Namespace, out: Path):
    """(model, specs, severity, build seconds) for --model/--manifest/--sscd."""
    t0 = time.time()
    severity = None
    if args.sscd is not None:
        from .sscd import SSCDSeverity

        if not Path(args.sscd).is_file():
            raise FileNotFoundError(
                f"no SSCD TorchScript file at {args.sscd}; give the path of a local sscd_disc_*.torchscript.pt file"
            )
        severity = SSCDSeverity(args.sscd)
    if args.model == "testbed":
        if args.manifest is not None:
            raise ValueError(
                "--manifest is for a pipeline folder; the testbed brings its own prompts (drop --manifest)"
            )
        from .testbed import build_testbed

        model, specs = build_testbed(
            out / "testbed", seed=args.seed or 0, progress=not args.quiet, config=_testbed_config(args)
        )
    else:
        folder = Path(args.model)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"--model must be 'testbed' or a local diffusers pipeline folder; {folder} is not a folder"
            )
        if args.manifest is None:
            raise ValueError("auditing a pipeline needs --manifest FILE (the prompts and their training images)")
        import torch

        from ..config import resolve_device
        from .diffusers_adapter import load_pipeline_model
        from .manifest import read_manifest

        specs = read_manifest(args.manifest)
        model = load_pipeline_model(folder, device=resolve_device(args.device), dtype=torch.float32)
    return model, specs, severity, time.time() - t0


def cmd_audit(args: argparse.Namespace) -> int:
    from ..cli import _print_json, _table
    from ..config import to_dict

    cfg = audit_config(args)
    out = Path(args.out)
    if args.dry_run:
        plan = {
            "audit": to_dict(cfg),
            "model": args.model,
            "manifest": args.manifest,
            "sscd": args.sscd,
            "device": args.device,
            "out": str(out),
        }
        if args.model == "testbed":
            plan["testbed"] = to_dict(_testbed_config(args))
        _print_json(plan)
        return 0
    import torch

    from .report import correlation_rows, detector_rows, mitigation_rows, summary_rows
    from .run import run_audit

    t0 = time.time()
    threads = args.threads if args.threads is not None else (1 if args.model == "testbed" else None)
    if threads:  # the testbed's small MLP is fastest single-threaded (SCIENCE.md section 6)
        torch.set_num_threads(threads)
    model, specs, severity, t_build = _load(args, out)
    res = run_audit(model, specs, cfg, out, severity=severity, progress=not args.quiet)
    wall = time.time() - t0
    sev = res["severity_metric"]
    print(f"\nper label (severity = {sev['name']}, copy if >= {sev['threshold']}; guidance g = {cfg.guidance}):")
    print(_table(summary_rows(res)))
    print("\ndetectors, memorized (positive) vs normal (negative) prompts:")
    print(_table(detector_rows(res)))
    print("\ncorrelation with severity across prompts (bootstrap 95% CI):")
    print(_table(correlation_rows(res)))
    if res.get("mitigation"):
        print("\nmitigation (guidance schedules):")
        print(_table(mitigation_rows(res)))
    tm = res["timings"]
    print(
        f"\nwall time {wall:.1f} s (model/testbed {t_build:.1f} s, audit {tm['wall_s']:.1f} s; "
        f"{tm['prompts_computed']} prompts computed, {tm['prompts_reused']} reused)"
    )
    print(f"wrote {out / 'audit.json'}, {out / 'report.html'} and {out / 'figures'}/")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audit",
        help="audit guided sampling of a conditional model: per-prompt memorization statistics, detectors, mitigation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="testbed",
        help="'testbed' (built-in digits testbed) or a local diffusers pipeline folder (default: testbed)",
    )
    p.add_argument(
        "--manifest", default=None, help="prompt manifest (required for a pipeline): prompts, training images, labels"
    )
    p.add_argument(
        "--sscd", default=None, help="SSCD TorchScript file for the severity (default: pixel cosine of centred pixels)"
    )
    p.add_argument("--out", default="runs/audit", help="output folder (default: runs/audit)")
    p.add_argument("--seed", type=int, default=None, help="noise seeds (and the testbed's training seed); default 0")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale g (default 7.5)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default 8)")
    p.add_argument(
        "--first-steps", type=int, default=None, help="steps entering the overestimation coefficient (default 1)"
    )
    p.add_argument(
        "--converge-step",
        type=int,
        default=None,
        help="step where seed convergence is read (default: the final sample)",
    )
    p.add_argument(
        "--n-boot", type=int, default=None, help="bootstrap resamples for correlation intervals (default 1000)"
    )
    g = p.add_argument_group("mitigation (guidance schedules)")
    g.add_argument("--no-mitigation", action="store_true", help="skip the guidance-schedule study")
    g.add_argument(
        "--transition",
        type=float,
        default=None,
        help="fraction of the steps sampled without normal guidance (default 0.3)",
    )
    g.add_argument(
        "--early-scale",
        type=float,
        default=None,
        help="scale before the transition for 'no early guidance' (default 0 = unconditional)",
    )
    g.add_argument(
        "--negative-scale",
        type=float,
        default=None,
        help="scale before the transition for 'negative early guidance' (default -1)",
    )
    t = p.add_argument_group("testbed")
    t.add_argument("--testbed-steps", type=int, default=None, help="training steps of the testbed (default 8000)")
    t.add_argument("--testbed-width", type=int, default=None, help="MLP width of the testbed (default 256)")
    p.add_argument("--no-trajectories", action="store_true", help="do not keep the recorded trajectories on disk")
    p.add_argument(
        "--device", default="cpu", help="torch device for a pipeline: cpu (default), cuda, cuda:N, mps or auto"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 for the testbed, torch's choice for a pipeline)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    p.set_defaults(func=cmd_audit)
