"""Watching keys: :class:`AsyncWatch`, and :class:`Watch`, its blocking face.

A watch is one server stream at a time. If its learner goes away (or cuts
the watch off for falling behind), the watch resumes on the next learner from
the revision after the last event it delivered, so no event is lost or
repeated. :class:`AsyncWatch` is the implementation; :class:`Watch` runs it on
its client's event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Self

import grpc

from paxos_service.client.failover import Servers
from paxos_service.client.grpc_status import error_from, status_of, trailing
from paxos_service.client.kv_call import KvCall
from paxos_service.client.results import WatchEvent, watch_event
from paxos_service.client.sync import AsyncClosing, Closing, LoopThread
from paxos_service.core import clock
from paxos_service.core.errors import (
    AuthenticationError,
    CompactedError,
    PaxosError,
    UnavailableError,
)
from paxos_service.transport.metadata import COMPACT_REVISION_METADATA, WATCH_RESUME_METADATA
from paxos_service.v1 import paxos_pb2 as pb

if TYPE_CHECKING:
    from paxos_service.v1.paxos_pb2_grpc import KvServiceAsyncStub

#: A watch stream that stayed up this long counts as healthy: its reconnect
#: budget (the client's timeout) starts again at the next failure.
WATCH_HEALTHY_AFTER = 1.0


def _watch_failure(exc: grpc.RpcError, address: str, *, tls: bool) -> PaxosError:
    """The error of a broken watch stream if the watch can resume elsewhere;
    raise it if it cannot.

    UNAVAILABLE (the learner went away) and RESOURCE_EXHAUSTED (the server
    cut off a watcher that fell behind, and asks it to watch again) resume
    from the next revision. Anything else (OUT_OF_RANGE when the history is
    compacted, bad input, a refused certificate) is final."""
    code, details = status_of(exc)
    error = error_from(exc, address, tls=tls)
    if isinstance(error, AuthenticationError):
        raise error from None
    compacted = trailing(exc, COMPACT_REVISION_METADATA)
    if code is grpc.StatusCode.OUT_OF_RANGE and compacted is not None and compacted.isdigit():
        raise CompactedError(f"{address}: {details}", int(compacted)) from None
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
        text = trailing(exc, WATCH_RESUME_METADATA)
        if text is not None and text.isdigit():
            self.next_revision = max(self.next_revision, int(text))

    def take(self, item: pb.WatchEvent) -> WatchEvent | None:
        event = watch_event(item)
        if event.revision < self.next_revision:
            return None  # delivered before a resume
        self.next_revision = event.revision + 1
        return event


class AsyncWatch(AsyncClosing):
    """A running watch: ``async for event in watch``, events in revision order.

    It raises :class:`UnavailableError` when no learner takes it back within
    the client's timeout; other failures (OUT_OF_RANGE when the history from
    the start revision is compacted) raise :class:`PaxosError`. A "from now
    on" watch is pinned by :meth:`start` to the revision a learner has applied
    (a stale read): every change after that is delivered, and resuming is
    exact. ``cancel()`` (or leaving ``async with``) ends the iteration
    quietly; cancelling the task that iterates works too and propagates as
    usual."""

    def __init__(
        self,
        request: pb.WatchRequest,
        servers: Servers,
        stubs: Mapping[str, KvServiceAsyncStub],
        timeout: float,
        revision: Callable[[pb.RangeRequest], Awaitable[int]],
    ) -> None:
        self._servers = servers
        self._stubs = stubs
        self._timeout = timeout
        #: The store revision a (stale) range read says: what pins "from now on".
        self._revision = revision
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

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Pin a "from now on" watch to the current revision, so that every
        change made after this returns is delivered. ``async with`` calls it;
        otherwise the first iteration does."""
        if self._cursor.next_revision == 0:
            self._cursor.pin(await self._revision(self._cursor.probe()))

    async def _run(self) -> AsyncGenerator[WatchEvent, None]:
        cursor = self._cursor
        attempts = KvCall(self._servers, self._timeout)
        while not self._closed:
            attempt = attempts.next()
            if attempt is None:
                raise attempts.error()
            address = attempt.address
            opened, healthy = clock.now(), False
            try:
                await self.start()
                stream = self._stubs[address].Watch(cursor.request())
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
                failure = _watch_failure(exc, address, tls=self._servers.tls)
            if self._closed:
                return
            healthy = healthy or clock.now() - opened >= WATCH_HEALTHY_AFTER
            pause = attempts.broken(address, failure, was_healthy=healthy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), pause)


class Watch(Closing):
    """The blocking face of :class:`AsyncWatch`: an iterator of
    :class:`WatchEvent` in revision order, with the same resuming and errors.
    ``KvClient.watch`` pins a "from now on" watch before it returns, so every
    change after that is delivered even if iteration starts later. Iterate it
    in a ``with`` block, or call ``close()`` (from any thread) to stop it: a
    blocked iteration then ends."""

    def __init__(self, loop: LoopThread, watch: AsyncWatch, client: object) -> None:
        self._loop = loop
        self._watch = watch
        #: The client whose loop this is: alive as long as its watch is.
        self._client = client

    @property
    def next_revision(self) -> int:
        """The revision of the next event this watch can deliver."""
        return self._watch.next_revision

    @property
    def closed(self) -> bool:
        return self._watch.closed or self._loop.closed

    def close(self) -> None:
        """Stop the watch; safe from any thread. A blocked iteration ends."""
        if not self._loop.closed:
            with contextlib.suppress(PaxosError):  # the client closed meanwhile
                self._loop.run(self._watch.aclose())

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent:
        try:
            return self._loop.run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        except PaxosError as exc:
            if exc.code is grpc.StatusCode.CANCELLED and self._loop.closed:
                raise StopIteration from None  # the client closed, and so its watches
            raise
