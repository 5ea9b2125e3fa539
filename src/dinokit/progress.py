"""A one-line console progress bar for training epochs and feature extraction (no tqdm)."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "format_seconds"]


def format_seconds(s: float) -> str:
    """``"07:05"`` or ``"1:02:03"``; ``"?"`` when unknown."""
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """``[########            ]  42.0% desc k v ... eta 00:07`` on ``stream`` (stderr).

    On a terminal the line is redrawn in place at most every ``min_interval`` seconds; on a file
    or a pipe one line is written every ``every_s`` seconds and at the end, so logs stay short.
    Called as ``bar(done, total)`` it is the ``progress`` callback of :mod:`dinokit.eval`; the
    ETA is then estimated from the rate so far.
    """

    def __init__(self, desc: str = "", total: int = 0, stream: TextIO | None = None, every_s: float = 10.0,
                 min_interval: float = 0.2, enabled: bool = True):
        self.desc, self.total, self.enabled = desc, total, enabled
        self.stream = stream or sys.stderr
        self.every_s, self.min_interval = every_s, min_interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start, self._last = time.monotonic(), -math.inf

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total=total, rate=True)
        if done >= total:
            self.close()

    def update(self, done: int, eta_s: float | None = None, total: int | None = None, rate: bool = False,
               **fields) -> None:
        """Redraw for ``done`` of ``total`` items; ``fields`` are shown as ``name value``, ``rate``
        adds ``done/total items/s``."""
        if not self.enabled:
            return
        self.total = total if total is not None else self.total
        now, finished = time.monotonic(), done >= self.total
        if not finished and now - self._last < (self.min_interval if self.tty else self.every_s):
            return
        self._last = now
        per_s = done / max(now - self.start, 1e-9)
        if eta_s is None:
            eta_s = (self.total - done) / per_s if per_s > 0 else math.nan
        counts = f"{done}/{self.total} {per_s:.1f}/s" if rate else ""
        frac = min(done / max(self.total, 1), 1.0)
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        line = " ".join(s for s in (f"[{'#' * int(frac * 20):<20}] {100 * frac:5.1f}%", self.desc, counts, text,
                                     f"eta {format_seconds(eta_s)}") if s)
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
