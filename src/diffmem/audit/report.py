"""Figures (PNG, matplotlib Agg) and a self-contained HTML report for an audit.

Every function reads the aggregate of :func:`~diffmem.audit.run.run_audit` as a mapping (the content
of ``audit.json``, :meth:`~diffmem.audit.run.AuditResult.to_dict`) and never changes it.
:func:`audit_figures` draws one figure per part of the mechanism, each with its own function:
the decomposition against both references, the loss with and without guidance, the seed distances,
the cosines, the revised overestimation per step, the noise-prediction decomposition, the ROC curves,
the deviations against severity and the mitigation bars.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import fmt, html_page, html_table, pyplot, save_png

__all__ = [
    "audit_figures",
    "correlation_rows",
    "detector_rows",
    "group_summary_rows",
    "mitigation_outcome_rows",
    "mitigation_rows",
    "summary_rows",
    "within_label_rows",
    "write_audit_html",
]

_COLORS = {"memorized": "#c0392b", "partial": "#e67e22", "normal": "#2c7fb8", "unlabelled": "#777777"}
#: detectors drawn on the ROC figure (the table has all of them)
_ROC_SHOWN = (
    "wen_first",
    "wen_early",
    "seed_collapse",
    "convergence",
    "overestimation_a",
    "D1",
    "D1_early",
    "D1_final",
    "D1_final_early",
)
#: statistics whose within-label correlations the text report prints
WITHIN_SHOWN = ("D1", "D1_early", "D1_final", "D1_final_early", "overestimation_a", "q", "wen_first", "convergence")


def _arr(c: Mapping[str, Any], key: str) -> np.ndarray | None:
    v = c.get(key)
    return None if v is None else np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)


def _finish(axes: Any, fontsize: int = 8) -> None:
    for a in np.atleast_1d(axes).ravel():
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=fontsize)


def decomposition_figure(res: Mapping[str, Any], path: Path) -> Path:
    """w0 and wT per label against the training image (top) and each seed's final sample (bottom),
    with both reference curves: the forward process sqrt(ab) and the exact unrolled DDIM weights."""
    plt = pyplot()
    curves = res["mean_curves"]
    ref = res.get("reference_curves") or {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for row, suffix, what in ((0, "", "training image x"), (1, "_final", "the seed's final sample")):
        for lab, c in curves.items():
            i = np.arange(len(c["k"]))
            for col, name in ((0, "w0"), (1, "wT")):
                y = _arr(c, name + suffix)
                if y is not None:
                    axes[row, col].plot(i, y, color=_COLORS.get(lab), label=lab)
        first = next(iter(curves.values()))
        i = np.arange(len(first["k"]))
        for kind, style, text in (("sqrt_ab", "k--", "sqrt(ᾱ) theory"), ("ddim_exact", "k:", "exact DDIM")):
            r = ref.get(kind) or {}
            for col, name in ((0, "w0"), (1, "wT")):
                if r.get(name) is not None:
                    axes[row, col].plot(i, r[name], style, lw=1, label=text)
        axes[row, 0].set(ylabel=f"w0 (against {what})", title=f"x_k ≈ w0 r + wT x_T, r = {what}")
        axes[row, 1].set(ylabel="wT", title="weight of the initial noise")
    for a in axes[1]:
        a.set(xlabel="sampling step")
    _finish(axes)
    return save_png(fig, path)


def loss_figure(res: Mapping[str, Any], path: Path) -> Path:
    """The loss |eps_hat - eps*|² along the guided trajectory, with and without guidance."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in res["mean_curves"].items():
        i = np.arange(len(c["k"]))
        g, u = _arr(c, "loss_guided"), _arr(c, "loss_cond")
        if g is not None and u is not None:
            ax.plot(i, g, color=_COLORS.get(lab), label=f"{lab}, with CFG")
            ax.plot(i, u, "--", color=_COLORS.get(lab), label=f"{lab}, without (eps_c)")
    ax.set(yscale="log", xlabel="sampling step", ylabel="|eps_hat - eps*|² (mean)", title="Loss along the trajectory")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return save_png(fig, path)


def seed_distance_figure(res: Mapping[str, Any], path: Path) -> Path:
    """Mean pairwise distance of the seeds per step (dot: the final samples), raw and relative to the
    noise the schedule keeps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summ = res.get("summary", {})
    for lab, c in res["mean_curves"].items():
        i = np.arange(len(c["k"]))
        ab = np.asarray(c["alpha_bar"])
        d = _arr(c, "seed_distance")
        if d is None:
            continue
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
    _finish(axes)
    return save_png(fig, path)


def cosine_figure(res: Mapping[str, Any], path: Path) -> Path:
    """cos(eps_c, x), cos(eps_u, x) and cos(eps_u - eps_c, x) per step and label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in res["mean_curves"].items():
        i = np.arange(len(c["k"]))
        for key, style, text in (
            ("cos_epsc_x", "-", "cos(eps_c, x)"),
            ("cos_epsu_x", ":", "cos(eps_u, x)"),
            ("cos_guidance_x", "-.", "cos(eps_u - eps_c, x)"),
        ):
            y = _arr(c, key)
            if y is not None:
                ax.plot(i, y, style, color=_COLORS.get(lab), label=f"{lab}: {text}")
    ax.set(xlabel="sampling step", ylabel="cosine", title="Noise predictions aligned with the training image")
    _finish(ax, 7)
    return save_png(fig, path)


def overestimation_figure(res: Mapping[str, Any], path: Path) -> Path:
    """The revised overestimation per step: q (alignment of the guidance step with x - mu, 1 = the
    conditional branch lands on x), r_perp (the part off that line) and E_rel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for lab, c in res["mean_curves"].items():
        i = np.arange(len(c["k"]))
        for ax, key in zip(axes, ("q", "r_perp", "E_rel")):
            y = _arr(c, key)
            if y is not None:
                ax.plot(i, y, color=_COLORS.get(lab), label=lab)
    axes[0].axhline(1.0, color="k", ls=":", lw=1)
    titles = ("q = <gΔ, v>/(g|v|²)", "r_perp = |gΔ - g q v|/(g|v|)", "E_rel = |gΔ - g v|/(g|v|)")
    for ax, t in zip(axes, titles):
        ax.set(xlabel="sampling step", title=t)
    _finish(axes)
    return save_png(fig, path)


def eps_decomposition_figure(res: Mapping[str, Any], path: Path) -> Path:
    """The guided noise prediction fitted as eps ≈ w0 r + wt x_k, each weight over its theory
    (-sqrt(ab)/sqrt(1-ab) and 1/sqrt(1-ab)): 1 for an exact x0-prediction, g for a memorizer's guided one."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab, c in res["mean_curves"].items():
        i = np.arange(len(c["k"]))
        for ax, key in zip(axes, ("eps_w0", "eps_wt")):
            y, t = _arr(c, key), _arr(c, key + "_theory")
            if y is not None and t is not None:
                ax.plot(i, y / t, color=_COLORS.get(lab), label=lab)
    for ax, what in zip(axes, ("w0 / (-sqrt(ᾱ)/sqrt(1-ᾱ))", "wt / (1/sqrt(1-ᾱ))")):
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set(xlabel="sampling step", ylabel="fitted / theory", title=f"Guided eps ≈ w0 r + wt x_k: {what}")
    _finish(axes)
    return save_png(fig, path)


def roc_figure(res: Mapping[str, Any], path: Path) -> Path:
    """ROC curves of the main detectors, memorized vs normal prompts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, row in res["detectors"].items():
        if name in _ROC_SHOWN and row.get("roc"):
            ax.plot(row["roc"]["fpr"], row["roc"]["tpr"], drawstyle="steps-post", label=f"{name} ({fmt(row['auroc'])})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Detectors: memorized vs normal prompts")
    _finish(ax, 7)
    return save_png(fig, path)


def deviation_severity_figure(res: Mapping[str, Any], prompts: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """D1 (training image), D1 over the early steps, D1 against the final sample and the
    overestimation coefficient against severity, one dot per prompt."""
    plt = pyplot()
    names = ("D1", "D1_early", "D1_final", "overestimation_a")
    fig, axes = plt.subplots(1, len(names), figsize=(18, 4))
    sev = res["severity_metric"]
    for ax, name in zip(axes, names):
        for lab in _COLORS:
            ps = [p for p in prompts if (p["label"] or "unlabelled") == lab]
            pts = [(p.get(name), p.get("severity")) for p in ps if p.get(name) is not None]
            pts = [(a, b) for a, b in pts if b is not None]
            if pts:
                ax.scatter(*zip(*pts), s=16, color=_COLORS[lab], label=lab)
        cor = res["correlations"].get(name, {})
        ax.set(
            xlabel=name,
            ylabel=f"severity ({sev['name']})",
            title=f"Pearson {fmt(cor.get('pearson'))}, Spearman {fmt(cor.get('spearman'))}",
        )
        ax.axhline(sev["threshold"], color="k", ls=":", lw=1)
    _finish(axes, 7)
    return save_png(fig, path)


def mitigation_figure(res: Mapping[str, Any], path: Path) -> Path | None:
    """Mean severity and fidelity per guidance schedule, per group when the prompts have groups
    (else per label)."""
    mit = res.get("mitigation_by_group") or res.get("mitigation") or {}
    if not mit:
        return None
    plt = pyplot()
    names = list(dict.fromkeys(g for rows in mit.values() for g in rows if g != "all"))
    fig, axes = plt.subplots(1, 2, figsize=(max(11, 1.4 * len(names) + 4), 4))
    w = 0.8 / max(1, len(mit))
    for j, (sched, rows) in enumerate(mit.items()):
        xs = np.arange(len(names)) + j * w
        sev = [rows.get(g, {}).get("severity", np.nan) for g in names]
        fid = [rows.get(g, {}).get("fidelity") for g in names]
        axes[0].bar(xs, sev, w, label=sched)
        axes[1].bar(xs, [np.nan if f is None else f for f in fid], w, label=sched)
    for ax, yl in zip(axes, ("mean severity", "fidelity (classifier reads a digit of the caption)")):
        ax.set_xticks(np.arange(len(names)) + w * (len(mit) - 1) / 2, names, rotation=20)
        ax.set(ylabel=yl)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(mit))
    axes[0].set_title("Severity by guidance schedule")
    axes[1].set_title("Prompt fidelity by guidance schedule")
    return save_png(fig, path)


def audit_figures(res: Mapping[str, Any], prompts: Sequence[Mapping[str, Any]], folder: str | Path) -> dict[str, Path]:
    """Draw the audit's figures into ``folder``; returns caption -> PNG path.

    ``prompts`` are the per-prompt results with their per-step ``curves`` (as in ``prompts/<key>.json``).
    """
    folder = Path(folder)
    if not res["mean_curves"]:
        return {}
    out: dict[str, Path] = {
        "decomposition": decomposition_figure(res, folder / "decomposition.png"),
        "loss": loss_figure(res, folder / "loss.png"),
        "seed_distance": seed_distance_figure(res, folder / "seed_distance.png"),
        "cosines": cosine_figure(res, folder / "cosines.png"),
        "overestimation": overestimation_figure(res, folder / "overestimation.png"),
        "eps_decomposition": eps_decomposition_figure(res, folder / "eps_decomposition.png"),
        "roc": roc_figure(res, folder / "roc.png"),
        "deviation_severity": deviation_severity_figure(res, prompts, folder / "deviation_severity.png"),
    }
    mit = mitigation_figure(res, folder / "mitigation.png")
    if mit is not None:
        out["mitigation"] = mit
    return out


# ----------------------------------------------------------------------------------------- tables
_SUMMARY_COLUMNS = (
    ("a (overest.)", "overestimation_a"),
    ("q", "q"),
    ("E_rel", "E_rel"),
    ("seed collapse", "seed_collapse"),
    ("convergence", "convergence"),
    ("D1", "D1"),
    ("D2", "D2"),
    ("D1 early", "D1_early"),
    ("D1 final", "D1_final"),
    ("D2 final", "D2_final"),
    ("Wen |Δeps|", "wen_mean"),
    ("severity", "severity"),
    ("copy rate", "copy_rate"),
)


def _summary_table(rows_in: Mapping[str, Mapping[str, Any]], first: str) -> list[list[str]]:
    rows = [[first, "prompts", *(c for c, _ in _SUMMARY_COLUMNS)]]
    for lab, r in rows_in.items():
        rows.append([str(lab), str(r["prompts"]), *(fmt(r.get(k)) for _, k in _SUMMARY_COLUMNS)])
    return rows


def summary_rows(res: Mapping[str, Any]) -> list[list[str]]:
    return _summary_table(res["summary"], "label")


def group_summary_rows(res: Mapping[str, Any]) -> list[list[str]]:
    return _summary_table(res.get("summary_by_group") or {}, "group")


def _ci(c: Sequence[Any] | None) -> str:
    return f"[{fmt(c[0])}, {fmt(c[1])}]" if c and c[0] is not None else "—"


def detector_rows(res: Mapping[str, Any], key: str = "detectors") -> list[list[str]]:
    rows = [["detector", "AUROC", "95% CI", "TPR@1%FPR", "pos/neg", "cost (evals/prompt)", "needs x"]]
    for name, r in (res.get(key) or {}).items():
        rows.append(
            [
                name,
                fmt(r["auroc"]),
                _ci(r.get("auroc_ci")),
                fmt(r["tpr_at_1fpr"]),
                f"{r['n_pos']}/{r['n_neg']}",
                fmt(r.get("cost")),
                "yes" if r["needs_image"] else "no",
            ]
        )
    return rows


def correlation_rows(res: Mapping[str, Any], names: Sequence[str] | None = None) -> list[list[str]]:
    rows = [["statistic", "Pearson r", "95% CI", "Spearman", "95% CI", "n"]]
    for name, r in res["correlations"].items():
        if names is None or name in names:
            rows.append(
                [name, fmt(r["pearson"]), _ci(r["pearson_ci"]), fmt(r["spearman"]), _ci(r["spearman_ci"]), str(r["n"])]
            )
    return rows


def within_label_rows(res: Mapping[str, Any], names: Sequence[str] | None = WITHIN_SHOWN) -> list[list[str]]:
    """Correlations with severity among the prompts of one label (the ranking a triage needs)."""
    rows = [["label", "statistic", "Pearson r", "95% CI", "Spearman", "95% CI", "n"]]
    for lab, by in (res.get("correlations_within_label") or {}).items():
        for name, r in by.items():
            if names is None or name in names:
                rows.append(
                    [
                        str(lab),
                        name,
                        fmt(r["pearson"]),
                        _ci(r["pearson_ci"]),
                        fmt(r["spearman"]),
                        _ci(r["spearman_ci"]),
                        str(r["n"]),
                    ]
                )
    return rows


def mitigation_rows(res: Mapping[str, Any], key: str = "mitigation") -> list[list[str]]:
    rows = [["schedule", "label" if key == "mitigation" else "group", "severity", "copy rate", "fidelity"]]
    for sched, by in (res.get(key) or {}).items():
        for lab, r in by.items():
            rows.append([sched, lab, fmt(r["severity"]), fmt(r["copy_rate"]), fmt(r["fidelity"])])
    return rows


def mitigation_outcome_rows(res: Mapping[str, Any]) -> list[list[str]]:
    """Per group and schedule: severity drop below constant guidance, mitigated or not, fidelity cost."""
    out = res.get("mitigation_outcome") or {}
    need = out.get("min_severity_drop")
    rows = [["group", "schedule", "severity (constant)", "severity", "drop", f"drop >= {fmt(need)}", "fidelity cost"]]
    for gr, by in (out.get("groups") or {}).items():
        for sched, r in by.items():
            rows.append(
                [
                    gr,
                    sched,
                    fmt(r["severity_constant"]),
                    fmt(r["severity"]),
                    fmt(r["drop"]),
                    "yes" if r["mitigated"] else "no",
                    fmt(r["fidelity_cost"]),
                ]
            )
    return rows


def _section(title: str, rows: list[list[str]]) -> str:
    return f"<h2>{html.escape(title)}</h2>{html_table(rows)}\n" if len(rows) > 1 else ""


def write_audit_html(
    res: Mapping[str, Any], figures: Mapping[str, Path], path: str | Path, title: str = "diffmem audit report"
) -> Path:
    """Write the self-contained HTML report (tables, then the figures embedded as base64) to ``path``."""
    from ..io import atomic_write_bytes

    cfg = res["config"]
    sev = res["severity_metric"]
    dec = res.get("decomposition") or {}
    diff = (res.get("reference_curves") or {}).get("max_difference") or {}
    intro = (
        f"Model: {html.escape(str(res['model'].get('kind')))}; {len(res['prompts'])} prompts, "
        f"{cfg['seeds']} seeds each, DDIM {cfg['steps']} steps, guidance g = {cfg['guidance']}; "
        f"severity = {html.escape(sev['name'])} (copy if ≥ {sev['threshold']}). "
        "Detectors: memorized (positive) vs normal (negative) prompts, partial prompts excluded "
        "(further tables: partial counted as positive, partial vs normal, memorized vs partial). "
        f"D1/D2 are measured from the {html.escape(str(cfg.get('reference_curves', 'sqrt_ab')))} reference curves "
        "(sqrt_ab: the forward process w0 = sqrt(ᾱ_k), wT = sqrt(1-ᾱ_k); ddim_exact: the unrolled DDIM weights; "
        f"they differ by up to {fmt(diff.get('w0'))} in w0 here). D1/D2 are made against the training image "
        "(D1_training) and against each seed's own final sample (D1_final, needs no image); "
        f"'_early' statistics use the first {dec.get('early_steps', '?')} steps. "
        f"{html.escape(str(dec.get('note', '')))}. See docs/audit.md."
    )
    body = (
        f"<p>{intro}</p>\n"
        + _section("Per label", summary_rows(res))
        + _section("Per group", group_summary_rows(res))
        + _section("Detectors: memorized vs normal", detector_rows(res))
        + _section("Detectors: memorized and partial vs normal", detector_rows(res, "detectors_with_partial"))
        + _section("Detectors: partial vs normal", detector_rows(res, "detectors_partial_vs_normal"))
        + _section("Detectors: memorized vs partial", detector_rows(res, "detectors_memorized_vs_partial"))
        + _section("Correlation with severity (across prompts)", correlation_rows(res))
        + _section("Correlation with severity within each label", within_label_rows(res, None))
        + (
            _section("Mitigation per label", mitigation_rows(res))
            + _section("Mitigation per group", mitigation_rows(res, "mitigation_by_group"))
            + _section("Mitigation outcome (criterion fixed before measuring)", mitigation_outcome_rows(res))
            if res.get("mitigation")
            else "<h2>Mitigation</h2><p>not run</p>\n"
        )
        + f"<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg, indent=1))}</pre>\n"
        + "<h2>Figures</h2>"
    )
    atomic_write_bytes(path, html_page(title, body, dict(figures)).encode())
    return Path(path)
