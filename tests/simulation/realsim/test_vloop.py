"""The virtual-time event loop: time jumps, deadlocks and limits are
reported, no real threads, and every task belongs to a node."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.simulation.realsim.fakes import run
from tests.simulation.realsim.vloop import (
    NODE,
    SimDeadlock,
    SimTimeLimit,
    SimUnsafeOperation,
    VirtualEventLoop,
    new_node_context,
)


def test_virtual_time_jumps() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    began = time.perf_counter()
    assert run(main) == 3600.0
    assert time.perf_counter() - began < 1.0


def test_timeouts_use_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(50), timeout=2.5)
        return loop.time() - start

    assert run(main) == pytest.approx(2.5)


def test_deadlock_is_reported() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimDeadlock, match="deadlock"):
        run(main)


def test_virtual_time_limit() -> None:
    async def main() -> None:
        await asyncio.sleep(100)

    with pytest.raises(SimTimeLimit):
        run(main, seconds=10)


def test_no_real_threads() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(SimUnsafeOperation):
            await loop.run_in_executor(None, print)
        with pytest.raises(SimUnsafeOperation):
            await asyncio.to_thread(print)

    run(main)


def test_tasks_belong_to_nodes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualEventLoop)
        ctx = new_node_context("n1")
        started: list[str | None] = []

        async def child() -> None:
            started.append(NODE.get())
            await asyncio.sleep(1000)

        async def parent() -> None:
            asyncio.create_task(child())  # noqa: RUF006 - tracked by the loop
            await asyncio.sleep(1000)

        parent_task = loop.create_task(parent(), context=ctx)
        await asyncio.sleep(1)
        assert started == ["n1"]
        assert len(loop.tasks_of("n1")) == 2
        assert loop.cancel_node("n1") == 2
        await asyncio.sleep(0)
        assert loop.tasks_of("n1") == []
        assert parent_task.cancelled()

    run(main)
