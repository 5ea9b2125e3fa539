"""A one-line progress bar on stderr, for long feature extractions (tqdm is not a dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Callable as ``bar(done, total)``: redraws ``desc  42% 420/1000 [85.1/s, eta 7s]``.

    On a terminal the line is redrawn in place at most every ``min_interval`` seconds; on a
    file or pipe one line is written per tenth of the way, so logs stay short.
    """

    def __init__(self, desc: str = "", stream: TextIO | None = None, min_interval: float = 0.2):
        self.desc = desc
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        finished = done >= total
        if self.tty:
            if not finished and now - self.last_draw < self.min_interval:
                return
        else:
            tenth = 10 * done // max(total, 1)
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
        self.last_draw = now
        self.stream.write(("\r" if self.tty else "") + self._line(done, total, now - self.start)
                          + ("\n" if finished or not self.tty else ""))
        self.stream.flush()

    def _line(self, done: int, total: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        pct = 100 * done // max(total, 1)
        return f"{self.desc}  {pct:3d}% {done}/{total} [{rate:.1f}/s, eta {eta:.0f}s]"
