"""The simulated storage thread: jobs run in order with virtual delays, a
crash drops what is queued, and a job already taken runs to the end."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.simulation.realsim.executor import SimExecutor, SimExecutorCrashed
from tests.simulation.realsim.fakes import run


def test_executor_runs_jobs_fifo_with_virtual_delays() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = SimExecutor(random.Random(5), delay=(0.01, 0.02))
        ran: list[tuple[int, float]] = []

        def job(n: int) -> int:
            with pytest.raises(RuntimeError):
                asyncio.get_running_loop()  # like a real thread: no loop here
            ran.append((n, loop.time()))
            if n == 3:
                raise KeyError(n)
            return n * 10

        start = loop.time()
        futures = [loop.run_in_executor(executor, job, n) for n in range(5)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[:3] == [0, 10, 20]
        assert isinstance(results[3], KeyError)
        assert results[4] == 40
        assert [n for n, _ in ran] == [0, 1, 2, 3, 4]
        times = [t - start for _, t in ran]
        assert all(b - a >= 0.01 for a, b in zip([0.0, *times], times, strict=False))
        assert times[-1] <= 5 * 0.02 + 1e-9

        loop.set_default_executor(executor)
        assert await asyncio.to_thread(lambda: 7) == 7

    run(main)


def test_executor_crash_drops_queued_jobs() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = SimExecutor(random.Random(5), delay=(1.0, 1.0))
        ran: list[int] = []
        futures = [loop.run_in_executor(executor, ran.append, n) for n in range(4)]
        await asyncio.sleep(1.5)  # job 0 done, job 1 taken
        assert ran == [0]
        executor.crash()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], SimExecutorCrashed)
        assert all(isinstance(r, asyncio.CancelledError) for r in results[2:])
        await asyncio.sleep(10)
        assert ran == [0]
        with pytest.raises(RuntimeError):
            executor.submit(ran.append, 9)

    run(main)


def test_executor_job_taken_is_not_cancelled_with_its_waiter() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = SimExecutor(random.Random(5), delay=(1.0, 1.0))
        ran: list[int] = []
        first = loop.run_in_executor(executor, ran.append, 1)
        second = loop.run_in_executor(executor, ran.append, 2)
        await asyncio.sleep(0.5)
        first.cancel()  # already taken: still runs, as on a real thread
        second.cancel()  # still queued: skipped
        await asyncio.sleep(5)
        assert ran == [1]

    run(main)
