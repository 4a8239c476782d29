"""The work folder beside an output (``OUT.partial/``) that makes long runs crash-safe.

While a run computes, each finished chunk of rows goes to ``chunk-NNNNNN.npz``, written to a
temporary name and renamed, so a chunk is either complete or absent: a run killed mid-write leaves
only a ``*.tmp`` file, which the next run deletes. ``manifest.json`` records what made the chunks
(:class:`~pnasnet.tasks.run_info.RunInfo`), so a run with other weights or preprocessing is refused
instead of mixing vectors. A ``lock`` file (``flock``) keeps two runs from writing at once.

Publishing the finished output is a small journal: the complete files are staged in
``staged.tmp/``, which is renamed to ``staged/`` (the commit point), then moved one by one onto
their targets; the folder is removed last. A run that finds ``staged/`` (killed while publishing)
finishes those moves first, so the output is never a mix of two runs.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic_files import atomic_path, fsync_dir, write_bytes_atomically
from ..file_locks import lock_exclusively
from .rows import RowBlock
from .run_info import RunInfo

__all__ = ["ChunkFolder", "OutputBusyError"]

_MANIFEST = "manifest.json"
_STAGED = "staged"
_CHUNK_GLOB = "chunk-*.npz"


class OutputBusyError(RuntimeError):
    """Another run is writing the same output."""


class ChunkFolder:
    """Open with :meth:`open` (a context manager); see the module docstring."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock_fd: int | None = None

    # --------------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ChunkFolder":
        """Create or reopen the folder and lock it (:class:`OutputBusyError` if another run holds
        it); finish an interrupted publish and delete what killed runs left half-written. Call
        :meth:`claim` before writing chunks."""
        self = cls(Path(folder))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if (self.folder / _STAGED).is_dir():
                # An earlier run was killed while publishing: complete it. That removes the folder
                # and the lock file with it, so lock a fresh one.
                self.finish_publishing()
                self.close()
                self.folder.mkdir(parents=True, exist_ok=True)
                self._lock()
            trash = self.folder.parent.glob(glob.escape(self.folder.name) + ".done-*")
            for leftover in [*self.folder.glob("*.tmp"), *trash]:
                _remove(leftover)  # from a run that was killed mid-write or mid-cleanup
        except BaseException:
            self.close()
            raise
        return self

    def claim(self, info: RunInfo, *, overwrite: bool = False) -> None:
        """Make the chunks this run's: raise :class:`~pnasnet.tasks.run_info.OutputMismatchError`
        if they came from another run, or delete them if ``overwrite``."""
        manifest = self.folder / _MANIFEST
        if overwrite:
            for chunk in self.chunks():
                chunk.unlink()
        elif manifest.exists():
            info.check_same_as(RunInfo.from_json(manifest.read_text()), f"the unfinished run in {self.folder}")
        write_bytes_atomically(manifest, info.to_json().encode())

    def remove_if_unused(self) -> None:
        """Delete the folder if it holds no chunks (a run that stopped before computing any)."""
        if self.folder.is_dir() and not self.chunks() and not (self.folder / _STAGED).exists():
            _remove(self.folder)

    def _lock(self) -> None:
        self._lock_fd = lock_exclusively(self.folder / "lock", lambda: OutputBusyError(
            f"another run is writing {self.folder} (it holds {self.folder / 'lock'})"))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "ChunkFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------------- chunks
    def chunks(self) -> list[Path]:
        """The complete chunks, oldest first."""
        return sorted(self.folder.glob(_CHUNK_GLOB))

    def write_chunk(self, block: RowBlock) -> Path:
        existing = self.chunks()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        target = self.folder / f"chunk-{number:06d}.npz"
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            # ok marks the good rows; errors holds "" there (no reason is ever empty)
            np.savez(fh, paths=np.array(block.paths, dtype=str),
                     ok=np.array([e is None for e in block.errors], dtype=bool),
                     errors=np.array([e or "" for e in block.errors], dtype=str),
                     features=block.features.astype(np.float32, copy=False))
        return target

    @staticmethod
    def read_chunk(chunk: Path, *, with_features: bool = True) -> RowBlock:
        with np.load(chunk, allow_pickle=False) as data:
            paths = data["paths"].tolist()
            errors = [None if ok else str(e) for ok, e in zip(data["ok"].tolist(), data["errors"].tolist())]
            if with_features:
                features = data["features"]
            else:  # a [n_ok, 0] stand-in: row bookkeeping without reading the vectors
                features = np.empty((sum(e is None for e in errors), 0), np.float32)
        return RowBlock(paths, errors, features)

    # --------------------------------------------------------------------- publishing
    def staging_dir(self) -> Path:
        """An empty folder to write the finished output files into, then call :meth:`publish`."""
        staging = self.folder / (_STAGED + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return staging

    def publish(self, targets: dict[str, Path]) -> None:
        """Move each staged file ``name`` onto ``targets[name]`` and remove the work folder."""
        staged = self.folder / _STAGED
        for name in targets:
            with open(self.folder / (_STAGED + ".tmp") / name, "rb") as fh:
                os.fsync(fh.fileno())
        # Where each file goes, written before the commit point (the rename below).
        write_bytes_atomically(self.folder / "targets.json", json.dumps({k: str(v) for k, v in targets.items()}).encode())
        os.replace(self.folder / (_STAGED + ".tmp"), staged)
        fsync_dir(self.folder)
        self.finish_publishing()

    def finish_publishing(self) -> None:
        """Complete an interrupted :meth:`publish` (idempotent); no-op if none is pending."""
        staged = self.folder / _STAGED
        if not staged.is_dir():
            return
        targets = json.loads((self.folder / "targets.json").read_text())
        for name, target in targets.items():
            source = staged / name
            if source.exists():  # absent: already moved by the interrupted run
                os.replace(source, target)
        fsync_dir(Path(next(iter(targets.values()))).parent)
        # Rename first so that a half-deleted folder is never mistaken for a run's chunks.
        trash = self.folder.with_name(f"{self.folder.name}.done-{uuid.uuid4().hex[:8]}")
        os.replace(self.folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def iter_blocks(self, *, with_features: bool = True) -> Iterator[RowBlock]:
        for chunk in self.chunks():
            yield self.read_chunk(chunk, with_features=with_features)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
