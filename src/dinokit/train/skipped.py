"""The unusable image files of a run: reported once, listed in ``skipped_files.txt``, summed up at the end."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["SkippedFiles"]

log = logging.getLogger("dinokit.train")

SHOWN = 20  # names per log line; the file has them all


class SkippedFiles:
    """Files that training skipped, with the reason.

    ``add`` logs the files not seen before in one line (count and names) and rewrites ``path``
    (one ``file<TAB>reason`` per line). The list survives a resume: an existing ``path`` is read back,
    keeping the entries of files still in the dataset (``known``). ``summary`` is the last word.
    """

    def __init__(self, path: str | os.PathLike, known: set[str], enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.files: dict[str, str] = _read(self.path, known) if enabled else {}

    def __len__(self) -> int:
        return len(self.files)

    def add(self, bad: dict[str, str]) -> list[str]:
        """Record ``bad`` (path -> reason); returns the paths that were new."""
        new = {p: r for p, r in bad.items() if p not in self.files}
        if not new or not self.enabled:
            return list(new)
        self.files.update(new)
        log.warning("skipped %d unusable image file(s) (listed in %s): %s", len(new), self.path, _names(new))
        self._write()
        return list(new)

    def summary(self) -> None:
        if self.files and self.enabled:
            log.warning("%d unusable image file(s) were skipped in this run (listed in %s): %s", len(self.files),
                        self.path, _names(self.files))

    def _write(self) -> None:
        text = "".join(f"{p}\t{' '.join(r.split())}\n" for p, r in sorted(self.files.items()))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError as e:  # the list is informative; training goes on
            log.error("could not write %s: %s", self.path, e.strerror or e)


def _names(files: dict[str, str]) -> str:
    names = sorted(files)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _read(path: Path, known: set[str]) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        name, tab, reason = line.partition("\t")
        if tab and name in known:
            out[name] = reason
    return out
