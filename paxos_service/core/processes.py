"""Child processes: stopping the ones we started (politely, then firmly, by
PID), and a child that ends with its parent (``paxos cluster``'s nodes)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

#: Set by a parent for its children: the parent's PID. A child that sees it
#: asks the kernel for SIGTERM when that parent dies (see :func:`follow_parent`).
PARENT_ENV = "PAXOS_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
    """End (SIGTERM, so gracefully) when the parent named by ``PAXOS_PARENT_PID``
    dies, even by SIGKILL: nothing else ties a child's life to its parent, and
    a killed ``paxos cluster`` left its nodes running on their ports. Linux
    only; elsewhere, and without the variable, it does nothing."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    if str(os.getppid()) != parent:
        # Started by someone else with a copy of the environment (a node
        # restarted by hand), or the parent died before we got here.
        if not _alive(int(parent)):
            os.kill(os.getpid(), signal.SIGTERM)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != parent:
        # The parent died while we asked: the kernel will not tell us.
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
