"""Exceptions that the command line turns into one clear message instead of a traceback."""


class DinokitError(Exception):
    """Base class: bad input the user can fix (a flag, a file, a folder)."""


class ConfigError(DinokitError, ValueError):
    """A flag or config value that is unknown, of the wrong type or inconsistent."""


class DataError(DinokitError):
    """A data folder that cannot be used (missing, empty, no images)."""


class InputSizeError(DinokitError, ValueError):
    """An image too small for the network (a side shorter than the ViT patch)."""
