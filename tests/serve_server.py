"""A real ``pnasnet serve`` in a subprocess on 127.0.0.1, for the serving tests and the load test.

The server runs in its own process group (LitServe starts a manager, an HTTP process and inference
workers); stopping it sends SIGTERM to the main process, waits, and then SIGKILLs whatever is left
of the group, so no process outlives a test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TINY_CHECKPOINT = REPO / "tests" / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``pnasnet serve ARGS --port P`` until :meth:`stop`; ``url`` is its base address."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 start_timeout: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        command = [sys.executable, "-m", "pnasnet", "serve", *map(str, args), "--host", "127.0.0.1",
                   "--port", str(self.port)]
        # Output to a file, not a pipe: a full pipe would block the server's logging.
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM to the main process only, as a container runtime sends it."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, grace: float = 20.0) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group: workers, manager, HTTP process
        except (ProcessLookupError, PermissionError):
            pass
        for pid in session_members(self.process.pid):  # Ray's actors run in groups of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.wait(10)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def session_members(sid: int) -> list[int]:
    """Processes of the session ``sid`` (the server's: it was started with a session of its own)."""
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text ``text`` (``name{labels}``); 0 when absent."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0
