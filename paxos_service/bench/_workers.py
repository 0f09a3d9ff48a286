"""The load generator processes, as the benchmark drives them: each is a
spawned process (see :mod:`paxos_service.bench._loadgen`) with a pipe for
orders and results and a shared counter of requests completed."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from paxos_service.bench._errors import BenchError
from paxos_service.bench._loadgen import worker_main


@dataclass
class Worker:
    """One load generator process and the ends of it the benchmark holds."""

    process: BaseProcess
    conn: Connection
    counter: Any  # multiprocessing RawValue('q'): requests completed so far

    def recv(self, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if not self.process.is_alive():
                raise BenchError(
                    f"load generator {self.process.pid} exited ({self.process.exitcode}) {what}"
                )
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"load generator {self.process.pid} silent for {timeout:g}s {what}"
                )
        try:
            return self.conn.recv()
        except EOFError:
            raise BenchError(f"load generator {self.process.pid} went away {what}") from None

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(3.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3.0)
        self.conn.close()


def start_worker() -> Worker:
    """Start one load generator process."""
    # spawn, not fork: this process has gRPC threads running (health checks).
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    counter = context.RawValue("q", 0)
    process = context.Process(
        target=worker_main, args=(child, counter), name="paxos-bench-load", daemon=True
    )
    process.start()
    child.close()
    return Worker(process, parent, counter)
