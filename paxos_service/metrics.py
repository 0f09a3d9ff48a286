"""Prometheus metrics for every role, defined in one place.

Two families (docs/metrics.md lists every metric and what to alert on):

* ``grpc_server_*``: the names, labels and code strings of go-grpc-prometheus,
  so that the dashboards and alerts written for Go services work unchanged.
  :func:`server_interceptors` records them for every RPC a server handles.
* ``paxos_*``: what the protocol does. The adapters in ``paxos_service``
  record them (``roles/`` stays pure: it has no clock and no metrics); this
  module only defines them and pre-binds label children, so that the hot
  path is an ``inc()`` or ``observe()`` on an object that already exists,
  with no label lookup or string formatting per message.

Every role is its own process, so the metrics live in the default registry
(which also carries ``process_*`` and ``python_*``) and carry no node label:
Prometheus adds ``instance``/``pod``. Tests that run several servers in one
process share the metrics: nothing breaks, counters add up and gauges show
whichever server wrote last.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client import disable_created_metrics as _disable_created_metrics

from paxos_service.log import get_logger

# ``*_created`` series add one per counter and histogram child; go-grpc-prometheus has none.
_disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", Counter, Gauge, Histogram)


def _metric(
    cls: type[M], name: str, documentation: str, labels: tuple[str, ...] = (), **kw: Any
) -> M:
    """Create and register a metric; if this module is imported a second time
    (under another name, or reloaded), reuse the registered one instead of
    failing with a duplicate-registration error."""
    try:
        return cls(name, documentation, labels, **kw)
    except ValueError:
        base = name.removesuffix("_total") if cls is Counter else name
        names: dict[str, Any] = REGISTRY._names_to_collectors  # no public lookup exists
        existing = names.get(base)
        if not isinstance(existing, cls):
            raise
        return existing


# gRPC server metrics (go-grpc-prometheus) -----------------------------------------

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

GRPC_STARTED = _metric(
    Counter,
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
    _GRPC_LABELS,
)
GRPC_HANDLED = _metric(
    Counter,
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_GRPC_LABELS, "grpc_code"),
)
GRPC_MSG_RECEIVED = _metric(
    Counter,
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
    _GRPC_LABELS,
)
GRPC_MSG_SENT = _metric(
    Counter,
    "grpc_server_msg_sent_total",
    "Total number of gRPC stream messages sent by the server.",
    _GRPC_LABELS,
)
GRPC_HANDLING_SECONDS = _metric(
    Histogram,
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _GRPC_LABELS,
)  # default buckets: prometheus.DefBuckets, as go-grpc-prometheus uses

#: grpc_code label values: Go's codes.Code.String(), as go-grpc-prometheus writes them.
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# Paxos metrics ---------------------------------------------------------------------

#: Seconds, from a local fsync (~0.1 ms on a fast SSD) to a slow network round trip.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BYTE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 524288, 1048576, 4194304)

# Acceptor.
ACCEPTOR_PROMISES = _metric(
    Counter,
    "paxos_acceptor_promises_total",
    "Promises this acceptor made (phase 1b), by request: prepare (one instance) or "
    "prepare_range (every instance from one on, Multi-Paxos).",
    ("message",),
)
ACCEPTOR_ACCEPTS = _metric(
    Counter,
    "paxos_acceptor_accepts_total",
    "Accept requests this acceptor accepted (phase 2b), repeats of an accepted one included.",
)
ACCEPTOR_REJECTIONS = _metric(
    Counter,
    "paxos_acceptor_rejections_total",
    "Requests this acceptor rejected because it had promised a higher ballot, by request: "
    "prepare, prepare_range or accept.",
    ("message",),
)
ACCEPTOR_COMMIT_SECONDS = _metric(
    Histogram,
    "paxos_acceptor_commit_seconds",
    "Duration of one group commit on the storage thread: the SQLite transaction and its "
    "fsync. Every vote waits for one.",
    buckets=_LATENCY_BUCKETS,
)
ACCEPTOR_COMMIT_WRITES = _metric(
    Histogram,
    "paxos_acceptor_commit_writes",
    "Writes per group commit (instance states, plus the range promise): how many votes "
    "share one fsync.",
    buckets=_COUNT_BUCKETS,
)
ACCEPTOR_COMMIT_FAILURES = _metric(
    Counter,
    "paxos_acceptor_commit_failures_total",
    "Failed commits. After one the acceptor stops voting until restarted.",
)
PROMISED_PREPARE = ACCEPTOR_PROMISES.labels("prepare")
PROMISED_PREPARE_RANGE = ACCEPTOR_PROMISES.labels("prepare_range")
REJECTED_PREPARE = ACCEPTOR_REJECTIONS.labels("prepare")
REJECTED_PREPARE_RANGE = ACCEPTOR_REJECTIONS.labels("prepare_range")
REJECTED_ACCEPT = ACCEPTOR_REJECTIONS.labels("accept")

# Proposer, both modes: "single_decree" (Propose) and "multi_paxos" (the log leader).
_MODE = ("mode",)
PROPOSALS = _metric(
    Counter,
    "paxos_proposals_total",
    "Values this proposer set out to get chosen: Propose calls (single_decree); instances "
    "the leader started phase 2 for, no-ops and recovered values included (multi_paxos).",
    _MODE,
)
CHOSEN = _metric(
    Counter,
    "paxos_chosen_total",
    "Proposals that ended with a value chosen (not necessarily this proposer's own value, "
    "in single_decree).",
    _MODE,
)
REJECTIONS = _metric(
    Counter,
    "paxos_rejections_total",
    "Reject replies this proposer received from acceptors.",
    _MODE,
)
PREEMPTIONS = _metric(
    Counter,
    "paxos_preemptions_total",
    "Ballots this proposer abandoned because another proposer's higher ballot got there "
    "first: a proposal backing off to retry higher (single_decree), or a candidate or "
    "leader stepping down (multi_paxos).",
    _MODE,
)
PHASE1_SECONDS = _metric(
    Histogram,
    "paxos_phase1_seconds",
    "Successful phase 1: from sending Prepare (single_decree) or PrepareRange "
    "(multi_paxos, an election) to a majority of promises.",
    _MODE,
    buckets=_LATENCY_BUCKETS,
)
PHASE2_SECONDS = _metric(
    Histogram,
    "paxos_phase2_seconds",
    "Successful phase 2: from the first Accept for a value to a majority of Accepted.",
    _MODE,
    buckets=_LATENCY_BUCKETS,
)


class ProposerMetrics:
    """The proposer metrics of one mode, label children bound once."""

    __slots__ = ("chosen", "phase1", "phase2", "preemptions", "proposals", "rejections")

    def __init__(self, mode: str) -> None:
        self.proposals = PROPOSALS.labels(mode)
        self.chosen = CHOSEN.labels(mode)
        self.rejections = REJECTIONS.labels(mode)
        self.preemptions = PREEMPTIONS.labels(mode)
        self.phase1 = PHASE1_SECONDS.labels(mode)
        self.phase2 = PHASE2_SECONDS.labels(mode)


SINGLE_DECREE = ProposerMetrics("single_decree")
MULTI_PAXOS = ProposerMetrics("multi_paxos")

# The Multi-Paxos leader.
LEADER_BATCH_COMMANDS = _metric(
    Histogram,
    "paxos_leader_batch_commands",
    "Commands per log instance the leader proposed (its batch size).",
    buckets=_COUNT_BUCKETS,
)
LEADER_BATCH_BYTES = _metric(
    Histogram,
    "paxos_leader_batch_bytes",
    "Bytes of the value of each log instance carrying commands.",
    buckets=_BYTE_BUCKETS,
)
LEADER_RETRANSMITS = _metric(
    Counter,
    "paxos_leader_retransmits_total",
    "Accepts the leader sent again because an instance had no majority within the phase timeout.",
)
LEADER_CAMPAIGNS = _metric(
    Counter,
    "paxos_leader_campaigns_total",
    "Elections this proposer started (one PrepareRange round each).",
)
LEADER_QUORUM_LOST = _metric(
    Counter,
    "paxos_leader_quorum_lost_total",
    "Times this leader stepped down because an instance found no majority of acceptors "
    "after its retransmissions.",
)
LEADER_CHANGES = _metric(
    Counter,
    "paxos_leader_changes_seen_total",
    "Times the leader this proposer knows of became a different proposer (itself included).",
)
LEADER_IS_LEADER = _metric(
    Gauge, "paxos_leader_is_leader", "1 while this proposer leads the replicated log, else 0."
)
LEADER_CURRENT = _metric(
    Gauge,
    "paxos_leader_current_id",
    "The id of the proposer this proposer believes leads (itself included); -1 while it "
    "knows of none, as during an election.",
)
LEADER_CHOSEN_THROUGH = _metric(
    Gauge,
    "paxos_leader_chosen_through",
    "The highest instance n such that this proposer knows every instance <= n is chosen.",
)

# Learners and the KV replica.
LEARNER_DECISIONS = _metric(
    Counter,
    "paxos_learner_decisions_total",
    "Instances this learner newly learned as decided, by source: decide (told by a "
    "proposer) or acceptors (found by counting the acceptors' votes).",
    ("source",),
)
LEARNED_FROM_DECIDE = LEARNER_DECISIONS.labels("decide")
LEARNED_FROM_ACCEPTORS = LEARNER_DECISIONS.labels("acceptors")
LEARNER_APPLIED = _metric(
    Gauge,
    "paxos_learner_applied_instance",
    "The highest log instance applied to this learner's key-value store.",
)
LEARNER_DECIDED = _metric(
    Gauge,
    "paxos_learner_decided_instance",
    "The highest log instance this learner knows to be decided.",
)
LEARNER_LAG = _metric(
    Gauge,
    "paxos_learner_lag_instances",
    "Decided log instances this learner knows of but has not applied yet "
    "(decided_instance - applied_instance).",
)
LEARNER_APPLY_SECONDS = _metric(
    Histogram,
    "paxos_learner_apply_seconds",
    "Duration of applying one log instance to the key-value store (one SQLite transaction).",
    buckets=_LATENCY_BUCKETS,
)
LEARNER_APPLY_FAILURES = _metric(
    Counter,
    "paxos_learner_apply_failures_total",
    "Times this learner stopped applying the log after an error (it then serves nothing "
    "until restarted).",
)
LEARNER_CONFLICTS = _metric(
    Counter,
    "paxos_learner_conflicts_total",
    "Times this learner saw two different values chosen for one instance (a safety "
    "violation), by what showed the second one: decide or accepted (a majority). Any "
    "increase is a page: the learner has turned NOT_SERVING.",
    ("source",),
)
KV_WATCHERS = _metric(Gauge, "paxos_kv_watchers", "Watch streams open on this learner.")
KV_APPEND_BATCH = _metric(
    Histogram,
    "paxos_kv_append_batch_commands",
    "Commands per Append call this learner sent to the leader (client commands grouped).",
    buckets=_COUNT_BUCKETS,
)


# The gRPC server interceptor ----------------------------------------------------------


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


def serve_http(listen: str) -> Any:
    """Serve /metrics over HTTP on ``listen`` (HOST:PORT) from a daemon thread.

    Raises :class:`~paxos_service.server.BindError` when the address cannot be
    bound: a node whose metrics nobody can scrape is flying blind, so it
    refuses to start rather than run unobserved. Returns the HTTP server
    (``shutdown()`` stops it)."""
    from paxos_service.server import BindError

    host, _, port = listen.rpartition(":")
    try:
        httpd, _thread = start_http_server(int(port), addr=host.strip("[]"))
    except OSError as exc:
        raise BindError(
            f"cannot serve metrics on {listen}: {exc.strerror or exc} "
            "(is another process using that port? see --metrics-listen)"
        ) from exc
    get_logger().info("serving metrics", address=listen, port=httpd.server_port, path="/metrics")
    return httpd
