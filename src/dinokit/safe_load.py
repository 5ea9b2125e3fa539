"""Reading ``torch.save`` files without running code, with a one-line reason when that fails.

``torch.load(weights_only=True)`` refuses pickled objects that could run code, but its errors
are paragraphs whose cause sits somewhere in the middle (and whose wording changes between
releases), and a text file or a truncated download surfaces as almost any exception type.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .errors import DinokitError


def load_tensors(path: str | os.PathLike, error: type[Exception] = DinokitError,
                 allowed_globals: Iterable[type] = ()) -> Any:
    """The object stored in ``path`` by ``torch.save``: tensors, numbers, strings and containers.

    Raises ``error`` with one line that says whether the file is missing, not a ``torch.save``
    file at all, damaged, or holds Python objects (other than ``allowed_globals``) that could run
    code when unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{str(path)!r} does not exist or is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):  # zip archive or legacy pickle
        raise error(f"{path} is not a file saved by torch.save (neither its zip format nor a pickle; "
                    f"it starts with {magic!r})")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(e)
        if "GLOBAL" not in detail:
            raise error(f"{path} is not a readable torch.save file: {detail}") from None
        raise error(f"refused to load {path}: it contains Python objects other than tensors and plain "
                    f"containers, which could run code when unpickled. Only load files you trust; if you "
                    f"do, re-save its state_dict with torch.save(model.state_dict(), ...). "
                    f"Details: {detail}") from None
    except Exception as e:  # garbage bytes surface as almost any exception type
        first = str(e).splitlines()[0].split(". ")[0].rstrip(".") if str(e) else type(e).__name__  # torch adds advice
        raise error(f"{path} is not a readable torch.save file (truncated or another format?): {first}") from None


def _unpickler_detail(error: Exception) -> str:
    """The line of torch's weights-only error that names the cause: the refused ``GLOBAL`` (a
    Python object) or the unpickler's complaint (damaged bytes)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return line.split("WeightsUnpickler error:")[-1].split(" was not an allowed global")[0].strip()
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:  # the cause follows on this line or the next
            return line.split("WeightsUnpickler error:", 1)[1].strip() or "".join(lines[i + 1:i + 2])
    return lines[0] if lines else type(error).__name__
