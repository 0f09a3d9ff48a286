"""What a process costs, read straight from /proc (psutil is not a dependency).

Linux only; every reader returns None for a process that is gone (or when
/proc is not there), so a dying server never breaks a report.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces, so
    # split after its closing parenthesis: utime and stime are fields 14 and 15.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS) of the process, in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024  # reported in kB
            except (IndexError, ValueError):
                return None
    return None


def tree_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        try:
            return path.stat().st_size
        except OSError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def node_bytes(data_dir: Path) -> dict[str, int]:
    """Bytes on disk per node under a cluster's data directory: a directory
    is one node (etcd's members), and files are grouped by the name before
    ``.db`` (``acceptor-0.db``, its WAL, ``learner-0.db.snapshot``, ...)."""
    out: dict[str, int] = {}
    try:
        entries = sorted(data_dir.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.is_dir():
            if entry.name != "logs":
                out[entry.name] = tree_bytes(entry)
        elif ".db" in entry.name:
            name = entry.name.split(".db", 1)[0]
            out[name] = out.get(name, 0) + tree_bytes(entry)
    return out
