"""Graceful shutdown: SIGTERM (or Ctrl+C) lets the requests in flight finish.

The order that makes it work: the HTTP process stops accepting connections and waits for the
requests it holds (uvicorn's graceful shutdown), while the inference worker keeps computing them;
only then does the worker stop. LitServe's own shutdown does the first part in that order
(HTTP processes first, then workers), so the main process only has to start it on a signal.

Signals may also reach every process at once (``kill -- -PGID``, Ctrl+C in a terminal, systemd's
default): uvicorn handles its own; the inference worker must not die before the HTTP side has
drained, so it ignores SIGTERM / SIGINT until the HTTP process says it has stopped (an event set
on LitServe's ``on_server_end``), or its parent is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def signals_start_shutdown(start_shutdown: Callable[[], bool]) -> Iterator[None]:
    """While inside, SIGTERM / SIGINT in this process call ``start_shutdown`` from a fresh thread
    (it may block, e.g. on a multiprocessing manager that the interrupted main thread is using).
    ``start_shutdown`` returns False while there is nothing to shut down gracefully yet (still
    starting): then the signal interrupts the start with KeyboardInterrupt."""
    main_pid = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != main_pid:
            return  # a helper process forked from here inherited this handler: the main process decides
        ready = threading.Event()
        result: list[bool] = []

        def run():
            try:
                result.append(start_shutdown())
            except Exception:  # cannot tell: treat as "still starting"
                result.append(False)
            ready.set()

        threading.Thread(target=run, name="pnasnet-shutdown", daemon=True).start()
        ready.wait(5.0)
        if result and not result[0]:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_waits_for_http_drain(http_stopped, parent_pid: int) -> None:
    """In an inference worker: ignore SIGTERM / SIGINT until ``http_stopped`` is set or the parent
    process is gone, then exit on them (nobody is waiting for an answer any more)."""

    def on_signal(signum, frame):
        if http_stopped.is_set() or os.getppid() != parent_pid:
            raise SystemExit(0)

    for sig in _SIGNALS:
        signal.signal(sig, on_signal)
