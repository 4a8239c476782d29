"""Files that appear whole or not at all: every output, checkpoint and cache entry is written here.

``with atomic_path(target) as tmp:`` gives a temporary sibling of ``target`` to write by any means
(numpy, torch, Pillow, pyarrow, safetensors); when the block ends normally the file is flushed to
disk, moved over ``target`` in one ``os.replace``, and the folder entry is flushed too, so a crash
leaves either the old file or the new one, never a torn one. When the block raises, the temporary
file is removed and ``target`` is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "fsync_dir", "fsync_file", "write_bytes_atomically"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    if os.name != "posix":
        return  # pragma: no cover - Windows cannot open folders; NTFS journals renames
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems (network, FUSE) cannot sync a folder: best effort there
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk (before a rename makes it visible under its final name)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, hidden: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target``, moved over it when the block succeeds. ``hidden``: start
    the temporary name with a dot, for folders that readers list (Parquet datasets skip dotfiles)."""
    target = Path(target)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".{target.name}.{tag}.tmp" if hidden else f"{target.name}.{tag}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes_atomically(target: str | os.PathLike, data: bytes, *, hidden: bool = False) -> None:
    with atomic_path(target, hidden=hidden) as tmp:
        tmp.write_bytes(data)
