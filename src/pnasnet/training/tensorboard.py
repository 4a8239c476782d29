"""TensorBoard scalars of a training run (``--tensorboard DIR``), written with
``torch.utils.tensorboard`` (needs the ``tensorboard`` package: the ``train`` extra).

The layout is that of Keras' TensorBoard callback, which make_image_classifier's
``--summaries_dir`` used, so that training and validation curves overlay in one chart per metric:

    DIR/train/        epoch_loss, epoch_accuracy, epoch_learning_rate   (step: epoch, 1-based)
    DIR/validation/   epoch_loss, epoch_accuracy                        (step: epoch, 1-based)
    DIR/train_steps/  batch_loss                                        (step: optimizer step, 1-based)

The per-step loss has a run of its own because a resumed run hides what the interrupted one wrote
after its checkpoint with ``purge_step``, which applies to one run's steps: epochs there, optimizer
steps here. A run that starts over (head mode, a new full-mode run) purges from step 1, so one
``DIR`` holds one run's curves; give each run its own ``DIR`` to compare runs
(``tensorboard --logdir`` of their parent folder).

:class:`TensorBoardReporter` wraps the run's reporter: the trainers report each step's loss and
each epoch's record to it as they do to the console. Under torchrun only rank 0 has one.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .progress import TrainReporter
from .report import EpochRecord

__all__ = ["MISSING_TENSORBOARD", "RUNS", "TensorBoardReporter", "check_tensorboard_available"]

RUNS = ("train", "validation", "train_steps")
MISSING_TENSORBOARD = ("--tensorboard needs the tensorboard package (torch.utils.tensorboard writes with it): "
                       "pip install 'pnasnet[train]'")


def check_tensorboard_available() -> None:
    """Raise a clear ImportError naming the extra when ``tensorboard`` is not installed."""
    try:
        importlib.import_module("tensorboard")
    except ImportError as error:
        raise ImportError(MISSING_TENSORBOARD) from error


class TensorBoardReporter:
    """A :class:`~pnasnet.training.progress.TrainReporter` that passes everything on to ``inner``
    and writes the scalars to ``log_dir``. The writers open at the first ``epoch_start``, which
    tells where the run starts: epoch ``e`` after ``done`` of its ``steps`` steps purges the
    epochs from ``e`` on and the optimizer steps after ``(e - 1) * steps + done``."""

    def __init__(self, inner: TrainReporter, log_dir: str | os.PathLike):
        self.inner = inner
        self.log_dir = Path(log_dir)
        self._writers: dict[str, object] | None = None
        self._global_step = 0

    # ------------------------------------------------------------------------------ writers
    def _open(self, epoch: int, steps: int, done_steps: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        first_step = (epoch - 1) * steps + done_steps + 1
        purge = {"train": epoch, "validation": epoch, "train_steps": first_step}
        self._writers = {run: SummaryWriter(str(self.log_dir / run), purge_step=purge[run], flush_secs=30)
                         for run in RUNS}

    def _scalar(self, run: str, tag: str, value: float | None, step: int) -> None:
        if self._writers is not None and run in self._writers and value is not None:
            self._writers[run].add_scalar(tag, float(value), step)

    # ------------------------------------------------------------------------------ reporter
    def note(self, text: str) -> None:
        self.inner.note(text)

    def features_progress(self):
        return self.inner.features_progress()

    def epoch_start(self, epoch: int, epochs: int, steps: int, done_steps: int = 0) -> None:
        if self._writers is None:
            self._open(epoch, steps, done_steps)
        self._global_step = (epoch - 1) * steps + done_steps
        self.inner.epoch_start(epoch, epochs, steps, done_steps)

    def step(self, loss: float) -> None:
        self._global_step += 1
        self._scalar("train_steps", "batch_loss", loss, self._global_step)
        self.inner.step(loss)

    def epoch_end(self, record: EpochRecord, remaining_seconds: float | None) -> None:
        self._scalar("train", "epoch_loss", record.train_loss, record.epoch)
        self._scalar("train", "epoch_accuracy", record.train_accuracy, record.epoch)
        self._scalar("train", "epoch_learning_rate", record.learning_rate, record.epoch)
        self._scalar("validation", "epoch_loss", record.val_loss, record.epoch)
        self._scalar("validation", "epoch_accuracy", record.val_accuracy, record.epoch)
        if self._writers is not None:
            for writer in self._writers.values():
                writer.flush()  # an epoch's scalars are on disk before its checkpoint
        self.inner.epoch_end(record, remaining_seconds)

    def close(self) -> None:
        if self._writers is not None:
            for writer in self._writers.values():
                writer.close()
            self._writers = None
        self.inner.close()
