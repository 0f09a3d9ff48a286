"""The in-memory network's faults: partitions, one-way blocks, lost and
duplicated messages, refused and detached addresses; and the same seed
giving the same trace."""

from __future__ import annotations

import asyncio
import contextlib
import random

import grpc
import grpc.aio
import pytest

from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.simulation.realsim.fakes import ABORT, ADDRESS, SLOW, request, run, world
from tests.simulation.realsim.net import TRANSPORT_PREFIX, NetFaults, TraceEvent
from tests.simulation.realsim.vloop import new_node_context


def test_partition_means_deadline_exceeded() -> None:
    async def main() -> None:
        w = world()
        loop = asyncio.get_running_loop()
        w.network.partition({"p1"}, {"a1"})
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(), timeout=2.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - start == pytest.approx(2.0)
        assert w.servicer.calls == 0
        w.network.heal()
        assert (await w.stub.GetLeaderContact(request(), timeout=2.0)).acceptor_id == 1

    run(main)


def test_one_way_block_loses_the_reply_after_the_handler_ran() -> None:
    async def main() -> None:
        w = world()
        w.network.block("a1", "p1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(), timeout=2.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert w.servicer.calls == 1

    run(main)


def test_partitioned_call_without_deadline_fails_unavailable_after_connect_timeout() -> None:
    async def main() -> None:
        w = world(faults=NetFaults(connect_timeout=7.0))
        loop = asyncio.get_running_loop()
        w.network.isolate("a1")
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request())
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert loop.time() - start == pytest.approx(7.0)

    run(main)


def test_failed_to_connect_only_when_no_handler_ran() -> None:
    async def main() -> None:
        w = world(faults=NetFaults(connect_timeout=5.0))
        w.network.block("p1", "a1")  # the request is lost: never acted on
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request())
        details = info.value.details() or ""
        assert details.startswith(TRANSPORT_PREFIX)
        assert "failed to connect" in details
        w.network.heal()
        w.network.block("a1", "p1")  # the reply is lost: the handler ran
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request())
        details = info.value.details() or ""
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert details.startswith(TRANSPORT_PREFIX)
        assert "failed to connect" not in details
        assert w.servicer.calls == 1

    run(main)


def test_detached_address_is_unavailable_quickly() -> None:
    async def main() -> None:
        w = world()
        loop = asyncio.get_running_loop()
        w.network.detach(ADDRESS)
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(), timeout=5.0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Connection refused" in (info.value.details() or "")
        assert loop.time() - start < 0.01
        unknown = w.network.channel("p1", "nowhere:1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.AcceptorServiceStub(unknown).GetLeaderContact(request(), timeout=5.0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    run(main)


def test_detach_fails_calls_in_flight_and_cancels_handlers() -> None:
    async def main() -> None:
        w = world()
        call = w.stub.GetLeaderContact(request(SLOW))
        await asyncio.sleep(1)
        w.network.detach(ADDRESS)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert w.servicer.cancelled == 1

    run(main)


def test_wait_for_ready_waits_for_the_server() -> None:
    async def main() -> None:
        w = world()
        w.network.detach(ADDRESS)
        call = w.stub.GetLeaderContact(request(), timeout=10.0, wait_for_ready=True)
        await asyncio.sleep(3)
        assert not call.done()
        w.network.attach(ADDRESS, "a1", w.server, new_node_context("a1"))
        assert (await call).acceptor_id == 1

    run(main)


def test_duplicate_delivery_runs_the_handler_twice() -> None:
    async def main() -> None:
        w = world(faults=NetFaults(duplicate_probability=1.0))
        response = await w.stub.GetLeaderContact(request(3), timeout=2.0)
        assert response.proposer_id == 3
        await asyncio.sleep(1)
        assert w.servicer.calls == 2

    run(main)


def test_dropped_request_means_deadline_exceeded() -> None:
    async def main() -> None:
        w = world(faults=NetFaults(drop_probability=1.0))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(), timeout=2.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    run(main)


# -- determinism --------------------------------------------------------------------------


def _chaos_run(seed: int) -> list[TraceEvent]:
    faults = NetFaults(
        drop_probability=0.2,
        duplicate_probability=0.2,
        long_delay_probability=0.1,
        connect_timeout=5.0,
    )

    async def main() -> list[TraceEvent]:
        w = world(seed, faults, trace=True)
        rng = random.Random(seed + 1000)

        async def client(name: str) -> None:
            stub = pb_grpc.AcceptorServiceStub(w.network.channel(name, ADDRESS))
            for _ in range(10):
                proposer = rng.choice([1, 2, ABORT, SLOW])
                timeout = rng.choice([None, 0.5, 3.0])
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetLeaderContact(request(proposer), timeout=timeout)
                await asyncio.sleep(rng.uniform(0, 0.1))

        async def nemesis() -> None:
            for _ in range(5):
                await asyncio.sleep(rng.uniform(0, 2))
                w.network.partition({"a1", "c1"}, {"c2", "c3"})
                await asyncio.sleep(rng.uniform(0, 2))
                w.network.heal()

        clients = [client(f"c{i}") for i in range(1, 4)]
        await asyncio.gather(*clients, nemesis())
        assert w.network.trace is not None
        return w.network.trace

    result: list[TraceEvent] = run(main)
    return result


def test_same_seed_same_trace() -> None:
    first = _chaos_run(42)
    assert len(first) > 50
    assert first == _chaos_run(42)
    assert first != _chaos_run(43)
