"""Figure and HTML helpers shared by the reports of every part (dynamics, theory, audit, measure).

Figures are drawn with matplotlib's non-interactive Agg backend and written atomically as PNG; the
HTML reports are single self-contained files with the figures embedded as base64.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["colors", "fmt", "html_page", "html_table", "img_tag", "pyplot", "sample_grid", "save_png"]

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#666;font-size:90%}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:80%}"
)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def colors(k: int) -> list[Any]:
    """``k`` colours along viridis, from dark to light (one per training-set size)."""
    cmap = pyplot().get_cmap("viridis")
    return [cmap(0.1 + 0.8 * i / max(1, k - 1)) for i in range(k)]


def save_png(fig: Any, path: str | Path, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically and close it."""
    import io

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    pyplot().close(fig)
    return Path(path)


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant digits, an em dash for ``None``."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def img_tag(path: str | Path) -> str:
    """An ``<img>`` element with the PNG at ``path`` embedded as base64."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def html_table(rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; the first row is the header. Cells are escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, body: str, figures: dict[str, Path] | None = None) -> str:
    """A complete self-contained HTML document: ``body`` (trusted HTML) then the figures with captions."""
    figs = "".join(
        f"<figure>{img_tag(p)}<figcaption>{html.escape(k)}</figcaption></figure>" for k, p in (figures or {}).items()
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n{figs}</body></html>"
    )


def sample_grid(rows: Sequence[tuple[str, Any, Any]], path: str | Path, title: str = "") -> Path:
    """One pair of rows per entry: generated samples (top) above their nearest training images (bottom).

    ``rows``: (label, samples (k, C, H, W) in [0,1], nearest training images (k, C, H, W))."""
    import numpy as np

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
