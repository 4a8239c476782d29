"""Find a file that is already in the user's Hugging Face hub cache, without needing huggingface_hub.

A timm user has usually downloaded ``timm/pnasnet5large.tf_in1k`` before; reusing that copy saves a
345 MB download. The hub's cache layout is public and stable::

    <hub cache>/models--<owner>--<name>/snapshots/<revision>/<filename>

Only the snapshot of the pinned commit is accepted: a snapshot of another revision (or whatever
``refs/main`` points at) may hold a different file. The snapshot entry is a link into ``blobs/``,
and a large (LFS) file's blob is named by the SHA-256 of its content (:func:`blob_sha256`), which
is what the copy is checked against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HubFile", "blob_sha256", "find_in_hub_cache", "hub_cache_dir"]


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face model repository at a pinned commit."""

    repo_id: str        # "owner/name"
    filename: str       # path inside the repository
    revision: str       # full 40-hex commit hash; never a branch name (its content can change)


def hub_cache_dir() -> Path:
    """The hub cache folder, resolved as huggingface_hub does: ``$HF_HUB_CACHE``, else the legacy
    ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def find_in_hub_cache(file: HubFile) -> Path | None:
    """The cached copy of ``file`` at its pinned revision, or None. Reads only the local disk."""
    folder = "models--" + file.repo_id.replace("/", "--")
    candidate = hub_cache_dir() / folder / "snapshots" / file.revision / file.filename
    if candidate.is_file():     # follows the snapshot's symlink into blobs/; a dangling link is no file
        return candidate
    # huggingface_hub, when installed, knows about any cache location configured in ways we do not
    # read (it is not a dependency, so this is a bonus, never required).
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(file.repo_id, file.filename, revision=file.revision)
    except Exception:   # noqa: BLE001 - an optional helper must never turn a lookup into a failure
        return None
    # It returns a path (str), None, or a sentinel meaning "known not to exist".
    if isinstance(found, (str, os.PathLike)) and Path(found).is_file():
        return Path(found)
    return None


def blob_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 a hub snapshot file's blob is named by (an LFS object's id is the SHA-256 of its
    content), or None where the file is not a link to such a blob (a small git-stored file is named
    by its 40-hex git hash; a copy made where links are not available has no blob name)."""
    path = Path(path)
    if not path.is_symlink():
        return None
    name = path.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None
