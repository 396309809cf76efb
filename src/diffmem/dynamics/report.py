"""Figures (PNG) and a self-contained HTML report for a dynamics study."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import colors, fmt, html_page, html_table, pyplot, sample_grid, save_png

__all__ = ["dynamics_figures", "sample_grid", "summary_table", "write_html"]


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def dynamics_figures(results: dict, folder: str | Path) -> dict[str, Path]:
    """Quality and f_mem against training time, the tau/n collapse, losses, and the timescales."""
    folder = Path(folder)
    runs = _Runs(results["runs"])
    return {
        "quality_fmem": _quality_fmem_figure(runs, folder / "quality_fmem.png"),
        "collapse": _collapse_figure(runs, results.get("collapse") or {}, folder / "collapse.png"),
        "losses": _losses_figure(runs, folder / "losses.png"),
        "timescales": _timescales_figure(runs, results, folder / "timescales.png"),
    }


class _Runs:
    """The runs of a study with what every figure draws them with: a colour per size, a line style per
    subset and one legend entry per size (marked when a run of that size is short of tau_mem)."""

    styles = ("-", "--", ":", "-.")

    def __init__(self, runs: list[dict]) -> None:
        self.runs = runs
        sizes = sorted({r["n"] for r in runs})
        by_n = dict(zip(sizes, colors(len(sizes))))
        self.cols = [by_n[r["n"]] for r in runs]
        self.missed = {r["n"] for r in runs if not r["tau_mem"]}

    def __iter__(self) -> Iterator[tuple[dict, Any]]:
        return iter(zip(self.runs, self.cols))

    def style(self, r: dict) -> str:
        return self.styles[r.get("subset", 0) % len(self.styles)]

    def label(self, r: dict) -> str | None:
        if r.get("subset", 0) != 0:
            return None
        return f"n={r['n']}" + (" (τ_mem not reached)" if r["n"] in self.missed else "")


def _steps(r: dict) -> np.ndarray:
    return np.array([p["step"] for p in r["curve"]], dtype=float)


def _finish(axes: Any, fig: Any, path: Path) -> Path:
    for a in axes:
        a.grid(alpha=0.3, which="both")
        _legend(a)
    return save_png(fig, path)


def _quality_fmem_figure(runs: _Runs, path: Path) -> Path:
    """Quality (dotted: tau_gen) and f_mem with its bootstrap band (dotted: tau_mem) against the step."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for r, c in runs:
        s, ls = _steps(r), runs.style(r)
        axes[0].plot(s, [p["quality"] for p in r["curve"]], ls, marker="o", ms=3, color=c, label=runs.label(r))
        lo = [p["f_mem_ci"][0] for p in r["curve"]]
        hi = [p["f_mem_ci"][1] for p in r["curve"]]
        axes[1].plot(s, [p["f_mem"] for p in r["curve"]], ls, marker="o", ms=3, color=c, label=runs.label(r))
        axes[1].fill_between(s, lo, hi, color=c, alpha=0.2, lw=0)
        if r["tau_gen"]:
            axes[0].axvline(r["tau_gen"], color=c, ls=":", lw=1)
        if r["tau_mem"]:
            axes[1].axvline(r["tau_mem"], color=c, ls=":", lw=1)
        elif len(s):  # the run ended before memorizing: a cross at its last checkpoint
            axes[1].plot(s[-1], r["curve"][-1]["f_mem"], "x", ms=10, mew=2, color=c)
    rs = runs.runs
    positive = all(p["quality"] > 0 for r in rs for p in r["curve"])
    qname = rs[0]["curve"][0].get("quality_metric", "Fréchet distance") if rs and rs[0]["curve"] else "quality"
    axes[0].set(
        xscale="log",
        yscale="log" if positive else "symlog",  # KID is unbiased and may be slightly negative
        xlabel="training step τ",
        ylabel=qname,
        title="Quality (dotted: τ_gen)",
    )
    axes[1].set(
        xscale="log",
        xlabel="training step τ",
        ylabel="f_mem (95% bootstrap band)",
        title="Memorization fraction (dotted: τ_mem; ×: run ended first)",
    )
    return _finish(axes, fig, path)


def _collapse_figure(runs: _Runs, col: dict, path: Path) -> Path:
    """f_mem against tau/n, and against tau/n^alpha at the fitted collapse exponent."""
    alpha = col.get("alpha")
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for r, c in runs:
        s, ls = _steps(r), runs.style(r)
        f = np.array([p["f_mem"] for p in r["curve"]], dtype=float)
        axes[0].plot(s / r["n"], f, ls, marker="o", ms=3, color=c, label=runs.label(r))
        if alpha is not None:
            axes[1].plot(s / r["n"] ** alpha, f, ls, marker="o", ms=3, color=c, label=runs.label(r))
    axes[0].set(xscale="log", xlabel="τ / n", ylabel="f_mem", title="f_mem against τ/n (no normalisation)")
    if alpha is not None:
        ci = col.get("alpha_ci") or [None, None]
        used = col.get("levels_used") or 0
        for level in (col.get("levels") or [])[:used] if used else []:
            axes[1].axhline(level, color="0.6", lw=0.6, ls=":")
        axes[1].set(
            xscale="log",
            xlabel=f"τ / n^α, α = {fmt(alpha)}",
            ylabel="f_mem",
            title=f"Best collapse: α = {fmt(alpha)}, 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]",
        )
    else:
        axes[1].set_title("no f_mem level reached by every run: no collapse exponent")
    return _finish(axes, fig, path)


def _losses_figure(runs: _Runs, path: Path) -> Path:
    """Training and test loss against the step, and the generalization gap against tau/n."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for r, c in runs:
        s = _steps(r)
        axes[0].plot(s, [p["loss_train"] for p in r["curve"]], "--", color=c)
        axes[0].plot(s, [p["loss_test"] for p in r["curve"]], "-", color=c, label=runs.label(r))
        axes[1].plot(
            s / r["n"],
            np.array([p["loss_test"] for p in r["curve"]]) - np.array([p["loss_train"] for p in r["curve"]]),
            "-",
            color=c,
            label=runs.label(r),
        )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="training step τ",
        ylabel="loss at t = 0.01",
        title="Train (dashed) and test (solid) loss",
    )
    axes[1].set(xscale="log", xlabel="τ / n", ylabel="L_test − L_train", title="Generalization gap against τ/n")
    return _finish(axes, fig, path)


def _timescales_figure(runs: _Runs, results: dict, path: Path) -> Path:
    """tau_mem, tau_gen, argmin L_test and tau_mem - tau_gen against n, with their power-law fits."""
    fig, ax = pyplot().subplots(figsize=(6, 4.5))
    rs = runs.runs
    ns = np.array([r["n"] for r in rs], dtype=float)
    xx = np.geomspace(ns.min(), ns.max(), 20)
    for key, fit_key, mk, lab in (
        ("tau_mem", "fit", "o", "τ_mem"),
        ("tau_gen", "tau_gen_fit", "s", "τ_gen"),
        ("tau_test_min", None, "^", "argmin L_test"),
        ("excess", "excess_fit", "D", "τ_mem − τ_gen"),
    ):
        if key == "excess":
            pts = [(r["n"], r["tau_mem"] - r["tau_gen"]) for r in rs if _excess_ok(r)]
        else:
            pts = [(r["n"], r[key]) for r in rs if r.get(key)]
        if not pts:
            continue
        (line,) = ax.plot(*zip(*pts), mk, ms=6, alpha=0.8, label=lab)
        fit = results.get(fit_key) or {} if fit_key else {}
        if fit.get("exponent") is not None:
            ci = fit.get("exponent_ci") or [None, None]
            ax.plot(
                xx,
                fit["prefactor"] * xx ** fit["exponent"],
                "--",
                color=line.get_color(),
                lw=1,
                label=f"{lab} ∝ n^{fmt(fit['exponent'])} [{fmt(ci[0])}, {fmt(ci[1])}]",
            )
    ax.set(
        xscale="log", yscale="log", xlabel="training set size n", ylabel="training step", title="Timescales (95% CI)"
    )
    return _finish([ax], fig, path)


def _excess_ok(run: dict) -> bool:
    return bool(run.get("tau_mem") and run.get("tau_gen") and run["tau_mem"] > run["tau_gen"])


def summary_table(results: dict) -> list[list[str]]:
    """One row per run: n, subset, steps trained, tau_gen, tau_mem, tau_mem/n, argmin L_test, f_mem at the end."""
    rows = [["n", "subset", "steps", "tau_gen", "tau_mem", "tau_mem/n", "argmin L_test", "f_mem final"]]
    for r in results["runs"]:
        rows.append(
            [
                str(r["n"]),
                str(r.get("subset", 0)),
                str(r["steps"]) if r.get("steps") else "",
                fmt(r["tau_gen"]) if r["tau_gen"] else "not reached",
                fmt(r["tau_mem"]) if r["tau_mem"] else "not reached",
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
    gfit = results.get("tau_gen_fit", {})
    col = results.get("collapse") or {}

    def ci(d: dict, key: str) -> str:
        lo, hi = d.get(key) or [None, None]
        return f"95% CI [{fmt(lo)}, {fmt(hi)}]"

    lines = [
        f"τ_mem ∝ n<sup>{fmt(fit.get('exponent'))}</sup>, {ci(fit, 'exponent_ci')}, R² = {fmt(fit.get('r2'))}; "
        f"geometric mean τ_mem/n = {fmt(fit.get('tau_mem_over_n'))} ({fit.get('points', 0)} runs reached τ_mem)",
        f"τ_gen ∝ n<sup>{fmt(gfit.get('exponent'))}</sup>, {ci(gfit, 'exponent_ci')}; "
        f"max/min across runs = {fmt(results.get('tau_gen_spread'))}",
        f"collapse: f_mem curves coincide against τ/n<sup>α</sup> at α = {fmt(col.get('alpha'))}, "
        f"{ci(col, 'alpha_ci')} ({col.get('levels_used', 0)} shared f_mem levels)",
    ]
    efit = results.get("excess_fit") or {}
    if efit.get("exponent") is not None:
        lines.insert(
            1,
            f"τ_mem − τ_gen ∝ n<sup>{fmt(efit.get('exponent'))}</sup>, {ci(efit, 'exponent_ci')}, "
            f"R² = {fmt(efit.get('r2'))} (time spent memorizing after generation is learned)",
        )
    cex = col.get("excess") or {}
    if cex.get("alpha") is not None:
        lines.append(f"collapse against (τ − τ_gen)/n<sup>α</sup>: α = {fmt(cex['alpha'])}, {ci(cex, 'alpha_ci')}")
    for key, b in (results.get("by_k") or {}).items():
        lines.append(f"k = {key}: τ_mem ∝ n<sup>{fmt(b.get('exponent'))}</sup>, {ci(b, 'exponent_ci')}")
    for r in results.get("runs", []):
        if not (r.get("tau_mem") and r.get("tau_gen")) and r.get("status"):
            lines.append(f"<b>n = {r['n']}, subset {r.get('subset', 0)}</b>: {html.escape(r['status'])}")
    fit_line = "<br>".join(lines)
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
