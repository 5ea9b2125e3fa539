"""Output locations checked before long work starts, so a bad path fails in a second, not after
an hour of training or feature extraction."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import DataError


def output_folder(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """``path`` as a folder that exists and accepts new files, or a one-line ``DataError``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{flag} {str(path)!r} is a file, not a folder: give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DataError(f"cannot write into {flag} {str(path)!r}: {e.strerror or e}") from None
    return folder


def output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` as a file that can be written: its folder is created and checked, and it is not a folder."""
    file = Path(path)
    if file.is_dir():
        raise DataError(f"{flag} {str(path)!r} is a folder: give a file name")
    output_folder(file.parent, f"the folder of {flag}")
    return file
