"""Safe extraction of weight tarballs (.tar, .tar.gz).

PNASNet release tarballs hold only regular files and folders, so anything else is refused outright:
links (which can point outside the destination or at files the archive did not ship), device files
and FIFOs, and any member whose path is absolute, contains ``..`` or would land outside the
destination. Every member is checked before it is extracted, and Python's own ``filter='data'``
(3.10.12+/3.11.4+) runs as a second line of defence.

Extraction goes into a temporary sibling folder that is moved into place with ``os.replace`` only
once the whole archive has been read, so a refused, truncated or corrupt archive (or a crash) never
leaves a half-extracted destination; at worst a hidden ``.<name>.extract-*`` folder stays behind
after a hard kill.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

__all__ = ["ArchiveError", "UnsafeArchiveError", "safe_extract"]

# Errors a damaged archive raises while being read, whatever its compression.
_CORRUPTION_ERRORS = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile,
                      lzma.LZMAError)
# Raised by tarfile's extraction filters (absent before Python 3.10.12 / 3.11.4).
_FILTER_ERROR = getattr(tarfile, "FilterError", None)


class ArchiveError(RuntimeError):
    """An archive could not be read: truncated, corrupt or not an archive at all."""


class UnsafeArchiveError(ArchiveError):
    """An archive holds a member that must not be extracted; nothing was extracted."""

    def __init__(self, archive: Path, member: str, reason: str):
        super().__init__(f"refusing to extract {archive}: member {member!r} {reason}")
        self.archive, self.member, self.reason = archive, member, reason


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    return f"has unsupported type {member.type!r}"


def _check_member(member: tarfile.TarInfo, archive: Path, root: str) -> None:
    """Raise ``UnsafeArchiveError`` unless ``member`` is a plain file or folder that stays under ``root``."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(archive, name, _member_kind(member) + "; only files and folders are allowed")
    path = PurePosixPath(name)
    # A Windows drive or a leading backslash is absolute on some systems even if not on POSIX.
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    if ".." in path.parts or ".." in name.split("\\"):
        raise UnsafeArchiveError(archive, name, "has a '..' component")
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        raise UnsafeArchiveError(archive, name, "would be extracted outside the destination")


def _checked_members(tar: tarfile.TarFile, archive: Path, root: str, files: list[str]) -> Iterator[tarfile.TarInfo]:
    """Yield the archive's members one by one as they are read, each checked; collect file names."""
    for member in tar:
        _check_member(member, archive, root)
        if member.isreg():
            files.append(member.name)
        yield member


def _extract_into(archive: Path, root: str) -> list[str]:
    """Extract every member of ``archive`` into the (empty) folder ``root``; returns the file names."""
    files: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        members = _checked_members(tar, archive, root, files)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=members, filter="data")
        else:   # older Python: the checks above are the only (and sufficient) line of defence
            tar.extractall(root, members=members)
    return files


def _move_into_place(tmp: Path, dest_dir: Path, overwrite: bool) -> None:
    if dest_dir.exists() and not overwrite:
        raise FileExistsError(f"{dest_dir} already exists; pass overwrite=True to replace it")
    if dest_dir.exists():
        # os.replace cannot replace a non-empty folder: move the old one aside first, delete it after.
        old = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.old-"))
        os.replace(dest_dir, old / dest_dir.name)
        os.replace(tmp, dest_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest_dir)


def safe_extract(tar_path: str | os.PathLike, dest_dir: str | os.PathLike, *,
                 overwrite: bool = False) -> list[Path]:
    """Extract a .tar/.tar.gz archive into ``dest_dir``, all or nothing; returns the extracted files.

    ``dest_dir`` must not exist yet unless ``overwrite`` is true (then it is replaced as a whole).
    Raises ``UnsafeArchiveError`` (naming the archive and the member) for links, device files,
    absolute paths, ``..`` components or paths escaping ``dest_dir``; ``ArchiveError`` for a
    truncated or corrupt archive; in both cases ``dest_dir`` is left as it was. Callers extracting
    the same archive from several processes should hold a lock (see ``download``'s lock files).
    """
    archive = Path(tar_path)
    dest_dir = Path(dest_dir).expanduser().absolute()
    if not archive.is_file():
        raise FileNotFoundError(f"no such archive: {archive}")
    if dest_dir.exists() and not overwrite:
        raise FileExistsError(f"{dest_dir} already exists; pass overwrite=True to replace it")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.extract-"))
    try:
        try:
            names = _extract_into(archive, os.path.realpath(tmp))
        except UnsafeArchiveError:
            raise
        except _CORRUPTION_ERRORS as error:
            raise ArchiveError(f"cannot extract {archive}: it is truncated or corrupt "
                               f"({type(error).__name__}: {error})") from error
        except Exception as error:
            if _FILTER_ERROR is not None and isinstance(error, _FILTER_ERROR):
                member = getattr(error, "tarinfo", None)
                raise UnsafeArchiveError(archive, getattr(member, "name", "?"),
                                         f"was refused by tarfile's 'data' filter ({error})") from error
            raise
        _move_into_place(tmp, dest_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # a no-op once tmp has been moved into place
    return [dest_dir / name for name in names]
