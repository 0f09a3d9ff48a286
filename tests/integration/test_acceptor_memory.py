"""An acceptor keeps only a window of recent instances in memory; older ones
stay on disk and are read back when asked for. Safety must not notice: a
promise or vote made before an instance left memory binds exactly as before.
In-process, over real gRPC on loopback and a real SQLite file, with the
window made small."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from paxos_service.core.config import AcceptorConfig
from paxos_service.servers.acceptor import AcceptorServicer
from paxos_service.servers.acceptor_states import resident_after_eviction
from paxos_service.servers.start import start_acceptor
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.transport.server import RoleServer
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

INSTANCES = 100
MAX_RESIDENT = 30
AFTER_EVICTION = resident_after_eviction(MAX_RESIDENT)

#: These tests drive the acceptor as the log does.
LOG = pb.INSTANCE_SPACE_LOG


def ballot(round_: int, proposer_id: int) -> pb.Ballot:
    return pb.Ballot(round=round_, proposer_id=proposer_id)


class Acceptor:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.storage = SqliteAcceptorStorage(path, acceptor_id=0, cluster_id="paxos")
        self.role: RoleServer | None = None
        self.servicer: AcceptorServicer | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> pb_grpc.AcceptorServiceAsyncStub:
        self.storage.open()
        config = AcceptorConfig(
            node_id=0,
            listen="127.0.0.1:0",
            db_path=self.path,
            max_resident_instances=MAX_RESIDENT,
        )
        self.role, self.servicer = await start_acceptor(config, self.storage)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.role.port}")
        return pb_grpc.AcceptorServiceStub(self.channel)  # type: ignore[return-value]

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.role is not None and self.servicer is not None:
            await self.role.server.stop(None)
            await self.servicer.committer.stop()
        self.storage.close()


@pytest.fixture
async def acceptor(tmp_path: Path) -> AsyncIterator[Acceptor]:
    node = Acceptor(tmp_path / "a.db")
    try:
        yield node
    finally:
        await node.stop()


async def fill(stub: pb_grpc.AcceptorServiceAsyncStub) -> None:
    for instance in range(1, INSTANCES + 1):
        accept = pb.Accept(instance=instance, ballot=ballot(1, 1), value=f"v{instance}".encode())
        reply = await stub.Accept(pb.AcceptRequest(accept=accept, space=LOG), timeout=10)
        assert reply.HasField("accepted")


async def test_old_instances_leave_memory_and_still_bind(acceptor: Acceptor) -> None:
    stub = await acceptor.start()
    await fill(stub)
    servicer = acceptor.servicer
    assert servicer is not None
    assert len(servicer.window.states) <= MAX_RESIDENT
    assert servicer.window.spilled_through >= INSTANCES - MAX_RESIDENT
    assert 1 not in servicer.window.states

    # A read of an instance on disk only.
    got = await stub.GetAccepted(pb.GetAcceptedRequest(instance=1, space=LOG), timeout=10)
    assert got.accepted.value == b"v1" and got.accepted.ballot == ballot(1, 1)

    # The vote made before eviction binds: a lower ballot is refused...
    low = pb.Prepare(instance=1, ballot=ballot(1, 0))
    reply = await stub.Prepare(pb.PrepareRequest(prepare=low, space=LOG), timeout=10)
    assert reply.HasField("reject") and reply.reject.promised_ballot == ballot(1, 1)
    stale = pb.Accept(instance=2, ballot=ballot(1, 0), value=b"other")
    assert (await stub.Accept(pb.AcceptRequest(accept=stale, space=LOG), timeout=10)).HasField(
        "reject"
    )
    # ...and a higher one is told what was accepted.
    high = pb.Prepare(instance=1, ballot=ballot(2, 1))
    reply = await stub.Prepare(pb.PrepareRequest(prepare=high, space=LOG), timeout=10)
    assert reply.promise.accepted_value == b"v1"
    assert reply.promise.accepted_ballot == ballot(1, 1)
    # That promise is now resident again, and binds at once.
    again = pb.Accept(instance=1, ballot=ballot(1, 1), value=b"v1")
    assert (await stub.Accept(pb.AcceptRequest(accept=again, space=LOG), timeout=10)).HasField(
        "reject"
    )

    # Range reads cross the boundary between disk and memory, in order.
    page = await stub.GetAcceptedRange(
        pb.GetAcceptedRangeRequest(from_instance=1, limit=25), timeout=10
    )
    assert [a.instance for a in page.accepted] == list(range(1, 26))
    assert [a.value for a in page.accepted][:2] == [b"v1", b"v2"]
    page = await stub.GetAcceptedRange(pb.GetAcceptedRangeRequest(from_instance=60), timeout=10)
    assert [a.instance for a in page.accepted] == list(range(60, INSTANCES + 1))

    # Phase 1 for everything reports every accepted value, evicted or not.
    prepare = pb.PrepareRange(from_instance=1, ballot=ballot(3, 2))
    reply = await stub.PrepareRange(pb.PrepareRangeRequest(prepare=prepare), timeout=10)
    reported = {a.instance: a.value for a in reply.promise.accepted}
    assert reported == {i: f"v{i}".encode() for i in range(1, INSTANCES + 1)}


async def test_a_restart_loads_only_the_newest_instances(acceptor: Acceptor) -> None:
    stub = await acceptor.start()
    await fill(stub)
    await acceptor.stop()
    restarted = Acceptor(acceptor.path)
    try:
        stub = await restarted.start()
        servicer = restarted.servicer
        assert servicer is not None
        assert sorted(servicer.window.states) == list(
            range(INSTANCES - AFTER_EVICTION + 1, INSTANCES + 1)
        )
        assert servicer.window.spilled_through == INSTANCES - AFTER_EVICTION
        got = await stub.GetAccepted(pb.GetAcceptedRequest(instance=5, space=LOG), timeout=10)
        assert got.accepted.value == b"v5"
        stale = pb.Accept(instance=5, ballot=ballot(1, 0), value=b"other")
        assert (await stub.Accept(pb.AcceptRequest(accept=stale, space=LOG), timeout=10)).HasField(
            "reject"
        )
    finally:
        await restarted.stop()
