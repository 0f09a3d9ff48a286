"""The seam between a node and the world it runs in.

Node code (servicers, drivers, storage threads) reaches the outside through
three calls only: :func:`paxos_service.transport.server.start_server` to listen,
:func:`paxos_service.transport.tls.aio_channel` to dial a peer, and
:func:`storage_executor` for the thread its SQLite connection lives on; time
comes from :mod:`paxos_service.core.clock`. With no runtime installed these are the
real thing (grpc.aio, an OS thread, the loop's monotonic clock). The
deterministic simulation installs its own for the node it is running, in that
node's :mod:`contextvars` context, and runs the same code on an in-memory
network, a simulated storage thread and virtual time.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import multiprocessing
import os
import random
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Protocol


class Runtime(Protocol):
    """What a simulated world provides in place of the real one."""

    async def serve(
        self,
        config: Any,
        service_name: str,
        register: Callable[[Any], None],
        *,
        serving: bool,
        extra_services: tuple[str, ...],
    ) -> Any:
        """Listen as ``config.listen`` does; returns a ``server.RoleServer``."""
        ...

    def channel(self, address: str, options: list[tuple[str, Any]] | None) -> Any:
        """A ``grpc.aio.Channel`` to ``address``."""
        ...

    def storage_executor(self, name: str) -> Executor:
        """The one thread a node's storage calls run on, in order."""
        ...

    def rng(self) -> random.Random:
        """A random source for the node (derived from the run's seed)."""
        ...


_CURRENT: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "paxos_runtime", default=None
)


def current() -> Runtime | None:
    """The runtime installed for this context; None: the real world."""
    return _CURRENT.get()


def install(runtime: Runtime | None) -> contextvars.Token[Runtime | None]:
    """Run this context (and the tasks it creates from now on) in ``runtime``."""
    return _CURRENT.set(runtime)


def storage_executor(name: str) -> Executor:
    """One storage thread: calls run strictly in submission order on it."""
    runtime = current()
    if runtime is not None:
        return runtime.storage_executor(name)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


def worker_process(name: str) -> Executor:
    """A process of its own, for CPU-heavy work such as a learner's snapshot:
    in a thread it would hold the GIL in long stretches and stall the event
    loop and the storage thread (measured: 0.6 s pauses of the apply path).
    Spawned, not forked: forking a process that runs gRPC's threads is
    unsafe. The simulation runs such work on a simulated storage thread."""
    runtime = current()
    if runtime is not None:
        return runtime.storage_executor(name)
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def _die_with_parent(parent: int) -> None:
    """In the worker process: end when the server ends, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), instead of living on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def rng() -> random.Random:
    """A random source for a driver: seeded from the OS, or from the
    simulation's seed, so that a run replays exactly."""
    runtime = current()
    if runtime is not None:
        return runtime.rng()
    return random.Random()
