"""The gRPC server interceptor that counts and times every RPC with
go-grpc-prometheus's metrics (defined in :mod:`paxos_service.core.metrics`).

It lives in transport, not beside the definitions, because it is gRPC server
plumbing: :func:`~paxos_service.transport.server.start_server` installs it,
and only when ``--metrics-listen`` lets someone read what it counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from paxos_service.core.metrics import (
    GRPC_CODE_NAMES,
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
)


class _MethodMetrics:
    """The grpc_server_* children of one method, bound once: the hot path then
    touches no label dictionary."""

    __slots__ = ("handled", "handling", "received", "sent", "started")

    def __init__(self, grpc_type: str, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        labels = (grpc_type, service or "unknown", method)
        self.started = GRPC_STARTED.labels(*labels)
        self.received = GRPC_MSG_RECEIVED.labels(*labels)
        self.sent = GRPC_MSG_SENT.labels(*labels)
        self.handling = GRPC_HANDLING_SECONDS.labels(*labels)
        # Every code at once, as go-grpc-prometheus's InitializeMetrics does:
        # a first error then shows up in rate() instead of appearing from nowhere.
        self.handled = {
            code: GRPC_HANDLED.labels(*labels, name) for code, name in GRPC_CODE_NAMES.items()
        }

    def finish(self, code: grpc.StatusCode, started: float) -> None:
        self.handling.observe(time.perf_counter() - started)
        self.handled[code].inc()


_methods: dict[tuple[str, str], _MethodMetrics] = {}


def _method_metrics(grpc_type: str, full_method: str) -> _MethodMetrics:
    key = (grpc_type, full_method)
    found = _methods.get(key)
    if found is None:
        found = _methods[key] = _MethodMetrics(grpc_type, full_method)
    return found


def _grpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _ok_code(context: Any) -> grpc.StatusCode:
    """The status of a handler that returned: OK unless it called set_code."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _failure_code(exc: BaseException, context: Any) -> grpc.StatusCode:
    """The status the client gets when the handler raised ``exc``.

    ``context.abort`` raises AbortError with the code already on the context.
    A cancelled handler (CancelledError; GeneratorExit for an abandoned
    response stream) was cancelled by the client or by its deadline; the
    deadline tells which. Anything else becomes UNKNOWN, unless the handler
    set a code first (what grpc.aio itself sends)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.UNKNOWN


#: What ``context.read()`` returns at the end of a request stream.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class _CountingContext:
    """The servicer context for handlers that use ``read``/``write`` instead of
    iterators: counts the messages and passes everything else through."""

    def __init__(self, context: Any, metrics: _MethodMetrics) -> None:
        self._context = context
        self._metrics = metrics

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not _EOF:
            self._metrics.received.inc()
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._metrics.sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _counted(requests: AsyncIterator[Any], metrics: _MethodMetrics) -> AsyncIterator[Any]:
    async for request in requests:
        metrics.received.inc()
        yield request


Behavior = Callable[..., Any]


def _wrap_unary_response(
    behavior: Behavior, m: _MethodMetrics, streaming_request: bool
) -> Behavior:
    async def handle(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        m.started.inc()
        if streaming_request:
            request = _counted(request, m)
            call_context: Any = _CountingContext(context, m)
        else:
            m.received.inc()
            call_context = context
        code = grpc.StatusCode.UNKNOWN
        try:
            response = await behavior(request, call_context)
            code = _ok_code(context)
            if code is grpc.StatusCode.OK:
                m.sent.inc()
            return response
        except BaseException as exc:
            code = _failure_code(exc, context)
            raise
        finally:
            m.finish(code, started)

    return handle


def _wrap_stream_generator(
    behavior: Behavior, m: _MethodMetrics, streaming_request: bool
) -> Behavior:
    async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        m.started.inc()
        if streaming_request:
            request = _counted(request, m)
            call_context: Any = _CountingContext(context, m)
        else:
            m.received.inc()
            call_context = context
        code = grpc.StatusCode.UNKNOWN
        try:
            # aclosing: when the stream ends early (cancelled, aborted), the
            # handler's own finally blocks run now, not at garbage collection.
            async with contextlib.aclosing(behavior(request, call_context)) as responses:
                async for response in responses:
                    yield response
                    m.sent.inc()  # grpc asks for the next one once this one is written
            code = _ok_code(context)
        except BaseException as exc:
            code = _failure_code(exc, context)
            raise
        finally:
            m.finish(code, started)

    return handle


def _wrap_stream_writer(behavior: Behavior, m: _MethodMetrics, streaming_request: bool) -> Behavior:
    async def handle(request: Any, context: Any) -> None:
        started = time.perf_counter()
        m.started.inc()
        if streaming_request:
            request = _counted(request, m)
        else:
            m.received.inc()
        code = grpc.StatusCode.UNKNOWN
        try:
            await behavior(request, _CountingContext(context, m))
            code = _ok_code(context)
        except BaseException as exc:
            code = _failure_code(exc, context)
            raise
        finally:
            m.finish(code, started)

    return handle


_HANDLER_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "client_stream": grpc.stream_unary_rpc_method_handler,
    "server_stream": grpc.unary_stream_rpc_method_handler,
    "bidi_stream": grpc.stream_stream_rpc_method_handler,
}


def _instrument(
    full_method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    grpc_type = _grpc_type(handler)
    behavior: Behavior | None = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if behavior is None:
        return handler
    m = _method_metrics(grpc_type, full_method)
    streaming_request = handler.request_streaming
    # grpc.aio picks how to run a handler from what kind of function it is, so
    # the wrapper must be the same kind. Every handler here is async; a sync
    # one (run on a thread pool) is left as it is, uncounted.
    if not handler.response_streaming:
        if not inspect.iscoroutinefunction(behavior):
            return handler
        wrapped = _wrap_unary_response(behavior, m, streaming_request)
    elif inspect.isasyncgenfunction(behavior):
        wrapped = _wrap_stream_generator(behavior, m, streaming_request)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _wrap_stream_writer(behavior, m, streaming_request)
    else:
        return handler
    factory = cast(Any, _HANDLER_FACTORIES[grpc_type])
    result: grpc.RpcMethodHandler[Any, Any] = factory(
        wrapped, handler.request_deserializer, handler.response_serializer
    )
    return result


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in grpc-stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor


class MetricsInterceptor(_ServerInterceptor):
    """Counts and times every RPC with go-grpc-prometheus's metrics.

    Methods the server does not implement are not counted (as in Go): their
    names come from the client, and counting them would let any client create
    unbounded label values."""

    def __init__(self) -> None:
        #: Per method: the handler last seen and its instrumented copy. Servicers
        #: hand out the same handler object on every call, so this is built once.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Any
        ],  # Awaitable[RpcMethodHandler | None]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]  # grpc then answers UNIMPLEMENTED
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _instrument(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Interceptors that count and time every RPC (go-grpc-prometheus names).
    Put them first, so that what later interceptors refuse is counted too."""
    return [MetricsInterceptor()]
