"""Console progress and the run's JSON-lines logs."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

__all__ = ["ProgressBar", "JsonlWriter", "format_seconds"]

log = logging.getLogger("dinokit.train")


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """One line per update on a terminal (redrawn in place), one line every ``every_s`` otherwise."""

    def __init__(self, total: int, stream=sys.stderr, every_s: float = 10.0, enabled: bool = True):
        self.total, self.stream, self.every_s, self.enabled = total, stream, every_s, enabled
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0

    def update(self, done: int, eta_s: float, **fields) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < self.every_s and done < self.total:
            return
        self._last = now
        frac = min(done / max(self.total, 1), 1.0)
        bar = "#" * int(frac * 20)
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        line = f"[{bar:<20}] {100 * frac:5.1f}% {text} eta {format_seconds(eta_s)}"
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class JsonlWriter:
    """Append one JSON object per line, flushed at once so a crash loses nothing written.

    A line cut short by a killed process is closed before the first new one; a failed write (disk
    full) is logged once and training goes on: these logs are not worth losing a run for."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self._checked, self._failed = False, False

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                if not self._checked:
                    self._checked = True
                    f.write("\n" if _ends_mid_line(self.path) else "")
                f.write(json.dumps(record) + "\n")
            self._failed = False
        except OSError as e:
            if not self._failed:
                log.error("could not append to %s: %s", self.path, e.strerror or e)
            self._failed = True


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"
