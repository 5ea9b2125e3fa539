"""Output locations checked before long work starts, so a bad path fails in a second, not after
an hour of training or feature extraction."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import socket
import tempfile
from pathlib import Path

from .errors import DataError

log = logging.getLogger(__name__)

# Folders output_folder made inside removing_new_folders_on_error(), newest last.
_made: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("dinokit_made_folders", default=None)


@contextlib.contextmanager
def removing_new_folders_on_error():
    """Within this block, a command that fails removes the output folders it made and left empty
    (``--output_dir`` of a run refused for a missing data folder, say)."""
    token = _made.set([])
    try:
        yield
    except BaseException:
        for folder in reversed(_made.get() or []):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise
    finally:
        _made.reset(token)


def output_folder(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """``path`` as a folder that exists and accepts new files, or a one-line ``DataError``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{flag} {str(path)!r} is a file, not a folder: give a folder for the outputs")
    made = _made.get()
    if made is not None:  # the missing folders along the path, outermost first
        made += [p for p in reversed([folder, *folder.parents]) if not p.exists()]
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


class FolderLock:
    """An exclusive lock on ``folder/.dinokit.lock`` while a run writes into ``folder``: a second
    run given the same folder stops at once instead of overwriting the first one's checkpoints.

    Advisory (``flock``): it binds dinokit processes only, and ends with its process, so a killed
    run leaves only a stale file that the next run takes over. Where ``flock`` is missing
    (Windows) nothing is locked.
    """

    def __init__(self, folder: Path, what: str = "training run"):
        self.file = None
        try:
            import fcntl
        except ImportError:
            return
        f = open(Path(folder) / ".dinokit.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DataError(f"{folder} is in use by another {what} ({holder}): wait for it to end, "
                                f"or give another --output_dir") from None
            log.warning("cannot lock %s (%s): nothing stops a second run from writing there too", folder,
                        e.strerror or e)
            return
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        """Remove the lock file (a finished or refused run leaves the folder as it was) and let go."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.file.name)
            self.file.close()
            self.file = None
