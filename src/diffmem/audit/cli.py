"""``diffmem audit``: record guided trajectories, score memorization per prompt, compare detectors.

``--model testbed`` (default) trains the built-in caption-conditional digits testbed in
``OUT/testbed`` (or reuses it) and audits its prompts; ``--model PIPELINE_DIR`` audits a local
Stable-Diffusion-style diffusers folder on the prompts of ``--manifest FILE``.

The audit's flags are the fields of the audit configuration (``diffmem.audit.AuditConfig``; the
mitigation fields keep their short names --transition, --early-scale, --negative-scale), the
testbed's the fields of ``diffmem.audit.TestbedConfig`` prefixed --testbed-.

For a pipeline the defaults follow the paper's protocol: 20 seeds per prompt (unless --seeds is
given), DDIM 50 steps, g = 7.5, and with --sscd the SSCD cosine (288 x 288 input, ImageNet
normalisation, copy at >= 0.75). A manifest may leave out the training images (or name them by
``index`` in an --images folder); prompts without one are decomposed against their own final
samples and get no severity.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cliutils import add_common, add_config_flags, config_from_flags, print_json, table

if TYPE_CHECKING:
    from .protocol import GuidedModel, PromptSpec, Severity
    from .run import AuditConfig
    from .testbed import TestbedConfig

__all__ = ["audit_config", "cmd_audit", "register"]

#: AuditConfig fields whose flag keeps an older, shorter name
_RENAME = {
    "mitigation_transition": "transition",
    "mitigation_early_scale": "early_scale",
    "mitigation_negative_scale": "negative_scale",
    "save_trajectories": "trajectories",
}
_MITIGATION = (
    "mitigation",
    "mitigation_transition",
    "mitigation_early_scale",
    "mitigation_negative_scale",
    "mitigation_min_drop",
)
#: noise seeds per prompt of the paper's protocol, the default for a pipeline audit
PAPER_SEEDS = 20


def audit_config(args: argparse.Namespace) -> AuditConfig:
    """The :class:`~diffmem.audit.run.AuditConfig` of the parsed flags (validated)."""
    from .run import AuditConfig

    fixed: dict[str, Any] = {}
    if getattr(args, "seeds", None) is None and getattr(args, "model", "testbed") != "testbed":
        fixed["seeds"] = PAPER_SEEDS  # the paper's seed count for a Stable Diffusion audit
    cfg: AuditConfig = config_from_flags(AuditConfig, args, **fixed)
    cfg.validate()
    return cfg


def _testbed_config(args: argparse.Namespace) -> TestbedConfig:
    """The :class:`~diffmem.audit.testbed.TestbedConfig` of the ``--testbed-*`` flags; ``--seed`` is its seed."""
    from .testbed import TestbedConfig

    seed = {} if args.seed is None else {"seed": args.seed}
    tc: TestbedConfig = config_from_flags(TestbedConfig, args, prefix="testbed_", **seed)
    tc.validate()
    return tc


def _load(args: argparse.Namespace, out: Path) -> tuple[GuidedModel, list[PromptSpec], Severity | None, float]:
    """(model, specs, severity, build seconds) for --model/--manifest/--sscd."""
    t0 = time.time()
    severity: Severity | None = None
    if args.sscd is not None:
        from .sscd import SSCDSeverity

        if not Path(args.sscd).is_file():
            raise FileNotFoundError(
                f"no SSCD TorchScript file at {args.sscd}; give the path of a local sscd_disc_*.torchscript.pt file"
            )
        severity = SSCDSeverity(args.sscd)
    model: GuidedModel
    if args.model == "testbed":
        if args.manifest is not None:
            raise ValueError(
                "--manifest is for a pipeline folder; the testbed brings its own prompts (drop --manifest)"
            )
        if args.images is not None:
            raise ValueError("--images is for a pipeline manifest; the testbed brings its own images (drop --images)")
        from .testbed import build_testbed

        tc = _testbed_config(args)
        model, specs = build_testbed(out / "testbed", seed=tc.seed, progress=not args.quiet, config=tc)
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

        specs = read_manifest(args.manifest, images=args.images)
        if severity is None and any(s.image is not None for s in specs) and not args.quiet:
            print(
                "note: no --sscd given, so severity is the pixel-cosine fallback; the paper's severity is the SSCD "
                "cosine (give --sscd sscd_disc_large.torchscript.pt)",
                file=sys.stderr,
            )
        model = load_pipeline_model(folder, device=resolve_device(args.device), dtype=torch.float32)
    return model, specs, severity, time.time() - t0


def cmd_audit(args: argparse.Namespace) -> int:
    from ..config import to_dict

    cfg = audit_config(args)
    out = Path(args.out)
    if args.dry_run:
        plan: dict[str, Any] = {
            "audit": to_dict(cfg),
            "model": args.model,
            "manifest": args.manifest,
            "images": args.images,
            "sscd": args.sscd,
            "device": args.device,
            "out": str(out),
        }
        if args.model == "testbed":
            plan["testbed"] = to_dict(_testbed_config(args))
        print_json(plan)
        return 0
    import torch

    from .report import (
        correlation_rows,
        detector_rows,
        group_summary_rows,
        mitigation_outcome_rows,
        mitigation_rows,
        summary_rows,
        within_label_rows,
    )
    from .run import run_audit

    t0 = time.time()
    threads = args.threads if args.threads is not None else (1 if args.model == "testbed" else None)
    if threads:  # the testbed's small MLP runs faster on one thread than split across several
        torch.set_num_threads(threads)
    model, specs, severity, t_build = _load(args, out)
    res = run_audit(model, specs, cfg, out, severity=severity, progress=not args.quiet).to_dict()
    wall = time.time() - t0
    sev = res["severity_metric"]
    print(f"\nper label (severity = {sev['name']}, copy if >= {sev['threshold']}; guidance g = {cfg.guidance}):")
    print(table(summary_rows(res)))
    if res.get("summary_by_group"):
        print("\nper group:")
        print(table(group_summary_rows(res)))
    dec = res.get("decomposition") or {}
    print(
        f"\nD1/D2 from the {cfg.reference_curves} curves (largest difference from the other curves in w0: "
        f"{res['reference_curves']['max_difference']['w0']:.3g}); early statistics over the first "
        f"{dec.get('early_steps')} steps; {dec.get('note')}"
    )
    for key, what in (
        ("detectors", "memorized (positive) vs normal (negative)"),
        ("detectors_partial_vs_normal", "partial (positive) vs normal (negative)"),
        ("detectors_memorized_vs_partial", "memorized (positive) vs partial (negative)"),
    ):
        if len(detector_rows(res, key)) > 1:
            print(f"\ndetectors, {what} prompts (AUROC with bootstrap 95% CI):")
            print(table(detector_rows(res, key)))
    print("\ncorrelation with severity across prompts (bootstrap 95% CI):")
    print(table(correlation_rows(res)))
    if len(within_label_rows(res)) > 1:
        print("\ncorrelation with severity within each label (bootstrap 95% CI):")
        print(table(within_label_rows(res)))
    if res["mitigation"]:
        print("\nmitigation (guidance schedules):")
        print(table(mitigation_rows(res)))
        if res.get("mitigation_outcome"):
            print(f"\nmitigation outcome per group (criterion: a drop of mean severity >= {cfg.mitigation_min_drop}):")
            print(table(mitigation_outcome_rows(res)))
    tm = res["timings"]
    print(
        f"\nwall time {wall:.1f} s (model/testbed {t_build:.1f} s, audit {tm['wall_s']:.1f} s; "
        f"{tm['prompts_computed']} prompts computed, {tm['prompts_reused']} reused)"
    )
    print(f"wrote {out / 'audit.json'}, {out / 'report.html'} and {out / 'figures'}/")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``audit`` command to the ``diffmem`` parser's subparsers."""
    from .run import AuditConfig
    from .testbed import TestbedConfig

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
        "--images",
        default=None,
        help="folder of the training images of a manifest that names them by 'index' (INDEX.png/.jpg/...)",
    )
    p.add_argument(
        "--sscd",
        default=None,
        help="SSCD TorchScript file for the severity, e.g. sscd_disc_large.torchscript.pt (the paper's; "
        "default: pixel cosine of centred pixels)",
    )
    add_common(
        p,
        "runs/audit",
        seed_help="base of the noise seeds (seed j of a prompt is SEED * 100003 + j) and the testbed's training "
        "seed (default: 0)",
        device=True,
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 for the testbed, torch's choice for a pipeline)",
    )
    add_config_flags(p, AuditConfig, skip=("seed", *_MITIGATION), title="audit", rename=_RENAME)
    add_config_flags(
        p,
        AuditConfig,
        skip=tuple(f for f in AuditConfig.__dataclass_fields__ if f not in _MITIGATION),
        title="mitigation (guidance schedules)",
        rename=_RENAME,
    )
    add_config_flags(p, TestbedConfig, prefix="testbed_", skip=("seed",), title="testbed (--model testbed)")
    p.set_defaults(func=cmd_audit)
