"""Calls over the in-memory gRPC network through the generated stubs: replies,
statuses and metadata, deadlines and cancellation reaching the handler,
message size limits, closed channels and response streams."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.simulation.realsim.fakes import ABORT, ADDRESS, CRASH, SLOW, SWALLOW, request, run, world


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
