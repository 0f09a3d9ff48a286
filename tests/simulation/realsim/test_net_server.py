"""The in-memory server used as the real code uses a grpc.aio server:
interceptors, health, start, graceful stop and termination."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.simulation.realsim.fakes import SLOW, FakeAcceptor, request, run
from tests.simulation.realsim.net import SimNetwork, SimServer
from tests.simulation.realsim.vloop import new_node_context


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
