"""What the blocking clients run on: a private event loop on one daemon thread.

The asyncio clients are the only implementation. :class:`~paxos_service.client.kv.KvClient`,
:class:`~paxos_service.client.watch.Watch` and :class:`~paxos_service.client.paxos.PaxosClient`
hand their coroutines to a :class:`LoopThread` and wait for the answer. Each
blocking client owns its loop, so it may be shared between threads, and it
works even when created inside a running event loop (which a blocking call
then blocks, as any blocking call does). The async core enforces every
deadline, so a blocking call never waits longer than its timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc

from paxos_service.core.errors import PaxosError

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound="_Core")
#: How long closing waits for calls still running to end once cancelled.
_CANCEL_GRACE = 1.0
#: How long closing waits for the channels to close.
_CLOSE_TIMEOUT = 2.0
#: How often a blocked call wakes to let a signal handler run.
_SIGNAL_POLL = 0.2


class LoopThread:
    """An event loop running on its own daemon thread until :meth:`close`."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and return its result (or raise its
        error) here. A call on a closed client, or one still running when the
        client is closed, raises :class:`PaxosError` (CANCELLED); an
        interrupted wait (Ctrl-C) cancels the call."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking client cannot be called from its own event loop")
        with self._lock:
            if self._closed:
                coro.close()
                raise PaxosError("the client is closed", grpc.StatusCode.CANCELLED)
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return _wait(future)
        except concurrent.futures.CancelledError:
            raise PaxosError(
                "the client was closed during the call", grpc.StatusCode.CANCELLED
            ) from None
        except BaseException:
            future.cancel()  # KeyboardInterrupt, say: the call must not go on
            raise

    def build(self, factory: Callable[[], _T]) -> _T:
        """``factory()`` called on the loop: asyncio channels belong to the
        loop they are created on."""

        async def build() -> _T:
            return factory()

        return self.run(build())

    def close(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Await ``cleanup()`` (closing the channels), cancel whatever still
        runs, stop the loop and end the thread. Idempotent; safe from any
        thread, and from a finalizer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._loop.call_soon_threadsafe(self._begin_shutdown, cleanup)
        if threading.current_thread() is not self._thread:
            # Bounded, like every step of the shutdown: a close must never
            # hang a program on its way out (Ctrl-C); the thread is a daemon.
            self._thread.join(timeout=_CLOSE_TIMEOUT + _CANCEL_GRACE + 1.0)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _begin_shutdown(self, cleanup: Callable[[], Awaitable[None]] | None) -> None:
        task = self._loop.create_task(self._shutdown(cleanup))
        task.add_done_callback(lambda _: self._loop.stop())

    async def _shutdown(self, cleanup: Callable[[], Awaitable[None]] | None) -> None:
        if cleanup is not None:
            # Closing goes on whatever a channel says, or if it never answers.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cleanup(), _CLOSE_TIMEOUT)
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=_CANCEL_GRACE)
        await self._loop.shutdown_asyncgens()


def _wait(future: concurrent.futures.Future[_T]) -> _T:
    """``future.result()``, waking every :data:`_SIGNAL_POLL` seconds. A
    process-directed signal (``kill -INT``) may be delivered to any thread,
    gRPC's or the loop's: Python runs its handler in the main thread only when
    that thread next runs bytecode, and a lock wait with no timeout is not
    interrupted by a signal another thread took, so the interrupt could wait
    for the next event of a watch, maybe forever."""
    while True:
        try:
            return future.result(timeout=_SIGNAL_POLL)
        except concurrent.futures.TimeoutError:
            continue


def blocking_twin(of: Callable[..., Any]) -> Callable[[_F], _F]:
    """Give a blocking method the docstring of ``of``, its asyncio twin, which
    is where the behaviour (and so its description) lives."""

    def decorate(method: _F) -> _F:
        method.__doc__ = of.__doc__
        return method

    return decorate


class Closing:
    """Closed on leaving a ``with`` block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """Closed on leaving an ``async with`` block."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Core(Protocol):
    timeout: float

    async def close(self) -> None: ...


class BlockingClient(Closing, Generic[_C]):
    """What a blocking client is: an asyncio client, its core, running on a
    :class:`LoopThread` of its own (or of the client that made it)."""

    _loop: LoopThread
    _core: _C

    def _start(self, name: str, factory: Callable[[], _C]) -> None:
        """Run the core ``factory`` makes on a loop thread of this client's own."""
        loop = LoopThread(name)
        try:
            core = loop.build(factory)
        except BaseException:
            loop.close()
            raise
        self._attach(loop, core, None)

    def _attach(self, loop: LoopThread, core: _C, owner: object | None) -> None:
        self._loop = loop
        self._core = core
        #: Whoever owns the loop, kept alive by this client; None: this client.
        self._owner = owner
        # An owned loop ends with this client, even one never closed.
        self._finalizer = weakref.finalize(self, loop.close, core.close) if owner is None else None

    @property
    def timeout(self) -> float:
        """Every call's deadline unless the call gives its own, in seconds."""
        return self._core.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._core.timeout = seconds

    def close(self) -> None:
        """Close the channels, which ends every watch, and the loop's thread."""
        if self._finalizer is not None:
            self._finalizer()
        elif not self._loop.closed:
            with contextlib.suppress(PaxosError):  # the owner closed the loop meanwhile
                self._loop.run(self._core.close())
