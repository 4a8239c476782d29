"""Reporting a training run, and stopping it cleanly on Ctrl-C.

The training code never prints: it calls a :class:`TrainReporter`. :class:`ConsoleReporter` shows
a tqdm bar per epoch (steps, loss, ETA of the epoch) on a terminal and one line per epoch with the
metrics and the ETA of the run; :class:`SilentReporter` shows nothing.

:func:`stop_on_interrupt` turns the first Ctrl-C (SIGINT) into a request that the training loop
honours after the current optimizer step, once it has saved a checkpoint; a second Ctrl-C
interrupts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator, Protocol, TextIO

from .report import EpochRecord

__all__ = ["ConsoleReporter", "SilentReporter", "StopRequest", "TrainReporter", "TrainingInterrupted",
           "format_seconds", "stop_on_interrupt"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after saving its state; the same call resumes it."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """Set by the SIGINT handler, polled by the training loop between steps."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            return  # a forked decoding worker inherited this handler: Ctrl-C is the main process's business
        if request.requested:
            raise KeyboardInterrupt  # second Ctrl-C: now
        request.requested = True
        newline = "\n" if sys.stderr.isatty() else ""  # after the ^C the terminal echoed
        print(f"{newline}pnasnet: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TrainReporter(Protocol):
    def note(self, text: str) -> None:
        """A line of information (data summary, unreadable files, resume)."""

    def features_progress(self):
        """A :class:`pnasnet.tasks.Progress` for the feature extraction of head mode, or None."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, done_steps: int = 0) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` starts, ``done_steps`` of its ``steps`` done already."""

    def step(self, loss: float) -> None:
        ...

    def epoch_end(self, record: EpochRecord, remaining_seconds: float | None) -> None:
        ...

    def close(self) -> None:
        ...


class SilentReporter:
    def note(self, text: str) -> None:
        pass

    def features_progress(self):
        return None

    def epoch_start(self, epoch: int, epochs: int, steps: int, done_steps: int = 0) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, record: EpochRecord, remaining_seconds: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleReporter:
    """Notes and epoch lines on ``stream`` (default stderr); bars only on a terminal, and only
    once an epoch has lasted ``delay`` seconds. Epoch lines: the first, the last, and otherwise
    at most one per ``line_interval`` seconds (head epochs take milliseconds each)."""

    def __init__(self, *, stream: TextIO | None = None, show_bar: bool = True, delay: float = 1.0,
                 line_interval: float = 1.0):
        self.stream = stream
        self.show_bar = show_bar
        self.delay = delay
        self.line_interval = line_interval
        self._bar = None
        self._epochs = 0
        self._last_line = float("-inf")

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _write(self, line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(line, file=self._out())

    def note(self, text: str) -> None:
        self._write(f"pnasnet: {text}" if not text.startswith(" ") else text)

    def features_progress(self):
        from ..tasks import TqdmProgress

        class BarOnly(TqdmProgress):
            # unreadable files are listed once, with the data summary, not also while extracting
            def advance(self, paths, errors):
                super().advance(paths, [None] * len(paths))

        return BarOnly(show_bar=self.show_bar, stream=self._out(), description="features")

    def epoch_start(self, epoch: int, epochs: int, steps: int, done_steps: int = 0) -> None:
        from tqdm.auto import tqdm

        self._epochs = epochs
        stream = self._out()
        on_terminal = hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=steps, initial=done_steps, unit="step", file=stream, desc=f"epoch {epoch}/{epochs}",
                         disable=not (self.show_bar and on_terminal), delay=self.delay, leave=False,
                         dynamic_ncols=True)

    def step(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self._bar.update(1)

    def epoch_end(self, record: EpochRecord, remaining_seconds: float | None) -> None:
        self.close()
        now = time.monotonic()
        if record.epoch not in (1, self._epochs) and now - self._last_line < self.line_interval:
            return
        self._last_line = now
        parts = [f"epoch {record.epoch}/{self._epochs}", f"loss {record.train_loss:.4f}", f"accuracy {record.train_accuracy:.4f}"]
        if record.val_accuracy is not None:
            parts += [f"val_loss {record.val_loss:.4f}", f"val_accuracy {record.val_accuracy:.4f}"]
        parts.append(format_seconds(record.seconds))
        if remaining_seconds and remaining_seconds >= 1:
            parts.append(f"ETA {format_seconds(remaining_seconds)}")
        self._write("  ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
