"""Python client for the replicated key-value store (``KvService`` on the learners).

    from paxos_service.client.kv import KvClient

    with KvClient(["127.0.0.1:50056", "127.0.0.1:50057"]) as kv:
        kv.put("config/mode", b"fast")               # PutResult(revision=1, previous=None)
        kv.get("config/mode")                        # KeyValue(value=b"fast", version=1, ...)
        kv.cas("lock", b"me", expected_version=0)    # create only if absent
        with kv.watch("config/", prefix=True) as events:
            for event in events:                     # WatchEvent("put", kv, previous, revision)
                ...

:class:`AsyncKvClient` has the same methods, awaited (``watch`` gives an async
iterator); it is the implementation, and :class:`KvClient` runs it on a
private event-loop thread. ``PaxosClient.kv`` and ``AsyncPaxosClient.kv`` are
these clients.

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
:class:`~paxos_service.core.errors.OutcomeUnknownError` carrying its
``(client_id, sequence)``: retrying is still safe, and :meth:`KvClient.outcome`
says whether it was applied. A read in that state raises
:class:`~paxos_service.core.errors.DeadlineExceededError` instead, since a read
changes nothing and can simply be made again. When every attempt was refused
without appending anything (no learner reachable, or no leader), the error is
:class:`~paxos_service.core.errors.UnavailableError`. Bad input is
:class:`~paxos_service.core.errors.InvalidArgumentError`. With
``tls=TlsFiles(...)``, a handshake every learner refuses is
:class:`~paxos_service.core.errors.AuthenticationError`, at once (unless an earlier
attempt of the same write may have been applied: then the outcome is what
matters). Nothing here raises a raw gRPC error or returns a protobuf message.

Each request also says which answers this client already has
(``first_incomplete``: the lowest sequence it still waits for, an unknown
outcome included), so the state machine forgets those results and refuses a
late copy of them: it keeps about one result per client, not a thousand. It
remembers the last 1000 sequences of each client at most, and refuses an older
one as "too old". Keep fewer calls than that of one client
in flight at once (a few hundred threads sharing a client are fine), or use
more clients. A refused old sequence may have been applied by an earlier
attempt, and nobody can tell any more: the call (and :meth:`KvClient.outcome`
for it) raises :class:`~paxos_service.core.errors.OutcomeUnknownError` at once,
never "failed". Do not send such a request again as a new one.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from paxos_service.client import results
from paxos_service.client.failover import Servers
from paxos_service.client.kv_call import KvCall
from paxos_service.client.requests import (
    DEFAULT_TIMEOUT,
    MAX_UINT32,
    RequestIds,
    cas_request,
    check_int,
    check_key,
    check_timeout,
    check_value,
    outcome_request,
    watch_request,
)
from paxos_service.client.results import (
    CasResult,
    DeleteResult,
    GetResult,
    KeyValue,
    Outcome,
    PutResult,
    WatchEvent,
)
from paxos_service.client.sync import AsyncClosing, BlockingClient, LoopThread, blocking_twin
from paxos_service.client.watch import AsyncWatch, Watch
from paxos_service.core.config import DEFAULT_MAX_VALUE_BYTES, TlsFiles
from paxos_service.core.errors import InvalidArgumentError, OutcomeUnknownError, PaxosError
from paxos_service.transport import tls as tls_channels
from paxos_service.transport.channels import channel_options
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paxos_service.v1.paxos_pb2_grpc import KvServiceAsyncStub

# The results and the watch are part of this module's API too.
__all__ = [
    "AsyncKvClient",
    "AsyncWatch",
    "CasResult",
    "DeleteResult",
    "GetResult",
    "KeyValue",
    "KvClient",
    "Outcome",
    "PutResult",
    "Watch",
    "WatchEvent",
]

_T = TypeVar("_T")
_Call = Callable[["KvServiceAsyncStub", float], Awaitable[_T]]


class AsyncKvClient(AsyncClosing):
    """Client of the key-value store, for asyncio: use it from one event loop.
    It holds one gRPC channel per learner; close it, or use ``async with``."""

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
        self.timeout = check_timeout(timeout, DEFAULT_TIMEOUT)
        self._ids = RequestIds(client_id)
        self._servers = Servers(learners, "learner", tls=tls is not None)
        self._max_value_bytes = max_value_bytes
        options = channel_options(max_value_bytes)
        self._channels = {a: tls_channels.aio_channel(a, tls, options) for a in learners}
        self._stubs = {a: pb_grpc.KvServiceStub(c) for a, c in self._channels.items()}
        self._watches: weakref.WeakSet[AsyncWatch] = weakref.WeakSet()

    @property
    def client_id(self) -> int:
        """This client's id in every ``RequestId`` it sends."""
        return self._ids.client_id

    # Writes

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> PutResult:
        """Set ``key`` to ``value`` (creating it at version 1, or adding 1)."""
        request = pb.PutRequest(key=check_key(key), value=check_value(value, self._max_value_bytes))
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> PutResult:
            return results.put_result(await stub.Put(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    async def delete(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        """Remove ``key``; ``deleted`` is False if it was absent (not an error)."""
        request = pb.DeleteRequest(key=check_key(key))
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> DeleteResult:
            return results.delete_result(await stub.Delete(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    async def compact(self, revision: int, *, timeout: float | None = None) -> int:
        """Discard watch history through ``revision`` on every learner (keys
        and values stay); return the store's revision then. A watch from
        ``revision`` or before then raises :class:`CompactedError`. A revision
        above the store's is refused with :class:`InvalidArgumentError`."""
        request = pb.CompactRequest(revision=revision)
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> int:
            return int((await stub.Compact(request, timeout=remaining)).revision)

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
        """Set ``key`` to ``value`` only if its value is ``expected_value``, or
        its version is ``expected_version`` (exactly one of the two). Version 0
        means "absent", so ``expected_version=0`` creates a key only if it does
        not exist yet: the building block of a lock."""
        request = cas_request(key, value, expected_value, expected_version, self._max_value_bytes)
        request.request_id.CopyFrom(self._ids.next())

        async def call(stub: KvServiceAsyncStub, remaining: float) -> CasResult:
            return results.cas_result(await stub.CompareAndSwap(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id, writes=True)

    # Reads

    async def get(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """The key, or None if absent. Linearizable (the read takes a place in
        the log) unless ``stale``: then any learner answers from its own
        state, which may be behind."""
        return (await self.get_detailed(key, stale=stale, timeout=timeout)).kv

    async def get_detailed(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> GetResult:
        """Like :meth:`get`, with the revision read and the answering learner's
        applied instance and, for a stale read, how far behind it may be."""
        request = pb.GetRequest(key=check_key(key), stale=bool(stale))
        request_id = self._read_id(request, stale)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> GetResult:
            return results.get_result(await stub.Get(request, timeout=remaining))

        return await self._call(call, timeout, request_id)

    async def range(
        self, prefix: str, *, limit: int = 0, stale: bool = False, timeout: float | None = None
    ) -> list[KeyValue]:
        """Keys starting with ``prefix`` (``""``: every key), in key order, at
        most ``limit`` of them (0: the server's maximum)."""
        request = pb.RangeRequest(
            prefix=check_key(prefix, "prefix"),
            limit=check_int(limit, "limit", 0, MAX_UINT32),
            stale=bool(stale),
        )
        request_id = self._read_id(request, stale)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> list[KeyValue]:
            response = await stub.Range(request, timeout=remaining)
            return [results.key_value(item) for item in response.kvs]

        return await self._call(call, timeout, request_id)

    async def outcome(
        self, client_id: int, sequence: int, *, timeout: float | None = None
    ) -> Outcome | None:
        """What request ``(client_id, sequence)`` returned if it was applied,
        else None, and None is final: the server first puts a fence for that
        id through the log, so a copy of the request still in flight (or sent
        again with the same id) is refused, never applied. To try it again,
        send it under a new sequence. Raises
        :class:`~paxos_service.core.errors.OutcomeUnknownError` if the store no
        longer remembers the sequence (older than the last 1000 of its client):
        then nobody can tell."""
        request = outcome_request(client_id, sequence)

        async def call(stub: KvServiceAsyncStub, remaining: float) -> Outcome | None:
            return results.outcome(await stub.GetOutcome(request, timeout=remaining))

        return await self._call(call, timeout, request.request_id)

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> AsyncWatch:
        """Changes to ``key`` (or to every key starting with it, if ``prefix``):
        first every change from ``start_revision`` on, then live ones; 0 means
        "from now on". Use ``async with`` / ``async for``, and ``cancel()`` (or
        cancel the iterating task) to stop."""
        request = watch_request(key, prefix, start_revision)
        watch = AsyncWatch(request, self._servers, self._stubs, self.timeout, self._revision)
        self._watches.add(watch)
        return watch

    # Lifecycle

    async def close(self) -> None:
        """Stop every watch and close the channels."""
        for watch in list(self._watches):
            watch.cancel()
        for channel in self._channels.values():
            await channel.close(grace=None)

    def _read_id(
        self, request: pb.GetRequest | pb.RangeRequest, stale: bool
    ) -> pb.RequestId | None:
        """A linearizable read goes through the log, so it gets a request id."""
        if stale:
            return None
        request.request_id.CopyFrom(self._ids.next())
        return request.request_id

    async def _revision(self, probe: pb.RangeRequest) -> int:
        async def call(stub: KvServiceAsyncStub, remaining: float) -> int:
            revision: int = (await stub.Range(probe, timeout=remaining)).revision
            return revision

        return await self._call(call, None)

    async def _call(
        self,
        call: _Call[_T],
        timeout: float | None,
        request_id: pb.RequestId | None = None,
        *,
        writes: bool = False,
    ) -> _T:
        timeout = check_timeout(timeout, self.timeout)
        attempts = KvCall(self._servers, timeout, request_id, writes=writes)
        try:
            result = await attempts.run(
                lambda address, remaining: call(self._stubs[address], remaining)
            )
        except OutcomeUnknownError:
            raise  # stays open: outcome() may still ask for its result
        except PaxosError:
            if request_id is not None:
                self._ids.done(request_id.sequence)  # a sure answer: not applied
            raise
        if request_id is not None:
            self._ids.done(request_id.sequence)
        return result


class KvClient(BlockingClient[AsyncKvClient]):
    """Blocking client of the key-value store: :class:`AsyncKvClient` run on a
    private event-loop thread. Thread-safe: share one instance (it holds one
    gRPC channel per learner) and close it, or use ``with``."""

    def __init__(
        self,
        learners: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        client_id: int | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        self._start(
            "paxos-kv-client",
            lambda: AsyncKvClient(
                learners,
                timeout=timeout,
                client_id=client_id,
                max_value_bytes=max_value_bytes,
                tls=tls,
            ),
        )

    @classmethod
    def _on_loop(cls, loop: LoopThread, core: AsyncKvClient, owner: object) -> KvClient:
        """A blocking face for ``core`` on the loop ``owner`` runs (and closes)."""
        client = cls.__new__(cls)
        client._attach(loop, core, owner)
        return client

    @property
    def client_id(self) -> int:
        """This client's id in every ``RequestId`` it sends."""
        return self._core.client_id

    @blocking_twin(AsyncKvClient.put)
    def put(self, key: str, value: bytes, *, timeout: float | None = None) -> PutResult:
        return self._loop.run(self._core.put(key, value, timeout=timeout))

    @blocking_twin(AsyncKvClient.delete)
    def delete(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        return self._loop.run(self._core.delete(key, timeout=timeout))

    @blocking_twin(AsyncKvClient.compact)
    def compact(self, revision: int, *, timeout: float | None = None) -> int:
        return self._loop.run(self._core.compact(revision, timeout=timeout))

    @blocking_twin(AsyncKvClient.cas)
    def cas(
        self,
        key: str,
        value: bytes,
        *,
        expected_value: bytes | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> CasResult:
        return self._loop.run(
            self._core.cas(
                key,
                value,
                expected_value=expected_value,
                expected_version=expected_version,
                timeout=timeout,
            )
        )

    @blocking_twin(AsyncKvClient.get)
    def get(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        return self._loop.run(self._core.get(key, stale=stale, timeout=timeout))

    @blocking_twin(AsyncKvClient.get_detailed)
    def get_detailed(
        self, key: str, *, stale: bool = False, timeout: float | None = None
    ) -> GetResult:
        return self._loop.run(self._core.get_detailed(key, stale=stale, timeout=timeout))

    @blocking_twin(AsyncKvClient.range)
    def range(
        self, prefix: str, *, limit: int = 0, stale: bool = False, timeout: float | None = None
    ) -> list[KeyValue]:
        return self._loop.run(self._core.range(prefix, limit=limit, stale=stale, timeout=timeout))

    @blocking_twin(AsyncKvClient.outcome)
    def outcome(
        self, client_id: int, sequence: int, *, timeout: float | None = None
    ) -> Outcome | None:
        return self._loop.run(self._core.outcome(client_id, sequence, timeout=timeout))

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch:
        """Changes to ``key`` (or to every key starting with it, if ``prefix``):
        first every change from ``start_revision`` on, then live ones; 0 means
        "from now on". Iterate it in a ``with`` block, or call ``close()``
        (from any thread) to stop it; the iteration then ends."""
        watch = self._loop.build(
            lambda: self._core.watch(key, prefix=prefix, start_revision=start_revision)
        )
        # Pin "now" here, not at the first iteration: a change made after
        # watch() returns must be seen even if iteration starts later.
        self._loop.run(watch.start())
        return Watch(self._loop, watch, self)
