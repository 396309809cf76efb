"""Figures (PNG) and a self-contained HTML report for a dynamics study."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..figures import colors, fmt, html_page, html_table, pyplot, save_png

__all__ = ["dynamics_figures", "sample_grid", "summary_table", "write_html"]


def dynamics_figures(results: dict, folder: str | Path) -> dict[str, Path]:
    """Quality and f_mem against training time, the tau/n collapse, losses, and the timescales."""
    plt = pyplot()
    folder = Path(folder)
    runs = results["runs"]
    cols = colors(len(runs))
    out: dict[str, Path] = {}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r, c in zip(runs, cols):
        s = np.array([p["step"] for p in r["curve"]], dtype=float)
        axes[0].plot(s, [p["quality"] for p in r["curve"]], "-o", ms=3, color=c, label=f"n={r['n']}")
        lo = [p["f_mem_ci"][0] for p in r["curve"]]
        hi = [p["f_mem_ci"][1] for p in r["curve"]]
        axes[1].plot(s, [p["f_mem"] for p in r["curve"]], "-o", ms=3, color=c, label=f"n={r['n']}")
        axes[1].fill_between(s, lo, hi, color=c, alpha=0.2, lw=0)
        if r["tau_gen"]:
            axes[0].axvline(r["tau_gen"], color=c, ls=":", lw=1)
        if r["tau_mem"]:
            axes[1].axvline(r["tau_mem"], color=c, ls=":", lw=1)
    qname = runs[0]["curve"][0].get("quality_metric", "Fréchet distance") if runs and runs[0]["curve"] else "quality"
    axes[0].set(xscale="log", yscale="log", xlabel="training step τ", ylabel=qname, title="Quality (dotted: τ_gen)")
    axes[1].set(
        xscale="log",
        xlabel="training step τ",
        ylabel="f_mem (95% bootstrap band)",
        title="Memorization fraction (dotted: τ_mem)",
    )
    for a in axes:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    out["quality_fmem"] = save_png(fig, folder / "quality_fmem.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r, c in zip(runs, cols):
        s = np.array([p["step"] for p in r["curve"]], dtype=float)
        f = np.array([p["f_mem"] for p in r["curve"]], dtype=float)
        g = f / f[-1] if f[-1] > 0 else np.full_like(f, np.nan)
        axes[0].plot(s, g, "-o", ms=3, color=c, label=f"n={r['n']}")
        axes[1].plot(s / r["n"], g, "-o", ms=3, color=c, label=f"n={r['n']}")
    col = results.get("collapse", {})
    axes[0].set(
        xscale="log",
        xlabel="training step τ",
        ylabel="f_mem(τ) / f_mem(τ_max)",
        title=f"Against τ (spread {fmt(col.get('spread_vs_tau'))})",
    )
    axes[1].set(
        xscale="log",
        xlabel="τ / n",
        ylabel="f_mem(τ) / f_mem(τ_max)",
        title=f"Against τ/n (spread {fmt(col.get('spread_vs_tau_over_n'))})",
    )
    for a in axes:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    out["collapse"] = save_png(fig, folder / "collapse.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r, c in zip(runs, cols):
        s = np.array([p["step"] for p in r["curve"]], dtype=float)
        axes[0].plot(s, [p["loss_train"] for p in r["curve"]], "--", color=c)
        axes[0].plot(s, [p["loss_test"] for p in r["curve"]], "-", color=c, label=f"n={r['n']}")
        axes[1].plot(
            s / r["n"],
            np.array([p["loss_test"] for p in r["curve"]]) - np.array([p["loss_train"] for p in r["curve"]]),
            "-",
            color=c,
            label=f"n={r['n']}",
        )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="training step τ",
        ylabel="loss at t = 0.01",
        title="Train (dashed) and test (solid) loss",
    )
    axes[1].set(xscale="log", xlabel="τ / n", ylabel="L_test − L_train", title="Generalization gap against τ/n")
    for a in axes:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    out["losses"] = save_png(fig, folder / "losses.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ns = np.array([r["n"] for r in runs], dtype=float)
    for key, mk, lab in (("tau_mem", "o", "τ_mem"), ("tau_gen", "s", "τ_gen"), ("tau_test_min", "^", "argmin L_test")):
        pts = [(r["n"], r[key]) for r in runs if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), mk, ms=7, label=lab)
    fit = results.get("fit", {})
    if fit.get("exponent") is not None:
        xx = np.geomspace(ns.min(), ns.max(), 20)
        ax.plot(
            xx,
            fit["prefactor"] * xx ** fit["exponent"],
            "k--",
            lw=1,
            label=f"fit: τ_mem ∝ n^{fit['exponent']:.2f} (R²={fit['r2']:.3f})",
        )
    ax.set(xscale="log", yscale="log", xlabel="training set size n", ylabel="training step", title="Timescales")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    out["timescales"] = save_png(fig, folder / "timescales.png")
    return out


def sample_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """One pair of rows per entry: generated samples (top) above their nearest training images (bottom).

    ``rows``: (label, samples (k, C, H, W) in [0,1], nearest training images (k, C, H, W))."""
    plt = pyplot()
    k = max(len(s) for _, s, _ in rows)
    fig, axes = plt.subplots(2 * len(rows), k, figsize=(k * 0.8, len(rows) * 1.75), squeeze=False)
    for i, (label, samp, near) in enumerate(rows):
        for j in range(k):
            for r, img in ((2 * i, samp), (2 * i + 1, near)):
                ax = axes[r, j]
                ax.axis("off")
                if j < len(img):
                    im = np.clip(np.asarray(img[j]), 0, 1)
                    ax.imshow(im[0] if im.shape[0] == 1 else np.moveaxis(im, 0, -1), cmap="gray", vmin=0, vmax=1)
        axes[2 * i, 0].text(
            -0.6, 0.5, f"{label}\nsample", transform=axes[2 * i, 0].transAxes, ha="right", va="center", fontsize=7
        )
        axes[2 * i + 1, 0].text(
            -0.6, 0.5, "nearest\ntrain", transform=axes[2 * i + 1, 0].transAxes, ha="right", va="center", fontsize=7
        )
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, Path(path))


def summary_table(results: dict) -> list[list[str]]:
    rows = [["n", "tau_gen", "tau_mem", "tau_mem/n", "argmin L_test", "f_mem final"]]
    for r in results["runs"]:
        rows.append(
            [
                str(r["n"]),
                fmt(r["tau_gen"]),
                fmt(r["tau_mem"]),
                fmt(r["tau_mem"] / r["n"] if r["tau_mem"] else None),
                fmt(r.get("tau_test_min")),
                fmt(r.get("f_mem_final")),
            ]
        )
    return rows


def write_html(
    results: dict,
    figures: dict[str, Path],
    path: str | Path,
    title: str = "diffmem dynamics report",
    notes: str | None = None,
) -> Path:
    """A single self-contained HTML file (figures embedded as base64)."""
    from ..io import atomic_write_bytes

    fit = results.get("fit", {})
    ci = fit.get("exponent_ci") or [None, None]
    fit_line = (
        f"τ_mem ∝ n<sup>{fmt(fit.get('exponent'))}</sup>, 95% CI [{fmt(ci[0])}, {fmt(ci[1])}], "
        f"R² = {fmt(fit.get('r2'))}; geometric mean τ_mem/n = {fmt(fit.get('tau_mem_over_n'))}; "
        f"τ_gen max/min across n = {fmt(results.get('tau_gen_spread'))}; "
        f"collapse spread ratio (τ/n vs τ) = {fmt((results.get('collapse') or {}).get('ratio'))}"
    )
    rules = html.escape(json.dumps(results.get("rules", {})))
    cfg = html.escape(json.dumps(results.get("config", {}), indent=1))
    body = (
        f"<p>{fit_line}</p>{html_table(summary_table(results))}"
        + (f"<p>{html.escape(notes)}</p>" if notes else "")
        + f"<p>Rules for the times: {rules} (see docs/dynamics.md).</p>"
        + f"<details><summary>Configuration</summary><pre>{cfg}</pre></details>"
    )
    atomic_write_bytes(path, html_page(title, body, figures).encode())
    return Path(path)
