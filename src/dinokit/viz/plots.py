"""Line plots of training curves as PNG files (matplotlib's Agg canvas; no pyplot, no global state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Series", "plot_curves", "moving_average"]

# name -> (x values, y values); None values are skipped.
Series = Mapping[str, tuple[Sequence[float], Sequence[float | None]]]


def _clean(xs, ys) -> tuple[list[float], list[float]]:
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(float(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def moving_average(ys: Sequence[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(series: Series, path: str | os.PathLike, title: str | None = None, xlabel: str = "epoch",
                ylabel: str | None = None, panels: bool = False, logy: bool = False,
                hlines: Mapping[str, float] | None = None, vlines: Sequence[float] = (),
                ymin: float | None = None, smooth: bool = False, dpi: int = 100) -> Path:
    """Plot ``series`` into the PNG ``path`` and return it.

    All series share one axes, or with ``panels`` each gets its own (y scales differ: learning
    rate vs momentum). ``hlines`` draws labelled horizontal references (e.g. ``log K``);
    ``vlines`` marks x positions in red (e.g. epochs with a collapse warning); ``ymin`` fixes
    the bottom of the y axes (e.g. 0 for entropies). ``smooth`` draws noisy per-step series
    faintly with a moving average over a tenth of their length on top.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = [(name, *_clean(xs, ys)) for name, (xs, ys) in series.items()]
    items = [it for it in items if it[1]] or [("(no data)", [], [])]
    n_axes = len(items) if panels else 1
    cols = 2 if n_axes > 1 else 1
    rows = math.ceil(n_axes / cols)
    fig = Figure(figsize=(6.4 if cols == 1 else 10.4, 3.4 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_axes)]
    for i, (name, xs, ys) in enumerate(items):
        ax = axes[i if panels else 0]
        window = len(ys) // 10 if smooth else 0
        if window >= 3:
            (raw,) = ax.plot(xs, ys, linewidth=0.8, alpha=0.35)
            ax.plot(xs, moving_average(ys, window), color=raw.get_color(), linewidth=2,
                    label=f"{name}, moving mean of {window} points")
        else:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        if panels:
            ax.set_title(name, fontsize=10)
    for ax in axes:
        for label, y in (hlines or {}).items():
            ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=label)
        for x in vlines:
            ax.axvline(x, color="red", alpha=0.4, linewidth=2)
        if logy:
            ax.set_yscale("log")
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if ylabel and not panels:
        axes[0].set_ylabel(ylabel)
    if not panels and (len(items) > 1 or hlines or smooth):
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
