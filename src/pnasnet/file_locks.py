"""One writer per output: an exclusive, non-blocking ``flock`` held for the length of a run.

The system releases the lock when the process ends, however it ends, so a killed run never leaves a
stale lock behind. Where ``flock`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from typing import Callable

try:  # POSIX advisory lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["lock_exclusively"]


def lock_exclusively(path: str | os.PathLike, busy: Callable[[], Exception], *,
                     create: bool = True) -> int | None:
    """Open ``path`` (created if ``create``; a folder with ``create=False``) and lock it; returns
    the file descriptor to close when done (which releases the lock), or None without ``flock``.
    Raises ``busy()`` if another process holds the lock."""
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if create else os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise busy() from None
    return fd
