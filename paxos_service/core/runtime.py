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

import contextvars
import random
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
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


def rng() -> random.Random:
    """A random source for a driver: seeded from the OS, or from the
    simulation's seed, so that a run replays exactly."""
    runtime = current()
    if runtime is not None:
        return runtime.rng()
    return random.Random()
