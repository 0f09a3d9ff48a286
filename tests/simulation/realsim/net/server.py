"""The in-memory ``grpc.aio.Server``: it collects the handlers the generated
code registers and, once started, attaches its addresses to the network.
The calls themselves run in :mod:`.server_call`."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from tests.simulation.realsim.net.wire import DEFAULT_MAX_RECEIVE, int_option

if TYPE_CHECKING:
    from tests.simulation.realsim.net.router import SimNetwork
    from tests.simulation.realsim.net.server_call import ServerCall


class SimServer(grpc.aio.Server):
    """A ``grpc.aio.Server`` that only collects handlers.

    ``options``: the real server's options (``grpc.max_receive_message_length``
    (default 4 MiB) and ``grpc.max_send_message_length`` (default unlimited)
    are enforced, the rest ignored). ``interceptors``: server interceptors,
    run per call in order, as grpc.aio does.

    Used directly, :meth:`SimNetwork.attach` makes it reachable. Or
    :meth:`bind` it to a network, node and context and use it as the real
    code does: ``add_insecure_port`` then ``start`` (attaches every port's
    address), ``stop(grace)`` (refuses new calls, gives calls in flight
    ``grace`` seconds, then detaches), ``wait_for_termination``.
    """

    def __init__(
        self,
        *,
        options: Sequence[tuple[str, Any]] | None = None,
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        self.options = list(options or ())
        self.interceptors = tuple(interceptors or ())
        self.max_receive = int_option(
            options, "grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE
        )
        self.max_send = int_option(options, "grpc.max_send_message_length", -1)
        self._registered: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self.addresses: list[str] = []
        self._network: SimNetwork | None = None
        self._node: str | None = None
        self._context: contextvars.Context | None = None
        self._started = False
        self._stopped = False
        self._terminated: asyncio.Event | None = None

    # registration (what the generated code calls)

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler

    def lookup(self, method: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler for ``/pkg.Service/Method``, without interceptors."""
        handler = self._registered.get(method)
        if handler is not None:
            return handler
        details = cygrpc._HandlerCallDetails(method, ())
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None

    @property
    def methods(self) -> list[str]:
        """Registered method paths, in registration order."""
        return list(self._registered)

    # lifecycle (what the real code calls on a grpc.aio.Server)

    def bind(self, network: SimNetwork, node: str, context: contextvars.Context) -> None:
        self._network = network
        self._node = node
        self._context = context

    def add_insecure_port(self, address: str) -> int:
        self.addresses.append(address)
        port = address.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() and int(port) > 0 else len(self.addresses)

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        return self.add_insecure_port(address)

    async def start(self) -> None:
        if self._started:
            raise grpc.aio.UsageError("server already started")
        self._started = True
        self._terminated = asyncio.Event()
        if self._network is not None:
            assert self._node is not None and self._context is not None
            for address in self.addresses:
                self._network.attach(address, self._node, self, self._context)

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        network = self._network
        if network is not None:
            for address in self.addresses:
                network.drain(address)
            if grace:
                loop = asyncio.get_running_loop()
                until = loop.time() + grace
                while loop.time() < until and any(  # noqa: ASYNC110 - polls virtual time
                    network.calls_in_flight(a) for a in self.addresses
                ):
                    await asyncio.sleep(min(0.01, until - loop.time()))
            for address in self.addresses:
                if (
                    network.node_at(address) is not None
                    and network._endpoints[address].server is self
                ):
                    network.detach(address)
        if self._terminated is not None:
            self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._terminated is None:
            self._terminated = asyncio.Event()
        if self._terminated.is_set():
            return True
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class Endpoint:
    """An attached address: the node and server behind it, and its calls in flight."""

    address: str
    node: str
    server: SimServer
    context: contextvars.Context
    #: Server calls that have not sent their status (nor been cancelled), by id.
    calls: dict[int, ServerCall] = field(default_factory=dict)
    draining: bool = False
