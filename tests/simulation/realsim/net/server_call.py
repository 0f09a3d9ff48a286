"""The server side of one call: a handler run for one delivered copy of a
request, through the server's interceptors, with the real wire format and
size limits. Its status and stream messages go back through the router."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from tests.simulation.realsim.net.context import SimContext
from tests.simulation.realsim.net.wire import OK, Status, too_big

if TYPE_CHECKING:
    from tests.simulation.realsim.net.calls import Rpc
    from tests.simulation.realsim.net.router import SimNetwork
    from tests.simulation.realsim.net.server import Endpoint, SimServer


class ServerCall:
    """One run of a handler for one delivered copy of a request."""

    def __init__(self, network: SimNetwork, rpc: Rpc, endpoint: Endpoint, deadline: float | None):
        self.network = network
        self.rpc = rpc
        self.endpoint = endpoint
        self.node = endpoint.node
        self.id = next(network._ids)
        self.deadline = deadline
        self.context = SimContext(self)
        self._handler_context: Any = self.context
        self.task: asyncio.Task[None] | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.status_sent = False
        self.closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.endpoint.calls[self.id] = self
        self.task = loop.create_task(
            self._run(),
            name=f"rpc#{self.id} {self.rpc.method} {self.rpc.src}->{self.node}",
            context=self.endpoint.context.copy(),
        )
        if self.deadline is not None:
            self.deadline_timer = loop.call_at(
                self.deadline, self.cancel, "deadline", context=self.network._context
            )

    def close(self, cancelled: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.calls.pop(self.id, None)
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self.context._finish(cancelled)

    def cancel(self, why: str) -> None:
        """The client went away, the deadline passed, or the node is gone."""
        if self.closed:
            return
        self.network._trace(self.rpc.src, self.node, self.rpc.method, f"server-cancelled:{why}")
        self.close(cancelled=True)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # what the handler sends

    def send_status(
        self, code: grpc.StatusCode, details: str, response: bytes | None = None
    ) -> None:
        if self.status_sent or self.closed:
            return
        self.status_sent = True
        ctx = self.context
        status = Status(code, details, ctx._trailing, ctx._initial or (), response)
        self.close(cancelled=False)
        if self.rpc.streaming:
            self.network._stream_out(self, "status", status)
        else:
            self.network._reply(self, status)

    def send_message(self, message: Any) -> None:
        handler_serializer = self._serializer
        data = handler_serializer(message) if handler_serializer is not None else message
        if too_big(len(data), self.endpoint.server.max_send):
            raise SendTooBig(len(data), self.endpoint.server.max_send)
        self.network._stream_out(self, "message", data)

    _serializer: Callable[[Any], bytes] | None = None

    # the handler task

    async def _run(self) -> None:
        rpc = self.rpc
        network = self.network
        server = self.endpoint.server
        accepted = await self._accept(server)
        if accepted is None:
            return
        handler, request = accepted
        self._serializer = handler.response_serializer
        try:
            if rpc.streaming:
                await self._stream(handler, request)
                response_bytes = None
            else:
                behavior = handler.unary_unary
                assert behavior is not None
                result = behavior(request, self._handler_context)
                response = await result if inspect.isawaitable(result) else result
                response_bytes = self._serialize(response)
        except grpc.aio.AbortError as exc:
            if exc is not self.context._abort_exception:
                network._unexpected(self.node, rpc.method, exc)
                self.send_status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            return
        except SendTooBig as exc:
            self.send_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        except Exception as exc:
            if self.context._abort_exception is not None:
                network.suppressed_aborts.append(f"{self.node} {rpc.method}: then raised {exc!r}")
            network._unexpected(self.node, rpc.method, exc)
            code = self.context._code
            if not isinstance(code, grpc.StatusCode) or code is OK:
                code = grpc.StatusCode.UNKNOWN
            self.send_status(code, f"Unexpected {type(exc)}: {exc}")
            return
        if self.context._abort_exception is not None:
            network.suppressed_aborts.append(f"{self.node} {rpc.method}: abort swallowed")
            return
        code = self.context._code
        if not isinstance(code, grpc.StatusCode):
            code = OK
        if response_bytes is not None and too_big(len(response_bytes), server.max_send):
            self.send_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(response_bytes)} vs. {server.max_send})",
            )
            return
        self.send_status(code, self.context._details or "", response_bytes)

    async def _accept(
        self, server: SimServer
    ) -> tuple[grpc.RpcMethodHandler[Any, Any], Any] | None:
        """The handler and the parsed request, or None once the status that
        refuses the call (no such method, too big, unparsable) is sent."""
        rpc = self.rpc
        network = self.network
        try:
            handler = await self._find_handler(server)
        except Exception as exc:
            network._unexpected(self.node, rpc.method, exc)
            self.send_status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            return None
        if handler is None:
            self.send_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return None
        if handler.request_streaming or bool(handler.response_streaming) != rpc.streaming:
            error = TypeError(f"{rpc.method}: the stub and the handler disagree on streaming")
            network._unexpected(self.node, rpc.method, error)
            self.send_status(grpc.StatusCode.INTERNAL, str(error))
            return None
        if too_big(len(rpc.request), server.max_receive):
            self.send_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({len(rpc.request)} vs. {server.max_receive})",
            )
            return None
        try:
            deserializer = handler.request_deserializer
            request = deserializer(rpc.request) if deserializer is not None else rpc.request
        except Exception as exc:
            network._unexpected(self.node, rpc.method, exc)
            self.send_status(grpc.StatusCode.INTERNAL, "Failed to deserialize request")
            return None
        return handler, request

    async def _find_handler(self, server: SimServer) -> grpc.RpcMethodHandler[Any, Any] | None:
        details = cygrpc._HandlerCallDetails(self.rpc.method, self.context.invocation_metadata())
        if not server.interceptors:
            return server.lookup(self.rpc.method)
        interceptors = iter(server.interceptors)

        async def continuation(call_details: Any) -> Any:
            interceptor = next(interceptors, None)
            if interceptor is None:
                return server.lookup(call_details.method)
            return await interceptor.intercept_service(continuation, call_details)

        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        return handler

    def _serialize(self, response: Any) -> bytes:
        serializer = self._serializer
        data = serializer(response) if serializer is not None else response
        if not isinstance(data, bytes):
            raise TypeError(f"response serialized to {type(data).__name__}, not bytes")
        return data

    async def _stream(self, handler: grpc.RpcMethodHandler[Any, Any], request: Any) -> None:
        behavior = handler.unary_stream
        assert behavior is not None
        result: Any = behavior(request, self._handler_context)
        if hasattr(result, "__anext__"):
            try:
                async for message in result:
                    self.send_message(message)
                    await asyncio.sleep(0)  # grpc awaits each write
            finally:
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif inspect.isawaitable(result):
            await result  # a handler that writes with context.write()
        elif result is not None:
            for message in result:
                self.send_message(message)
                await asyncio.sleep(0)


class SendTooBig(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Sent message larger than max ({size} vs. {limit})")
