"""Sampling profiles of the server processes with py-spy, when it is installed.

py-spy comes with the dev install (``make install``). It reads a running
CPython's stacks from outside, so the servers need no change and no restart.
It needs ptrace rights over them: root, or the same user with
``kernel.yama.ptrace_scope`` at 0. Each sample pauses the process for a few
microseconds, so a profiled run is slightly slower than an unprofiled one.

Only threads holding the GIL are sampled (``py-spy --gil``): that is the
Python work, the budget a CPython server cannot spread over cores. Time in C
with the GIL released (SQLite commits and their fsync, gRPC's core) is not in
these profiles; the process CPU figures in the report include it.

The raw output (one line per distinct stack, ``frame;frame;... count``) is kept
next to the report; the summary names the functions with the most samples on
top of the stack ("self", where the CPU goes) and anywhere in it
("inclusive", what it is spent for; event-loop, thread-pool and start-up
frames, which are under everything, are left out).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Samples per second.
RATE = 100
TOP = 12
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
#: Frames that are under (nearly) every sample: dispatch, not work.
_PLUMBING_FILES = frozenset(
    {"runners.py", "base_events.py", "events.py", "threading.py", "thread.py", "<frozen runpy>"}
)
_PLUMBING_FUNCTIONS = frozenset({"<module>", "main"})


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    output: Path
    process: subprocess.Popen[bytes]


def start(py_spy: str, name: str, pid: int, seconds: float, output: Path) -> Recording:
    """Start sampling ``pid`` for ``seconds`` into ``output`` (raw collapsed stacks)."""
    command = [
        py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(RATE), "--gil", "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return Recording(name, output, process)


def stop(recording: Recording) -> None:
    """End a recording early (the benchmark is stopping)."""
    if recording.process.poll() is None:
        recording.process.kill()
    recording.process.wait()


def finish(recording: Recording, timeout: float) -> dict[str, Any]:
    """Wait for a recording and summarize it (or say why there is none)."""
    try:
        _, stderr = recording.process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        recording.process.kill()
        _, stderr = recording.process.communicate()
    if not recording.output.exists():
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
        return {"error": tail[0] if tail else f"py-spy exited {recording.process.returncode}"}
    return summarize(recording.output.read_text(errors="replace"))


def _function(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines merged."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({Path(match['file']).name})"


def _plumbing(function: str) -> bool:
    name, _, rest = function.partition(" (")
    return (
        name in _PLUMBING_FUNCTIONS
        or rest.rstrip(")") in _PLUMBING_FILES
        or (name.startswith("_") and rest.startswith("cli.py"))
    )


def summarize(raw: str, top: int = TOP) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count = int(match["count"])
        frames = [_function(f) for f in match["stack"].split(";") if f]
        # py-spy starts each stack with the thread ("process 12:\"MainThread\"").
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for function in set(frames):
            if not _plumbing(function):
                inclusive[function] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": share(self_time), "inclusive_pct": share(inclusive)}
