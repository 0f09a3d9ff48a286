"""What the tests of the simulation infrastructure share: ``run`` (a
coroutine on its own virtual loop: plain sync tests, never pytest-asyncio's
real loop), and a fake acceptor and KV servicer behind one address of an
in-memory network, whose behaviour each test picks by request field."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.simulation.realsim.net import NetFaults, SimChannel, SimNetwork, SimServer
from tests.simulation.realsim.vloop import NODE, new_node_context, run_virtual

ADDRESS = "acceptor-1:5000"
#: proposer_id values that make FakeAcceptor abort, hang, raise or swallow its abort.
ABORT = 99
SLOW = 7
CRASH = 13
SWALLOW = 21


def run(main: Callable[[], Coroutine[Any, Any, Any]], seconds: float = 10_000.0) -> Any:
    """Run ``main`` on a fresh virtual loop, for at most ``seconds`` of virtual time."""
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
