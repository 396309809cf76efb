"""Figures (PNG, matplotlib Agg) and a self-contained HTML report for an audit."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..report import _fmt, _img_tag, _plt, _save

__all__ = ["audit_figures", "correlation_rows", "detector_rows", "mitigation_rows", "summary_rows", "write_audit_html"]

_COLORS = {"memorized": "#c0392b", "partial": "#e67e22", "normal": "#2c7fb8", "unlabelled": "#777777"}


def audit_figures(res: dict, prompts: list[dict], folder: str | Path) -> dict[str, Path]:
    plt = _plt()
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
    out["decomposition"] = _save(fig, folder / "decomposition.png")

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
    out["loss"] = _save(fig, folder / "loss.png")

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
    out["seed_distance"] = _save(fig, folder / "seed_distance.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in curves.items():
        ax.plot(i, c["cos_epsc_x"], color=_COLORS.get(lab), label=f"{lab}: cos(eps_c, x)")
        ax.plot(i, c["cos_epsu_x"], ":", color=_COLORS.get(lab), label=f"{lab}: cos(eps_u, x)")
        ax.plot(i, c["cos_guidance_x"], "-.", color=_COLORS.get(lab), label=f"{lab}: cos(eps_u - eps_c, x)")
    ax.set(xlabel="sampling step", ylabel="cosine", title="Noise predictions aligned with the training image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["cosines"] = _save(fig, folder / "cosines.png")

    det = res["detectors"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, row in det.items():
        if row.get("roc"):
            ax.plot(
                row["roc"]["fpr"],
                row["roc"]["tpr"],
                drawstyle="steps-post",
                label=f"{name} (AUROC {_fmt(row['auroc'])})",
            )
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Detectors: memorized vs normal prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["roc"] = _save(fig, folder / "roc.png")

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
            title=f"Pearson r = {_fmt(cor.get('pearson'))}, Spearman = {_fmt(cor.get('spearman'))}",
        )
        ax.axhline(res["severity_metric"]["threshold"], color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out["deviation_severity"] = _save(fig, folder / "deviation_severity.png")

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
        out["mitigation"] = _save(fig, folder / "mitigation.png")
    return out


def summary_rows(res: dict) -> list[list[str]]:
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
                _fmt(r["overestimation_a"]),
                _fmt(r["seed_collapse"]),
                _fmt(r["convergence"]),
                _fmt(r["D1"]),
                _fmt(r["D2"]),
                _fmt(r["wen_mean"]),
                _fmt(r["severity"]),
                _fmt(r["copy_rate"]),
            ]
        )
    return rows


def detector_rows(res: dict, key: str = "detectors") -> list[list[str]]:
    rows = [["detector", "AUROC", "TPR@1%FPR", "pos/neg", "cost (evals/prompt)", "needs x"]]
    for name, r in res[key].items():
        rows.append(
            [
                name,
                _fmt(r["auroc"]),
                _fmt(r["tpr_at_1fpr"]),
                f"{r['n_pos']}/{r['n_neg']}",
                _fmt(r.get("cost")),
                "yes" if r["needs_image"] else "no",
            ]
        )
    return rows


def _ci(c: list) -> str:
    return f"[{_fmt(c[0])}, {_fmt(c[1])}]" if c and c[0] is not None else "—"


def correlation_rows(res: dict) -> list[list[str]]:
    rows = [["statistic", "Pearson r", "95% CI", "Spearman", "95% CI", "n"]]
    for name, r in res["correlations"].items():
        rows.append(
            [name, _fmt(r["pearson"]), _ci(r["pearson_ci"]), _fmt(r["spearman"]), _ci(r["spearman_ci"]), str(r["n"])]
        )
    return rows


def mitigation_rows(res: dict) -> list[list[str]]:
    rows = [["schedule", "label", "severity", "copy rate", "fidelity"]]
    for sched, by in (res.get("mitigation") or {}).items():
        for lab, r in by.items():
            rows.append([sched, lab, _fmt(r["severity"]), _fmt(r["copy_rate"]), _fmt(r["fidelity"])])
    return rows


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_audit_html(
    res: dict, figures: dict[str, Path], path: str | Path, title: str = "diffmem audit report"
) -> Path:
    from ..io import atomic_write_bytes

    cfg = res["config"]
    sev = res["severity_metric"]
    figs = "".join(
        f"<figure>{_img_tag(p)}<figcaption>{html.escape(k)}</figcaption></figure>" for k, p in figures.items()
    )
    intro = (
        f"Model: {html.escape(str(res['model'].get('kind')))}; {len(res['prompts'])} prompts, {cfg['seeds']} seeds each, "
        f"DDIM {cfg['steps']} steps, guidance g = {cfg['guidance']}; severity = {html.escape(sev['name'])} (copy if ≥ {sev['threshold']}). "
        "Detectors: memorized (positive) vs normal (negative) prompts, partial prompts excluded (second table: counted as positive). "
        "The theoretical decomposition schedule is the forward process w0 = sqrt(ᾱ_k), wT = sqrt(1-ᾱ_k). See docs/audit.md."
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#666;font-size:90%}}pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:80%}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{intro}</p>
<h2>Per label</h2>{_html_table(summary_rows(res))}
<h2>Detectors</h2>{_html_table(detector_rows(res))}
<h3>Partial prompts counted as memorized</h3>{_html_table(detector_rows(res, "detectors_with_partial"))}
<h2>Correlation with severity (across prompts)</h2>{_html_table(correlation_rows(res))}
<h2>Mitigation</h2>{_html_table(mitigation_rows(res)) if res.get("mitigation") else "<p>not run</p>"}
{figs}
<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg, indent=1))}</pre></body></html>"""
    atomic_write_bytes(path, doc.encode())
    return Path(path)
