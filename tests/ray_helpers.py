"""Helpers for the Ray engine tests. Ray workers import this module by name (the tests put this
folder on their PYTHONPATH), to unpickle :class:`SlowModel`."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

from pnasnet.model import PNASNet


class SlowModel(PNASNet):
    """A PNASNet whose ``features`` first notes its process id and call number in ``pid_dir`` (a
    file ``PID.N``, when set), then sleeps ``delay`` seconds: time to kill the job, or the actor, in the middle of a batch. Same
    state dict as the model it copies, hence the same ``parameters_sha256``: a run with the plain
    model resumes its output."""

    delay: float = 0.0
    pid_dir: str | None = None
    calls: int = 0

    def features(self, images):
        if self.pid_dir:
            self.calls += 1
            Path(self.pid_dir, f"{os.getpid()}.{self.calls}").touch()
        time.sleep(self.delay)
        return super().features(images)


def slow_copy(model: PNASNet, delay: float, pid_dir: str | os.PathLike | None = None) -> SlowModel:
    slow = copy.deepcopy(model)
    slow.__class__ = SlowModel
    slow.delay = delay
    slow.pid_dir = os.fspath(pid_dir) if pid_dir else None
    return slow


def parts(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.parquet")) if Path(folder).is_dir() else []


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
