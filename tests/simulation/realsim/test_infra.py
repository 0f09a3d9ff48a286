"""Unit tests of the simulation infrastructure: virtual loop, in-memory gRPC
network and simulated storage thread. Plain (sync) tests: each one runs its
own virtual loop with run_virtual, never pytest-asyncio's real one."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.simulation.realsim.executor import SimExecutor, SimExecutorCrashed
from tests.simulation.realsim.net import (
    TRANSPORT_PREFIX,
    NetFaults,
    SimChannel,
    SimNetwork,
    SimServer,
    TraceEvent,
)
from tests.simulation.realsim.vloop import (
    NODE,
    SimDeadlock,
    SimTimeLimit,
    SimUnsafeOperation,
    VirtualEventLoop,
    new_node_context,
    run_virtual,
)

ADDRESS = "acceptor-1:5000"
ABORT = 99
SLOW = 7
CRASH = 13
SWALLOW = 21


def run(main: Callable[[], Coroutine[Any, Any, Any]], seconds: float = 10_000.0) -> Any:
    return run_virtual(main, max_virtual_seconds=seconds, max_real_seconds=30.0)


class FakeAcceptor(pb_grpc.AcceptorServiceServicer):
    """GetLeaderContact, with behaviours chosen by proposer_id."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.nodes: list[str | None] = []
        self.metadata: list[tuple[tuple[str, Any], ...]] = []

    async def GetLeaderContact(
        self, request: pb.GetLeaderContactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLeaderContactResponse:
        self.calls += 1
        self.nodes.append(NODE.get())
        self.metadata.append(tuple(context.invocation_metadata() or ()))  # type: ignore[arg-type]
        if request.proposer_id == ABORT:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "wrong cluster", (("x-reason", "test"),)
            )
        if request.proposer_id == SWALLOW:
            with contextlib.suppress(Exception):  # a bug: the status already went out
                await context.abort(grpc.StatusCode.ABORTED, "swallowed")
        if request.proposer_id == SLOW:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if request.proposer_id == CRASH:
            raise ValueError("boom")
        context.set_trailing_metadata((("x-served-by", "a1"),))
        remaining = context.time_remaining()
        return pb.GetLeaderContactResponse(
            acceptor_id=1,
            has_contact=True,
            proposer_id=request.proposer_id,
            seconds_since=-1.0 if remaining is None else remaining,
        )


class FakeKv(pb_grpc.KvServiceServicer):
    """Watch: ``start_revision`` events, then an abort if ``prefix``."""

    def __init__(self) -> None:
        self.closed = 0

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchResponse]:
        try:
            for revision in range(1, request.start_revision + 1):
                yield pb.WatchResponse(revision=revision)
                await asyncio.sleep(0.5)
            if request.prefix:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, "compacted")
            if request.key == "forever":
                await asyncio.sleep(10_000)
        finally:
            self.closed += 1


@dataclass
class World:
    network: SimNetwork
    servicer: FakeAcceptor
    kv: FakeKv
    server: SimServer
    channel: SimChannel
    stub: pb_grpc.AcceptorServiceStub


def world(seed: int = 1, faults: NetFaults | None = None, trace: bool = False) -> World:
    network = SimNetwork(random.Random(seed), faults or NetFaults(), trace=trace)
    servicer = FakeAcceptor()
    kv = FakeKv()
    server = SimServer()
    pb_grpc.add_AcceptorServiceServicer_to_server(servicer, server)
    pb_grpc.add_KvServiceServicer_to_server(kv, server)
    network.attach(ADDRESS, "a1", server, new_node_context("a1"))
    channel = network.channel("p1", ADDRESS)
    return World(network, servicer, kv, server, channel, pb_grpc.AcceptorServiceStub(channel))


def request(proposer_id: int = 1) -> pb.GetLeaderContactRequest:
    return pb.GetLeaderContactRequest(proposer_id=proposer_id)


# -- the loop ---------------------------------------------------------------------------


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


# -- unary calls --------------------------------------------------------------------------


def test_ok_path_through_generated_stub() -> None:
    async def main() -> None:
        w = world()
        loop = asyncio.get_running_loop()
        start = loop.time()
        call = w.stub.GetLeaderContact(request(5), timeout=3.0, metadata=(("x-request-id", "r1"),))
        response = await call
        assert isinstance(response, pb.GetLeaderContactResponse)
        assert (response.acceptor_id, response.proposer_id, response.has_contact) == (1, 5, True)
        assert 2.9 < response.seconds_since <= 3.0
        assert await call.code() is grpc.StatusCode.OK
        assert ("x-served-by", "a1") in list(await call.trailing_metadata())
        assert w.servicer.nodes == ["a1"]
        assert w.servicer.metadata == [(("x-request-id", "r1"),)]
        assert 0 < loop.time() - start < 0.01
        assert w.network.unexpected_errors == []

    run(main)


def test_abort_reaches_client_as_aio_rpc_error() -> None:
    async def main() -> None:
        w = world()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(ABORT), timeout=3.0)
        error = info.value
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == "wrong cluster"
        assert isinstance(error.trailing_metadata(), grpc.aio.Metadata)
        assert error.trailing_metadata()["x-reason"] == "test"
        assert w.network.unexpected_errors == []
        assert w.network.suppressed_aborts == []

    run(main)


def test_swallowed_abort_still_sends_its_status_and_is_recorded() -> None:
    async def main() -> None:
        w = world()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(SWALLOW), timeout=3.0)
        assert info.value.code() is grpc.StatusCode.ABORTED
        assert len(w.network.suppressed_aborts) == 1

    run(main)


def test_unexpected_exception_is_unknown_and_recorded() -> None:
    async def main() -> None:
        w = world()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(CRASH), timeout=3.0)
        assert info.value.code() is grpc.StatusCode.UNKNOWN
        assert "boom" in (info.value.details() or "")
        [error] = w.network.unexpected_errors
        assert isinstance(error.error, ValueError)
        assert error.node == "a1"
        assert "GetLeaderContact" in error.method

    run(main)


def test_unimplemented_method() -> None:
    async def main() -> None:
        w = world()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.ProposerServiceStub(w.channel).GetLeader(pb.GetLeaderRequest(), timeout=1)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED

    run(main)


def test_deadline_exceeded_and_server_handler_cancelled() -> None:
    async def main() -> None:
        w = world()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.GetLeaderContact(request(SLOW), timeout=2.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - start == pytest.approx(2.0)
        await asyncio.sleep(0.1)
        assert w.servicer.cancelled == 1
        assert loop.tasks_of("a1") == []  # type: ignore[attr-defined]

    run(main)


def test_cancelling_the_caller_cancels_the_handler() -> None:
    async def main() -> None:
        w = world()

        async def caller() -> pb.GetLeaderContactResponse:
            return await w.stub.GetLeaderContact(request(SLOW))

        task = asyncio.create_task(caller())
        await asyncio.sleep(1)
        assert w.servicer.calls == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert w.servicer.cancelled == 1

    run(main)


def test_wait_for_timeout_cancels_the_call() -> None:
    async def main() -> None:
        w = world()
        call = w.stub.GetLeaderContact(request(SLOW))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, timeout=1)
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await asyncio.sleep(0.1)
        assert w.servicer.cancelled == 1

    run(main)


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


def test_message_size_limits() -> None:
    async def main() -> None:
        w = world()
        small = w.network.channel("p1", ADDRESS, [("grpc.max_receive_message_length", 3)])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.AcceptorServiceStub(small).GetLeaderContact(request(5), timeout=2.0)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    run(main)


def test_closed_channel() -> None:
    async def main() -> None:
        w = world()
        call = w.stub.GetLeaderContact(request(SLOW))
        await asyncio.sleep(1)
        await w.channel.close()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(grpc.aio.UsageError):
            w.stub.GetLeaderContact(request())

    run(main)


# -- streams, servers ---------------------------------------------------------------------


def test_response_stream() -> None:
    async def main() -> None:
        w = world()
        kv = pb_grpc.KvServiceStub(w.channel)
        revisions = [r.revision async for r in kv.Watch(pb.WatchRequest(start_revision=3))]
        assert revisions == [1, 2, 3]

        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in kv.Watch(pb.WatchRequest(start_revision=2, prefix=True)):
                seen.append(response.revision)
        assert seen == [1, 2]
        assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE

        stream = kv.Watch(pb.WatchRequest(key="forever", start_revision=1))
        assert (await stream.read()).revision == 1
        closed = w.kv.closed
        stream.cancel()
        await asyncio.sleep(0.1)
        assert w.kv.closed == closed + 1
        with pytest.raises(asyncio.CancelledError):
            await stream.read()

        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in kv.Watch(pb.WatchRequest(key="forever"), timeout=3):
                pass
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert w.network.unexpected_errors == []

    run(main)


def test_server_lifecycle_interceptors_and_health() -> None:
    class Counting(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.methods: list[str] = []

        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            self.methods.append(details.method)
            return await continuation(details)

    async def main() -> None:
        network = SimNetwork(random.Random(3))
        interceptor = Counting()
        server = SimServer(interceptors=[interceptor])
        servicer = FakeAcceptor()
        pb_grpc.add_AcceptorServiceServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        server.bind(network, "a1", new_node_context("a1"))
        assert server.add_insecure_port("a1:5000") == 5000
        await server.start()
        channel = network.channel("p1", "a1:5000")
        await channel.channel_ready()
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.AcceptorServiceStub(channel)
        slow = stub.GetLeaderContact(request(SLOW))
        await asyncio.sleep(1)
        stop = asyncio.create_task(server.stop(grace=2.0))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetLeaderContact(request(), timeout=1)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        await stop
        assert await server.wait_for_termination(0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await slow
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert interceptor.methods[:2] == [
            "/grpc.health.v1.Health/Check",
            "/paxos_service.v1.AcceptorService/GetLeaderContact",
        ]
        assert network.node_at("a1:5000") is None

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


# -- the storage thread -------------------------------------------------------------------


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
