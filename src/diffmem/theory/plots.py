"""Figures for the random-features theory (matplotlib, Agg backend). Each function takes the JSON-able result
dict written by :mod:`diffmem.theory.run` and a path, so figures can be redrawn from saved results.

The figures use the shared helpers of :mod:`diffmem.figures` with the theory's own compact style (small
fonts, no top/right spines) at 150 dpi; the style is applied only while a figure is drawn and saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import pyplot, save_png

__all__ = ["plot_dynamics", "plot_phase", "plot_spectrum"]

DPI = 150
_STYLE = {
    "font.size": 9,
    "axes.labelsize": 10,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "figure.dpi": DPI,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def _styled() -> Iterator[Any]:
    """``matplotlib.pyplot`` with the theory's rcParams in force (restored on exit)."""
    plt = pyplot()
    with plt.rc_context(_STYLE):
        yield plt


def _save(fig: Any, path: str | Path) -> str:
    return str(save_png(fig, path, dpi=DPI))


def plot_spectrum(result: dict, path: str | Path) -> str:
    """lambda rho(lambda) of the theory over the simulated eigenvalue histogram, against log lambda."""
    with _styled() as plt:
        return _draw_spectrum(plt, result, path)


def _draw_spectrum(plt: Any, result: dict, path: str | Path) -> str:
    lam = np.asarray(result["lambda"])
    rho = np.asarray(result["density"])
    cfg = result["config"]
    c = result["constants"]
    sim = result.get("simulation")
    asym = result.get("asymptotic_density")
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    # plot lambda * rho(lambda) against log lambda: the mass per log-interval, so both bulks are visible
    if sim is not None:
        e = np.asarray(sim["histogram"]["edges"])
        h = np.asarray(sim["histogram"]["density"])
        mid = np.sqrt(e[1:] * e[:-1]) if e[0] > 0 else 0.5 * (e[1:] + e[:-1])
        ax.bar(
            e[:-1],
            h * mid,
            width=np.diff(e),
            align="edge",
            color="0.8",
            edgecolor="0.6",
            lw=0.3,
            label=f"simulation (p={sim['p']}, {sim.get('matrix', 'gaussian_equivalent').replace('_', '-')} U)",
        )
    ax.plot(lam, lam * rho, color="C0", lw=1.4, label="theory (Thm 3.1)")
    if asym is not None:
        ax.plot(lam, lam * np.asarray(asym), color="C3", lw=1.0, ls="--", label="asymptotic (Thm 3.2)")
    ax.axvline(
        c["s2"], color="C2", lw=1.0, ls=":", label=f"delta peak at $s_t^2$ (weight {result['delta_peak_weight']:.3f})"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = float(np.max(lam * rho)) if rho.size else 1.0
    ax.set_ylim(top * 1e-4, top * 40)
    ax.set_xlabel(r"eigenvalue $\lambda$ of $U$")
    ax.set_ylabel(r"$\lambda\,\rho(\lambda)$")
    ax.set_title(
        rf"spectrum of $U$: $\psi_p$={cfg['psi_p']:g}, $\psi_n$={cfg['psi_n']:g}, $t$={cfg['t']:g}, {cfg['activation']}"
    )
    ax.legend(frameon=False, loc="upper center", ncol=2)
    return _save(fig, path)


def plot_dynamics(result: dict, path: str | Path) -> str:
    """Train/test losses and the score error against tau / tau_mem, one colour per psi_n."""
    with _styled() as plt:
        return _draw_dynamics(plt, result, path)


def _draw_dynamics(plt: Any, result: dict, path: str | Path) -> str:
    runs = result["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.3))
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(runs):
        col = cmap(i / max(1, len(runs) - 1) * 0.9)
        cur = run["theory"]
        tau_mem = run["predicted"]["tau_mem"]
        x = np.asarray(cur["tau"]) / tau_mem
        axes[0].plot(x, cur["L_train"], color=col, lw=1.4, label=rf"$\psi_n$={run['psi_n']:g} train")
        axes[0].plot(x, cur["L_test"], color=col, lw=1.4, ls="--")
        axes[1].plot(x, cur["E_score"], color=col, lw=1.4, label=rf"$\psi_n$={run['psi_n']:g}")
        if run.get("gd"):
            g = run["gd"]
            xg = np.asarray(g["tau"]) / tau_mem
            axes[0].plot(xg, g["L_train"], "o", ms=2.5, color=col, mfc="none", mew=0.7)
            axes[0].plot(xg, g["L_test"], "s", ms=2.5, color=col, mfc="none", mew=0.7)
            axes[1].plot(xg, g["E_score"], "o", ms=2.5, color=col, mfc="none", mew=0.7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(r"training time $\tau/\tau_{\rm mem}$")
        ax.axvline(1.0, color="0.5", lw=0.6, ls=":")
    axes[0].set_ylabel(r"loss at $t$ (solid: train, dashed: test)")
    axes[1].set_ylabel(r"score error $E_{\rm score}$")
    axes[1].set_yscale("log")
    if any(r.get("gd") for r in runs):
        axes[0].plot([], [], "o", color="0.3", mfc="none", ms=3, label="gradient descent")
    axes[0].legend(frameon=False, ncol=1)
    cfg = result["config"]
    fig.suptitle(
        rf"random features: $\psi_p$={cfg['psi_p']:g}, $t$={cfg['t']:g}, $d$={cfg['d']}, {cfg['activation']}",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_phase(result: dict, path: str | Path) -> str:
    """L_gen over (psi_n, psi_p), one panel per training time, with the boundary and the line n = p."""
    with _styled() as plt:
        return _draw_phase(plt, result, path)


def _draw_phase(plt: Any, result: dict, path: str | Path) -> str:
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import LogLocator, NullFormatter

    pn = np.asarray(result["psi_n"])
    pp = np.asarray(result["psi_p"])
    Lg = np.asarray(result["L_gen"], dtype=float)
    taus = result["tau"]
    bnd = np.asarray(result["boundary_psi_n"], dtype=float)
    T = len(taus)
    fig, axes = plt.subplots(1, T, figsize=(2.6 * T + 0.8, 2.8), squeeze=False, sharey=True)
    vmin = max(np.nanmin(np.abs(Lg)), 1e-4)
    vmax = np.nanmax(np.abs(Lg))
    for i, ax in enumerate(axes[0]):
        im = ax.pcolormesh(
            pp, pn, np.clip(Lg[i], vmin, None), norm=LogNorm(vmin=vmin, vmax=vmax), shading="nearest", cmap="magma"
        )
        ax.plot(pp, pp, color="w", lw=1.0, ls="--", label=r"$n = p$")
        ok = np.isfinite(bnd[i])
        ax.plot(
            pp[ok], bnd[i][ok], color="c", lw=1.4, marker="o", ms=2.5, label=rf"$L_{{\rm gen}}$={result['threshold']:g}"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10.0))
            axis.set_minor_formatter(NullFormatter())
        ax.set_ylim(pn.min(), pn.max())
        if pp.max() > pp.min():
            ax.set_xlim(pp.min(), pp.max())
        tt = taus[i]
        ax.set_title(r"$\tau=\infty$" if tt == "inf" else rf"$\tau$={float(tt):.3g}")
        ax.set_xlabel(r"$\psi_p = p/d$")
        if i == 0:
            ax.set_ylabel(r"$\psi_n = n/d$")
            ax.legend(frameon=False, fontsize=7, loc="lower right", labelcolor="w")
    fig.colorbar(im, ax=axes[0].tolist(), label=r"$L_{\rm gen} = L_{\rm test} - L_{\rm train}$", shrink=0.9)
    return _save(fig, path)
