"""Python client for the replicated key-value store (``KvService`` on the learners).

    from paxos_service.kv_client import KvClient

    with KvClient(["127.0.0.1:50056", "127.0.0.1:50057"]) as kv:
        kv.put("config/mode", b"fast")               # PutResult(revision=1, previous=None)
        kv.get("config/mode")                        # KeyValue(value=b"fast", version=1, ...)
        kv.cas("lock", b"me", expected_version=0)    # create only if absent
        with kv.watch("config/", prefix=True) as events:
            for event in events:                     # WatchEvent("put", kv, previous, revision)
                ...

:class:`AsyncKvClient` has the same methods, awaited (``watch`` gives an async
iterator). ``PaxosClient.kv`` and ``AsyncPaxosClient.kv`` are these clients.

Retries, and why they are safe
==============================

Every write and every linearizable read carries a fresh ``RequestId``
``(client_id, sequence)``: ``client_id`` is random per client object (62 bits,
so two clients practically never collide) and ``sequence`` counts from 1. The
state machine applies each pair at most once and answers a repeat from its
memory, so sending the *same* request again, to any learner, can never apply
it twice. That is what lets this client retry instead of giving up:

* UNAVAILABLE: the learner could not be reached, or found no leader to append
  through (a leader election is the usual cause, and it ends within a moment).
  The request goes to the next learner in the list, after a short backoff.
  (A connection lost in the middle of a call is UNAVAILABLE too, but then the
  command may have been appended; the client counts it as "outcome unknown".)
* ABORTED "outcome unknown": the command may or may not be in the log. It is
  retried the same way, with the same ``RequestId``; if it was applied, the
  retry returns the original result.

All retries share the call's one deadline (``timeout``). If the deadline
passes after an attempt whose outcome is unknown, a write raises
:class:`~paxos_service.client.OutcomeUnknownError` carrying its
``(client_id, sequence)``: retrying is still safe, and :meth:`KvClient.outcome`
says whether it was applied. A read in that state raises
:class:`~paxos_service.client.DeadlineExceededError` instead, since a read
changes nothing and can simply be made again. When every attempt was refused
without appending anything (no learner reachable, or no leader), the error is
:class:`~paxos_service.client.UnavailableError`. Bad input is
:class:`~paxos_service.client.InvalidArgumentError`. With
``tls=TlsFiles(...)``, a handshake every learner refuses is
:class:`~paxos_service.client.AuthenticationError`, at once (unless an earlier
attempt of the same write may have been applied: then the outcome is what
matters). Nothing here raises a raw gRPC error or returns a protobuf message.

The state machine remembers the last 1000 sequences of each client, and
refuses an older one as "too old". Keep fewer calls than that of one client
in flight at once (a few hundred threads sharing a client are fine), or use
more clients. A refused old sequence may have been applied by an earlier
attempt, and nobody can tell any more: the call (and :meth:`KvClient.outcome`
for it) raises :class:`~paxos_service.client.OutcomeUnknownError` at once,
never "failed". Do not send such a request again as a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TypeVar

import grpc

from paxos_service import tls as tls_channels
from paxos_service.client import (
    DEFAULT_TIMEOUT,
    AuthenticationError,
    DeadlineExceededError,
    InvalidArgumentError,
    OutcomeUnknownError,
    PaxosError,
    UnavailableError,
    _Servers,
    error_for,
)
from paxos_service.config import DEFAULT_MAX_VALUE_BYTES, TlsFiles
from paxos_service.server import channel_options
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paxos_service.v1.paxos_pb2_grpc import KvServiceAsyncStub

#: The prefix of the server's ABORTED message when a command may have been applied.
OUTCOME_UNKNOWN = "outcome unknown"
#: Trailing metadata of such an answer: "forgotten" when no retry can tell.
OUTCOME_METADATA = "paxos-outcome"
#: Trailing metadata of a watch the server ended: the revision to resume from.
WATCH_RESUME_METADATA = "paxos-watch-resume-revision"
#: Backoff between passes over the learner list: doubles from BACKOFF_MIN, capped.
BACKOFF_MIN = 0.025
BACKOFF_MAX = 0.5
#: Longest single attempt when other learners could answer instead. Longer
#: than a learner's own attempt at its leader (1 s) plus an election.
ATTEMPT_TIMEOUT = 2.5
#: A watch stream that stayed up this long counts as healthy: its reconnect
#: budget (the client's timeout) starts again at the next failure.
WATCH_HEALTHY_AFTER = 1.0
_T = TypeVar("_T")
_MAX_UINT32 = (1 << 32) - 1
_MAX_UINT64 = (1 << 64) - 1
#: UNAVAILABLE details that prove the request was never acted on: gRPC could
#: not connect, or the learner found no leader (kv_server: nothing appended).
#: Any other UNAVAILABLE (a connection lost mid-call) may follow an append.
_NOT_SENT = (
    "failed to connect",
    "dns resolution failed",
    "no leader accepted",
    "nothing was appended",  # kv_server: a learner that stopped applying the log
)


# Results ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    """One key as stored. ``version`` counts changes since the key was
    (re)created (1 after the first put); revisions are store-wide."""

    key: str
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class PutResult:
    #: The store revision of this put.
    revision: int
    #: The key as it was before, or None if it was absent.
    previous: KeyValue | None


@dataclass(frozen=True)
class DeleteResult:
    #: The store revision after the delete (unchanged if nothing was deleted).
    revision: int
    deleted: bool
    #: The deleted key, or None if it was absent.
    previous: KeyValue | None


@dataclass(frozen=True)
class CasResult:
    succeeded: bool
    #: The store revision after the call: the swap's own revision on success.
    revision: int
    #: On failure, the key as it is (None if absent), so the caller can decide
    #: what to try next. None on success: the new value is the one written.
    current: KeyValue | None


@dataclass(frozen=True)
class GetResult:
    kv: KeyValue | None
    #: The store revision the read saw.
    revision: int
    #: The last log instance applied by the learner that answered.
    applied_instance: int
    #: Stale reads: decided instances that learner knows of but has not yet
    #: applied (how far behind it may be). 0 for linearizable reads.
    lag_instances: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    #: After a put, the key as written. After a delete, the key with an empty
    #: value and ``mod_revision`` the revision of the delete.
    kv: KeyValue
    #: The key before the change, or None if it was absent.
    previous: KeyValue | None
    #: The store revision of the change.
    revision: int


@dataclass(frozen=True)
class Outcome:
    """What an applied request returned, as the state machine remembers it."""

    #: The store revision after the request.
    revision: int
    #: Put, delete, compare-and-swap: whether it changed the store.
    succeeded: bool
    #: Get: the key read. Put, delete, compare-and-swap: the key before.
    kv: KeyValue | None
    #: A compare-and-swap that failed: the key as it was.
    current: KeyValue | None
    #: Range: the keys read.
    kvs: tuple[KeyValue, ...]


# Proto <-> results (pure) ---------------------------------------------------


def _kv(message: pb.KeyValue) -> KeyValue:
    return KeyValue(
        key=message.key,
        value=message.value,
        version=message.version,
        create_revision=message.create_revision,
        mod_revision=message.mod_revision,
    )


def _kv_if(present: bool, message: pb.KeyValue) -> KeyValue | None:
    return _kv(message) if present else None


def _put_result(response: pb.PutResponse) -> PutResult:
    return PutResult(response.revision, _kv_if(response.had_previous, response.previous))


def _delete_result(response: pb.DeleteResponse) -> DeleteResult:
    return DeleteResult(
        response.revision, response.deleted, _kv_if(response.deleted, response.previous)
    )


def _cas_result(response: pb.CompareAndSwapResponse) -> CasResult:
    return CasResult(
        response.succeeded, response.revision, _kv_if(response.had_current, response.current)
    )


def _get_result(response: pb.GetResponse) -> GetResult:
    return GetResult(
        kv=_kv_if(response.found, response.kv),
        revision=response.revision,
        applied_instance=response.applied_instance,
        lag_instances=response.lag_instances,
    )


def _outcome(response: pb.GetOutcomeResponse) -> Outcome | None:
    if not response.applied:
        return None
    result = response.result
    return Outcome(
        revision=result.revision,
        succeeded=result.succeeded,
        kv=_kv_if(result.found and result.HasField("kv"), result.kv),
        current=_kv_if(result.HasField("current"), result.current),
        kvs=tuple(_kv(item) for item in result.kvs),
    )


def _watch_event(event: pb.WatchEvent) -> WatchEvent:
    kind: Literal["put", "delete"] = (
        "delete" if event.type == pb.WatchEvent.EVENT_TYPE_DELETE else "put"
    )
    return WatchEvent(
        type=kind,
        kv=_kv(event.kv),
        previous=_kv_if(event.had_previous, event.previous),
        revision=event.kv.mod_revision,
    )


# Validation (pure) ------------------------------------------------------------
#
# The client checks only what its own API could get wrong (types, the shape
# of a compare-and-swap, ranges of numbers). What a key may be (non-empty, at
# most N bytes) is the server's rule, checked there once, so the two can never
# disagree.


def _check_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(key).__name__}")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} {key!r} is not valid Unicode text") from None
    return key


def _check_value(value: object, limit: int, what: str = "value") -> bytes:
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > limit:
        # The channel could not even send it (gRPC's own error would say
        # RESOURCE_EXHAUSTED about a message, not about the value).
        raise InvalidArgumentError(
            f"{what} is {len(value)} bytes, more than this client's max_value_bytes ({limit})"
        )
    return value


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_timeout(timeout: float | None, default: float) -> float:
    chosen = default if timeout is None else timeout
    if not chosen > 0:
        raise InvalidArgumentError(f"timeout must be > 0 seconds, got {chosen!r}")
    return chosen


def _cas_request(
    key: str,
    value: bytes,
    expected_value: bytes | None,
    expected_version: int | None,
    limit: int,
) -> pb.CompareAndSwapRequest:
    if (expected_value is None) == (expected_version is None):
        raise InvalidArgumentError(
            "compare-and-swap needs exactly one of expected_value and expected_version"
        )
    request = pb.CompareAndSwapRequest(key=_check_key(key), value=_check_value(value, limit))
    if expected_value is not None:
        request.expected_value = _check_value(expected_value, limit, "expected_value")
    else:
        request.expected_version = _check_int(expected_version, "expected_version", 0, _MAX_UINT64)
    return request


def _watch_request(key: str, prefix: bool, start_revision: int) -> pb.WatchRequest:
    _check_key(key)
    _check_int(start_revision, "start_revision", 0, _MAX_UINT64)
    if not key and not prefix:
        raise InvalidArgumentError("watch needs a key (or prefix=True to watch every key)")
    return pb.WatchRequest(key=key, prefix=bool(prefix), start_revision=start_revision)


# Identity, errors and retries ----------------------------------------------------


class _RequestIds:
    """``(client_id, sequence)`` pairs for one client; safe to share between threads."""

    def __init__(self, client_id: int | None) -> None:
        if client_id is None:
            client_id = secrets.randbits(62) or 1
        self.client_id = _check_int(client_id, "client_id", 1, _MAX_UINT64)
        self._sequences = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> pb.RequestId:
        with self._lock:
            sequence = next(self._sequences)
        return pb.RequestId(client_id=self.client_id, sequence=sequence)


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The code and details of a sync or asyncio gRPC error. (An asyncio
    ``AioRpcError`` is not a ``grpc.Call``, so ``isinstance(exc, grpc.Call)``
    alone would miss every asyncio error.)"""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    if isinstance(exc, grpc.Call):
        return exc.code(), exc.details() or ""
    return None, str(exc)


def _trailing(exc: grpc.RpcError, name: str) -> str | None:
    """Trailing metadata ``name`` of a failed call, if any."""
    getter = getattr(exc, "trailing_metadata", None)
    items = getter() if callable(getter) else None
    for key, value in items or ():
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return None


def _error(exc: grpc.RpcError, address: str, *, tls: bool = False) -> PaxosError:
    """The typed error for a final gRPC failure at ``address`` (a refused
    TLS handshake is AuthenticationError)."""
    code, details = _status(exc)
    return error_for(code, details, address, tls=tls)


class _Attempts:
    """One call's attempts within one deadline, cycling through the learners.

    Unlike the single-decree client's one pass down the list, a KV call keeps
    going round until its deadline: the request carries its ``RequestId``, so
    sending it again can never apply it twice, and the usual cause of a
    refusal (a leader election) is over within a moment. The caller does the
    I/O and the sleeping, so the sync and async clients share this logic::

        attempts = _Attempts(servers, timeout, request_id, writes=True)
        while (attempt := attempts.next()) is not None:
            index, remaining = attempt
            try: result = call(index, remaining)
            except grpc.RpcError as exc: sleep(attempts.failed(index, exc)); continue
            attempts.succeeded(index); return result
        raise attempts.error()
    """

    def __init__(
        self,
        servers: _Servers,
        timeout: float,
        request_id: pb.RequestId | None = None,
        *,
        writes: bool = False,
    ) -> None:
        if not servers.addresses:
            raise InvalidArgumentError(f"no {servers.what} addresses configured")
        self.servers = servers
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.request_id = request_id
        self.writes = writes
        self.count = 0
        self.maybe_applied = False
        self.last: PaxosError | None = None
        #: Learners that refused the TLS handshake in this call.
        self.refused_by: set[int] = set()

    def next(self) -> tuple[int, float] | None:
        """The next learner to try and the time this attempt may take, or None
        past the deadline. With other learners to try, one attempt gets at most
        ``ATTEMPT_TIMEOUT``: a paused or cut-off learner answers nothing, and
        waiting on it for the whole deadline would stall the caller."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        index = (self.servers.preferred + self.count) % len(self.servers.addresses)
        self.count += 1
        if len(self.servers.addresses) > 1:
            remaining = min(remaining, ATTEMPT_TIMEOUT)
        return index, remaining

    def succeeded(self, index: int) -> None:
        """Later calls start with the learner that answered."""
        self.servers.preferred = index

    def failed(self, index: int, exc: grpc.RpcError) -> float:
        """Record a failed attempt. Raise if it is final; else return the pause
        before the next attempt."""
        address = self.servers.addresses[index]
        code, details = _status(exc)
        refusal = tls_channels.describe_refusal(code, details, tls=self.servers.tls)
        if refusal is not None and self.servers.tls:
            # Nothing was sent. Another learner may take our certificate;
            # once every one has refused it, waiting cannot help.
            self.last = AuthenticationError(
                f"{address}: {refusal}", grpc.StatusCode.UNAUTHENTICATED
            )
            self.refused_by.add(index)
            if len(self.refused_by) == len(self.servers.addresses) and not self.maybe_applied:
                raise self.last
        elif code is grpc.StatusCode.UNAVAILABLE:
            if not any(marker in details.lower() for marker in _NOT_SENT):
                self.maybe_applied = True
            # Without TLS a hang-up may be a TLS server's refusal, or just a
            # dropped connection: keep trying, and say what it may be.
            hint = f" ({refusal})" if refusal is not None else ""
            self.last = UnavailableError(f"{address}: {details}{hint}", code)
        elif code is grpc.StatusCode.ABORTED and OUTCOME_UNKNOWN in details:
            self.maybe_applied = True
            self.last = PaxosError(f"{address}: {details}", code)
            if _trailing(exc, OUTCOME_METADATA) == "forgotten":
                # The store forgot the request: no retry can tell. Never "failed".
                raise self._forgotten(address, details, code)
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.maybe_applied = True
            self.last = DeadlineExceededError(f"{address}: {details}", code)
        else:
            raise _error(exc, address, tls=self.servers.tls) from None
        return self.pause()

    def broken(self, index: int, error: PaxosError, *, was_healthy: bool) -> float:
        """Record a watch stream at ``index`` that broke and can resume; return
        the pause. A stream that had been working gets a fresh budget for
        reconnecting (its deadline is not this call's), starting with the
        next learner."""
        if was_healthy:
            self.deadline = time.monotonic() + self.timeout
            self.servers.preferred = index
            self.count = 1
        self.last = error
        return self.pause()

    def pause(self) -> float:
        """No pause until every learner was tried once; then a jittered
        backoff that doubles per pass, so a leaderless cluster is not hammered."""
        n = len(self.servers.addresses)
        if self.count % n:
            return 0.0
        passes = self.count // n
        pause = min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** (passes - 1)) * random.uniform(0.5, 1.0)
        return max(0.0, min(pause, self.deadline - time.monotonic()))

    def _forgotten(self, address: str, details: str, code: grpc.StatusCode) -> PaxosError:
        if self.request_id is None:
            return PaxosError(f"{address}: {details}", code)
        cid, seq = self.request_id.client_id, self.request_id.sequence
        return OutcomeUnknownError(
            f"outcome unknown: request (client_id={cid}, sequence={seq}) is older than the "
            f"sequences the store remembers; it may or may not have been applied, and no "
            f"retry or outcome() can tell ({address}: {details})",
            code,
            client_id=cid,
            sequence=seq,
        )

    def error(self) -> PaxosError:
        """The error for a call whose deadline passed without an answer."""
        last = f" (last: {self.last})" if self.last is not None else ""
        if self.writes and self.maybe_applied and self.request_id is not None:
            cid, seq = self.request_id.client_id, self.request_id.sequence
            return OutcomeUnknownError(
                f"outcome unknown after {self.timeout:g}s: request (client_id={cid}, "
                f"sequence={seq}) may or may not have been applied; retrying it is safe, "
                f"or ask outcome({cid}, {seq}){last}",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                client_id=cid,
                sequence=seq,
            )
        if isinstance(self.last, AuthenticationError):
            return self.last
        if isinstance(self.last, UnavailableError):
            return UnavailableError(
                f"no {self.servers.what} could serve the request within {self.timeout:g}s{last}",
                grpc.StatusCode.UNAVAILABLE,
            )
        return DeadlineExceededError(
            f"no {self.servers.what} answered within {self.timeout:g}s{last}",
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


def _watch_failure(exc: grpc.RpcError, address: str, *, tls: bool) -> PaxosError:
    """The error of a broken watch stream if the watch can resume elsewhere;
    raise it if it cannot.

    UNAVAILABLE (the learner went away) and RESOURCE_EXHAUSTED (the server
    cut off a watcher that fell behind, and asks it to watch again) resume
    from the next revision. Anything else (OUT_OF_RANGE when the history is
    compacted, bad input, a refused certificate) is final."""
    code, _ = _status(exc)
    error = _error(exc, address, tls=tls)
    if isinstance(error, AuthenticationError):
        raise error from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return error
    raise error from None


class _WatchCursor:
    """Where a watch stands: the revision to (re)start from, and the events
    already delivered, so a resumed stream neither skips nor repeats one."""

    def __init__(self, request: pb.WatchRequest) -> None:
        self._request = request
        self.next_revision: int = request.start_revision

    def probe(self) -> pb.RangeRequest:
        """A stale read whose ``revision`` pins a "from now on" watch."""
        return pb.RangeRequest(prefix=self._request.key, limit=1, stale=True)

    def pin(self, revision: int) -> None:
        self.next_revision = revision + 1

    def request(self) -> pb.WatchRequest:
        request = pb.WatchRequest()
        request.CopyFrom(self._request)
        request.start_revision = self.next_revision
        return request

    def resume_from(self, exc: grpc.RpcError) -> None:
        """Adopt the revision a server that ended the stream said to resume
        from (it sent every matching event before it)."""
        text = _trailing(exc, WATCH_RESUME_METADATA)
        if text is not None and text.isdigit():
            self.next_revision = max(self.next_revision, int(text))

    def take(self, item: pb.WatchEvent) -> WatchEvent | None:
        event = _watch_event(item)
        if event.revision < self.next_revision:
            return None  # delivered before a resume
        self.next_revision = event.revision + 1
        return event


# The blocking client ----------------------------------------------------------------


_SyncCall = Callable[[pb_grpc.KvServiceStub, float], _T]
_AsyncCall = Callable[["KvServiceAsyncStub", float], Awaitable[_T]]


class KvClient:
    """Blocking client of the key-value store. Thread-safe: share one instance
    (it holds one gRPC channel per learner) and close it, or use ``with``."""

    def __init__(
        self,
        learners: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        client_id: int | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        if isinstance(learners, str):
            raise InvalidArgumentError("learners must be a list of HOST:PORT strings, not a str")
        self.timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self._ids = _RequestIds(client_id)
        self._servers = _Servers(learners, "learner", tls=tls is not None)
        self._max_value_bytes = max_value_bytes
        options = channel_options(max_value_bytes)
        self._channels = [tls_channels.sync_channel(a, tls, options) for a in learners]
        self._stubs = [pb_grpc.KvServiceStub(c) for c in self._channels]
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    @property
    def client_id(self) -> int:
        """This client's id in every ``RequestId`` it sends."""
        return self._ids.client_id

    # Writes

    def put(self, key: str, value: bytes, *, timeout: float | None = None) -> PutResult:
        """Set ``key`` to ``value`` (creating it at version 1, or adding 1)."""
        request = pb.PutRequest(
            key=_check_key(key), value=_check_value(value, self._max_value_bytes)
        )
        request.request_id.CopyFrom(self._ids.next())

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> PutResult:
            return _put_result(stub.Put(request, timeout=remaining))

        return self._call(call, timeout, request.request_id, writes=True)

    def delete(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        """Remove ``key``; ``deleted`` is False if it was absent (not an error)."""
        request = pb.DeleteRequest(key=_check_key(key))
        request.request_id.CopyFrom(self._ids.next())

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> DeleteResult:
            return _delete_result(stub.Delete(request, timeout=remaining))

        return self._call(call, timeout, request.request_id, writes=True)

    def cas(
        self,
        key: str,
        value: bytes,
        *,
        expected_value: bytes | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> CasResult:
        """Set ``key`` to ``value`` only if its value is ``expected_value``, or
        its version is ``expected_version`` (exactly one of the two). Version 0
        means "absent", so ``expected_version=0`` creates a key only if it does
        not exist yet: the building block of a lock."""
        request = _cas_request(key, value, expected_value, expected_version, self._max_value_bytes)
        request.request_id.CopyFrom(self._ids.next())

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> CasResult:
            return _cas_result(stub.CompareAndSwap(request, timeout=remaining))

        return self._call(call, timeout, request.request_id, writes=True)

    # Reads

    def get(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """The key, or None if absent. Linearizable (the read takes a place in
        the log) unless ``stale``: then any learner answers from its own
        state, which may be behind."""
        return self.get_detailed(key, stale=stale, timeout=timeout).kv

    def get_detailed(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> GetResult:
        """Like :meth:`get`, with the revision read and the answering learner's
        applied instance and, for a stale read, how far behind it may be."""
        request = pb.GetRequest(key=_check_key(key), stale=bool(stale))
        request_id = None if stale else self._ids.next()
        if request_id is not None:
            request.request_id.CopyFrom(request_id)

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> GetResult:
            return _get_result(stub.Get(request, timeout=remaining))

        return self._call(call, timeout, request_id)

    def range(
        self, prefix: str, *, limit: int = 0, stale: bool = False, timeout: float | None = None
    ) -> list[KeyValue]:
        """Keys starting with ``prefix`` (``""``: every key), in key order, at
        most ``limit`` of them (0: the server's maximum)."""
        request = pb.RangeRequest(
            prefix=_check_key(prefix, "prefix"),
            limit=_check_int(limit, "limit", 0, _MAX_UINT32),
            stale=bool(stale),
        )
        request_id = None if stale else self._ids.next()
        if request_id is not None:
            request.request_id.CopyFrom(request_id)

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> list[KeyValue]:
            return [_kv(item) for item in stub.Range(request, timeout=remaining).kvs]

        return self._call(call, timeout, request_id)

    def outcome(
        self, client_id: int, sequence: int, *, timeout: float | None = None
    ) -> Outcome | None:
        """What request ``(client_id, sequence)`` returned if it was applied,
        else None, and None is final: the server first puts a fence for that
        id through the log, so a copy of the request still in flight (or sent
        again with the same id) is refused, never applied. To try it again,
        send it under a new sequence. Raises
        :class:`~paxos_service.client.OutcomeUnknownError` if the store no
        longer remembers the sequence (older than the last 1000 of its client):
        then nobody can tell."""
        request = _outcome_request(client_id, sequence)

        def call(stub: pb_grpc.KvServiceStub, remaining: float) -> Outcome | None:
            return _outcome(stub.GetOutcome(request, timeout=remaining))

        return self._call(call, timeout, request.request_id)

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch:
        """Changes to ``key`` (or to every key starting with it, if ``prefix``):
        first every change from ``start_revision`` on, then live ones; 0 means
        "from now on". Iterate it in a ``with`` block, or call ``close()``
        (from any thread) to stop it; the iteration then ends."""
        watch = Watch(self, _watch_request(key, prefix, start_revision))
        if start_revision == 0:
            # Pin "now" here, not at the first iteration: a change made after
            # watch() returns must be seen even if iteration starts later.
            watch._cursor.pin(self._call(watch._probe, None))
        self._watches.add(watch)
        return watch

    # Lifecycle

    def close(self) -> None:
        """Stop every watch and close the channels."""
        for watch in list(self._watches):
            watch.close()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        call: _SyncCall[_T],
        timeout: float | None,
        request_id: pb.RequestId | None = None,
        *,
        writes: bool = False,
    ) -> _T:
        attempts = _Attempts(
            self._servers, _check_timeout(timeout, self.timeout), request_id, writes=writes
        )
        while (attempt := attempts.next()) is not None:
            index, remaining = attempt
            try:
                result = call(self._stubs[index], remaining)
            except grpc.RpcError as exc:
                time.sleep(attempts.failed(index, exc))
                continue
            attempts.succeeded(index)
            return result
        raise attempts.error()


def _outcome_request(client_id: int, sequence: int) -> pb.GetOutcomeRequest:
    return pb.GetOutcomeRequest(
        request_id=pb.RequestId(
            client_id=_check_int(client_id, "client_id", 1, _MAX_UINT64),
            sequence=_check_int(sequence, "sequence", 1, _MAX_UINT64),
        )
    )


def _cancel(stream: grpc.Call) -> None:
    stream.cancel()  # type: ignore[no-untyped-call]  # (untyped in grpc-stubs)


class Watch:
    """A running watch: an iterator of :class:`WatchEvent` in revision order.

    If its learner goes away (or cuts the watch off for falling behind), the
    watch resumes on the next learner from the revision after the last event
    it delivered, so no event is lost or repeated; it raises
    :class:`UnavailableError` when no learner takes it back within the
    client's timeout. A "from now on" watch is pinned, when ``watch()``
    returns, to the revision a learner has applied (a stale read): every
    change after that is delivered even if iteration starts later, and
    resuming is exact. Other failures (OUT_OF_RANGE when the history from the
    start revision is compacted) raise :class:`PaxosError`."""

    def __init__(self, client: KvClient, request: pb.WatchRequest) -> None:
        self._client = client
        self._cursor = _WatchCursor(request)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stream: grpc.CallIterator[pb.WatchResponse] | None = None
        self._events = self._run()

    @property
    def next_revision(self) -> int:
        """The revision of the next event this watch can deliver."""
        return self._cursor.next_revision

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _probe(self, stub: pb_grpc.KvServiceStub, remaining: float) -> int:
        revision: int = stub.Range(self._cursor.probe(), timeout=remaining).revision
        return revision

    def close(self) -> None:
        """Stop the watch; safe from any thread. A blocked iteration ends."""
        self._closed.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            _cancel(stream)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> Iterator[WatchEvent]:
        client, cursor = self._client, self._cursor
        attempts = _Attempts(client._servers, client.timeout)
        while not self._closed.is_set():
            attempt = attempts.next()
            if attempt is None:
                raise attempts.error()
            index, _ = attempt
            address = client._servers.addresses[index]
            stub = client._stubs[index]
            opened, healthy = time.monotonic(), False
            try:
                stream = stub.Watch(cursor.request())
                with self._lock:
                    self._stream = stream
                if self._closed.is_set():
                    _cancel(stream)  # close() ran before the stream existed
                try:
                    for response in stream:
                        healthy = True
                        for item in response.events:
                            event = cursor.take(item)
                            if event is not None:
                                yield event
                finally:
                    _cancel(stream)
                failure: PaxosError = UnavailableError(f"{address}: the learner ended the watch")
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return
                cursor.resume_from(exc)
                failure = _watch_failure(exc, address, tls=client._servers.tls)
            if self._closed.is_set():
                return
            healthy = healthy or time.monotonic() - opened >= WATCH_HEALTHY_AFTER
            self._closed.wait(attempts.broken(index, failure, was_healthy=healthy))


# The asyncio client ------------------------------------------------------------------


class AsyncKvClient:
    """The asyncio twin of :class:`KvClient`: the same methods, awaited, and
    ``watch`` returns an async iterator. Use it from one event loop."""

    def __init__(
        self,
        learners: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        client_id: int | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        if isinstance(learners, str):
            raise InvalidArgumentError("learners must be a list of HOST:PORT strings, not a str")
        self.timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self._ids = _RequestIds(client_id)
        self._servers = _Servers(learners, "learner", tls=tls is not None)
        self._max_value_bytes = max_value_bytes
        options = channel_options(max_value_bytes)
        self._channels = [tls_channels.aio_channel(a, tls, options) for a in learners]
        self._stubs = [pb_grpc.KvServiceStub(c) for c in self._channels]
        self._watches: weakref.WeakSet[AsyncWatch] = weakref.WeakSet()

    @property
    def client_id(self) -> int:
        """This client's id in every ``RequestId`` it sends."""
        return self._ids.client_id

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> PutResult:
        """See :meth:`KvClient.put`."""
        request = pb.PutRequest(
            key=_check_key(key), value=_check_value(value, self._max_value_bytes)
        )
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> PutResult:
            return _put_result(await stub.Put(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    async def delete(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        """See :meth:`KvClient.delete`."""
        request = pb.DeleteRequest(key=_check_key(key))
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> DeleteResult:
            return _delete_result(await stub.Delete(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    async def cas(
        self,
        key: str,
        value: bytes,
        *,
        expected_value: bytes | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> CasResult:
        """See :meth:`KvClient.cas`."""
        request = _cas_request(key, value, expected_value, expected_version, self._max_value_bytes)
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> CasResult:
            return _cas_result(await stub.CompareAndSwap(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    async def get(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """See :meth:`KvClient.get`."""
        return (await self.get_detailed(key, stale=stale, timeout=timeout)).kv

    async def get_detailed(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> GetResult:
        """See :meth:`KvClient.get_detailed`."""
        request = pb.GetRequest(key=_check_key(key), stale=bool(stale))
        request_id = None if stale else self._ids.next()
        if request_id is not None:
            request.request_id.CopyFrom(request_id)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> GetResult:
            return _get_result(await stub.Get(request, timeout=remaining))

        return await self._call(call, timeout, request_id)

    async def range(
        self, prefix: str, *, limit: int = 0, stale: bool = False, timeout: float | None = None
    ) -> list[KeyValue]:
        """See :meth:`KvClient.range`."""
        request = pb.RangeRequest(
            prefix=_check_key(prefix, "prefix"),
            limit=_check_int(limit, "limit", 0, _MAX_UINT32),
            stale=bool(stale),
        )
        request_id = None if stale else self._ids.next()
        if request_id is not None:
            request.request_id.CopyFrom(request_id)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> list[KeyValue]:
            return [_kv(item) for item in (await stub.Range(request, timeout=remaining)).kvs]

        return await self._call(call, timeout, request_id)

    async def outcome(
        self, client_id: int, sequence: int, *, timeout: float | None = None
    ) -> Outcome | None:
        """See :meth:`KvClient.outcome`."""
        request = _outcome_request(client_id, sequence)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> Outcome | None:
            return _outcome(await stub.GetOutcome(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id)

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> AsyncWatch:
        """See :meth:`KvClient.watch`; use ``async with`` / ``async for``, and
        ``cancel()`` (or cancel the iterating task) to stop."""
        watch = AsyncWatch(self, _watch_request(key, prefix, start_revision))
        self._watches.add(watch)
        return watch

    async def close(self) -> None:
        """Stop every watch and close the channels."""
        for watch in list(self._watches):
            watch.cancel()
        for channel in self._channels:
            await channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        call: _AsyncCall[_T],
        timeout: float | None,
        request_id: pb.RequestId | None = None,
        *,
        writes: bool = False,
    ) -> _T:
        attempts = _Attempts(
            self._servers, _check_timeout(timeout, self.timeout), request_id, writes=writes
        )
        while (attempt := attempts.next()) is not None:
            index, remaining = attempt
            try:
                result = await call(self._stubs[index], remaining)
            except grpc.RpcError as exc:
                await asyncio.sleep(attempts.failed(index, exc))
                continue
            attempts.succeeded(index)
            return result
        raise attempts.error()


class AsyncWatch:
    """The asyncio twin of :class:`Watch`: ``async for event in watch``.

    ``cancel()`` (or leaving ``async with``) ends the iteration quietly;
    cancelling the task that iterates works too and propagates as usual."""

    def __init__(self, client: AsyncKvClient, request: pb.WatchRequest) -> None:
        self._client = client
        self._cursor = _WatchCursor(request)
        self._closed = False
        self._wakeup = asyncio.Event()
        self._stream: grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.WatchResponse] | None = None
        self._events = self._run()

    @property
    def next_revision(self) -> int:
        """The revision of the next event this watch can deliver (0 until started)."""
        return self._cursor.next_revision

    @property
    def closed(self) -> bool:
        return self._closed

    def cancel(self) -> None:
        """Stop the watch: an ``async for`` over it ends."""
        self._closed = True
        self._wakeup.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    async def aclose(self) -> None:
        """Stop the watch and release its stream."""
        self.cancel()
        # A generator that another task is iterating cannot be closed from
        # here; cancel() has already made that iteration end on its own.
        running: bool = getattr(self._events, "ag_running", False)
        if not running:
            await self._events.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._events.__anext__()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Pin a "from now on" watch to the current revision, so that every
        change made after this returns is delivered. ``async with`` calls it;
        otherwise the first iteration does."""
        if self._cursor.next_revision == 0:

            async def probe(stub: KvServiceAsyncStub, remaining: float) -> int:
                revision: int = (await stub.Range(self._cursor.probe(), timeout=remaining)).revision
                return revision

            self._cursor.pin(await self._client._call(probe, None))

    async def _run(self) -> AsyncGenerator[WatchEvent, None]:
        client, cursor = self._client, self._cursor
        attempts = _Attempts(client._servers, client.timeout)
        while not self._closed:
            attempt = attempts.next()
            if attempt is None:
                raise attempts.error()
            index, _ = attempt
            address = client._servers.addresses[index]
            stub = client._stubs[index]
            opened, healthy = time.monotonic(), False
            try:
                await self.start()
                stream = stub.Watch(cursor.request())
                self._stream = stream
                if self._closed:
                    stream.cancel()
                try:
                    async for response in stream:
                        healthy = True
                        for item in response.events:
                            event = cursor.take(item)
                            if event is not None:
                                yield event
                finally:
                    stream.cancel()
                failure: PaxosError = UnavailableError(f"{address}: the learner ended the watch")
            except asyncio.CancelledError:
                # cancel() cancels the stream, which raises CancelledError in
                # the reader; that is the end of the watch. A cancellation of
                # the iterating task itself must propagate.
                task = asyncio.current_task()
                if self._closed and (task is None or task.cancelling() == 0):
                    return
                raise
            except grpc.RpcError as exc:
                if self._closed:
                    return
                cursor.resume_from(exc)
                failure = _watch_failure(exc, address, tls=client._servers.tls)
            if self._closed:
                return
            healthy = healthy or time.monotonic() - opened >= WATCH_HEALTHY_AFTER
            pause = attempts.broken(index, failure, was_healthy=healthy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), pause)
