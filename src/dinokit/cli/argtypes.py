"""Flag types that refuse out-of-range values while argparse reads the command line, before any
model loads or image decodes."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bool_flag(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` as the release's ``--flag True`` style."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def arch_flag(text: str) -> str:
    """An architecture name; the release's old ``deit_small`` style names mean ``vit_small``, as
    its ``main_dino.py`` reads them."""
    return "vit_" + text[len("deit_"):] if text.startswith("deit_") else text


def positive_int(text: str) -> int:
    """An integer of at least 1: sizes, counts, batch sizes."""
    return _checked(int, text, lambda v: v >= 1, "an integer of at least 1")


def natural_int(text: str) -> int:
    """An integer of at least 0: worker processes, optional neighbourhoods."""
    return _checked(int, text, lambda v: v >= 0, "an integer of at least 0")


def positive_float(text: str) -> float:
    """A finite number above 0: learning rates, temperatures, durations."""
    return _checked(float, text, lambda v: v > 0 and math.isfinite(v), "a positive number")


def _checked(cast: Callable[[str], int | float], text: str, ok: Callable, what: str):
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value
