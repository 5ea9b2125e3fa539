"""Exceptions that the command line turns into one clear message instead of a traceback."""


class DinokitError(Exception):
    """Base class: bad input the user can fix (a flag, a file, a folder)."""


class ConfigError(DinokitError, ValueError):
    """A flag or config value that is unknown, of the wrong type or inconsistent."""


class DataError(DinokitError):
    """A data folder that cannot be used (missing, empty, no images)."""


class InputShapeError(DinokitError, ValueError):
    """Input the network cannot take: not a ``[B, C, H, W]`` batch of its C channels, or an image
    with a side shorter than a ViT patch."""
