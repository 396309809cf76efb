"""Figures (PNG, matplotlib Agg) and a self-contained HTML report for an audit.

Every function reads the aggregate of :func:`~diffmem.audit.run.run_audit` as a mapping (the content
of ``audit.json``, :meth:`~diffmem.audit.run.AuditResult.to_dict`) and never changes it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import fmt, html_page, html_table, pyplot, save_png

__all__ = ["audit_figures", "correlation_rows", "detector_rows", "mitigation_rows", "summary_rows", "write_audit_html"]

_COLORS = {"memorized": "#c0392b", "partial": "#e67e22", "normal": "#2c7fb8", "unlabelled": "#777777"}


def audit_figures(res: Mapping[str, Any], prompts: Sequence[Mapping[str, Any]], folder: str | Path) -> dict[str, Path]:
    """Draw the audit's figures into ``folder``; returns caption -> PNG path.

    ``prompts`` are the per-prompt results with their per-step ``curves`` (as in ``prompts/<key>.json``).
    """
    plt = pyplot()
    folder = Path(folder)
    curves = res["mean_curves"]
    out: dict[str, Path] = {}
    if not curves:
        return out
    first = next(iter(curves.values()))
    i = np.arange(len(first["k"]))
    ab = np.asarray(first["alpha_bar"])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab, c in curves.items():
        axes[0].plot(i, c["w0"], color=_COLORS.get(lab), label=lab)
        axes[1].plot(i, c["wT"], color=_COLORS.get(lab), label=lab)
    axes[0].plot(i, np.sqrt(ab), "k--", lw=1, label="sqrt(ᾱ_k) (theory)")
    axes[1].plot(i, np.sqrt(1 - ab), "k--", lw=1, label="sqrt(1-ᾱ_k) (theory)")
    axes[0].set(
        xlabel="sampling step",
        ylabel="w0 (mean over seeds and prompts)",
        title="x_k ≈ w0 x + wT x_T: weight of the training image",
    )
    axes[1].set(xlabel="sampling step", ylabel="wT", title="weight of the initial noise")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    out["decomposition"] = save_png(fig, folder / "decomposition.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in curves.items():
        ax.plot(i, c["loss_guided"], color=_COLORS.get(lab), label=f"{lab}, with CFG")
        ax.plot(i, c["loss_cond"], "--", color=_COLORS.get(lab), label=f"{lab}, without (eps_c)")
    ax.set(
        yscale="log",
        xlabel="sampling step",
        ylabel="|eps_hat - eps*|² (mean)",
        title="Loss along the guided trajectory",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    out["loss"] = save_png(fig, folder / "loss.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summ = res.get("summary", {})
    for lab, c in curves.items():
        d = np.asarray(c["seed_distance"])
        axes[0].plot(i, d, color=_COLORS.get(lab), label=lab)
        fin = (summ.get(lab) or {}).get("final_distance")
        if fin is not None:
            axes[0].plot([len(i)], [fin], "o", color=_COLORS.get(lab))
        axes[1].plot(i, d / np.sqrt(1 - ab), color=_COLORS.get(lab), label=lab)
    axes[0].set(
        xlabel="sampling step (dot: final sample)",
        ylabel="mean pairwise RMS distance of x_k",
        title="Do trajectories of different seeds converge?",
    )
    axes[1].set(
        xlabel="sampling step",
        ylabel="distance / sqrt(1-ᾱ_k)",
        yscale="log",
        title="Seed distance relative to the noise the schedule keeps",
    )
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    out["seed_distance"] = save_png(fig, folder / "seed_distance.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in curves.items():
        ax.plot(i, c["cos_epsc_x"], color=_COLORS.get(lab), label=f"{lab}: cos(eps_c, x)")
        ax.plot(i, c["cos_epsu_x"], ":", color=_COLORS.get(lab), label=f"{lab}: cos(eps_u, x)")
        ax.plot(i, c["cos_guidance_x"], "-.", color=_COLORS.get(lab), label=f"{lab}: cos(eps_u - eps_c, x)")
    ax.set(xlabel="sampling step", ylabel="cosine", title="Noise predictions aligned with the training image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["cosines"] = save_png(fig, folder / "cosines.png")

    det = res["detectors"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, row in det.items():
        if row.get("roc"):
            ax.plot(
                row["roc"]["fpr"],
                row["roc"]["tpr"],
                drawstyle="steps-post",
                label=f"{name} (AUROC {fmt(row['auroc'])})",
            )
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Detectors: memorized vs normal prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["roc"] = save_png(fig, folder / "roc.png")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, name in zip(axes, ("D1", "D2", "overestimation_a")):
        for lab in _COLORS:
            ps = [p for p in prompts if (p["label"] or "unlabelled") == lab]
            if ps:
                ax.scatter([p[name] for p in ps], [p["severity"] for p in ps], s=18, color=_COLORS[lab], label=lab)
        cor = res["correlations"].get(name, {})
        ax.set(
            xlabel=name,
            ylabel=f"severity ({res['severity_metric']['name']})",
            title=f"Pearson r = {fmt(cor.get('pearson'))}, Spearman = {fmt(cor.get('spearman'))}",
        )
        ax.axhline(res["severity_metric"]["threshold"], color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out["deviation_severity"] = save_png(fig, folder / "deviation_severity.png")

    mit = res.get("mitigation") or {}
    if mit:
        labs = [
            lab for lab in ("memorized", "partial", "normal", "unlabelled") if any(lab in rows for rows in mit.values())
        ]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        w = 0.8 / max(1, len(mit))
        for j, (sched, rows) in enumerate(mit.items()):
            xs = np.arange(len(labs)) + j * w
            axes[0].bar(xs, [rows.get(lab, {}).get("severity", np.nan) for lab in labs], w, label=sched)
            axes[1].bar(
                xs,
                [
                    (rows.get(lab, {}).get("fidelity") if rows.get(lab, {}).get("fidelity") is not None else np.nan)
                    for lab in labs
                ],
                w,
                label=sched,
            )
        for ax, yl in zip(axes, ("mean severity", "fidelity (classifier reads the caption's digit)")):
            ax.set_xticks(np.arange(len(labs)) + w * (len(mit) - 1) / 2, labs)
            ax.set(ylabel=yl)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7)
        axes[0].set_title("Severity by guidance schedule")
        axes[1].set_title("Prompt fidelity by guidance schedule")
        out["mitigation"] = save_png(fig, folder / "mitigation.png")
    return out


def summary_rows(res: Mapping[str, Any]) -> list[list[str]]:
    rows = [
        [
            "label",
            "prompts",
            "a (overest.)",
            "seed collapse",
            "convergence",
            "D1",
            "D2",
            "Wen |Δeps|",
            "severity",
            "copy rate",
        ]
    ]
    for lab, r in res["summary"].items():
        rows.append(
            [
                lab,
                str(r["prompts"]),
                fmt(r["overestimation_a"]),
                fmt(r["seed_collapse"]),
                fmt(r["convergence"]),
                fmt(r["D1"]),
                fmt(r["D2"]),
                fmt(r["wen_mean"]),
                fmt(r["severity"]),
                fmt(r["copy_rate"]),
            ]
        )
    return rows


def detector_rows(res: Mapping[str, Any], key: str = "detectors") -> list[list[str]]:
    rows = [["detector", "AUROC", "TPR@1%FPR", "pos/neg", "cost (evals/prompt)", "needs x"]]
    for name, r in res[key].items():
        rows.append(
            [
                name,
                fmt(r["auroc"]),
                fmt(r["tpr_at_1fpr"]),
                f"{r['n_pos']}/{r['n_neg']}",
                fmt(r.get("cost")),
                "yes" if r["needs_image"] else "no",
            ]
        )
    return rows


def _ci(c: Sequence[Any]) -> str:
    return f"[{fmt(c[0])}, {fmt(c[1])}]" if c and c[0] is not None else "—"


def correlation_rows(res: Mapping[str, Any]) -> list[list[str]]:
    rows = [["statistic", "Pearson r", "95% CI", "Spearman", "95% CI", "n"]]
    for name, r in res["correlations"].items():
        rows.append(
            [name, fmt(r["pearson"]), _ci(r["pearson_ci"]), fmt(r["spearman"]), _ci(r["spearman_ci"]), str(r["n"])]
        )
    return rows


def mitigation_rows(res: Mapping[str, Any]) -> list[list[str]]:
    rows = [["schedule", "label", "severity", "copy rate", "fidelity"]]
    for sched, by in (res.get("mitigation") or {}).items():
        for lab, r in by.items():
            rows.append([sched, lab, fmt(r["severity"]), fmt(r["copy_rate"]), fmt(r["fidelity"])])
    return rows


def write_audit_html(
    res: Mapping[str, Any], figures: Mapping[str, Path], path: str | Path, title: str = "diffmem audit report"
) -> Path:
    """Write the self-contained HTML report (tables, then the figures embedded as base64) to ``path``."""
    from ..io import atomic_write_bytes

    cfg = res["config"]
    sev = res["severity_metric"]
    intro = (
        f"Model: {html.escape(str(res['model'].get('kind')))}; {len(res['prompts'])} prompts, "
        f"{cfg['seeds']} seeds each, DDIM {cfg['steps']} steps, guidance g = {cfg['guidance']}; "
        f"severity = {html.escape(sev['name'])} (copy if ≥ {sev['threshold']}). "
        "Detectors: memorized (positive) vs normal (negative) prompts, partial prompts excluded "
        "(second table: counted as positive). The theoretical decomposition schedule is the forward "
        "process w0 = sqrt(ᾱ_k), wT = sqrt(1-ᾱ_k). See docs/audit.md."
    )
    mitigation = html_table(mitigation_rows(res)) if res.get("mitigation") else "<p>not run</p>"
    body = (
        f"<p>{intro}</p>\n"
        f"<h2>Per label</h2>{html_table(summary_rows(res))}\n"
        f"<h2>Detectors</h2>{html_table(detector_rows(res))}\n"
        f"<h3>Partial prompts counted as memorized</h3>{html_table(detector_rows(res, 'detectors_with_partial'))}\n"
        f"<h2>Correlation with severity (across prompts)</h2>{html_table(correlation_rows(res))}\n"
        f"<h2>Mitigation</h2>{mitigation}\n"
        f"<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg, indent=1))}</pre>\n"
        "<h2>Figures</h2>"
    )
    atomic_write_bytes(path, html_page(title, body, dict(figures)).encode())
    return Path(path)
