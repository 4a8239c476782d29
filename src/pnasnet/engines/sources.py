"""Inputs and outputs that may live on another filesystem: ``s3://``, ``gs://``, ``hdfs://``,
``file://`` ... as well as local paths.

:func:`expand_sources` is :func:`pnasnet.tasks.expand_inputs` (files, folders, globs, ``@LIST``)
extended to URIs, listed with pyarrow's filesystems (``pyarrow.fs.FileSystem.from_uri``; the
same code lists a bucket prefix on a cluster). :func:`decode_source` decodes one input exactly as
the single-machine command does (same transform, same error reasons); for a URI it reads the bytes
through pyarrow first. Nothing here imports Ray.
"""

from __future__ import annotations

import glob
import io
import os
import re
from typing import Iterable

import torch

from ..data import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..tasks.batches import TRANSFORMS
from ..tasks.inputs import IMAGE_EXTENSIONS, LIST_PREFIX, expand_inputs

__all__ = ["decode_source", "expand_sources", "filesystem_for", "is_uri", "read_source_list"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """``scheme://...`` (a local path never looks like that)."""
    return bool(_URI.match(path))


_FILESYSTEMS: dict[str, tuple[object, str]] = {}  # per process: scheme://host -> (filesystem, URI prefix)


def filesystem_for(uri: str):
    """``(pyarrow filesystem, path inside it)`` for ``uri``. The filesystem (an S3 client, say) is
    made once per process for each ``scheme://bucket``, not once per file."""
    from pyarrow import fs as pafs

    scheme, _, rest = uri.partition("://")
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    cached = _FILESYSTEMS.get(key)
    if cached is not None and uri.startswith(cached[1]):
        return cached[0], uri[len(cached[1]):]
    filesystem, inner = pafs.FileSystem.from_uri(uri)
    if uri.endswith(inner):  # e.g. "s3://" + "bucket/key", "file://" + "/data/x", "hdfs://nn:8020" + "/x"
        _FILESYSTEMS[key] = (filesystem, uri[: len(uri) - len(inner)])
    return filesystem, inner


def _join(prefix_uri: str, inner_prefix: str, inner: str) -> str:
    """The URI of ``inner`` (a path inside the filesystem), given one URI and its inner path."""
    return prefix_uri[: len(prefix_uri) - len(inner_prefix)] + inner


def _glob_regex(pattern: str) -> "re.Pattern[str]":
    """``glob`` semantics for a URI pattern: ``*`` and ``?`` stay within one path segment,
    ``**/`` is any number of folders (none included), ``[...]`` a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1: end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _list_uri(spec: str, extensions: frozenset[str]) -> list[str]:
    from pyarrow import fs as pafs

    magic = glob.has_magic(spec)
    base = spec if magic else spec.rstrip("/") or spec
    if magic:  # list below the part before the first wildcard, then match the whole pattern
        cut = min(i for i, c in enumerate(spec) if c in "*?[")
        base = spec[:cut].rsplit("/", 1)[0]
    pattern = _glob_regex(spec) if magic else None
    filesystem, inner_base = filesystem_for(base)
    info = filesystem.get_file_info(inner_base)
    if info.type == pafs.FileType.File and not magic:
        return [spec]
    if info.type != pafs.FileType.Directory:
        return [spec]  # missing: reported when decoding, like a missing local file
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(inner_base, recursive=True)):
        if entry.type != pafs.FileType.File:
            continue
        uri = _join(base, inner_base, entry.path)
        if magic:
            if pattern.fullmatch(uri):
                found.append(uri)
        elif os.path.splitext(entry.path)[1].lower() in extensions:
            found.append(uri)
    if magic and not found:
        return [spec]
    return sorted(found)


def read_source_list(list_file: str) -> list[str]:
    """The inputs named in a text file (local path or URI), one per line; ``#`` comments skipped."""
    if is_uri(list_file):
        filesystem, inner = filesystem_for(list_file)
        with filesystem.open_input_stream(inner) as fh:
            text = fh.read().decode("utf-8")
    else:
        with open(list_file, encoding="utf-8") as fh:
            text = fh.read()
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def expand_sources(inputs: Iterable[str | os.PathLike], *,
                   extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Like :func:`pnasnet.tasks.expand_inputs` (same rules, same order, local paths normalised the
    same way), also accepting URIs: ``s3://bucket/photos/`` (every image below, recursively),
    ``s3://bucket/photos/*.jpg`` (a glob; ``**`` for any depth), ``s3://bucket/a.jpg``, and ``@LIST``
    files (local or a URI) whose lines may be URIs."""
    wanted = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    paths: dict[str, None] = {}
    for item in inputs:
        spec = os.fspath(item)
        if spec.startswith(LIST_PREFIX) and len(spec) > 1:
            specs = read_source_list(spec[len(LIST_PREFIX):])
        else:
            specs = [spec]
        for one in specs:
            found = _list_uri(one, wanted) if is_uri(one) else expand_inputs([one], extensions=wanted)
            for path in found:
                paths.setdefault(path, None)
    return list(paths)


def decode_source(path: str, size: int, *, transform: str = "tf-slim",
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor | None, str | None]:
    """``(image [3, size, size] in [0, 1], None)`` or ``(None, reason)``: never raises for a bad
    input. A local path goes through the very code of the single-machine command
    (:class:`pnasnet.tasks.batches.ImageFileDataset`), so the rows and reasons are the same."""
    if not is_uri(path):
        from ..tasks.batches import ImageFileDataset

        _, image, error = ImageFileDataset([path], size, transform=transform, max_pixels=max_pixels)[0]
        return image, error
    try:
        filesystem, inner = filesystem_for(path)
        with filesystem.open_input_stream(inner) as fh:
            data = fh.read()
    except Exception as error:  # noqa: BLE001 - missing, no permission, network: all one row
        return None, f"cannot read file ({type(error).__name__}: {error})"
    try:
        return TRANSFORMS[transform](decode_image(io.BytesIO(data), max_pixels=max_pixels), size), None
    except ImageDecodeError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - one bad input must never end the run
        return None, f"{type(error).__name__}: {error}"
