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


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name if empty), for one-line reports:
    torch's messages go on for pages of context and advice."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
