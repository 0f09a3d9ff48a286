"""An in-memory gRPC network that the real grpc.aio code uses unchanged.

Pieces:

* :class:`SimServer`: a ``grpc.aio.Server`` the generated
  ``add_XServicer_to_server`` functions register into (health and reflection
  too), with the real server's interceptor chain.
* :class:`SimNetwork`: addresses, which node each belongs to, partitions and
  per-message faults drawn from one injected ``random.Random``.
* :class:`SimChannel`: a ``grpc.aio.Channel`` for the generated stubs. Its
  calls are ``grpc.aio.UnaryUnaryCall``/``UnaryStreamCall`` look-alikes, and
  errors reach the caller as real ``grpc.aio.AioRpcError`` with
  ``grpc.aio.Metadata``.
* :class:`SimContext`: the ``grpc.aio.ServicerContext`` handlers receive.

Messages really go through the wire format: the request is serialized with
the stub's serializer and parsed with the handler's deserializer, the reply
the other way round.

Handlers run as tasks created with ``context=`` a *copy* of the context the
address was attached with (as real grpc.aio gives each RPC its own task and
context copy), so the tasks they spawn belong to that node and context
variables they set (request ids in log lines) stay with the call.

The fault model (all draws from the network's rng, in event order):

* Each request copy and each reply is *lost* with ``drop_probability``, or
  when the sending node cannot reach the receiving one, checked when it is
  sent and again when it arrives (a partition that starts while a message is
  in flight eats it). A lost message is never retransmitted: the caller sees
  DEADLINE_EXCEEDED at its deadline, or, for a call without a deadline,
  UNAVAILABLE ("connection timed out") ``connect_timeout`` seconds after the
  loss (and then the server side of the call is cancelled too).
* A request is *duplicated* with ``duplicate_probability``: the handler runs
  twice (independent delays); the first reply to arrive wins, the other is
  ignored.
* Every message takes a uniform delay in [``min_delay``, ``max_delay``], or
  with ``long_delay_probability`` a uniform delay in ``long_delay``, so
  messages of different calls reorder. Messages of one response stream keep
  their order; a lost stream message breaks the stream (UNAVAILABLE after
  ``connect_timeout``, or DEADLINE_EXCEEDED at the deadline).
* A call to an address nobody is attached to gets UNAVAILABLE ("Connection
  refused") after one network delay (if the refusal can travel back), or,
  with ``wait_for_ready=True``, keeps trying every ``reconnect_backoff``
  seconds until its deadline. Calls in flight to an address that is
  detached (crash) fail UNAVAILABLE ("Socket closed") and their handlers are
  cancelled.
* Cancelling a call (``call.cancel()``, cancelling the task awaiting it,
  ``asyncio.wait_for`` timing out) or its deadline passing on the client
  cancels the server handler one network delay later, if the client can
  still reach the server; in any case the server cancels the handler at its
  own deadline (client deadline + the request's delay), as grpc does.

Partitions (between node names, as given to :meth:`SimNetwork.attach` and
:meth:`SimNetwork.channel`): a node always reaches itself. With
:meth:`SimNetwork.partition` nodes in different groups cannot talk; a node
listed in no group is not affected by the partition (it reaches every
node). :meth:`SimNetwork.isolate` cuts a node from every other node,
:meth:`SimNetwork.block` cuts one direction. All three add up;
:meth:`SimNetwork.heal` removes them all.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import random
import re
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]

OK = grpc.StatusCode.OK

MetadataPairs = tuple[tuple[str, str | bytes], ...]

#: Every UNAVAILABLE the simulated transport itself produces (refused, timed
#: out, socket closed) has details starting with this; the rest of the text
#: is what grpc says ("failed to connect to all addresses; ..." only when no
#: copy of the request reached a handler, as the service relies on).
TRANSPORT_PREFIX = "sim transport: "

#: grpc's default limit on a received message; sending is unlimited by default.
DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024

#: What ``read()`` returns at the end of a response stream.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

_KEY_RE = re.compile(r"^[0-9a-z_.\-]+$")


# -- configuration and records ---------------------------------------------------------


@dataclass
class NetFaults:
    """Per-message faults; see the module documentation. Mutable: change the
    fields (or assign a new NetFaults to ``network.faults``) while running."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    min_delay: float = 0.0002
    max_delay: float = 0.002
    long_delay_probability: float = 0.0
    long_delay: tuple[float, float] = (0.05, 1.0)
    #: A call without a deadline whose message was lost fails UNAVAILABLE after this.
    connect_timeout: float = 20.0
    #: With wait_for_ready=True, how often a refused call tries again.
    reconnect_backoff: float = 1.0
    #: Method path prefixes never duplicated. gRPC itself never delivers a
    #: call twice; duplicates model a peer's own retries, which a client of
    #: the KV service makes knowingly (it combines its attempts' answers).
    never_duplicate: tuple[str, ...] = ()


class TraceEvent(NamedTuple):
    """One entry of :attr:`SimNetwork.trace`."""

    time: float
    src: str
    dst: str
    method: str
    outcome: str


@dataclass
class UnexpectedError:
    """A servicer (or the wire) failed the way a real server would log with a
    traceback: an exception that is not an abort, or a message that does not
    parse."""

    time: float
    node: str
    method: str
    error: BaseException
    traceback: str = field(repr=False)


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing: MetadataPairs
    initial: MetadataPairs
    response: bytes | None = None


# -- metadata --------------------------------------------------------------------------


def _pairs(metadata: Any) -> MetadataPairs:
    """Metadata as (key, value) tuples, from None, grpc.aio.Metadata or pairs."""
    if metadata is None:
        return ()
    return tuple((str(key), value) for key, value in metadata)


def _validate(metadata: Any) -> MetadataPairs:
    """What grpc checks on metadata a server sends (raises TypeError/ValueError)."""
    if metadata is None:
        return ()
    result = []
    for item in metadata:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"metadata item is not a (key, value) pair: {item!r}")
        key, value = item
        if not isinstance(key, str):
            raise TypeError(f"metadata key must be str: {key!r}")
        if not _KEY_RE.match(key):
            raise ValueError(f"metadata key {key!r} is not lowercase ASCII")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise TypeError(f"binary metadata {key!r} needs a bytes value: {value!r}")
        elif not isinstance(value, str | bytes):
            raise TypeError(f"metadata value for {key!r} must be str: {value!r}")
        result.append((key, value))
    return tuple(result)


def _aio_metadata(pairs: MetadataPairs) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(*pairs)


def _option(options: Sequence[tuple[str, Any]] | None, name: str, default: int) -> int:
    value = default
    for key, val in options or ():
        if key == name:
            value = int(val)
    return value


def _too_big(size: int, limit: int) -> bool:
    return limit >= 0 and size > limit


# -- the server ------------------------------------------------------------------------


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
        self.max_receive = _option(options, "grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE)
        self.max_send = _option(options, "grpc.max_send_message_length", -1)
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
class _Endpoint:
    address: str
    node: str
    server: SimServer
    context: contextvars.Context
    #: Server calls that have not sent their status (nor been cancelled), by id.
    calls: dict[int, _ServerCall] = field(default_factory=dict)
    draining: bool = False


# -- the servicer context --------------------------------------------------------------


class SimContext(grpc.aio.ServicerContext[Any, Any]):
    """What a handler receives as ``context``; behaves as grpc.aio's.

    ``abort`` sends the status at once and raises ``grpc.aio.AbortError``; if
    the handler swallows it, the status already sent stands (as in grpc) and
    the swallowing is recorded in :attr:`SimNetwork.suppressed_aborts`.
    """

    def __init__(self, call: _ServerCall) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: MetadataPairs = ()
        self._initial: MetadataPairs | None = None
        self._abort_exception: grpc.aio.AbortError | None = None
        self._cancelled = False
        self._done = False
        self._done_callbacks: list[Callable[[Any], None]] = []

    # status

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Any = (),
    ) -> Any:
        if self._abort_exception is not None:
            raise grpc.aio.UsageError("Abort already called!")
        self._abort_exception = grpc.aio.AbortError("Locally aborted.")
        trailing = _validate(trailing_metadata)
        if not trailing and self._trailing:
            trailing = self._trailing
        self._trailing = trailing
        if details == "" and self._details:
            details = self._details
        self._details = details
        self._code = code
        self._call.send_status(code, details)
        raise self._abort_exception

    async def abort_with_status(self, status: Any) -> Any:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:  # type: ignore[override]
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = _validate(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._initial is not None:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self._initial = _validate(initial_metadata)

    # the call

    def invocation_metadata(self) -> Any:
        return tuple(cygrpc._Metadatum(key, value) for key, value in self._call.rpc.metadata)

    def time_remaining(self) -> float | None:  # type: ignore[override]
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(deadline - asyncio.get_running_loop().time(), 0.0)

    def peer(self) -> str:
        return f"sim:{self._call.rpc.src}"

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Any:
        return {}

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Any) -> None:
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def _finish(self, cancelled: bool) -> None:
        if self._done:
            return
        self._done = True
        self._cancelled = cancelled
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)

    # streams

    async def read(self) -> Any:
        raise grpc.aio.UsageError("read() on a call without a request stream")

    async def write(self, message: Any) -> None:
        if not self._call.rpc.streaming:
            raise grpc.aio.UsageError("write() on a call without a response stream")
        if self._call.status_sent:
            raise grpc.aio.UsageError("write() after the status was sent")
        self._call.send_message(message)
        await asyncio.sleep(0)

    # compression (nothing to compress in memory)

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass


# -- one call as the network sees it ----------------------------------------------------


class _Rpc:
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
        call: _CallBase,
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
        self.servers: list[_ServerCall] = []
        #: The client cancelled or passed its deadline: late request copies are not run.
        self.gave_up = False
        self.timeout_armed = False
        self.deadline_timer: asyncio.TimerHandle | None = None
        # response streams
        self.stream_owner: _ServerCall | None = None
        self.inbox: deque[tuple[float, str, Any]] = deque()
        self.pump: asyncio.TimerHandle | None = None
        self.last_arrival = 0.0
        self.broken = False


class _ServerCall:
    """One run of a handler for one delivered copy of a request."""

    def __init__(self, network: SimNetwork, rpc: _Rpc, endpoint: _Endpoint, deadline: float | None):
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
        status = _Status(code, details, ctx._trailing, ctx._initial or (), response)
        self.close(cancelled=False)
        if self.rpc.streaming:
            self.network._stream_out(self, "status", status)
        else:
            self.network._reply(self, status)

    def send_message(self, message: Any) -> None:
        handler_serializer = self._serializer
        data = handler_serializer(message) if handler_serializer is not None else message
        if _too_big(len(data), self.endpoint.server.max_send):
            raise _SendTooBig(len(data), self.endpoint.server.max_send)
        self.network._stream_out(self, "message", data)

    _serializer: Callable[[Any], bytes] | None = None

    # the handler task

    async def _run(self) -> None:
        rpc = self.rpc
        network = self.network
        server = self.endpoint.server
        try:
            handler = await self._find_handler(server)
        except Exception as exc:
            network._unexpected(self.node, rpc.method, exc)
            self.send_status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            return
        if handler is None:
            self.send_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if handler.request_streaming or bool(handler.response_streaming) != rpc.streaming:
            error = TypeError(f"{rpc.method}: the stub and the handler disagree on streaming")
            network._unexpected(self.node, rpc.method, error)
            self.send_status(grpc.StatusCode.INTERNAL, str(error))
            return
        if _too_big(len(rpc.request), server.max_receive):
            self.send_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({len(rpc.request)} vs. {server.max_receive})",
            )
            return
        try:
            deserializer = handler.request_deserializer
            request = deserializer(rpc.request) if deserializer is not None else rpc.request
        except Exception as exc:
            network._unexpected(self.node, rpc.method, exc)
            self.send_status(grpc.StatusCode.INTERNAL, "Failed to deserialize request")
            return
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
        except _SendTooBig as exc:
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
        if response_bytes is not None and _too_big(len(response_bytes), server.max_send):
            self.send_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(response_bytes)} vs. {server.max_send})",
            )
            return
        self.send_status(code, self.context._details or "", response_bytes)

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


class _SendTooBig(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Sent message larger than max ({size} vs. {limit})")


# -- client-side call objects -----------------------------------------------------------


class _CallBase:
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
        self._rpc: _Rpc | None = None

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
            _aio_metadata(self._initial or ()),
            _aio_metadata(self._trailing),
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
        return _aio_metadata(self._initial or ())

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await asyncio.shield(self._status)
        return _aio_metadata(self._trailing)

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


class SimUnaryUnaryCall(_CallBase, grpc.aio.UnaryUnaryCall[Any, Any]):
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


class SimUnaryStreamCall(_CallBase, grpc.aio.UnaryStreamCall[Any, Any]):
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
                    return _EOF
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
            if message is _EOF:
                return
            yield message


# -- multicallables and the channel ----------------------------------------------------


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
        self.max_receive = _option(options, "grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE)
        self.max_send = _option(options, "grpc.max_send_message_length", -1)
        self._calls: dict[int, _CallBase] = {}
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
        call: _CallBase,
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
        rpc = _Rpc(
            rpc_id=next(self.network._ids),
            channel=self,
            method=method,
            request=data,
            metadata=_pairs(metadata),
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


# -- the network ------------------------------------------------------------------------


class SimNetwork:
    """Addresses, nodes, partitions and faults; see the module documentation.

    ``rng``: every fault and delay is drawn from it, in event order.
    ``trace``: keep :attr:`trace`, a list of :class:`TraceEvent`.

    Assert after a run that :attr:`unexpected_errors` (handlers that raised
    something other than an abort; messages that did not parse) and
    :attr:`suppressed_aborts` (handlers that swallowed their own abort) are
    empty.
    """

    def __init__(
        self, rng: random.Random, faults: NetFaults | None = None, *, trace: bool = False
    ) -> None:
        self.rng = rng
        self.faults = faults if faults is not None else NetFaults()
        self.trace: list[TraceEvent] | None = [] if trace else None
        self.unexpected_errors: list[UnexpectedError] = []
        self.suppressed_aborts: list[str] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._owners: dict[str, str] = {}
        self._groups: dict[str, int] = {}
        self._isolated: dict[str, None] = {}
        self._blocked: dict[tuple[str, str], None] = {}
        self._ids = itertools.count(1)
        self._context = contextvars.Context()  # network events belong to no node

    # -- addresses ------------------------------------------------------------------

    def attach(
        self, address: str, node: str, server: SimServer, context: contextvars.Context
    ) -> None:
        """Make ``address`` reachable: calls to it run ``server``'s handlers as
        tasks in copies of ``context``, on behalf of ``node``."""
        if address in self._endpoints:
            raise ValueError(f"{address} is already attached to {self._endpoints[address].node}")
        self._endpoints[address] = _Endpoint(address, node, server, context)
        self._owners[address] = node
        self._trace(node, node, "", f"attach:{address}")

    def detach(self, address: str) -> None:
        """The server at ``address`` is gone (crash or stop): new calls are
        refused, calls in flight fail UNAVAILABLE and their handlers are
        cancelled."""
        endpoint = self._endpoints.pop(address, None)
        if endpoint is None:
            return
        self._trace(endpoint.node, endpoint.node, "", f"detach:{address}")
        for server_call in list(endpoint.calls.values()):
            rpc = server_call.rpc
            server_call.status_sent = True
            server_call.close(cancelled=True)
            if server_call.task is not None and not server_call.task.done():
                server_call.task.cancel()
            status = _Status(
                grpc.StatusCode.UNAVAILABLE, f"{TRANSPORT_PREFIX}Socket closed", (), ()
            )
            if rpc.streaming:
                self._stream_out(server_call, "status", status)
            else:
                self._reply(server_call, status)

    def drain(self, address: str) -> None:
        """The server at ``address`` is stopping: new calls get UNAVAILABLE,
        calls in flight go on."""
        endpoint = self._endpoints.get(address)
        if endpoint is not None:
            endpoint.draining = True

    def node_at(self, address: str) -> str | None:
        """The node attached at ``address``, or None."""
        endpoint = self._endpoints.get(address)
        return None if endpoint is None else endpoint.node

    def calls_in_flight(self, address: str) -> int:
        """Handlers at ``address`` that have not sent their status."""
        endpoint = self._endpoints.get(address)
        return 0 if endpoint is None else len(endpoint.calls)

    def channel(
        self, source_node: str, address: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> SimChannel:
        """A channel that ``source_node`` uses to call ``address``."""
        return SimChannel(self, source_node, address, options)

    # -- partitions -----------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes in different groups cannot talk (replaces the previous
        partition; nodes in no group are unaffected)."""
        self._groups = {}
        for index, group in enumerate(groups):
            for node in sorted(group):
                if node in self._groups:
                    raise ValueError(f"{node} is in two groups")
                self._groups[node] = index
        self._trace("", "", "", f"partition:{[sorted(g) for g in groups]}")

    def isolate(self, node: str) -> None:
        """``node`` can reach no other node and no other node can reach it."""
        self._isolated[node] = None
        self._trace(node, "", "", "isolate")

    def block(self, src: str, dst: str) -> None:
        """Messages from ``src`` to ``dst`` are lost (one way)."""
        self._blocked[(src, dst)] = None
        self._trace(src, dst, "", "block")

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.pop((src, dst), None)

    def heal(self) -> None:
        """Remove every partition, isolation and block."""
        self._groups = {}
        self._isolated = {}
        self._blocked = {}
        self._trace("", "", "", "heal")

    def can_send(self, src: str, dst: str) -> bool:
        """A message from node ``src`` to node ``dst`` is not cut by a partition."""
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated:
            return False
        if (src, dst) in self._blocked:
            return False
        group_src = self._groups.get(src)
        group_dst = self._groups.get(dst)
        return group_src is None or group_dst is None or group_src == group_dst

    def reachable(self, a: str, b: str) -> bool:
        """``a`` and ``b`` can talk both ways."""
        return self.can_send(a, b) and self.can_send(b, a)

    # -- internals: faults ----------------------------------------------------------

    def _delay(self) -> float:
        faults = self.faults
        if faults.long_delay_probability > 0 and self.rng.random() < faults.long_delay_probability:
            return self.rng.uniform(*faults.long_delay)
        return self.rng.uniform(faults.min_delay, faults.max_delay)

    def _dropped(self) -> bool:
        probability = self.faults.drop_probability
        return probability > 0 and self.rng.random() < probability

    def _trace(self, src: str, dst: str, method: str, outcome: str) -> None:
        if self.trace is not None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                now = -1.0  # outside the loop (set-up)
            self.trace.append(TraceEvent(now, src, dst, method, outcome))

    def _unexpected(self, node: str, method: str, error: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        text = "".join(traceback.format_exception(error))
        self.unexpected_errors.append(UnexpectedError(now, node, method, error, text))
        self._trace("", node, method, f"unexpected:{type(error).__name__}")

    def _call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return loop.call_later(delay, callback, *args, context=self._context)

    # -- internals: requests --------------------------------------------------------

    def _start(self, rpc: _Rpc) -> None:
        loop = asyncio.get_running_loop()
        channel = rpc.channel
        call = rpc.call
        if _too_big(len(rpc.request), channel.max_send):
            call._set_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(rpc.request)} vs. {channel.max_send})",
            )
            return
        if rpc.deadline is not None:
            rpc.deadline_timer = loop.call_at(
                rpc.deadline, self._client_deadline, rpc, context=self._context
            )
        self._send_request(rpc)

    def _send_request(self, rpc: _Rpc) -> None:
        if rpc.call.done():
            return
        dst = self._owners.get(rpc.address, rpc.address)
        copies = 1
        duplicable = not any(rpc.method.startswith(p) for p in self.faults.never_duplicate)
        if (
            duplicable
            and self.faults.duplicate_probability > 0
            and self.rng.random() < self.faults.duplicate_probability
        ):
            copies = 2
            self._trace(rpc.src, dst, rpc.method, "request-duplicated")
        sent_at = asyncio.get_running_loop().time()
        for _ in range(copies):
            if not self.can_send(rpc.src, dst) or self._dropped():
                self._trace(rpc.src, dst, rpc.method, "request-lost")
                self._lost(rpc)
                continue
            self._call_later(self._delay(), self._arrive, rpc, sent_at)

    def _arrive(self, rpc: _Rpc, sent_at: float) -> None:
        now = asyncio.get_running_loop().time()
        endpoint = self._endpoints.get(rpc.address)
        dst = endpoint.node if endpoint is not None else self._owners.get(rpc.address, rpc.address)
        if not self.can_send(rpc.src, dst):
            self._trace(rpc.src, dst, rpc.method, "request-lost")
            self._lost(rpc)
            return
        if rpc.gave_up:
            self._trace(rpc.src, dst, rpc.method, "request-late")
            return
        if endpoint is None:
            self._refuse(rpc, dst, "Connection refused")
            return
        if endpoint.draining:
            self._refuse(rpc, dst, "Connection refused (server shutting down)")
            return
        deadline = None if rpc.deadline is None else rpc.deadline + (now - sent_at)
        if deadline is not None and deadline <= now:
            self._trace(rpc.src, dst, rpc.method, "request-expired")
            return
        rpc.call._set_connected()
        server_call = _ServerCall(self, rpc, endpoint, deadline)
        rpc.servers.append(server_call)
        self._trace(rpc.src, dst, rpc.method, "delivered")
        server_call.start()

    def _refuse(self, rpc: _Rpc, dst: str, why: str) -> None:
        self._trace(rpc.src, dst, rpc.method, f"refused:{why}")
        if rpc.wait_for_ready:
            self._call_later(self.faults.reconnect_backoff, self._send_request, rpc)
            return
        if not self.can_send(dst, rpc.src):
            self._lost(rpc)
            return
        self._call_later(self._delay(), self._fail_transport, rpc, why)

    def _fail(self, rpc: _Rpc, code: grpc.StatusCode, details: str) -> None:
        if rpc.call._set_status(code, details):
            self._trace(rpc.address, rpc.src, rpc.method, f"status:{code.name}")

    def _fail_transport(self, rpc: _Rpc, why: str) -> None:
        """UNAVAILABLE from the transport. "failed to connect" (which the
        service reads as "the request was never acted on") only if no copy
        of the request reached a handler; no copy will from now on."""
        if rpc.call.done():
            return
        if rpc.servers:
            details = f"{TRANSPORT_PREFIX}{why}"
        else:
            rpc.gave_up = True
            details = (
                f"{TRANSPORT_PREFIX}failed to connect to all addresses; "
                f"last error: UNAVAILABLE: {rpc.address}: {why}"
            )
        self._fail(rpc, grpc.StatusCode.UNAVAILABLE, details)

    def _lost(self, rpc: _Rpc) -> None:
        """A message of ``rpc`` was lost: without a deadline, the connection
        times out after connect_timeout."""
        if rpc.deadline is not None or rpc.timeout_armed:
            return
        rpc.timeout_armed = True
        self._call_later(self.faults.connect_timeout, self._connection_timed_out, rpc)

    def _connection_timed_out(self, rpc: _Rpc) -> None:
        if rpc.call.done():
            return
        self._fail_transport(rpc, "Connection timed out")
        rpc.gave_up = True
        for server_call in rpc.servers:
            server_call.cancel("connection timed out")

    def _client_deadline(self, rpc: _Rpc) -> None:
        if rpc.call.done():
            return
        if rpc.call._set_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"):
            self._trace(rpc.address, rpc.src, rpc.method, "status:DEADLINE_EXCEEDED")
        self._client_gave_up(rpc, "deadline")

    def _client_gave_up(self, rpc: _Rpc, why: str) -> None:
        """The client cancelled or passed its deadline: tell the servers (if the
        cancellation can reach them)."""
        rpc.gave_up = True
        for server_call in rpc.servers:
            if server_call.closed:
                continue
            if self.can_send(rpc.src, server_call.node):
                self._call_later(self._delay(), server_call.cancel, f"client-{why}")

    # -- internals: replies ---------------------------------------------------------

    def _reply(self, server_call: _ServerCall, status: _Status) -> None:
        rpc = server_call.rpc
        if not self.can_send(server_call.node, rpc.src) or self._dropped():
            self._trace(server_call.node, rpc.src, rpc.method, "reply-lost")
            self._lost(rpc)
            return
        self._call_later(self._delay(), self._deliver_reply, server_call, status)

    def _deliver_reply(self, server_call: _ServerCall, status: _Status) -> None:
        rpc = server_call.rpc
        src = server_call.node
        if not self.can_send(src, rpc.src):
            self._trace(src, rpc.src, rpc.method, "reply-lost")
            self._lost(rpc)
            return
        call = rpc.call
        if call.done():
            self._trace(src, rpc.src, rpc.method, f"reply-ignored:{status.code.name}")
            return
        assert isinstance(call, SimUnaryUnaryCall)
        code, details = status.code, status.details
        if code is OK:
            data = status.response if status.response is not None else b""
            if _too_big(len(data), rpc.channel.max_receive):
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                details = (
                    f"Received message larger than max ({len(data)} vs. {rpc.channel.max_receive})"
                )
            else:
                deserializer = rpc.deserializer
                try:
                    call._response = deserializer(data) if deserializer is not None else data
                except Exception as exc:
                    self._unexpected(rpc.src, rpc.method, exc)
                    code, details = grpc.StatusCode.INTERNAL, "Failed to deserialize response"
        call._set_status(code, details, status.trailing, status.initial)
        self._trace(src, rpc.src, rpc.method, f"status:{code.name}")

    # -- internals: response streams ------------------------------------------------

    def _stream_out(self, server_call: _ServerCall, kind: str, payload: Any) -> None:
        rpc = server_call.rpc
        if rpc.stream_owner is None:
            rpc.stream_owner = server_call
        elif rpc.stream_owner is not server_call:
            return  # a duplicated request's stream: the first one owns the call
        if rpc.broken or rpc.call.done():
            return
        if not self.can_send(server_call.node, rpc.src) or self._dropped():
            self._trace(server_call.node, rpc.src, rpc.method, f"stream-{kind}-lost")
            self._break(rpc)
            return
        now = asyncio.get_running_loop().time()
        arrival = max(now + self._delay(), rpc.last_arrival)
        rpc.last_arrival = arrival
        rpc.inbox.append((arrival, kind, payload))
        if rpc.pump is None:
            rpc.pump = self._call_later(arrival - now, self._pump, rpc)

    def _pump(self, rpc: _Rpc) -> None:
        loop = asyncio.get_running_loop()
        rpc.pump = None
        while rpc.inbox and rpc.inbox[0][0] <= loop.time():
            _, kind, payload = rpc.inbox.popleft()
            self._deliver_stream(rpc, kind, payload)
        if rpc.inbox:
            rpc.pump = self._call_later(rpc.inbox[0][0] - loop.time(), self._pump, rpc)

    def _deliver_stream(self, rpc: _Rpc, kind: str, payload: Any) -> None:
        call = rpc.call
        assert isinstance(call, SimUnaryStreamCall)
        owner = rpc.stream_owner
        assert owner is not None
        if rpc.broken or call.done():
            return
        if not self.can_send(owner.node, rpc.src):
            self._trace(owner.node, rpc.src, rpc.method, f"stream-{kind}-lost")
            self._break(rpc)
            return
        if kind == "status":
            status: _Status = payload
            call._set_status(status.code, status.details, status.trailing, status.initial)
            self._trace(owner.node, rpc.src, rpc.method, f"status:{status.code.name}")
            return
        data: bytes = payload
        call._set_initial(owner.context._initial or ())
        if _too_big(len(data), rpc.channel.max_receive):
            details = (
                f"Received message larger than max ({len(data)} vs. {rpc.channel.max_receive})"
            )
            call._set_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
            owner.cancel("client-rejected-message")
            return
        deserializer = rpc.deserializer
        try:
            message = deserializer(data) if deserializer is not None else data
        except Exception as exc:
            self._unexpected(rpc.src, rpc.method, exc)
            call._set_status(grpc.StatusCode.INTERNAL, "Failed to deserialize response")
            owner.cancel("client-rejected-message")
            return
        call._push(message)

    def _break(self, rpc: _Rpc) -> None:
        """A stream's connection is dead: the client notices at its deadline,
        or connect_timeout later; the server then too."""
        if rpc.broken:
            return
        rpc.broken = True
        rpc.inbox.clear()
        if rpc.pump is not None:
            rpc.pump.cancel()
            rpc.pump = None
        self._call_later(self.faults.connect_timeout, self._stream_broken, rpc)

    def _stream_broken(self, rpc: _Rpc) -> None:
        if not rpc.call.done():
            self._fail_transport(rpc, "Connection timed out")
        rpc.gave_up = True
        for server_call in rpc.servers:
            server_call.cancel("connection timed out")


__all__ = [
    "TRANSPORT_PREFIX",
    "NetFaults",
    "SimChannel",
    "SimContext",
    "SimNetwork",
    "SimServer",
    "SimUnaryStreamCall",
    "SimUnaryUnaryCall",
    "TraceEvent",
    "UnexpectedError",
]
