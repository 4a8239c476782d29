"""Checkpoints of full fine-tuning, and the lock that keeps two runs out of one model directory.

A checkpoint (``MODEL_DIR/training-checkpoint.pt``) holds everything the rest of the run depends
on: the model's parameters and batch-norm statistics, the optimizer's momentum, the global RNG
state (dropout, drop path), the position (epoch, step within it, optimizer steps so far), the
running sums of the unfinished epoch, the history so far, and the run's identity (settings, data,
base weights) so that only the same run resumes it. Data order and augmentation are derived from
the seed and need no state (:mod:`pnasnet.training.rng`).

Written to a temporary file, flushed and renamed: a kill leaves the previous checkpoint or the new
one, never a torn file. Read back with ``torch.load(weights_only=True)`` (tensors and plain
containers only, no code).

With ``keep="best"``, the weights of the best epoch so far live beside it in
``training-best-epoch-<E>.pt``: written when an epoch improves on the best, before the checkpoint
that records that epoch in its history; the previous best file is removed after that checkpoint.
A kill in between leaves both files, and the checkpoint's history says which one counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_path
from ..file_locks import lock_exclusively

__all__ = ["BEST_FILE_PATTERN", "CHECKPOINT_FILE", "CheckpointMismatchError", "ModelDirBusyError", "ModelDirLock",
           "best_weights_path", "check_identity", "load_best_weights", "load_checkpoint", "remove_best_weights",
           "save_best_weights", "save_checkpoint"]

CHECKPOINT_FILE = "training-checkpoint.pt"
BEST_FILE_PATTERN = "training-best-epoch-*.pt"
FORMAT = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint in the model directory belongs to another run."""


class ModelDirBusyError(RuntimeError):
    """Another training run is writing the same model directory."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pnasnet training checkpoint (format {FORMAT})")
    return state


def best_weights_path(folder: str | os.PathLike, epoch: int) -> Path:
    return Path(folder) / f"training-best-epoch-{epoch}.pt"


def save_best_weights(folder: str | os.PathLike, epoch: int, state_dict: dict[str, torch.Tensor]) -> Path:
    """The model's state after ``epoch`` (1-based), the best so far."""
    path = best_weights_path(folder, epoch)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in state_dict.items()}}, tmp)
    return path


def load_best_weights(folder: str | os.PathLike, epoch: int) -> dict[str, torch.Tensor]:
    path = best_weights_path(folder, epoch)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the weights of the best epoch ({epoch}) are missing; run with "
                                "--overwrite to train again")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("epoch") != epoch:
        raise ValueError(f"{path}: not the weights of epoch {epoch}")
    return state["model"]


def remove_best_weights(folder: str | os.PathLike, *, keep_epoch: int | None = None) -> None:
    """Remove the best-epoch files in ``folder`` except that of ``keep_epoch``."""
    for path in Path(folder).glob(BEST_FILE_PATTERN):
        if keep_epoch is None or path != best_weights_path(folder, keep_epoch):
            path.unlink(missing_ok=True)


def check_identity(saved_json: str, current: dict, where: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming each setting that differs."""
    saved = json.loads(saved_json)
    current = json.loads(json.dumps(current))  # same normalisation as what was saved
    keys = sorted(set(saved) | set(current))
    diffs = []
    for key in keys:
        if saved.get(key) != current.get(key):
            before, now = saved.get(key), current.get(key)
            if key == "data":
                diffs.append("data: the images or their split differ")
            else:
                diffs.append(f"{key}: {before!r} there, {now!r} now")
    if diffs:
        raise CheckpointMismatchError(
            f"{where} holds a checkpoint of another run ({'; '.join(diffs)}); run with the same settings to "
            "resume it, or pass --overwrite (overwrite=True) to start over")


# Lock descriptors this process holds. A forked child (a DataLoader worker) inherits them, and an
# flock lives as long as any copy is open: a worker outliving a killed run would keep the model
# directory locked for seconds. Children close their copies at once, which leaves the parent's lock.
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class ModelDirLock:
    """``flock`` on the model directory itself for the duration of a run (no lock file is left
    among the outputs); released by the system when the process ends, however it ends."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None

    def __enter__(self) -> "ModelDirLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = lock_exclusively(self.folder, lambda: ModelDirBusyError(
            f"another training run is writing {self.folder}"), create=False)
        if self._fd is not None:
            _HELD_LOCK_FDS.add(self._fd)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _HELD_LOCK_FDS.discard(self._fd)
            os.close(self._fd)
            self._fd = None
