"""A real ``paxos cluster`` process for the key-value client tests.

Runs ``paxos cluster`` as a user would and reads the nodes from its banner,
and collects the events of a sync watch on a thread, so that tests wait for
events in a queue instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from paxos_service.client.kv import Watch, WatchEvent
from tests.support.processes import clean_env, free_port

#: Generous per-call deadline: the first calls may wait for a leader election.
TIMEOUT = 10.0
#: How long a test waits for an expected watch event before failing.
EVENT_WAIT = 10.0


# A `paxos cluster` process --------------------------------------------------------


@dataclass
class ClusterProcess:
    """A running ``paxos cluster`` and the nodes its banner lists."""

    process: subprocess.Popen[str]
    banner: list[str]
    rows: list[tuple[str, int, str, int]]  # role, id, address, pid
    data_dir: Path

    def addresses(self, role: str) -> list[str]:
        return [address for r, _, address, _ in self.rows if r == role]

    def pids(self, role: str) -> list[int]:
        return [pid for r, _, _, pid in self.rows if r == role]

    @property
    def learners(self) -> list[str]:
        return self.addresses("learner")


def _port_range(count: int) -> int:
    """A base port with ``count`` free ports from it (checked just before use)."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError("no free range of ports")


@contextlib.contextmanager
def paxos_cluster(workdir: Path, *, learners: int = 1) -> Iterator[ClusterProcess]:
    """Run ``paxos cluster`` as a user would, until the context exits."""
    base = _port_range(5 + learners)
    data_dir = workdir / "data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "cluster",
            "--base-port",
            str(base),
            "--data-dir",
            str(data_dir),
            "--learners",
            str(learners),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env=clean_env(),
    )
    banner: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        banner.append(line.rstrip("\n"))
        if "Ctrl-C stops the cluster" in line:
            break
    else:
        process.wait(timeout=10)
        raise AssertionError("paxos cluster exited while starting:\n" + "\n".join(banner))
    rows = [
        (m[1], int(m[2]), m[3], int(m[4]))
        for m in (
            re.match(r"^(acceptor|proposer|learner)\s+(\d+)\s+(\S+)\s+(\d+)", b) for b in banner
        )
        if m
    ]
    running = ClusterProcess(process, banner, rows, data_dir)
    try:
        yield running
    finally:
        for pid in running.pids("proposer"):  # never leave a paused process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for *_, pid in rows:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# Collecting watch events without sleeping --------------------------------------------


class Collector:
    """Iterates a sync watch on a thread; the test waits for events in a queue."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: queue.Queue[WatchEvent | BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except BaseException as exc:
            self.events.put(exc)
        self.events.put(None)

    def take(self, n: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        while len(out) < n:
            item = self.events.get(timeout=EVENT_WAIT)
            if isinstance(item, BaseException):
                raise item
            assert item is not None, f"the watch ended after {out}"
            out.append(item)
        return out

    def close(self) -> None:
        self.watch.close()
        self.thread.join(timeout=EVENT_WAIT)
        assert not self.thread.is_alive(), "close() must end a blocked iteration"


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.revision) for e in events]
