"""The client side of one call: what the network knows of it (:class:`Rpc`)
and the call objects a stub returns, unary and response-streaming, which
behave as grpc.aio's (await, iterate, cancel, metadata, AioRpcError)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from tests.simulation.realsim.net.wire import EOF, OK, MetadataPairs, aio_metadata

if TYPE_CHECKING:
    from tests.simulation.realsim.net.channel import SimChannel
    from tests.simulation.realsim.net.server_call import ServerCall


class Rpc:
    """A client call: the request, the client-side call object and the server
    calls (one per delivered request copy)."""

    def __init__(
        self,
        *,
        rpc_id: int,
        channel: SimChannel,
        method: str,
        request: bytes,
        metadata: MetadataPairs,
        deadline: float | None,
        streaming: bool,
        wait_for_ready: bool,
        call: CallBase,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self.id = rpc_id
        self.channel = channel
        self.src = channel.source
        self.address = channel.address
        self.method = method
        self.request = request
        self.metadata = metadata
        self.deadline = deadline
        self.streaming = streaming
        self.wait_for_ready = wait_for_ready
        self.call = call
        self.deserializer = deserializer
        self.servers: list[ServerCall] = []
        #: The client cancelled or passed its deadline: late request copies are not run.
        self.gave_up = False
        self.timeout_armed = False
        self.deadline_timer: asyncio.TimerHandle | None = None
        # response streams
        self.stream_owner: ServerCall | None = None
        self.inbox: deque[tuple[float, str, Any]] = deque()
        self.pump: asyncio.TimerHandle | None = None
        self.last_arrival = 0.0
        self.broken = False


class CallBase:
    """What grpc.aio's client call objects share."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        self._loop = loop
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._initial: MetadataPairs | None = None
        self._trailing: MetadataPairs = ()
        self._debug = ""
        self._local_cancel = False
        self._status = loop.create_future()
        self._initial_known = loop.create_future()
        self._connected = loop.create_future()
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._rpc: Rpc | None = None

    # status (set by the network)

    def _set_initial(self, initial: MetadataPairs) -> None:
        if self._initial is None:
            self._initial = initial
            if not self._initial_known.done():
                self._initial_known.set_result(None)

    def _set_connected(self) -> None:
        if not self._connected.done():
            self._connected.set_result(None)

    def _set_status(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: MetadataPairs = (),
        initial: MetadataPairs = (),
        debug: str = "",
    ) -> bool:
        if self._code is not None:
            return False
        self._code = code
        self._details = details
        self._trailing = trailing
        self._debug = debug or f"sim: {code.name}: {details}"
        self._set_initial(initial)
        self._set_connected()
        if not self._status.done():
            self._status.set_result(None)
        self._status_changed()
        rpc = self._rpc
        if rpc is not None:
            rpc.channel._calls.pop(rpc.id, None)
            if rpc.deadline_timer is not None:
                rpc.deadline_timer.cancel()
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": "exception in a call's done callback", "exception": exc}
                )
        return True

    def _status_changed(self) -> None:
        pass

    def _error(self) -> grpc.aio.AioRpcError:
        assert self._code is not None
        return grpc.aio.AioRpcError(
            self._code,
            aio_metadata(self._initial or ()),
            aio_metadata(self._trailing),
            self._details,
            self._debug,
        )

    # the grpc.aio.Call interface

    def cancelled(self) -> bool:
        return self._code is grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._code is not None

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    def cancel(self) -> bool:
        if self._code is not None:
            return False
        self._local_cancel = True
        self._set_status(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        if self._rpc is not None:
            self._rpc.channel.network._client_gave_up(self._rpc, "cancelled")
        return True

    def add_done_callback(self, callback: Any) -> None:
        if self.done():
            callback(self)
        else:
            self._done_callbacks.append(callback)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await asyncio.shield(self._initial_known)
        return aio_metadata(self._initial or ())

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await asyncio.shield(self._status)
        return aio_metadata(self._trailing)

    async def code(self) -> grpc.StatusCode:
        await asyncio.shield(self._status)
        assert self._code is not None
        return self._code

    async def details(self) -> str:
        await asyncio.shield(self._status)
        return self._details

    async def debug_error_string(self) -> str:
        await asyncio.shield(self._status)
        return self._debug

    async def wait_for_connection(self) -> None:
        await asyncio.shield(self._connected)
        if self._local_cancel:
            raise asyncio.CancelledError()
        if self._code is not None and self._code is not OK:
            raise self._error()


class SimUnaryUnaryCall(CallBase, grpc.aio.UnaryUnaryCall[Any, Any]):
    """Await it once (or more) for the response; errors raise AioRpcError, a
    cancelled call raises asyncio.CancelledError."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        super().__init__(loop, deadline)
        self._response: Any = None
        self._done_future: asyncio.Future[None] = loop.create_future()

    def _status_changed(self) -> None:
        if not self._done_future.done():
            self._done_future.set_result(None)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            yield from self._done_future.__await__()
        except asyncio.CancelledError:
            if not self.done():
                self.cancel()
            raise
        if self._local_cancel:
            raise asyncio.CancelledError()
        if self._code is OK:
            return self._response
        raise self._error()


class SimUnaryStreamCall(CallBase, grpc.aio.UnaryStreamCall[Any, Any]):
    """Iterate it (``async for``) or ``read()`` it; a non-OK status raises
    AioRpcError after the messages that came before it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        super().__init__(loop, deadline)
        self._messages: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _push(self, message: Any) -> None:
        self._messages.append(message)
        self._wake()

    def _status_changed(self) -> None:
        self._wake()

    async def read(self) -> Any:
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._local_cancel:
                raise asyncio.CancelledError()
            if self._code is not None:
                if self._code is OK:
                    return EOF
                raise self._error()
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                if not self.done():
                    self.cancel()
                raise
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is EOF:
                return
            yield message
