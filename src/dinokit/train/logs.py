"""The run's JSON-lines logs (``metrics.jsonl``, ``log.txt``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["JsonlWriter"]

log = logging.getLogger("dinokit.train")


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
