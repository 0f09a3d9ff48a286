"""The in-memory ``grpc.aio.Channel`` and the multicallables the generated
stubs get from it: a call serializes its request and hands it to the router."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from tests.simulation.realsim.net.calls import (
    CallBase,
    Rpc,
    SimUnaryStreamCall,
    SimUnaryUnaryCall,
)
from tests.simulation.realsim.net.wire import DEFAULT_MAX_RECEIVE, as_pairs, int_option

if TYPE_CHECKING:
    from tests.simulation.realsim.net.router import SimNetwork


class SimUnaryUnaryMultiCallable(grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __init__(
        self,
        channel: SimChannel,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> SimUnaryUnaryCall:
        loop = asyncio.get_running_loop()
        call = SimUnaryUnaryCall(loop, None if timeout is None else loop.time() + timeout)
        self._channel._start(
            call, self._method, request, self._serializer, self._deserializer,
            metadata, wait_for_ready, streaming=False,
        )  # fmt: skip
        return call


class SimUnaryStreamMultiCallable(grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    def __init__(
        self,
        channel: SimChannel,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> SimUnaryStreamCall:
        loop = asyncio.get_running_loop()
        call = SimUnaryStreamCall(loop, None if timeout is None else loop.time() + timeout)
        self._channel._start(
            call, self._method, request, self._serializer, self._deserializer,
            metadata, wait_for_ready, streaming=True,
        )  # fmt: skip
        return call


class SimChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` from node ``source`` to ``address``; made by
    :meth:`SimNetwork.channel`. ``options``: ``grpc.max_receive_message_length``
    (default 4 MiB) and ``grpc.max_send_message_length`` (default unlimited)
    are enforced, the rest ignored."""

    def __init__(
        self,
        network: SimNetwork,
        source: str,
        address: str,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.network = network
        self.source = source
        self.address = address
        self.max_receive = int_option(
            options, "grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE
        )
        self.max_send = int_option(options, "grpc.max_send_message_length", -1)
        self._calls: dict[int, CallBase] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<SimChannel {self.source}->{self.address}>"

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> SimUnaryUnaryMultiCallable:
        return SimUnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> SimUnaryStreamMultiCallable:
        return SimUnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("client-streaming calls are not simulated")

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("bidirectional-streaming calls are not simulated")

    def _start(
        self,
        call: CallBase,
        method: str,
        request: Any,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
        metadata: Any,
        wait_for_ready: bool | None,
        *,
        streaming: bool,
    ) -> None:
        if self._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        data = serializer(request) if serializer is not None else request
        rpc = Rpc(
            rpc_id=next(self.network._ids),
            channel=self,
            method=method,
            request=data,
            metadata=as_pairs(metadata),
            deadline=call._deadline,
            streaming=streaming,
            wait_for_ready=bool(wait_for_ready),
            call=call,
            deserializer=deserializer,
        )
        call._rpc = rpc
        self._calls[rpc.id] = call
        self.network._start(rpc)

    async def close(self, grace: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if grace:
            loop = asyncio.get_running_loop()
            until = loop.time() + grace
            while self._calls and loop.time() < until:  # noqa: ASYNC110
                await asyncio.sleep(min(0.01, until - loop.time()))
        for call in list(self._calls.values()):
            call.cancel()

    async def __aenter__(self) -> SimChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self.close(None)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        node = self.network.node_at(self.address)
        if node is not None and self.network.reachable(self.source, node):
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() is last_observed_state:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    async def channel_ready(self) -> None:
        """Wait (polling every 0.1 virtual seconds) until the address is
        attached and reachable both ways."""
        while self.get_state(True) is not grpc.ChannelConnectivity.READY:
            if self._closed:
                raise grpc.aio.UsageError("Channel is closed.")
            await asyncio.sleep(0.1)
