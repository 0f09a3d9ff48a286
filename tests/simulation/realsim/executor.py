"""A simulated storage thread: :class:`SimExecutor`.

It stands where a node's one SQLite thread (a ``ThreadPoolExecutor`` with
one worker) stands, for ``loop.run_in_executor(executor, fn, *args)`` on the
virtual loop. Jobs run strictly in submission order; each one is *taken* by
the "thread" when the previous one ends (or at once when idle), takes a
virtual delay drawn from the rng (sometimes a slow one), and then ``fn`` is
called, on the loop thread, and its ``concurrent.futures.Future`` completes
with the result or exception.

Like a real worker thread, a job that has been taken cannot be cancelled any
more: cancelling the awaiting task then does not stop ``fn`` from running
(exactly the race where an RPC handler is cancelled at its deadline but its
write still reaches the disk). A job still waiting in the queue can be
cancelled, and is then skipped without taking any time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.simulation.realsim.vloop import SIM_SAFE_ATTR

T = TypeVar("T")


class SimExecutorCrashed(RuntimeError):
    """The job's storage thread died (its node crashed) while running it."""


@dataclass
class _Job:
    future: concurrent.futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class SimExecutor(concurrent.futures.Executor):
    """One simulated storage thread; see the module documentation.

    ``rng``: where the delays come from. Each job takes a uniform delay in
    ``delay`` (min, max) virtual seconds, except that with probability
    ``slow_probability`` it takes a uniform delay in ``slow_delay`` instead.
    ``name`` only shows in reprs and error messages.

    ``submit`` must be called with the virtual loop running (it schedules the
    job on it), which is what ``loop.run_in_executor`` does.
    """

    realsim_safe = True

    def __init__(
        self,
        rng: random.Random,
        *,
        delay: tuple[float, float] = (0.0001, 0.001),
        slow_probability: float = 0.0,
        slow_delay: tuple[float, float] = (0.05, 0.5),
        name: str = "storage",
    ) -> None:
        self._rng = rng
        self.delay = delay
        self.slow_probability = slow_probability
        self.slow_delay = slow_delay
        self.name = name
        self._queue: deque[_Job] = deque()
        self._current: _Job | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown = False
        self._crashed = False
        #: Jobs whose ``fn`` has been called so far.
        self.jobs_run = 0
        # The thread's context: fn does not run in the submitter's context.
        self._thread_context = contextvars.Context()
        assert getattr(self, SIM_SAFE_ATTR) is True

    def __repr__(self) -> str:
        return f"<SimExecutor {self.name} queued={len(self._queue)} busy={self.busy}>"

    @property
    def busy(self) -> bool:
        """A job has been taken and its ``fn`` has not run yet."""
        return self._current is not None

    @property
    def queued(self) -> int:
        """Jobs waiting behind the current one."""
        return len(self._queue)

    @property
    def crashed(self) -> bool:
        return self._crashed

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        if self._shutdown:
            raise RuntimeError(f"cannot schedule new futures after shutdown ({self.name})")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.append(_Job(future, fn, args, kwargs))
        self._take_next()
        return future

    def _draw_delay(self) -> float:
        low, high = self.delay
        if self.slow_probability > 0 and self._rng.random() < self.slow_probability:
            low, high = self.slow_delay
        return self._rng.uniform(low, high)

    def _take_next(self) -> None:
        if self._current is not None or self._loop is None:
            return
        while self._queue:
            job = self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued: skipped, costs nothing
            self._current = job
            self._timer = self._loop.call_later(
                self._draw_delay(), self._run, job, context=self._thread_context
            )
            return

    def _run(self, job: _Job) -> None:
        self._current = None
        self._timer = None
        self.jobs_run += 1
        # A real worker thread has no running loop: asyncio calls in fn fail as they would.
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            result = job.fn(*job.args, **job.kwargs)
        except BaseException as exc:
            asyncio.events._set_running_loop(running)
            job.future.set_exception(exc)
        else:
            asyncio.events._set_running_loop(running)
            job.future.set_result(result)
        self._take_next()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new jobs; with ``cancel_futures`` the queued ones are cancelled,
        otherwise they still run in order. ``wait`` is ignored: the loop
        thread cannot block (await the futures instead)."""
        self._shutdown = True
        if cancel_futures:
            while self._queue:
                self._queue.popleft().future.cancel()

    def crash(self, *, finish_current: bool = False) -> None:
        """The node died: no new jobs, every queued job is cancelled and never
        runs. The job already taken (if any) never runs either and its future
        fails with :class:`SimExecutorCrashed` (it cannot be cancelled: it
        was running), unless ``finish_current``, in which case its ``fn`` runs
        now (the write reached the disk just before the crash)."""
        self._shutdown = True
        self._crashed = True
        while self._queue:
            self._queue.popleft().future.cancel()
        job = self._current
        if job is None:
            return
        if finish_current:
            if self._timer is not None:
                self._timer.cancel()
            self._thread_context.run(self._run, job)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._current = None
        job.future.set_exception(SimExecutorCrashed(f"{self.name}: crashed while running"))


__all__ = ["SimExecutor", "SimExecutorCrashed"]
