"""Turn what a user names on the command line into a list of image paths.

An input is one of:

* a file: taken as it is, whatever its extension (a named file is always tried, so a bad one is
  reported rather than silently skipped);
* a directory: every file below it (recursively, following no symlinked directories) whose
  extension is in :data:`IMAGE_EXTENSIONS`, case-insensitively;
* a glob pattern (``*``, ``?``, ``[...]``, ``**`` for any depth) that is not itself an existing
  path: its matches, each treated as above;
* ``@LIST``: a text file naming one input per line (blank lines and lines starting with ``#`` are
  skipped); relative lines are relative to the current directory, like arguments are.

Order: inputs in the order given, each one's files sorted by path; a path met twice is kept once
(its first place). A path that does not exist (or a pattern that matches nothing) is kept, so that
decoding reports it by name like any other unreadable input.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable

__all__ = ["IMAGE_EXTENSIONS", "LIST_PREFIX", "expand_inputs", "printable_path", "read_path_list"]

#: File extensions collected from directories: the formats ``pnasnet.data.decode_image`` reads.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
    ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
})

#: An argument starting with this names a text file of inputs.
LIST_PREFIX = "@"


def read_path_list(list_file: str | os.PathLike) -> list[str]:
    """The inputs named in a text file, one per line (``#`` comments and blank lines skipped)."""
    with open(list_file, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    return [line for line in lines if line and not line.startswith("#")]


def _is_pattern(text: str) -> bool:
    return glob.has_magic(text)


def _images_below(directory: str, extensions: frozenset[str]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files
                     if os.path.splitext(name)[1].lower() in extensions)
    return sorted(found)


def _expand_one(spec: str, extensions: frozenset[str]) -> list[str]:
    if os.path.isdir(spec):
        return _images_below(spec, extensions)
    if os.path.lexists(spec) or not _is_pattern(spec):
        return [spec]
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        return [spec]  # reported later as "no such file", with the pattern as its name
    expanded: list[str] = []
    for match in matches:
        expanded.extend(_images_below(match, extensions) if os.path.isdir(match) else [match])
    return expanded


def expand_inputs(inputs: Iterable[str | os.PathLike], *,
                  extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Image paths named by ``inputs`` (files, directories, globs, ``@LIST`` files): see the
    module docstring for the rules. Raises ``FileNotFoundError`` for a missing ``@LIST`` file."""
    wanted = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    paths: dict[str, None] = {}  # ordered set
    for item in inputs:
        spec = os.fspath(item)
        if spec.startswith(LIST_PREFIX) and len(spec) > 1:
            specs = read_path_list(spec[len(LIST_PREFIX):])
        else:
            specs = [spec]
        for one in specs:
            for path in _expand_one(one, wanted):
                paths.setdefault(os.path.normpath(path), None)
    return list(paths)


def printable_path(path: str) -> str:
    """``path`` as valid UTF-8 text: a file name that is not UTF-8 (on POSIX, Python keeps its
    bytes as lone surrogates) shows those bytes as ``\\xNN`` escapes instead of breaking the
    output file or the terminal."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
