"""A deterministic asyncio event loop with virtual time.

:class:`VirtualEventLoop` is an :class:`asyncio.BaseEventLoop` whose clock
(:meth:`~VirtualEventLoop.time`) is a plain float of virtual seconds. When no
callback is ready, the loop jumps straight to the next timer instead of
sleeping, so ``await asyncio.sleep(3600)`` takes no real time. When nothing is
ready and no timer is scheduled, nothing can ever happen again: the loop
raises :class:`SimDeadlock`.

No real I/O and no threads: the loop has no selector and no self-pipe, so
sockets, subprocesses, signal handlers and DNS lookups all fail, and
:meth:`~VirtualEventLoop.run_in_executor` refuses any executor that is not
marked simulation-safe (an attribute named :data:`SIM_SAFE_ATTR` set to True,
as :class:`~tests.simulation.realsim.executor.SimExecutor` has).

Tasks belong to nodes: a task created while the context variable
:data:`NODE` is set (or created with ``context=`` a context in which it is
set) is recorded under that node, so that a crash can cancel every task of
the node (:meth:`~VirtualEventLoop.tasks_of`, :meth:`~VirtualEventLoop.cancel_node`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

#: Executors without this attribute set to True are refused by the loop.
SIM_SAFE_ATTR = "realsim_safe"

#: Which node the current task belongs to (None: the harness, or the network).
NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("realsim_node", default=None)

#: Where virtual time starts (a non-zero value catches code that treats 0 as "unset").
DEFAULT_START = 1000.0

#: After a failed run, how much virtual time the cancelled tasks get to finish.
_CLEANUP_VIRTUAL_SECONDS = 60.0


class SimError(RuntimeError):
    """Something the simulation cannot or will not do."""


class SimDeadlock(SimError):
    """Nothing is ready and no timer is scheduled: nothing can happen any more."""


class SimTimeLimit(SimError):
    """The run would go past its virtual-time budget."""


class SimRealTimeLimit(SimError):
    """The run took longer than its real (wall-clock) budget."""


class SimUnsafeOperation(SimError):
    """Real I/O or a real thread was requested inside the simulation."""


def new_node_context(node: str) -> contextvars.Context:
    """A fresh, empty context in which :data:`NODE` is ``node``. Install the
    node's other context variables with ``ctx.run(var.set, value)``."""
    ctx = contextvars.Context()
    ctx.run(NODE.set, node)
    return ctx


class _VirtualSelector:
    """Stands where the selector would: ``select(timeout)`` advances virtual
    time by ``timeout`` and reports no I/O events."""

    def __init__(self, loop: VirtualEventLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        self._loop._advance(timeout)
        return []

    def close(self) -> None:
        pass

    def get_map(self) -> dict[Any, Any]:
        return {}


class VirtualEventLoop(asyncio.BaseEventLoop):
    """An event loop on virtual time; see the module documentation.

    ``start``: the virtual time the loop starts at. Limits (both optional):
    :meth:`set_virtual_limit` (absolute virtual time the clock must not pass:
    :class:`SimTimeLimit`) and :meth:`set_real_limit` (wall-clock seconds from
    now: :class:`SimRealTimeLimit`). Errors the loop would log (a task's
    exception never retrieved, an exception in a callback) are appended to
    :attr:`unhandled_errors` instead, as the context dicts asyncio passes to
    exception handlers.
    """

    def __init__(self, *, start: float = DEFAULT_START) -> None:
        super().__init__()
        self._clock = float(start)
        self.start_time = float(start)
        self._selector = _VirtualSelector(self)
        self._virtual_limit: float | None = None
        self._real_deadline: float | None = None
        #: Loop iterations so far (one per select).
        self.iterations = 0
        self.unhandled_errors: list[dict[str, Any]] = []
        self._node_tasks: dict[str, dict[asyncio.Task[Any], None]] = {}
        self.set_debug(False)
        self.set_exception_handler(_record_unhandled)

    # -- the clock ---------------------------------------------------------------

    def time(self) -> float:
        return self._clock

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the loop started."""
        return self._clock - self.start_time

    def set_virtual_limit(self, until: float | None) -> None:
        """The clock may not pass virtual time ``until`` (absolute, compare
        :meth:`time`); None: no limit."""
        self._virtual_limit = until

    def set_real_limit(self, seconds: float | None) -> None:
        """The run may take ``seconds`` more of real time; None: no limit."""
        self._real_deadline = None if seconds is None else time.perf_counter() + seconds

    def _advance(self, timeout: float | None) -> None:
        self.iterations += 1
        if self._real_deadline is not None and time.perf_counter() > self._real_deadline:
            raise SimRealTimeLimit(
                f"real-time budget exhausted at virtual t={self._clock:.6f} "
                f"after {self.iterations} loop iterations"
            )
        if timeout is None:
            raise SimDeadlock(
                f"deadlock at virtual t={self._clock:.6f}: no callback is ready and no "
                f"timer is scheduled; pending tasks: {self._describe_pending()}"
            )
        if timeout <= 0:
            return
        target = self._clock + timeout
        scheduled: list[Any] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            # Land exactly on the next timer, whatever the float rounding.
            when: float = scheduled[0].when()
            if abs(when - target) < 1e-6:
                target = max(when, self._clock)
        if self._virtual_limit is not None and target > self._virtual_limit:
            raise SimTimeLimit(
                f"virtual-time budget exhausted: next event at t={target:.6f} is past "
                f"the limit t={self._virtual_limit:.6f}"
            )
        self._clock = target

    def _describe_pending(self) -> str:
        pending = [t for t in asyncio.all_tasks(self) if not t.done()]
        names = sorted(f"{t.get_name()} {t.get_coro()!r}" for t in pending)
        return "; ".join(names) if names else "none"

    # -- what a real loop does with I/O and threads --------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass  # one thread: the loop is never blocked in a real select

    def run_in_executor(  # type: ignore[override]
        self, executor: concurrent.futures.Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        chosen = self._default_executor if executor is None else executor
        if chosen is None or getattr(chosen, SIM_SAFE_ATTR, False) is not True:
            raise SimUnsafeOperation(
                f"run_in_executor({executor!r}, {getattr(func, '__qualname__', func)!r}) in the "
                "simulation: only executors marked simulation-safe (such as SimExecutor) "
                "may be used; the default executor is a real thread pool"
            )
        return super().run_in_executor(chosen, func, *args)

    def set_default_executor(self, executor: Any) -> None:
        """Only a simulation-safe executor (then ``asyncio.to_thread`` and
        ``run_in_executor(None, ...)`` use it)."""
        if getattr(executor, SIM_SAFE_ATTR, False) is not True:
            raise SimUnsafeOperation(f"{executor!r} is not a simulation-safe executor")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        executor = self._default_executor
        self._default_executor = None
        if executor is not None:
            executor.shutdown(wait=False)

    # -- tasks by node ---------------------------------------------------------------

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task = super().create_task(coro, name=name, context=context)
        node = NODE.get() if context is None else context.get(NODE)
        if node is not None:
            tasks = self._node_tasks.setdefault(node, {})
            tasks[task] = None
            task.add_done_callback(tasks.pop)
        return task

    def tasks_of(self, node: str) -> list[asyncio.Task[Any]]:
        """The node's tasks that have not finished, oldest first."""
        return [t for t in self._node_tasks.get(node, {}) if not t.done()]

    def cancel_node(self, node: str, msg: str | None = None) -> int:
        """Cancel every unfinished task of ``node`` (oldest first); returns how
        many. Tasks that catch the cancellation and start new tasks may need a
        second call once the loop has run."""
        tasks = self.tasks_of(node)
        for task in tasks:
            task.cancel(msg)
        return len(tasks)


def _record_unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(loop, VirtualEventLoop):
        loop.unhandled_errors.append(context)
    else:  # pragma: no cover - installed only on virtual loops
        loop.default_exception_handler(context)


def run_virtual(
    main: Callable[[], Coroutine[Any, Any, T]],
    *,
    max_virtual_seconds: float,
    max_real_seconds: float | None = 60.0,
    start: float = DEFAULT_START,
    loop: VirtualEventLoop | None = None,
) -> T:
    """Run ``main()`` to completion on a virtual loop and return its result.

    A fresh :class:`VirtualEventLoop` (or ``loop``) starting at ``start`` runs
    the coroutine; the clock may advance at most ``max_virtual_seconds``
    (:class:`SimTimeLimit`) and the run may take at most ``max_real_seconds``
    of wall-clock time (:class:`SimRealTimeLimit`; None: unbounded). A
    deadlock raises :class:`SimDeadlock`. Whatever happens, the tasks still
    running at the end are cancelled and given a short virtual time to
    finish, async generators are closed, and the loop is closed.
    """
    loop = loop if loop is not None else VirtualEventLoop(start=start)
    loop.set_virtual_limit(loop.time() + max_virtual_seconds)
    loop.set_real_limit(max_real_seconds)
    try:
        return loop.run_until_complete(main())
    finally:
        _cancel_leftovers(loop)
        loop.close()


def _cancel_leftovers(loop: VirtualEventLoop) -> None:
    loop.set_virtual_limit(loop.time() + _CLEANUP_VIRTUAL_SECONDS)
    loop.set_real_limit(10.0)
    try:
        for _ in range(3):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if not pending:
                break
            pending.sort(key=lambda t: t.get_name())
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except SimError:
        pass  # best effort: the run already failed or finished


__all__ = [
    "DEFAULT_START",
    "NODE",
    "SIM_SAFE_ATTR",
    "SimDeadlock",
    "SimError",
    "SimRealTimeLimit",
    "SimTimeLimit",
    "SimUnsafeOperation",
    "VirtualEventLoop",
    "new_node_context",
    "run_virtual",
]
