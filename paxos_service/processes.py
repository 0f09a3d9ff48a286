"""Stopping child processes we started: politely, then firmly, by PID."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable


def stop_all(processes: Iterable[subprocess.Popen[bytes] | None], timeout: float) -> None:
    """SIGTERM every live process, wait for all of them within one shared
    ``timeout``, and SIGKILL (then reap) whichever is still running."""
    started = [p for p in processes if p is not None]
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
