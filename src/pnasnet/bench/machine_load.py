"""How busy the machine is: whole-machine and per-process CPU time from /proc, and waiting for the
machine to settle before a run.
"""

from __future__ import annotations

import os
import time


def proc_busy_jiffies() -> tuple[int, int]:
    """(total, busy) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), sum(values) - idle


def pid_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds``."""
    t0, b0 = proc_busy_jiffies()
    time.sleep(seconds)
    t1, b1 = proc_busy_jiffies()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_for_idle(limit: float, max_wait: float, say=print) -> dict:
    """Poll until the machine is less than ``limit`` busy (or ``max_wait`` seconds passed)."""
    start = time.time()
    samples = []
    while True:
        busy = machine_busy(3.0)
        samples.append(round(busy, 3))
        if busy <= limit or time.time() - start >= max_wait:
            break
        say(f"machine {busy:.0%} busy; waiting for it to settle ({time.time() - start:.0f}s)")
    return {"busy_before_start": samples[-1], "waited_s": round(time.time() - start, 1),
            "loadavg": os.getloadavg()}
